"""sampler.vector.AsyncVectorEnv behaves as gymnasium's vector envs do:
step for step what SyncVectorEnv returns, gymnasium's errors for calls out
of order, and errors from the envs that name where they came from."""

import copy
import functools
import multiprocessing
import os
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import (AlreadyPendingCallError,
                             ClosedEnvironmentError, NoAsyncCallError)
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from helpers import CrashEnv, FaultyEnv, InfoEnv, SleepyEnv, assert_same_nest
from sampler import WorkerCrashedError, WorkerError
from sampler.vector import AsyncVectorEnv, shares

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def make_vector():
    made = []

    def make(env_fns, **options):
        env = AsyncVectorEnv(env_fns, **options)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def assert_same_step(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert_same_nest(a, b)


def test_envs_are_spread_over_the_workers_in_order():
    assert shares(5, 2) == [(0, 3), (3, 2)]
    assert shares(4, 4) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert shares(7, 3) == [(0, 3), (3, 2), (5, 2)]


@pytest.mark.parametrize('mode', list(AutoresetMode))
def test_steps_equal_sync_vector_envs(vector_backend, mode, make_vector):
    n = 5
    fns = [InfoEnv] * n
    ours = make_vector(fns, autoreset_mode=mode, n_workers=2,
                       backend=vector_backend)
    sync = SyncVectorEnv(fns, autoreset_mode=mode)
    assert ours.metadata == sync.metadata
    assert ours.single_observation_space == sync.single_observation_space
    assert ours.action_space == sync.action_space
    assert_same_step(ours.reset(seed=11, options={'tag': 2}),
                     sync.reset(seed=11, options={'tag': 2}))
    rng = np.random.default_rng(1)
    ends = 0
    for _ in range(40):
        actions = rng.integers(0, 3, n)
        theirs = sync.step(actions)
        assert_same_step(ours.step(actions), theirs)
        ended = theirs[2] | theirs[3]
        ends += int(ended.sum())
        if mode is AutoresetMode.DISABLED and ended.any():
            assert_same_step(
                ours.reset(options={'reset_mask': ended.copy()}),
                sync.reset(options={'reset_mask': ended.copy()}))
    assert ends > 10
    sync.close()


def test_an_envs_error_raises_its_own_type_naming_env_and_worker(
        make_vector):
    fine = lambda: FaultyEnv('none')  # noqa: E731
    envs = make_vector([fine, fine, lambda: FaultyEnv(
        'step', after=2, message='bad action'), fine], n_workers=2)
    envs.reset(seed=0)
    envs.step(np.zeros(4, np.int64))
    envs.step(np.zeros(4, np.int64))
    with pytest.raises(RuntimeError) as info:
        envs.step(np.zeros(4, np.int64))
    err = info.value
    assert isinstance(err, WorkerError)
    assert err.worker_number == 1 and err.site == 'env.step of env 2'
    assert 'worker 1 failed in env.step of env 2' in str(err)
    assert 'step_wait()' in str(err) and 'bad action' in str(err)
    assert 'raise RuntimeError(self.message)' in err.worker_traceback


def test_a_dead_worker_is_a_crash_error_not_a_hang(make_vector):
    envs = make_vector([lambda: FaultyEnv('none'),
                        lambda: CrashEnv('exit', after=1)], n_workers=2)
    envs.reset(seed=0)
    envs.step(np.zeros(2, np.int64))
    with pytest.raises(WorkerCrashedError, match='worker 1'):
        envs.step(np.zeros(2, np.int64))


def test_calls_out_of_order_raise_gymnasiums_errors(make_vector):
    envs = make_vector([InfoEnv] * 3, n_workers=2)
    with pytest.raises(NoAsyncCallError):
        envs.step_wait()
    envs.reset_async(seed=0)
    with pytest.raises(AlreadyPendingCallError):
        envs.step_async(np.zeros(3, np.int64))
    with pytest.raises(NoAsyncCallError):
        envs.step_wait()
    envs.reset_wait()
    envs.close()
    envs.close()  # a second close does nothing
    assert envs.closed
    with pytest.raises(ClosedEnvironmentError):
        envs.reset()


def test_a_timed_out_wait_stays_pending_and_can_be_waited_again(
        make_vector):
    envs = make_vector([lambda: SleepyEnv(0.5)] * 2, n_workers=2)
    envs.reset(seed=0)
    envs.step_async(np.zeros(2, np.int64))
    with pytest.raises(multiprocessing.TimeoutError, match='still pending'):
        envs.step_wait(timeout=0.05)
    with pytest.raises(AlreadyPendingCallError):
        envs.step_async(np.zeros(2, np.int64))
    obs, rewards, *_ = envs.step_wait(timeout=10)
    assert rewards.tolist() == [1.0, 1.0]


class SlowCountEnv(gym.Env):
    """Each step takes ``delay`` seconds; observations count the steps."""

    observation_space = gym.spaces.Box(0, 1000, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, delay=0.3):
        self.delay = delay

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        time.sleep(self.delay)
        self._t += 1
        return np.full(1, self._t, np.float32), 0.0, False, False, {}


def test_a_caught_ctrl_c_leaves_the_step_pending_and_nothing_stale(
        make_vector, ctrl_c):
    envs = make_vector([SlowCountEnv] * 2, n_workers=2)
    envs.reset(seed=0)
    envs.step_async(np.zeros(2, np.int64))
    ctrl_c(0.1)
    with pytest.raises(KeyboardInterrupt):
        envs.step_wait()
    with pytest.raises(AlreadyPendingCallError):
        envs.step_async(np.zeros(2, np.int64))
    assert envs.step_wait()[0].ravel().tolist() == [1, 1]
    assert envs.step(np.zeros(2, np.int64))[0].ravel().tolist() == [2, 2]


def test_bad_arguments_are_refused_before_any_worker_starts():
    with pytest.raises(ValueError, match='takes no custom worker'):
        AsyncVectorEnv([InfoEnv], worker=lambda *a: None)
    with pytest.raises(ValueError, match='n_workers must be an int from 1 '
                                         'to num_envs=2, got 3'):
        AsyncVectorEnv([InfoEnv] * 2, n_workers=3)
    with pytest.raises(ValueError, match='autoreset_mode must be'):
        AsyncVectorEnv([InfoEnv], autoreset_mode='sometimes')
    with pytest.raises(ValueError, match='backend must be'):
        AsyncVectorEnv([InfoEnv], backend='threads')


def test_disabled_mode_refuses_to_step_ended_envs_in_the_caller(
        make_vector):
    envs = make_vector([InfoEnv] * 2, n_workers=2,
                       autoreset_mode=AutoresetMode.DISABLED)
    envs.reset(seed=0)
    for _ in range(20):
        _, _, term, trunc, _ = envs.step(np.zeros(2, np.int64))
        if (term | trunc).any():
            break
    with pytest.raises(ValueError, match=r'reset them first.*reset_mask'):
        envs.step(np.zeros(2, np.int64))
    envs.reset(options={'reset_mask': term | trunc})
    envs.step(np.zeros(2, np.int64))  # the env is usable again


def test_call_get_set_attributes_and_copy(make_vector):
    fns = [lambda: gym.make('CartPole-v1')] * 3
    envs = make_vector(fns, n_workers=2, copy=False)
    sync = SyncVectorEnv(fns)
    assert envs.get_attr('spec')[2].id == 'CartPole-v1'
    envs.set_attr('level', [1, 2, 3])
    assert envs.get_attr('level') == (1, 2, 3)
    envs.set_attr('level', 7)
    assert envs.call('level') == (7, 7, 7)
    first, _ = envs.reset(seed=0)
    second, *_ = envs.step(np.zeros(3, np.int64))
    assert second is first  # copy=False: the vector env's own array
    sync.reset(seed=0)
    assert_same_nest(second, sync.step(np.zeros(3, np.int64))[0])
    sync.close()


@pytest.mark.parametrize('shared_memory', [True, False])
def test_observations_come_through_shared_memory_unless_told_not_to(
        shared_memory, make_vector):
    fns = [lambda: gym.make('CartPole-v1')] * 5
    envs = make_vector(fns, n_workers=2, copy=False,
                       shared_memory=shared_memory)
    sync = SyncVectorEnv(fns)
    rows = envs._workers.shared_rows
    assert (rows is not None) == (shared_memory and
                                  hasattr(os, 'memfd_create'))
    assert_same_step(envs.reset(seed=3), sync.reset(seed=3))
    rng = np.random.default_rng(0)
    for _ in range(40):  # episodes end and reset on the way
        actions = rng.integers(0, 2, 5)
        step = envs.step(actions)
        assert_same_step(step, sync.step(actions))
        # copy=False hands out the rows the workers write, no copy made.
        assert (step[0] is rows) == shared_memory
    copied = make_vector(fns, n_workers=2, shared_memory=shared_memory)
    first, _ = copied.reset(seed=3)
    second, *_ = copied.step(np.ones(5, np.int64))
    assert not np.shares_memory(first, second)  # copy=True: the caller's own
    assert_same_nest(first, sync.reset(seed=3)[0])
    sync.close()


class SpaceEnv(gym.Env):
    """Observations drawn from ``observation_space`` (seeded at reset),
    rewards that depend on the action, episodes of 2 to 5 steps."""

    def __init__(self, observation_space, action_space):
        # Its own spaces: their random draws are the env's.
        self.observation_space = copy.deepcopy(observation_space)
        self.action_space = copy.deepcopy(action_space)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(1 << 30)))
        self._t, self._length = 0, int(self.np_random.integers(2, 6))
        return self.observation_space.sample(), {'length': self._length}

    def step(self, action):
        assert self.action_space.contains(action), action
        self._t += 1
        done = self._t >= self._length
        reward = float(len(repr(action)) % 7) + self._t
        return (self.observation_space.sample(), reward,
                done and self._t % 2 == 0, done and self._t % 2 == 1,
                {'t': self._t})


