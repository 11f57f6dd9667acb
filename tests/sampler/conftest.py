import pytest

from helpers import closing_samplers

from sampler import LocalSampler, MultiprocessingSampler

BACKENDS = {'local': LocalSampler, 'multiprocessing': MultiprocessingSampler}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """The sampler class under test; behaviour tests run on every backend."""
    return BACKENDS[request.param]


@pytest.fixture
def make_sampler(backend):
    """Build samplers of the backend under test; all are closed afterwards."""
    with closing_samplers(backend) as make:
        yield make
