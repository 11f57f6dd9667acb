import os
import sys

import cloudpickle
import psutil
import pytest

sys.path.append(os.path.dirname(__file__))  # after the packages

import helpers  # noqa: E402

# Worker processes get the test envs by value, whatever their sys.path.
cloudpickle.register_pickle_by_value(helpers)

# multiprocessing's own long-lived helpers: one per test session, not ours.
_HELPERS = ('multiprocessing.forkserver', 'multiprocessing.resource_tracker')


def _ours(process):
    try:
        cmdline = ' '.join(process.cmdline())
    except psutil.Error:
        return False
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