SPACES = {
    'box': gym.spaces.Box(-1, 1, (2, 3), np.float32),
    'box-float16': gym.spaces.Box(-1, 1, (3,), np.float16),
    'discrete': gym.spaces.Discrete(5, start=-2),
    'multi-discrete': gym.spaces.MultiDiscrete([2, 3, 4]),
    'multi-binary': gym.spaces.MultiBinary(4),
    'dict': gym.spaces.Dict({
        'position': gym.spaces.Box(0, 1, (2,)),
        'inner': gym.spaces.Dict({'k': gym.spaces.Discrete(3)}),
        'bits': gym.spaces.MultiBinary(2)}),
    'tuple': gym.spaces.Tuple((gym.spaces.Discrete(2),
                               gym.spaces.Box(-1, 1, (1,)),
                               gym.spaces.MultiDiscrete([3, 3]))),
    'text (no arrays)': gym.spaces.Text(6),
}


@pytest.mark.parametrize('name', list(SPACES))
def test_every_kind_of_space_steps_as_in_sync_vector_env(
        name, vector_backend, make_vector):
    space = SPACES[name]
    fns = [lambda: SpaceEnv(space, space)] * 4
    ours = make_vector(fns, n_workers=2, backend=vector_backend,
                       autoreset_mode=AutoresetMode.SAME_STEP)
    sync = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    assert ours.observation_space == sync.observation_space
    assert ours.action_space == sync.action_space
    assert_same_step(ours.reset(seed=5), sync.reset(seed=5))
    sync.action_space.seed(0)
    ends = 0
    for _ in range(12):
        actions = sync.action_space.sample()
        theirs = sync.step(actions)
        assert_same_step(ours.step(actions), theirs)
        ends += int((theirs[2] | theirs[3]).sum())
    assert ends >= 4  # final observations of this space were merged too
    sync.close()


