"""A soak: random SIGKILLs of workers, hung steps (step_timeout) and
random caught Ctrl-Cs during hundreds of calls of every kind, with
restarts. CI runs a short version; ``SAMPLER_SOAK_CALLS=300 pytest -m
soak`` runs the long one."""

import functools
import os
import signal
import threading

import gymnasium as gym
import numpy as np
import psutil
import pytest
from gymnasium import spaces

from helpers import ParamAgent

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]

#: Calls per backend; Ray restarts an actor in about a second, so it gets
#: half as many.
CALLS = int(os.environ.get('SAMPLER_SOAK_CALLS', '60'))


#: Floats per observation: 64 KiB, so that messages take many reads and
#: a Ctrl-C can land inside one.
OBS_SIZE = 16384


class RandomLengthEnv(gym.Env):
    """Episodes of 1 to 40 steps of about 0.5 ms; every number of the
    observation is the step number, so segments can be checked against
    their place and frames for being whole. Given a folder, the first
    step anywhere to find a file ``hang`` in it removes it, leaves a file
    ``hung-<pid>`` and never returns."""

    observation_space = spaces.Box(0, 10 ** 6, (OBS_SIZE,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, folder=None):
        self.folder = folder

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.length = int(self.np_random.integers(1, 41))
        return np.zeros(OBS_SIZE, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.folder is not None:
            self._maybe_hang()
        deadline = time_now() + 0.0005
        while time_now() < deadline:
            pass
        return (np.full(OBS_SIZE, self.t, np.float32), 1.0,
                self.t >= self.length, False, {})

    def _maybe_hang(self):
        try:
            os.unlink(os.path.join(self.folder, 'hang'))
        except FileNotFoundError:
            return
        with open(os.path.join(self.folder, f'hung-{os.getpid()}'), 'w'):
            pass
        while True:
            import time
            time.sleep(0.05)


def time_now():
    import time
    return time.perf_counter()


def _kill_one(sampler, rng, kills, folder):
    pids = [p for p in sampler.worker_pids() if p is not None and
            not os.path.exists(os.path.join(folder, f'hung-{p}'))]
    if not pids:
        return  # between a worker's death and its replacement's start
    pid = int(rng.choice(pids))
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return  # dead already, not yet replaced: not a new failure
        os.kill(pid, signal.SIGKILL)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    kills.append(pid)


def test_soak_of_kills_hangs_and_interrupts(process_backend, tmp_path):
    calls = CALLS // 2 if process_backend.__name__ == 'RaySampler' else CALLS
    rng = np.random.default_rng(1)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    seen = set()  # (episode id, first step) of every segment returned
    kills, interrupts, checked, armed = [], 0, 0, 0
    folder = str(tmp_path)
    s = process_backend(ParamAgent(), functools.partial(RandomLengthEnv,
                                                        folder),
                        n_workers=3, seed=0, on_worker_error='restart',
                        max_restarts=10 ** 6, shutdown_timeout=5,
                        step_timeout=1.0)
    try:
        for i in range(calls):
            kind = ('samples', 'episodes', 'steps', 'stream')[i % 4]
            timer = None
            roll = rng.random()
            if roll < 0.2:
                timer = threading.Timer(rng.uniform(0, 0.15), _kill_one,
                                        (s, rng, kills, folder))
            elif roll < 0.35:
                timer = threading.Timer(rng.uniform(0, 0.1), os.kill,
                                        (os.getpid(), signal.SIGINT))
            elif roll < 0.45:
                # The next step anywhere hangs.
                with open(os.path.join(folder, 'hang'), 'w'):
                    armed += 1
            batch = None
            try:
                if timer is not None:
                    timer.start()
                if kind == 'samples':
                    batch = s.obtain_samples(300, agent_update=i)
                elif kind == 'episodes':
                    batch = s.obtain_exact_episodes(3, agent_update=i)
                elif kind == 'steps':
                    batch = s.obtain_steps(40, agent_update=i)
                else:
                    stream = s.stream(300)
                    try:
                        s.push_update(i)
                        batch = next(stream)
                    finally:
                        stream.close()
                if timer is not None:
                    timer.join()
            except KeyboardInterrupt:
                interrupts += 1
                if timer is not None:
                    timer.join()
                continue
            batch.check()
            assert (batch.versions == s.version).all()
            assert set(batch.agent_infos['p'].tolist()) == {i}
            if kind in ('samples', 'stream'):
                assert len(batch) >= 300
            elif kind == 'episodes':
                assert batch.n_episodes == 9 and not batch.cut.any()
            else:
                assert len(batch) == 3 * 40
            # Each step's observation is its step number in the episode.
            steps = np.concatenate([np.arange(p, p + n) for p, n in
                                    zip(batch.prior_steps, batch.lengths)])
            assert (batch.observations[:, 0] == steps).all()
            assert (batch.observations.min(1) ==
                    batch.observations.max(1)).all()
            for key in zip(batch.episode_ids.tolist(),
                           batch.prior_steps.tolist()):
                assert key not in seen, f'segment {key} returned twice'
                seen.add(key)
            checked += 1
        # A kill or hang between calls is found by the next call: one
        # more call makes every one a restart (a hang armed last, not yet
        # met, is disarmed first).
        if os.path.exists(os.path.join(folder, 'hang')):
            os.unlink(os.path.join(folder, 'hang'))
            armed -= 1
        s.obtain_samples(10)
        s.obtain_samples(10)
        hung = len([f for f in os.listdir(folder) if f.startswith('hung-')])
        hangs = s.stats['worker_hangs']
        assert s.stats['worker_restarts'] == len(kills) + hangs
        # Every hang met was found, but for those a kill found first.
        assert hung == armed
        killed_hung = hung - hangs
        assert 0 <= killed_hung <= len(kills)
    finally:
        signal.signal(signal.SIGINT, previous)
        s.close()
    print(f'{calls} calls: {checked} checked, {interrupts} interrupted, '
          f'{len(kills)} kills, {hangs} hangs')
    assert kills and interrupts and hangs and checked > calls // 2
