"""EnvStepWorker steps its share of a vector env's envs as gymnasium's
SyncVectorEnv steps them, in every autoreset mode."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from helpers import InfoEnv, assert_same_nest as assert_same
from workers.env_stepper import (EnvFns, EnvStepWorker, batch_infos,
                                 batch_rows)


def env_fns(n, make=InfoEnv):
    return [lambda: make() for _ in range(n)]


def workers_for(n, shares, mode):
    """EnvStepWorkers holding envs 0..n-1 in shares of the given sizes."""
    out, first = [], 0
    for k, size in enumerate(shares):
        w = EnvStepWorker(seed=0, max_episode_length=None, worker_number=k,
                          autoreset_mode=mode)
        w.update_env(EnvFns(env_fns(size), first_index=first))
        out.append(w)
        first += size
    assert first == n
    return out


def joined(parts):
    """Per-env lists of every worker's results, in env order."""
    return [sum((list(p[k]) for p in parts), []) for k in range(len(
        parts[0]))]


@pytest.mark.parametrize('mode', list(AutoresetMode))
@pytest.mark.parametrize('make', [InfoEnv, lambda: gym.make(
    'CartPole-v1', max_episode_steps=12)], ids=['InfoEnv', 'CartPole'])
def test_steps_equal_sync_vector_envs_in_every_autoreset_mode(mode, make):
    n = 5
    sync = SyncVectorEnv([lambda: make() for _ in range(n)],
                         autoreset_mode=mode)
    workers = workers_for(n, [3, 2], mode)
    for w in workers:
        w.update_env(EnvFns([lambda: make()] * w.n_envs, w.first_index))
    theirs = sync.reset(seed=7, options={'tag': 1})
    parts = [w.reset_envs([7 + w.first_index + j for j in range(w.n_envs)],
                          {'tag': 1}) for w in workers]
    obs, infos = joined(parts)
    assert_same(batch_rows(sync, obs), theirs[0])
    assert_same(batch_infos(sync, infos), theirs[1])
    rng = np.random.default_rng(0)
    ended_seen = 0
    for _ in range(60):
        actions = rng.integers(0, 2 if make is not InfoEnv else 3, n)
        theirs = sync.step(actions)
        parts = [w.step_envs(list(actions[w.first_index:
                                          w.first_index + w.n_envs]))
                 for w in workers]
        obs, rewards, term, trunc, infos, finals = joined(parts)
        assert_same(batch_rows(sync, obs), theirs[0])
        np.testing.assert_array_equal(np.array(rewards, np.float64),
                                      theirs[1])
        np.testing.assert_array_equal(np.array(term, bool), theirs[2])
        np.testing.assert_array_equal(np.array(trunc, bool), theirs[3])
        assert_same(batch_infos(sync, infos, finals), theirs[4])
        ended = theirs[2] | theirs[3]
        ended_seen += int(ended.sum())
        if mode is AutoresetMode.DISABLED and ended.any():
            mask = ended.copy()
            theirs = sync.reset(options={'reset_mask': mask.copy()})
            parts = [w.reset_envs(None, {}, mask[w.first_index:
                                                 w.first_index + w.n_envs])
                     for w in workers]
            obs, infos = joined(parts)
            assert_same(batch_rows(sync, obs), theirs[0])
            assert_same(batch_infos(sync, infos), theirs[1])
    assert ended_seen > 10  # every path was taken many times
    sync.close()
    for w in workers:
        w.shutdown()


def test_disabled_mode_refuses_to_step_an_ended_env_and_says_how():
    (w,) = workers_for(1, [1], AutoresetMode.DISABLED)
    w.reset_envs([0])
    with pytest.raises(ValueError, match=r'env 0 ended its episode.*'
                                         r'reset_mask'):
        for _ in range(20):
            w.step_envs([1])
    assert w.error_site == 'env.step of env 0' and w.error_env == 0