def box_env(high, action_space=gym.spaces.Discrete(2)):
    space = gym.spaces.Box(0, high, (5,), np.float32)
    return lambda: SpaceEnv(space, action_space)


def test_different_observation_spaces_batch_as_gymnasium_batches_them(
        make_vector):
    fns = [box_env(high) for high in (1, 2, 3)]
    ours = make_vector(fns, n_workers=2, observation_mode='different')
    sync = SyncVectorEnv(fns, observation_mode='different')
    assert ours.observation_space == sync.observation_space
    assert ours.single_observation_space == sync.single_observation_space
    assert_same_step(ours.reset(seed=1), sync.reset(seed=1))
    for _ in range(6):
        assert_same_step(ours.step(np.ones(3, np.int64)),
                         sync.step(np.ones(3, np.int64)))
    sync.close()


def test_envs_whose_spaces_differ_are_refused_naming_the_env():
    # Env 2 runs on the second worker: the check spans the workers.
    with pytest.raises(RuntimeError, match=r"env 2 has the observation_space"
                                           r".*observation_mode='different'"):
        AsyncVectorEnv([box_env(1), box_env(1), box_env(2)], n_workers=2)
    with pytest.raises(RuntimeError, match=r'env 2 has the action_space '
                                           r'Discrete\(3\), but env 0 has '
                                           r'Discrete\(2\)'):
        AsyncVectorEnv([box_env(1), box_env(1),
                        box_env(1, gym.spaces.Discrete(3))],
                       n_workers=2, observation_mode='different')
    with pytest.raises(ValueError, match='observation_mode must be "same", '
                                         '"different" or'):
        AsyncVectorEnv([box_env(1)], observation_mode='invalid')


