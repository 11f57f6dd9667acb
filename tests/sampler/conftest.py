import pytest

from sampler import LocalSampler, MultiprocessingSampler

BACKENDS = {'local': LocalSampler, 'multiprocessing': MultiprocessingSampler}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """The sampler class under test; behaviour tests run on every backend."""
    return BACKENDS[request.param]


@pytest.fixture
def make_sampler(backend):
    """Build samplers of the backend under test; all are closed afterwards."""
    made = []

    def make(agents, envs, **kwargs):
        sampler = backend(agents, envs, **kwargs)
        made.append(sampler)
        return sampler

    yield make
    for sampler in made:
        sampler.close()