def test_errors_name_the_env_that_raised():
    class Breaks(InfoEnv):
        def step(self, action):
            raise RuntimeError('broken')

    w = EnvStepWorker(seed=0, max_episode_length=None, worker_number=1)
    w.update_env(EnvFns([InfoEnv, Breaks], first_index=4))
    w.reset_envs()
    with pytest.raises(RuntimeError, match='broken'):
        w.step_envs([0, 0])
    assert (w.error_site, w.error_env) == ('env.step of env 5', 5)


def test_what_is_no_env_is_refused_by_index():
    w = EnvStepWorker(seed=0, max_episode_length=None, worker_number=0)
    with pytest.raises(TypeError, match=r'env_fns\[1\] returned 5'):
        w.update_env(EnvFns([InfoEnv, lambda: 5]))
    with pytest.raises(TypeError, match=r'env_fns\[0\] is 3'):
        EnvFns([3])
    with pytest.raises(ValueError, match='autoreset_mode must be'):
        EnvStepWorker(seed=0, max_episode_length=None, worker_number=0,
                      autoreset_mode='sometimes')


def test_call_get_and_set_attributes_of_each_env():
    (w,) = workers_for(3, [3], AutoresetMode.NEXT_STEP)
    w.set_env_attrs('level', [1, 2, 3])
    assert w.call_envs('level') == [1, 2, 3]
    w.reset_envs([0, 1, 2])
    assert w.call_envs('observation_space') == [InfoEnv.observation_space] * 3
    assert w.call_envs('level', how='get', indices=[2, 0]) == [3, 1]
    assert w.call_envs('level', how='has') == [True] * 3
    assert w.call_envs('nothing', how='has') == [False] * 3
    assert w.call_envs('', (gym.Wrapper,), how='is_wrapped') == [False] * 3
    w.set_env_attrs('level', [7], outer=True, indices=[1])
    assert w.call_envs('level') == [1, 7, 3]
    with pytest.raises(IndexError, match='ints from 0 to 2, got 3'):
        w.call_envs('level', indices=[3])
    steps = w.call_envs('step', (2,))
    assert [s[1] for s in steps] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match='2 values for 3 envs'):
        w.set_env_attrs('level', [1, 2])


class _Rows:
    """What share_rows takes: rows the worker writes observations into."""

    def __init__(self, rows, first_row):
        self.rows, self.first_row = rows, first_row
        self.closed = False

    def close(self):
        self.closed = True


def test_some_envs_step_alone_and_their_rows_are_written_in_place():
    n = 4
    sync = SyncVectorEnv(env_fns(n))
    worker, = workers_for(n, [n], AutoresetMode.NEXT_STEP)
    rows = np.zeros((n, 3), np.float32)
    worker.share_rows(_Rows(rows, first_row=8))
    theirs, _ = sync.reset(seed=2)
    reset = worker.reset_envs([2, 3, 4, 5])
    assert tuple(reset[0]) == (8, None)  # written: all rows, in order
    np.testing.assert_array_equal(rows, theirs)
    rng = np.random.default_rng(3)
    for _ in range(20):
        actions = rng.integers(0, 3, n)
        theirs = sync.step(actions)
        # The envs step in two groups, the second first: the same result.
        second = worker.step_envs(list(actions[[3, 2]]), [3, 2])
        first = worker.step_envs(list(actions[:2]), [0, 1])
        assert tuple(second[0]) == (8, [3, 2])
        np.testing.assert_array_equal(rows, theirs[0])
        np.testing.assert_array_equal(second[1] + first[1][::-1],
                                      theirs[1][[3, 2, 1, 0]])
        np.testing.assert_array_equal(first[2] + second[2][::-1],
                                      theirs[2])
    with pytest.raises(IndexError, match='from 0 to 3'):
        worker.step_envs([0], [4])
    with pytest.raises(ValueError, match='1 actions for 2 envs'):
        worker.step_envs([0], [0, 1])
    sync.close()
    worker.shutdown()
