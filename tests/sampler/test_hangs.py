"""step_timeout: a worker whose env or agent call runs longer is found,
named (worker, env, call, how long, its stack) and killed, and with
on_worker_error="restart" replaced while the call completes from the
others; LocalSampler raises and stays broken. Slow workers, idle ones
and paused streams are not hung."""

import functools
import os
import pickle
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from helpers import closing_samplers
from sampler import (BrokenSamplerError, LocalSampler,
                     SamplerTimeoutError, WorkerError, WorkerHungError)
from sampler.vector import AsyncVectorEnv

pytestmark = pytest.mark.timeout(120)

#: The step_timeout of these tests: short, but long enough that a busy
#: machine does not take a slow step for a hang.
LIMIT = 1.0


def _hang(how):
    """Never return: in Python (a loop of short sleeps, which an
    in-process watchdog can interrupt) or blocked in C."""
    if how == 'c':
        threading.Event().wait()
    while True:
        time.sleep(0.02)  # the hang is here


def _first_time(marker):
    """True for the first caller anywhere (None: for every caller)."""
    if marker is None:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


class HangingEnv(gym.Env):
    """Short episodes; hangs in ``where`` ('step' or 'reset') at its
    ``at``-th call of it (only the first instance anywhere that gets
    there, given a ``marker`` path)."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, where='step', at=10, marker=None, how='python',
                 seconds_per_step=0.0):
        self.where, self.at, self.marker, self.how = where, at, marker, how
        self.seconds_per_step = seconds_per_step
        self.calls = 0
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._maybe_hang('reset')
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self._maybe_hang('step')
        if self.seconds_per_step:
            time.sleep(self.seconds_per_step)
        self.t += 1
        obs = np.full(2, self.t / 10, np.float32)
        return obs, 1.0, self.t >= 5, False, {}

    def _maybe_hang(self, where):
        if where != self.where:
            return
        self.calls += 1
        if self.calls == self.at and _first_time(self.marker):
            _hang(self.how)


class HangingAgent:
    """Acts 0; hangs in ``get_action`` at its ``at``-th call (the first
    instance anywhere, given a ``marker``)."""

    def __init__(self, at=10, marker=None):
        self.at, self.marker, self.calls = at, marker, 0

    def get_action(self, observation):
        self.calls += 1
        if self.calls == self.at and _first_time(self.marker):
            _hang('python')
        return 0, {}


def _setup(where, marker):
    """(agent, [env of worker 0, env of worker 1]): worker 0's hangs in
    ``where`` ('step', 'reset' or 'get_action')."""
    if where == 'get_action':
        return HangingAgent(at=12, marker=marker), [
            functools.partial(HangingEnv, 'none')] * 2
    return HangingAgent(at=10 ** 9), [
        functools.partial(HangingEnv, where, 3 if where == 'reset' else 12,
                          marker),
        functools.partial(HangingEnv, 'none')]


SITES = {'step': 'env.step', 'reset': 'env.reset',
         'get_action': 'agent.get_action'}


@pytest.mark.parametrize('where', sorted(SITES))
def test_hung_call_raises_naming_worker_call_and_stack(backend, where,
                                                       tmp_path):
    # on_worker_error="raise": the call raises once the worker has hung
    # for step_timeout, and the sampler is broken after it.
    agent, envs = _setup(where, str(tmp_path / 'hung'))
    with closing_samplers(backend) as make:
        # Each worker's agent is its own copy: only worker 0's hangs.
        agents = [agent, HangingAgent(at=10 ** 9)]
        s = make(agents, envs, seed=0, step_timeout=LIMIT)
        started = time.monotonic()
        with pytest.raises(WorkerHungError) as info:
            s.obtain_samples(2000)
        took = time.monotonic() - started
        err = info.value
        assert isinstance(err, WorkerError)
        assert err.worker_number == 0
        assert err.site == SITES[where]
        assert err.env_index == 0 and err.env_name == 'its env 0'
        assert LIMIT <= err.seconds < LIMIT + 5
        assert err.step_timeout == LIMIT
        assert f'worker 0 hung in {SITES[where]} (its env 0) during ' \
               f'obtain_samples(2000)' in str(err)
        # Where it hung, with the line of the user's code.
        assert 'in _hang' in err.worker_traceback
        assert 'the hang is here' in err.worker_traceback
        assert 'the hang is here' in str(err.__cause__)
        assert LIMIT <= took < LIMIT + 10
        assert s.stats['worker_hangs'] == 1
        with pytest.raises(BrokenSamplerError):
            s.obtain_samples(10)


@pytest.mark.parametrize('where', sorted(SITES))
def test_hung_worker_is_replaced_and_the_call_completes(process_backend,
                                                        where, tmp_path):
    agent, envs = _setup(where, str(tmp_path / 'hung'))
    with closing_samplers(process_backend) as make:
        s = make([agent, HangingAgent(at=10 ** 9)], envs, seed=0,
                 step_timeout=LIMIT, on_worker_error='restart')
        seen = set()
        for call in range(4):
            batch = s.obtain_samples(400, timeout=30)
            assert len(batch) >= 400
            # Whole episodes only: none of the hung worker's comes back
            # half done.
            for episode in batch.split():
                assert len(episode) == 5
                assert episode.terminated[-1]
                np.testing.assert_allclose(
                    episode.observations[:, 0], np.arange(5) / 10)
            ids = batch.episode_ids.tolist()
            assert len(set(ids)) == len(ids) and not seen & set(ids)
            seen.update(ids)
        assert s.stats['worker_hangs'] == 1
        assert s.stats['worker_restarts'] == 1
        assert s.stats['lost_episodes'] == 1
        assert len(s.worker_pids()) == 2


def test_hang_blocked_in_c_is_killed_and_replaced(process_backend,
                                                  tmp_path):
    # No Python runs in the hung worker: the caller reads its pulse, and
    # kills it all the same.
    envs = [functools.partial(HangingEnv, 'step', 12,
                              str(tmp_path / 'hung'), 'c'),
            functools.partial(HangingEnv, 'none')]
    with closing_samplers(process_backend) as make:
        s = make(HangingAgent(at=10 ** 9), envs, seed=0,
                 step_timeout=LIMIT, on_worker_error='restart')
        started = time.monotonic()
        batch = s.obtain_samples(300, timeout=30)
        assert len(batch) >= 300
        assert s.stats['worker_hangs'] == 1
        assert time.monotonic() - started < LIMIT + 15


def test_local_sampler_raises_even_with_restart(tmp_path):
    # In the caller's process a hung call cannot be killed: no healing.
    agent, envs = _setup('step', str(tmp_path / 'hung'))
    with closing_samplers(LocalSampler) as make:
        s = make(agent, envs, seed=0, step_timeout=LIMIT,
                 on_worker_error='restart')
        with pytest.raises(WorkerHungError, match='cannot be killed'):
            s.obtain_samples(2000)
        assert s.stats['worker_restarts'] == 0
        with pytest.raises(BrokenSamplerError):
            s.obtain_samples(10)


def test_slow_steps_idle_workers_and_paused_streams_are_not_hung(backend):
    # Steps of 0.3 s make 1.5 s episodes, longer than step_timeout: each
    # call returns, so the worker is not hung. Idle between calls, and
    # paused by a stream's budget, neither is it.
    env = functools.partial(HangingEnv, 'none', seconds_per_step=0.3)
    with closing_samplers(backend) as make:
        s = make(HangingAgent(at=10 ** 9), [env, env], seed=0,
                 step_timeout=LIMIT)
        assert len(s.obtain_samples(10)) >= 10
        time.sleep(2.5 * LIMIT)
        assert len(s.obtain_samples(10)) >= 10
        stream = s.stream(5, budget=5)
        next(stream)
        time.sleep(2.5 * LIMIT)
        next(stream)
        stream.close()
        assert s.stats['worker_hangs'] == 0


@pytest.mark.parametrize('value', [0, -1, 'soon', True])
def test_bad_step_timeout_is_refused(backend, value):
    with pytest.raises(ValueError, match='step_timeout must be None or a '
                                         'number of seconds > 0'):
        backend(HangingAgent(), HangingEnv, n_workers=1,
                step_timeout=value)


def test_worker_hung_error_pickles():
    err = WorkerHungError(3, 'env.step', 1, 2.5, 2.0, 'stack', 'step()',
                          'env 7')
    again = pickle.loads(pickle.dumps(err))
    assert (again.worker_number, again.site, again.env_index, again.seconds,
            again.step_timeout, again.worker_traceback, again.call,
            again.env_name) == (3, 'env.step', 1, 2.5, 2.0, 'stack',
                                'step()', 'env 7')
    assert str(again) == str(err)


def _vector_envs(tmp_path, where):
    fine = functools.partial(HangingEnv, 'none')
    # At its 4th step, or its 2nd reset (after its first episode).
    hangs = functools.partial(HangingEnv, where, 4 if where == 'step' else 2,
                              str(tmp_path / 'hung'))
    return [fine, fine, fine, hangs]


def test_vector_env_hung_step_raises_naming_the_env(vector_backend,
                                                    tmp_path):
    envs = AsyncVectorEnv(_vector_envs(tmp_path, 'step'), n_workers=2,
                          backend=vector_backend, step_timeout=LIMIT)
    try:
        envs.reset(seed=0)
        with pytest.raises(WorkerHungError) as info:
            for _ in range(10):
                envs.step(np.zeros(4, np.int64))
    finally:
        envs.close()
    err = info.value
    assert err.worker_number == 1 and err.site == 'env.step'
    # The vector env's own index of the env.
    assert err.env_name == 'env 3'
    assert 'worker 1 hung in env.step (env 3)' in str(err)
    assert 'the hang is here' in err.worker_traceback


@pytest.mark.parametrize('where', ['step', 'reset'])
def test_vector_env_hung_worker_is_replaced(process_backend, where,
                                            tmp_path):
    backend = 'ray' if process_backend.__name__ == 'RaySampler' \
        else 'multiprocessing'
    envs = AsyncVectorEnv(_vector_envs(tmp_path, where), n_workers=2,
                          backend=backend, step_timeout=LIMIT,
                          on_worker_error='restart')
    try:
        envs.reset(seed=0)
        restarted_at = []
        for t in range(12):
            obs, rewards, terminated, truncated, infos = envs.step(
                np.zeros(4, np.int64))
            if infos.get('_worker_restarted', np.zeros(4, bool)).any():
                restarted_at.append(t)
                # Worker 1's envs (2 and 3) come back truncated, reward 0.
                np.testing.assert_array_equal(
                    infos['_worker_restarted'], [False, False, True, True])
                np.testing.assert_array_equal(truncated[2:], [True, True])
                np.testing.assert_array_equal(rewards[2:], [0.0, 0.0])
        assert len(restarted_at) == 1
        assert envs._workers.sampler.stats['worker_hangs'] == 1
    finally:
        envs.close()


# A call that times out heals too (on_worker_error="restart", no
# step_timeout).


def test_a_timed_out_call_replaces_the_hung_worker(process_backend,
                                                   tmp_path):
    # Worker 0's env hangs at its 40th step; the call held up by it
    # replaces it and returns what it holds, and the next calls go on.
    # Worker 1's steps take 5 ms, so that it cannot make the call's 200
    # transitions alone before worker 0 gets there (on a loaded machine
    # worker 0 may be slow to begin).
    envs = [functools.partial(HangingEnv, 'step', 40,
                              str(tmp_path / 'hung')),
            functools.partial(HangingEnv, 'none', seconds_per_step=0.005)]
    with closing_samplers(process_backend) as make:
        s = make(HangingAgent(at=10 ** 9), envs, seed=0,
                 on_worker_error='restart')
        started = time.monotonic()
        batch = s.obtain_samples(200, timeout=3)
        assert len(batch) >= 200
        assert 3 <= time.monotonic() - started < 3 + 10
        assert s.stats['worker_hangs'] == 1
        assert s.stats['worker_restarts'] == 1
        for _ in range(3):
            assert len(s.obtain_samples(200, timeout=3)) >= 200
        assert s.stats['worker_restarts'] == 1


def test_a_timed_out_call_says_why_a_slow_worker_stays(process_backend):
    # Steps of 0.3 s: each call of the env returns, so the worker holding
    # up the call is slow, not hung, and stays.
    env = functools.partial(HangingEnv, 'none', seconds_per_step=0.3)
    with closing_samplers(process_backend) as make:
        s = make(HangingAgent(at=10 ** 9), [env, env], seed=0,
                 on_worker_error='restart')
        with pytest.raises(SamplerTimeoutError, match=(
                r'still stepping \(a call of its returned \d\.\d s ago\), '
                r'so not replaced: raise timeout=, or set step_timeout=')):
            s.obtain_exact_episodes(3, timeout=2)
        assert s.stats['worker_restarts'] == 0
        assert s.stats['worker_hangs'] == 0
