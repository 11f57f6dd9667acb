import os
import signal
import threading

import pytest

from helpers import closing_samplers

from sampler import LocalSampler, MultiprocessingSampler, RaySampler

try:
    import ray
except ImportError:  # the ray extra is not installed: its tests skip
    ray = None

BACKENDS = {'local': LocalSampler, 'multiprocessing': MultiprocessingSampler,
            'ray': RaySampler}


@pytest.fixture(scope='session')
def ray_runtime():
    """One local Ray runtime for the whole session: starting one takes
    seconds. RaySampler uses a runtime it finds running and leaves it be.
    Its CPUs are logical: enough for the most workers a test asks for."""
    if ray is None:
        pytest.skip('Ray is not installed (pip install '
                    '"rollout-sampler[ray]")')
    started = not ray.is_initialized()
    if started:
        # Actors import what tests define by reference (test modules, the
        # helpers): their processes need the test folders on their path.
        tests = os.path.dirname(os.path.dirname(__file__))
        folders = [tests, os.path.join(tests, 'sampler'),
                   os.path.join(tests, 'workers')]
        path = os.environ.get('PYTHONPATH')
        os.environ['PYTHONPATH'] = os.pathsep.join(
            folders + ([path] if path else []))
        # 'local': never the cluster a stale ray_current_cluster file in
        # Ray's temp folder names, nor one RAY_ADDRESS names.
        ray.init(address='local', num_cpus=8, include_dashboard=False,
                 logging_level='WARNING')
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """The sampler class under test; behaviour tests run on every backend."""
    if request.param == 'ray':
        request.getfixturevalue('ray_runtime')
    return BACKENDS[request.param]


@pytest.fixture(params=['multiprocessing', 'ray'])
def process_backend(request):
    """The backends whose workers are processes of their own."""
    if request.param == 'ray':
        request.getfixturevalue('ray_runtime')
    return BACKENDS[request.param]


@pytest.fixture
def make_sampler(backend):
    """Build samplers of the backend under test; all are closed afterwards."""
    with closing_samplers(backend) as make:
        yield make


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt, as in a terminal (a shell starts
    background jobs with it ignored); ``ctrl_c(delay)`` sends one to this
    process after ``delay`` seconds."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timers = []

    def send(delay):
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        timers.append(timer)
        timer.start()

    yield send
    for timer in timers:
        timer.cancel()
        timer.join()
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(params=['local', 'multiprocessing', 'ray'])
def vector_backend(request):
    """The backend a vector env's workers run on."""
    if request.param == 'ray':
        request.getfixturevalue('ray_runtime')
    return request.param