class MixedInfoEnv(gym.Env):
    """Infos that test how they are merged across workers: a key whose
    first value is an int on one env and a float on a later one, strings,
    nested dicts, arrays, a key starting with an underscore, keys that
    only some envs have at some steps."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, index):
        self.index = index

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(2, np.float32), {'start': self.index}

    def step(self, action):
        self._t += 1
        t, i = self._t, self.index
        info = {'kind': 2.5 * t if i >= 3 else t, '_private': i}
        if (t + i) % 2:
            info['name'] = f'env {i}'
            info['nested'] = {'a': np.float32(t), 'b': np.full(2, i)}
        if i % 3 == 0:
            info['vec'] = np.arange(3) * t
        done = t >= 2 + i % 3
        return (np.full(2, 0.1 * t, np.float32), 1.0, done and i % 2 == 0,
                done and i % 2 == 1, info)


@pytest.mark.parametrize('mode', list(AutoresetMode))
def test_infos_merge_across_workers_as_gymnasium_merges_them(
        mode, make_vector):
    fns = [functools.partial(MixedInfoEnv, i) for i in range(6)]
    ours = make_vector(fns, n_workers=3, autoreset_mode=mode)
    sync = SyncVectorEnv(fns, autoreset_mode=mode)
    assert_same_step(ours.reset(seed=0), sync.reset(seed=0))
    for _ in range(8):
        theirs = sync.step(np.ones(6, np.int64))
        assert_same_step(ours.step(np.ones(6, np.int64)), theirs)
        ended = theirs[2] | theirs[3]
        if mode is AutoresetMode.DISABLED and ended.any():
            assert_same_step(
                ours.reset(options={'reset_mask': ended.copy()}),
                sync.reset(options={'reset_mask': ended.copy()}))
    sync.close()


def test_send_and_recv_return_the_envs_that_are_ready_first(make_vector):
    # Worker 1's envs are slow: with batch_size 2, worker 0's come first.
    fns = [lambda: SlowCountEnv(0.0)] * 2 + [lambda: SlowCountEnv(0.3)] * 2
    envs = make_vector(fns, n_workers=2, batch_size=2)
    sync = SyncVectorEnv(fns)
    envs.reset(seed=0)
    sync.reset(seed=0)
    envs.send(np.zeros(4, np.int64))
    obs, rewards, term, trunc, infos = envs.recv()
    assert infos['env_id'].tolist() == [0, 1]
    assert obs.ravel().tolist() == [1, 1]
    with pytest.raises(AlreadyPendingCallError, match='still stepping'):
        envs.send(np.zeros(2, np.int64), env_ids=[2, 3])
    with pytest.raises(AlreadyPendingCallError):
        envs.step(np.zeros(4, np.int64))  # not while envs are in flight
    envs.send(np.zeros(2, np.int64), env_ids=infos['env_id'])
    obs, *_, infos = envs.recv()  # the fast ones again: the slow still step
    assert infos['env_id'].tolist() == [0, 1]
    assert obs.ravel().tolist() == [2, 2]
    obs, *_, infos = envs.recv()
    assert infos['env_id'].tolist() == [2, 3]
    assert obs.ravel().tolist() == [1, 1]
    with pytest.raises(NoAsyncCallError, match='send` first'):
        envs.recv()
    with pytest.raises(ValueError, match='whole number of groups'):
        envs.send(np.zeros(1, np.int64), env_ids=[1])
    # All sent, all received: lock-step calls work again.
    envs.send(np.zeros(4, np.int64))
    envs.recv()
    envs.recv()
    assert envs.step(np.zeros(4, np.int64))[0].ravel().tolist() == [4, 4, 3, 3]


def test_envs_received_but_not_yet_returned_by_recv_are_still_busy(
        make_vector):
    envs = make_vector([InfoEnv] * 4, n_workers=2, batch_size=2)
    envs.reset(seed=0)
    envs.send(np.zeros(4, np.int64))
    time.sleep(0.5)  # both workers' results arrive in one wait
    first = envs.recv()[4]['env_id'].tolist()
    later = sorted({0, 1, 2, 3} - set(first))
    with pytest.raises(AlreadyPendingCallError, match='still stepping'):
        envs.send(np.zeros(2, np.int64), env_ids=later)
    assert envs.recv()[4]['env_id'].tolist() == later
    envs.send(np.zeros(2, np.int64), env_ids=later)  # now it may


@pytest.mark.parametrize('n_envs, batch_size', [(4, 2), (8, 2), (8, 1)],
                         ids=['whole shares', 'groups of 2', 'groups of 1'])
def test_send_and_recv_step_as_sync_vector_env_does(
        n_envs, batch_size, vector_backend, make_vector):
    # n_envs on 2 workers, recv'd batch_size at a time: below a worker's
    # share, each worker steps its envs in groups of batch_size, one after
    # the other, so that it has the next group to step while the learner
    # acts on the last.
    fns = [InfoEnv] * n_envs
    ours = make_vector(fns, n_workers=2, batch_size=batch_size,
                       backend=vector_backend)
    sync = SyncVectorEnv(fns)
    ours.reset(seed=5)
    sync.reset(seed=5)
    rng = np.random.default_rng(1)
    for _ in range(12):
        actions = rng.integers(0, 3, n_envs)
        theirs = sync.step(actions)
        ours.send(actions)
        parts = [ours.recv() for _ in range(n_envs // batch_size)]
        assert all(len(p[4]['env_id']) == batch_size for p in parts)
        ids = np.concatenate([p[4]['env_id'] for p in parts])
        assert sorted(ids.tolist()) == list(range(n_envs))
        # A worker's groups come back in the order it stepped them.
        half = n_envs // 2
        for worker in (ids[ids < half], ids[ids >= half]):
            assert worker.tolist() == sorted(worker.tolist())
        order = np.argsort(ids)
        for field in range(4):
            got = np.concatenate([p[field] for p in parts])[order]
            np.testing.assert_array_equal(got, theirs[field])
        for part in parts:  # each env's infos as SyncVectorEnv's
            rows = part[4]['env_id']
            for key in ('t', 'score'):
                mask = theirs[4].get(f'_{key}', np.zeros(n_envs, bool))[rows]
                assert part[4].get(f'_{key}', np.zeros(len(rows), bool)
                                   ).tolist() == mask.tolist()
                if mask.any():
                    np.testing.assert_array_equal(
                        part[4][key][mask], theirs[4][key][rows][mask])
    # The learner's loop, as with envpool: send back what recv returned.
    ours.send(np.zeros(n_envs, np.int64))
    for _ in range(20):
        obs, rewards, term, trunc, infos = ours.recv()
        assert len(infos['env_id']) == batch_size
        ours.send(np.ones(batch_size, np.int64), infos['env_id'])
    with pytest.raises(ValueError, match='groups of 2'):
        make_vector(fns, n_workers=2, batch_size=2).send(
            np.zeros(3, np.int64), env_ids=[0, 1, 2])
    sync.close()


def test_batch_size_must_fit_the_workers_shares():
    with pytest.raises(ValueError, match=r'batch_size=3: recv returns whole '
                                         r'groups.*hold \[2, 2\] envs'):
        AsyncVectorEnv([InfoEnv] * 4, n_workers=2, batch_size=3)
    with pytest.raises(ValueError, match=r'batch_size=2.*\[3, 2\]'):
        AsyncVectorEnv([InfoEnv] * 5, n_workers=2, batch_size=2)
    with pytest.raises(ValueError, match='batch_size must be an int'):
        AsyncVectorEnv([InfoEnv] * 4, n_workers=2, batch_size=0)


@pytest.mark.parametrize('mode', [AutoresetMode.NEXT_STEP,
                                  AutoresetMode.SAME_STEP])
@pytest.mark.parametrize('backend', ['multiprocessing', 'ray'])
def test_a_dead_worker_is_replaced_and_its_envs_step_truncated(
        backend, mode, make_vector, tmp_path, request):
    if backend == 'ray':
        request.getfixturevalue('ray_runtime')
    marker = str(tmp_path / 'crashed')  # only the first env to get there
    fns = [lambda: FaultyEnv('none')] * 2 + [
        lambda: CrashEnv('exit', after=2, marker=marker)] * 2
    envs = make_vector(fns, n_workers=2, on_worker_error='restart',
                       autoreset_mode=mode, backend=backend)
    envs.reset(seed=0)
    zeros = np.zeros(4, np.int64)
    for _ in range(2):
        assert 'worker_restarted' not in envs.step(zeros)[4]
    obs, rewards, term, trunc, infos = envs.step(zeros)  # worker 1 dies
    assert trunc.tolist() == [False, False, True, True]
    assert not term.any() and rewards.tolist() == [1, 1, 0, 0]
    assert infos['worker_restarted'].tolist() == [False, False, True, True]
    assert infos['_worker_restarted'].tolist() == [False, False, True, True]
    np.testing.assert_allclose(obs[:, 0], [0.03, 0.03, 0.0, 0.0])
    if mode is AutoresetMode.SAME_STEP:
        assert infos['_final_obs'].tolist() == [False, False, True, True]
        np.testing.assert_allclose(infos['final_obs'][2], [0.02] * 3)
    assert envs._workers.sampler.stats['worker_restarts'] == 1
    obs, *_ = envs.step(zeros)  # and on it goes, from the new episodes
    np.testing.assert_allclose(obs[:, 0], [0.04, 0.04, 0.01, 0.01])


@pytest.mark.parametrize('mode', [AutoresetMode.NEXT_STEP,
                                  AutoresetMode.SAME_STEP])
def test_a_dead_worker_stepping_groups_comes_back_truncated_in_groups(
        mode, make_vector, tmp_path):
    marker = str(tmp_path / 'crashed')
    fns = [lambda: FaultyEnv('none')] * 4 + [
        lambda: CrashEnv('exit', after=2, marker=marker)] * 4
    envs = make_vector(fns, n_workers=2, batch_size=2,
                       on_worker_error='restart', autoreset_mode=mode)
    envs.reset(seed=0)
    envs.send(np.zeros(8, np.int64))
    restarted, seen = [], []
    # Worker 0's envs step on while worker 1 is replaced (the new one's
    # start-up takes a while), until its envs come back.
    deadline, after = time.monotonic() + 60, 0
    while after < 8 and time.monotonic() < deadline:
        after += len(restarted) == 4
        obs, rewards, term, trunc, infos = envs.recv()
        ids = infos['env_id']
        assert len(ids) == 2
        seen += ids.tolist()
        if 'worker_restarted' in infos:
            assert infos['worker_restarted'].all() and trunc.all()
            assert not term.any() and (rewards == 0).all()
            np.testing.assert_allclose(obs[:, 0], 0.0)  # reset anew
            if mode is AutoresetMode.SAME_STEP:
                assert (infos['final_obs'][0] > 0).all()  # the last one
            restarted += ids.tolist()
        envs.send(np.zeros(2, np.int64), ids)
    # All four envs of the dead worker, each once, in groups of two; and
    # they step on after it.
    assert sorted(restarted) == [4, 5, 6, 7]
    assert set(seen[-8:]) >= {4, 5, 6, 7} or after == 8
    assert envs._workers.sampler.stats['worker_restarts'] == 1


def test_restarts_stop_at_max_restarts(make_vector):
    fns = [lambda: FaultyEnv('none'), lambda: CrashEnv('exit', after=1)]
    envs = make_vector(fns, n_workers=2, on_worker_error='restart',
                       max_restarts=1)
    envs.reset(seed=0)
    truncated = 0
    with pytest.raises(WorkerCrashedError, match='worker 1'):
        for _ in range(10):
            truncated += int(envs.step(np.zeros(2, np.int64))[3][1])
    assert truncated == 1  # the first death was healed, the second not
