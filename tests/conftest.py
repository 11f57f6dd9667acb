import os
import sys

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def no_child_left():
    """Every test must leave no child process of the test process behind
    (children still exiting get 5 s)."""
    yield
    children = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(children, timeout=5)
    left = []
    for child in alive:
        try:
            left.append((child.pid, ' '.join(child.cmdline()[:3])))
        except psutil.Error:
            pass  # exited between the wait and this look
    assert not left, f'child processes left behind: {left}'
