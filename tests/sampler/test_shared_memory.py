"""obtain_steps moves large observations through shared memory
(MultiprocessingSampler on Linux): workers write them into the rows of
the batch the call returns. Same batches as without it, nothing reused
while a user holds it, and nothing left behind whatever dies."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from helpers import BigObsEnv, OneStepEnv
from sampler import LocalSampler, MultiprocessingSampler, WorkerError
from workers import RandomAgent, VecWorker

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not hasattr(os, 'memfd_create'),
                                 reason='shared rows need memfd (Linux)')]


def frames():
    """Observations of 64 KiB, every byte its step number."""
    return BigObsEnv(size=1 << 16, length=7)


def shared_maps(pid='self'):
    """How many of our shared arenas process ``pid`` has mapped."""
    with open(f'/proc/{pid}/maps') as maps:
        return maps.read().count('memfd:rollout-sampler-rows')


@pytest.mark.parametrize('kind', ['default', 'vec'])
def test_frames_through_shared_memory_are_the_batches_local_gives(kind):
    extra = {'worker_class': VecWorker, 'worker_args': {'n_envs': 3}} \
        if kind == 'vec' else {}
    batches = []
    for cls in (LocalSampler, MultiprocessingSampler):
        with cls(RandomAgent(BigObsEnv.action_space, seed=1), frames,
                 n_workers=2, seed=0, **extra) as s:
            batches.append([s.obtain_steps(5) for _ in range(3)])
    for local, shared in zip(*batches):
        # The rows the workers wrote are the batch's, not a copy.
        assert not shared.observations.flags['OWNDATA']
        for name in ('observations', 'last_observations', 'actions',
                     'rewards', 'episode_ids', 'prior_steps'):
            assert np.array_equal(getattr(local, name),
                                  getattr(shared, name)), name
        shared.check()


def test_rows_a_user_still_holds_are_never_written_again():
    with MultiprocessingSampler(RandomAgent(BigObsEnv.action_space),
                                frames, n_workers=2, seed=0) as s:
        first = s.obtain_steps(5)
        kept = first.observations[2:4]  # a view outlives its batch
        copy = kept.copy()
        del first
        gc.collect()
        places = set()
        for _ in range(5):
            batch = s.obtain_steps(5)
            places.add(batch.observations.__array_interface__['data'][0])
            del batch  # free: its rows may be reused
        assert np.array_equal(kept, copy)
        assert len(places) == 1  # the free arena was reused every time
        assert shared_maps() >= 1
    del kept
    gc.collect()
    assert shared_maps() == 0


def test_small_observations_keep_the_pipe():
    with MultiprocessingSampler(RandomAgent(OneStepEnv.action_space),
                                OneStepEnv, n_workers=2, seed=0) as s:
        batch = s.obtain_steps(10)
        assert shared_maps() == 0
        assert len(batch) == 20


def test_workers_keep_maps_of_the_arenas_the_caller_keeps_and_no_more():
    with MultiprocessingSampler(RandomAgent(BigObsEnv.action_space),
                                frames, n_workers=2, seed=0) as s:
        held = [s.obtain_steps(5) for _ in range(4)]  # four arenas in use
        assert [shared_maps(pid) for pid in s.worker_pids()] == [2, 2]
        del held
        gc.collect()
        batch = s.obtain_steps(5)  # a kept arena, reused
        assert [shared_maps(pid) for pid in s.worker_pids()] == [2, 2]
        assert len(batch) == 10 and shared_maps() == 2


SCRIPT = '''
import os, signal, sys, time
import gymnasium as gym
import numpy as np
from sampler import MultiprocessingSampler
from workers import RandomAgent


class Frames(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (1 << 16,), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(1 << 16, np.uint8), {}

    def step(self, action):
        time.sleep(0.002)
        return np.ones(1 << 16, np.uint8), 1.0, False, False, {}


if __name__ == '__main__':
    s = MultiprocessingSampler(RandomAgent(Frames.action_space), Frames,
                               n_workers=2, seed=0,
                               on_worker_error='restart')
    s.obtain_steps(20)
    # A worker killed mid-call is replaced, and the call redone.
    pid = s.worker_pids()[1]
    import threading
    threading.Timer(0.1, os.kill, (pid, signal.SIGKILL)).start()
    batch = s.obtain_steps(100)
    assert s.stats['worker_restarts'] == 1 and len(batch) == 200
    print('restarted', flush=True)
    if sys.argv[1] == 'close':
        s.close()
        print('closed', flush=True)
    else:
        print('sampling', flush=True)
        while True:
            s.obtain_steps(100)
'''


def dev_shm():
    return sorted(os.listdir('/dev/shm')) if os.path.isdir('/dev/shm') \
        else []


@pytest.mark.parametrize('end', ['close', 'killed caller'])
def test_nothing_is_left_after_a_crash_a_restart_close_or_a_killed_caller(
        tmp_path, end):
    before = dev_shm()
    path = tmp_path / 'script.py'
    path.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(path), end.split()[0]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == 'restarted'
        if end == 'killed caller':
            assert proc.stdout.readline().strip() == 'sampling'
            time.sleep(0.3)  # inside a call, rows half written
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    if end == 'close':
        assert out.strip() == 'closed' and proc.returncode == 0, err
    # The resource tracker has nothing to clean: it stays silent.
    assert 'leaked' not in err and 'resource_tracker' not in err, err
    time.sleep(0.5)  # a killed caller's workers end within a second
    assert dev_shm() == before


class WideFrames(BigObsEnv):
    """64 KiB frames of the wrong dtype (``'dtype'``) or length
    (``'shape'``) for the space it declares."""

    def __init__(self, flaw):
        super().__init__(size=1 << 16, length=7)
        self.flaw = flaw

    def step(self, action):
        obs, *rest = super().step(action)
        if self.flaw == 'dtype':
            obs = obs.astype(np.int16)
        else:
            obs = np.concatenate([obs, obs[:8]])
        return (obs, *rest)


@pytest.mark.parametrize('kind', ['default', 'vec'])
@pytest.mark.parametrize('flaw, message', [
    ('dtype', r'observations are int16, but the space Box\(0, 255, '
              r'\(65536,\), uint8\) is uint8'),
    ('shape', r'the observation at step 1 of episode 0 has shape '
              r'\(65544,\), u, but earlier ones have shape \(65536,\)')])
def test_frames_that_do_not_fit_are_refused_on_the_shared_path_too(
        kind, flaw, message):
    # Stacking into shared rows must not cast them into fitting silently.
    extra = {'worker_class': VecWorker, 'worker_args': {'n_envs': 2}} \
        if kind == 'vec' else {}
    with MultiprocessingSampler(RandomAgent(BigObsEnv.action_space),
                                lambda: WideFrames(flaw), n_workers=1,
                                seed=0, **extra) as s:
        with pytest.raises(WorkerError, match=message):
            s.obtain_steps(5)
