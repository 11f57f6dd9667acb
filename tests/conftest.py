import os
import sys

import cloudpickle
import psutil
import pytest

sys.path.append(os.path.dirname(__file__))  # after the packages

import helpers  # noqa: E402

# Worker processes get the test envs by value, whatever their sys.path.
cloudpickle.register_pickle_by_value(helpers)

# Long-lived helpers, one per test session, not ours: multiprocessing's,
# and the Ray runtime's (its servers, agents and pool of idle workers). A
# RaySampler's actors show as 'ray::SamplerWorker...' and are ours.
_HELPERS = ('multiprocessing.forkserver', 'multiprocessing.resource_tracker',
            '/site-packages/ray/')


def _ours(process):
    try:
        cmdline = ' '.join(process.cmdline())
    except psutil.Error:
        return False
    if cmdline.startswith('ray::'):
        return cmdline.startswith('ray::SamplerWorker')
    return not any(h in cmdline for h in _HELPERS)


@pytest.fixture(autouse=True)
def no_child_left():
    """Every test must leave no process of its own behind (children still
    exiting get 5 s). Workers forked by the forkserver are its children, so
    the whole tree is searched."""
    yield
    children = [c for c in psutil.Process().children(recursive=True)
                if _ours(c)]
    _, alive = psutil.wait_procs(children, timeout=5)
    left = []
    for child in alive:
        try:
            left.append((child.pid, ' '.join(child.cmdline()[:3])))
        except psutil.Error:
            pass  # exited between the wait and this look
    assert not left, f'child processes left behind: {left}'
