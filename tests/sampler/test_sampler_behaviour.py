"""Behaviour every backend must show; run once per backend (see conftest)."""

import os
import threading

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from helpers import (DictObsEnv, FailOnceEnv, FaultyEnv, FirstObsAgent,
                     TaskEnv, Unpicklable)
from sampler import (BrokenSamplerError, SamplerClosedError,
                     SamplerTimeoutError, WorkerError)
from workers import (DefaultWorker, MLPAgent, NewEnvUpdate, RandomAgent,
                     SetTaskUpdate, VecWorker, WorkerFactory)


def mlp_for(env_id, seed=0):
    env = gym.make(env_id) if isinstance(env_id, str) else env_id()
    return MLPAgent(env.observation_space, env.action_space, seed=seed)


def random_for(env_id):
    env = gym.make(env_id) if isinstance(env_id, str) else env_id()
    return RandomAgent(env.action_space)


WORKER_KINDS = {'default': (DefaultWorker, None),
                'vec': (VecWorker, {'n_envs': 3})}


def two_workers(make_sampler, env, kind, agent=None):
    """A two-worker sampler of ``kind`` on ``env`` with an MLP agent."""
    worker_class, args = WORKER_KINDS[kind]
    return make_sampler(agent or mlp_for(env), env, n_workers=2, seed=0,
                        worker_class=worker_class, worker_args=args)


# Every space family on real envs -------------------------------------------

@pytest.mark.parametrize('kind', sorted(WORKER_KINDS))
def test_box_observations_discrete_actions_cartpole(make_sampler, kind):
    s = two_workers(make_sampler, 'CartPole-v1', kind)
    b = s.obtain_samples(300)
    assert len(b) >= 300
    assert b.observations.shape == (len(b), 4)
    assert b.observations.dtype == np.float32
    assert b.actions.shape == (len(b),) and set(b.actions.tolist()) <= {0, 1}
    assert b.agent_infos['logits'].shape == (len(b), 2)
    assert b.terminated.sum() + b.truncated.sum() == b.n_episodes
    assert set(b.worker_numbers.tolist()) == {0, 1}


@pytest.mark.parametrize('kind', sorted(WORKER_KINDS))
def test_box_actions_pendulum(make_sampler, kind):
    s = two_workers(make_sampler, 'Pendulum-v1', kind)
    b = s.obtain_exact_episodes(1)
    assert b.lengths.tolist() == [200, 200]  # Pendulum's own time limit
    assert b.actions.shape == (400, 1) and b.actions.dtype == np.float32
    assert np.abs(b.actions).max() <= 2.0
    assert b.truncated[[199, 399]].all() and not b.terminated.any()
    assert b.last_observations.shape == (2, 3)


@pytest.mark.parametrize('kind', sorted(WORKER_KINDS))
def test_discrete_observations_and_infos_frozenlake(make_sampler, kind):
    s = two_workers(make_sampler, 'FrozenLake-v1', kind)
    b = s.obtain_samples(200)
    assert b.observations.shape == (len(b),)
    assert b.observations.min() >= 0 and b.observations.max() < 16
    assert b.env_infos['prob'].shape == (len(b),)
    assert b.episode_infos['prob'].shape == (b.n_episodes,)
    assert b.last_observations.shape == (b.n_episodes,)


@pytest.mark.parametrize('kind', sorted(WORKER_KINDS))
def test_tuple_observations_blackjack(make_sampler, kind):
    s = two_workers(make_sampler, 'Blackjack-v1', kind)
    b = s.obtain_exact_episodes(5)
    assert isinstance(b.observations, tuple) and len(b.observations) == 3
    assert all(x.shape == (len(b),) for x in b.observations)
    assert isinstance(b.last_observations, tuple)
    assert all(x.shape == (10,) for x in b.last_observations)
    assert b.observations[0].max() < 32
    assert b.worker_numbers.tolist() == [0] * 5 + [1] * 5


@pytest.mark.parametrize('kind', sorted(WORKER_KINDS))
@pytest.mark.parametrize('action_space', [
    spaces.MultiDiscrete([3, 2]), spaces.MultiBinary(4),
    spaces.Tuple((spaces.Discrete(3), spaces.Box(-1, 1, (2,), np.float32))),
], ids=['MultiDiscrete', 'MultiBinary', 'Tuple'])
def test_dict_observations_and_multi_actions(make_sampler, kind,
                                             action_space):
    def env():
        return DictObsEnv(action_space)
    s = two_workers(make_sampler, env, kind, RandomAgent(action_space))
    b = s.obtain_samples(60)
    n = len(b)
    obs = b.observations
    assert obs['position'].shape == (n, 2)
    assert obs['cell'].shape == (n,)
    assert obs['flags'].shape == (n, 3)
    assert obs['inventory'].shape == (n, 2)
    assert obs['pair'][0].shape == (n,) and obs['pair'][1].shape == (n, 1)
    assert b.last_observations['position'].shape == (b.n_episodes, 2)
    if isinstance(action_space, spaces.Tuple):
        assert b.actions[0].shape == (n,) and b.actions[1].shape == (n, 2)
    else:
        assert b.actions.shape == (n,) + action_space.shape
    mlp = MLPAgent(env().observation_space, spaces.Discrete(2))
    assert mlp.get_actions(obs)[0].shape == (n,)  # nests feed an agent


# Counts, order, versions ---------------------------------------------------

def test_obtain_samples_returns_whole_current_episodes(make_sampler):
    s = make_sampler(mlp_for('CartPole-v1'), 'CartPole-v1', n_workers=2,
                     seed=0)
    agent = mlp_for('CartPole-v1', seed=1)
    for expected_version in (1, 2):
        b = s.obtain_samples(500, agent_update=agent.get_params())
        assert len(b) >= 500
        # Whole episodes: every one that a worker started, it completed.
        assert b.starts.all() and not b.cut.any()
        assert (b.terminated | b.truncated).sum() == b.n_episodes
        assert set(b.versions.tolist()) == {expected_version}
        assert s.version == expected_version
    b = s.obtain_samples(10)
    assert s.version == 2 and set(b.versions.tolist()) == {2}


def test_obtain_exact_episodes_counts_and_order(make_sampler):
    s = make_sampler(random_for('CartPole-v1'), 'CartPole-v1', n_workers=3,
                     seed=0, worker_class=VecWorker,
                     worker_args={'n_envs': 4})
    b = s.obtain_exact_episodes(5)
    assert b.worker_numbers.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert s.stats['episodes'] == 15


def test_exact_episodes_reproducible_for_a_seed(backend):
    agent = mlp_for('CartPole-v1')
    new_params = mlp_for('CartPole-v1', seed=7).get_params()

    def run(seed):
        with backend(agent, 'CartPole-v1', n_workers=2, seed=seed,
                     max_episode_length=100) as s:
            return [s.obtain_exact_episodes(3),
                    s.obtain_exact_episodes(2, agent_update=new_params),
                    s.obtain_exact_episodes(2)]

    first, again, other = run(11), run(11), run(12)
    assert all(a == b for a, b in zip(first, again))
    assert first[0] != other[0]
    # Different across workers and across calls.
    batch = first[0]
    w0, w1 = batch.split()[:3], batch.split()[3:]
    assert all(a != b for a, b in zip(w0, w1))
    assert first[1] != first[2]


def test_local_and_vec_worker_match_for_one_env(backend):
    agent = mlp_for('CartPole-v1')
    with backend(agent, 'CartPole-v1', n_workers=2, seed=3) as a, \
            backend(agent, 'CartPole-v1', n_workers=2, seed=3,
                    worker_class=VecWorker, worker_args={'n_envs': 1}) as b:
        assert a.obtain_exact_episodes(3) == b.obtain_exact_episodes(3)


def test_seed_drawn_when_none_and_readable_back(backend):
    agent = mlp_for('CartPole-v1')
    with backend(agent, 'CartPole-v1', n_workers=1) as s:
        first = s.obtain_exact_episodes(2)
        seed = s.seed
    with backend(agent, 'CartPole-v1', n_workers=1, seed=seed) as s:
        assert s.obtain_exact_episodes(2) == first


# Updates -------------------------------------------------------------------

def test_per_worker_parameter_lists(make_sampler):
    agent = mlp_for('CartPole-v1')
    s = make_sampler(agent, 'CartPole-v1', n_workers=2, seed=0)
    left, right = agent.get_params(), agent.get_params()
    left['b2'] = np.array([50.0, -50.0])   # always 0
    right['b2'] = np.array([-50.0, 50.0])  # always 1
    b = s.obtain_exact_episodes(2, agent_update=[left, right])
    w = b.worker_numbers.repeat(b.lengths)
    assert set(b.actions[w == 0].tolist()) == {0}
    assert set(b.actions[w == 1].tolist()) == {1}


def test_agent_objects_replace_the_agent(make_sampler):
    s = make_sampler(mlp_for('CartPole-v1'), 'CartPole-v1', n_workers=2,
                     seed=0)
    b = s.obtain_exact_episodes(2, agent_update=FirstObsAgent())
    assert set(b.actions.tolist()) == {0} and b.agent_infos == {}
    # The new agent has no set_params: parameters are refused up front.
    with pytest.raises(TypeError, match="worker 0's agent has no set_params"):
        s.obtain_exact_episodes(1, agent_update={'W0': 1})
    assert s.version == 1


class CountingAgent:
    """Reports how many actions it has chosen: shared state would show."""

    def __init__(self):
        self.count = 0

    def get_action(self, observation):
        self.count += 1
        return 0, {'count': self.count}


def test_each_worker_gets_its_own_agent_copy(make_sampler):
    agent = CountingAgent()
    s = make_sampler(agent, 'CartPole-v1', n_workers=2, seed=0)
    b = s.obtain_exact_episodes(1)
    first, second = b.split()
    assert first.agent_infos['count'][0] == 1
    assert second.agent_infos['count'][0] == 1
    assert agent.count == 0


def test_env_updates(make_sampler):
    s = make_sampler(random_for('CartPole-v1'), 'CartPole-v1', n_workers=2,
                     seed=0)
    b = s.obtain_exact_episodes(
        3, env_update=NewEnvUpdate('CartPole-v1', max_episode_steps=4))
    assert b.lengths.max() <= 4 and s.version == 1
    s2 = make_sampler(FirstObsAgent(), TaskEnv, n_workers=2, seed=0)
    b = s2.obtain_exact_episodes(
        1, env_update=[SetTaskUpdate(TaskEnv, 1.5),
                       SetTaskUpdate(TaskEnv, -2.0)])
    assert b.rewards.tolist() == [1.5, -2.0]


def test_stats(make_sampler):
    s = make_sampler(random_for('CartPole-v1'), 'CartPole-v1', n_workers=1,
                     seed=0, worker_class=VecWorker,
                     worker_args={'n_envs': 4}, max_episode_length=5)
    # 4 envs, 2 episodes: only 2 envs start one, so nothing is wasted.
    b = s.obtain_exact_episodes(2)
    stats = s.stats
    assert stats['episodes'] == 2 and stats['transitions'] == len(b) == 10
    assert stats['env_steps'] == 10
    assert stats['discarded_episodes'] == stats['discarded_transitions'] == 0
    assert stats['worker_restarts'] == 0
    s.obtain_steps(3)  # 4 envs x 3 steps, every one returned
    assert s.stats['env_steps'] == s.stats['transitions'] == 22
    stats['episodes'] = 99
    assert s.stats['episodes'] == 2  # a copy


# Failures ------------------------------------------------------------------

def test_env_exception_is_a_worker_error_then_the_sampler_is_broken(
        make_sampler):
    s = make_sampler(FirstObsAgent(), [lambda: FaultyEnv('none'),
                                       lambda: FaultyEnv('step', after=2)],
                     seed=0)
    with pytest.raises(WorkerError) as info:
        s.obtain_exact_episodes(1)
    err = info.value
    assert str(err) == ('worker 1 failed in env.step during '
                        'obtain_exact_episodes(1): RuntimeError: boom')
    assert err.call == 'obtain_exact_episodes(1)'
    assert (err.worker_number, err.site, err.exc_type, err.exc_message) == \
        (1, 'env.step', 'RuntimeError', 'boom')
    assert 'in step' in err.worker_traceback
    assert 'raise RuntimeError(self.message)' in err.worker_traceback
    with pytest.raises(BrokenSamplerError, match='^this sampler is broken '
                                                 'since worker 1 failed in '
                                                 'env.step') as broken:
        s.obtain_samples(10)
    assert broken.value.__cause__ is err
    s.close()
    with pytest.raises(SamplerClosedError):
        s.obtain_samples(10)


def test_agent_exception_names_the_agent_call(make_sampler):
    class Bad:
        def get_action(self, obs):
            raise ValueError('bad obs')
    s = make_sampler(Bad(), 'CartPole-v1', n_workers=1, seed=0)
    with pytest.raises(WorkerError, match=r'^worker 0 failed in '
                                          r'agent.get_action during '
                                          r'obtain_samples\(10\): '
                                          r'ValueError: bad obs$'):
        s.obtain_samples(10)


def test_restart_replaces_the_failed_worker_and_the_call_goes_on(
        make_sampler):
    s = make_sampler(FirstObsAgent(), lambda: FaultyEnv('step', after=12),
                     n_workers=2, seed=0, on_worker_error='restart',
                     max_restarts=3)
    # Episodes end at step 10, before the failure: a good call.
    b = s.obtain_exact_episodes(1)
    assert b.lengths.tolist() == [10, 10]
    s2 = make_sampler(FirstObsAgent(), [lambda: FaultyEnv('none'),
                                        lambda: FaultyEnv('step', after=2)],
                      seed=0, on_worker_error='restart', max_restarts=3)
    # Worker 1 fails on every episode: three restarts, then it is broken.
    with pytest.raises(WorkerError, match='^worker 1 failed in env.step'):
        s2.obtain_exact_episodes(1)
    assert s2.stats['worker_restarts'] == 3
    with pytest.raises(BrokenSamplerError):
        s2.obtain_exact_episodes(1)


def test_restart_keeps_the_current_agent_parameters(make_sampler, tmp_path):
    agent = mlp_for(FaultyEnv)
    s = make_sampler(agent, lambda: FaultyEnv('none'), n_workers=1, seed=0,
                     on_worker_error='restart', max_restarts=2)
    params = agent.get_params()
    params['b2'] = np.array([-50.0, 50.0])  # always action 1
    s.obtain_exact_episodes(1, agent_update=params)
    marker = str(tmp_path / 'failed')
    # The new env fails once; its replacement gets the same env update and
    # the parameters sent before, and the call completes.
    b = s.obtain_exact_episodes(2, env_update=lambda: FailOnceEnv(marker))
    assert s.stats['worker_restarts'] == 1
    assert set(b.actions.tolist()) == {1} and set(b.versions.tolist()) == {2}
    assert b.lengths.tolist() == [10, 10]


def test_worker_that_cannot_start_is_named(backend):
    def broken():
        raise OSError('no simulator licence')
    with pytest.raises(WorkerError, match='^worker 1 failed in env update: '
                                          'OSError: no simulator licence$'):
        backend(FirstObsAgent(), ['CartPole-v1', broken], seed=0)


def test_workers_must_share_spaces(backend):
    with pytest.raises(ValueError, match="^worker 1's env has observation "
                                         'space Box'):
        backend(FirstObsAgent(), ['CartPole-v1', 'Pendulum-v1'], seed=0)


def test_unstackable_space_is_refused_at_start(backend):
    from helpers import TextEnv
    with pytest.raises(WorkerError, match=r'TypeError: observation space is '
                                          r'Text\('):
        backend(FirstObsAgent(), TextEnv, n_workers=1, seed=0)


class SlowEnv(gym.Env):
    """Each step waits on an event that is never set, for ``delay`` s."""

    observation_space = spaces.Box(-1, 1, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, delay=0.02):
        self.delay = delay

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        threading.Event().wait(self.delay)
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_timeout_raises_and_leaves_the_sampler_usable(make_sampler):
    s = make_sampler(FirstObsAgent(), SlowEnv, n_workers=1, seed=0,
                     max_episode_length=3)
    with pytest.raises(SamplerTimeoutError, match=r'^obtain_samples\(1000\) '
                                                  r'timed out after 0.1 s') \
            as info:
        s.obtain_samples(1000, timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    assert s.obtain_exact_episodes(1).lengths.tolist() == [3]


# Bad input: refused in the caller, sampler unchanged -----------------------

def env_with_lock():
    env = gym.make('CartPole-v1')
    env.unwrapped.lock = threading.Lock()
    return env


BAD_CALLS = [
    ('num_samples zero', lambda s: s.obtain_samples(0), ValueError,
     r'^num_samples must be an int >= 1, got 0$'),
    ('num_samples float', lambda s: s.obtain_samples(1.5), ValueError,
     r'^num_samples must be an int >= 1, got 1.5$'),
    ('num_samples bool', lambda s: s.obtain_samples(True), ValueError,
     r'^num_samples must be an int >= 1, got True$'),
    ('n_eps_per_worker negative', lambda s: s.obtain_exact_episodes(-2),
     ValueError, r'^n_eps_per_worker must be an int >= 1, got -2$'),
    ('agent_update list length',
     lambda s: s.obtain_samples(10, agent_update=[{}, {}, {}]), ValueError,
     r'^agent_update is a list of length 3 but n_workers is 2; pass one '
     r'object \(every worker gets a copy\) or a list of exactly 2, one per '
     r'worker$'),
    ('env_update list length',
     lambda s: s.obtain_samples(10, env_update=['CartPole-v1']), ValueError,
     r'^env_update is a list of length 1 but n_workers is 2'),
    ('unknown env id in update',
     lambda s: s.obtain_samples(10, env_update='CartPol-v1'), ValueError,
     r"^env_update: unknown env id 'CartPol-v1': Environment `CartPol` "
     r"doesn't exist. Did you mean: `CartPole`\?"),
    ('unknown env id in update list',
     lambda s: s.obtain_samples(10, env_update=['CartPole-v1', 'Nope-v0']),
     ValueError, r"^env_update\[1\]: unknown env id 'Nope-v0'"),
    ('bad env_update type',
     lambda s: s.obtain_samples(10, env_update=42), TypeError,
     r'^env_update must be a gymnasium env id, a gymnasium.Env, a '
     r'zero-argument env constructor or an EnvUpdate, got 42$'),
    ('unpicklable agent update',
     lambda s: s.obtain_samples(10, agent_update=Unpicklable()), TypeError,
     r"^agent_update cannot be pickled by cloudpickle, and it must be to "
     r"reach the workers: TypeError: cannot pickle '_thread.lock' object\. "
     r'Send plain parameters'),
    ('unpicklable update in a list',
     lambda s: s.obtain_samples(
         10, agent_update=[{}, {'x': threading.Lock()}]),
     TypeError, r'^agent_update\[1\] cannot be pickled by cloudpickle'),
    ('unpicklable env update',
     lambda s: s.obtain_samples(10, env_update=env_with_lock()),
     TypeError, r'^env_update cannot be pickled by cloudpickle.*Pass an env '
     r'id'),
    ('timeout zero', lambda s: s.obtain_samples(10, timeout=0), ValueError,
     r'^timeout must be None or a number of seconds > 0, got 0$'),
]


@pytest.mark.parametrize('call,error,pattern', [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_call_arguments_are_refused(make_sampler, call, error, pattern):
    agent = mlp_for('CartPole-v1')
    s = make_sampler(agent, 'CartPole-v1', n_workers=2, seed=0)
    with pytest.raises(error, match=pattern):
        call(s)
    # Nothing changed: no new version, and the sampler still works.
    assert s.version == 0 and s.stats['calls'] == 0
    assert set(s.obtain_samples(10).versions.tolist()) == {0}


class _ParallelEnv:
    """Stands in for PettingZoo's ParallelEnv (not installed here): what
    gives a multi-agent env away is a base class from pettingzoo."""

    __module__ = 'pettingzoo.utils.env'

    def __repr__(self):
        return 'x' * 100  # too long to quote: the class name is used


class ParallelLike(_ParallelEnv):
    possible_agents = ['a', 'b']


BAD_CONSTRUCTIONS = [
    ('n_workers zero', dict(n_workers=0), ValueError,
     r'^n_workers must be an int >= 1, got 0$'),
    ('agents list length', dict(agents=['a', 'b', 'c'], n_workers=2),
     ValueError, r'^agents is a list of length 3 but n_workers is 2'),
    ('envs list length', dict(envs=['CartPole-v1'], n_workers=2), ValueError,
     r'^envs is a list of length 1 but n_workers is 2'),
    ('unknown env id', dict(envs='CartPol-v1'), ValueError,
     r"^envs: unknown env id 'CartPol-v1': Environment `CartPol` doesn't "
     r'exist. Did you mean: `CartPole`\?'),
    ('a vector env', dict(envs=gym.vector.SyncVectorEnv(
        [lambda: gym.make('CartPole-v1')] * 3)), TypeError,
     r'^envs is SyncVectorEnv\(num_envs=3\): a vector env of 3 envs, but '
     r'the workers step envs themselves: pass one env \(an env id, or a '
     r'zero-argument constructor of a single env\) and '
     r'worker_class=VecWorker, worker_args=\{"n_envs": 3\} for 3 envs '
     r'per worker$'),
    ('a PettingZoo env', dict(envs=ParallelLike()), TypeError,
     r'^envs is a ParallelLike: a PettingZoo multi-agent env, which a '
     r'sampler steps in multi-agent workers when it can tell: pass the '
     r'env, its class, policy_mapping= or worker_class=workers\.'
     r'MultiAgentWorker'),
    ('not an agent', dict(agents=42), TypeError,
     r'^agents must have get_action\(observation\) -> \(action, info\) or '
     r'be a callable observation -> action, got 42$'),
    ('unpicklable agent', dict(agents=Unpicklable()), TypeError,
     r"^agents cannot be pickled by cloudpickle, and it must be to reach the "
     r"workers: TypeError: cannot pickle '_thread.lock' object\. Keep "
     r'unpicklable state'),
    ('unpicklable agent in a list',
     dict(agents=[FirstObsAgent(), Unpicklable()], n_workers=2), TypeError,
     r'^agents\[1\] cannot be pickled by cloudpickle'),
    ('negative seed', dict(seed=-3), ValueError,
     r'^seed must be None or an int >= 0, got -3$'),
    ('max_episode_length zero', dict(max_episode_length=0), ValueError,
     r'^max_episode_length must be None or an int >= 1, got 0$'),
    ('unknown option', dict(strat_method='fork'), TypeError,
     r'got unknown option\(s\) strat_method; its options are '),
    ('bad on_worker_error', dict(on_worker_error='ignore'), ValueError,
     r"^on_worker_error must be 'raise' or 'restart', got 'ignore'$"),
    ('bad max_restarts', dict(max_restarts=-1), ValueError,
     r'^max_restarts must be an int >= 0, got -1$'),
    ('factory and n_workers',
     dict(worker_factory=WorkerFactory(n_workers=2, seed=0), n_workers=2),
     ValueError, r'^pass either worker_factory or n_workers, not both'),
]


@pytest.mark.parametrize('kwargs,error,pattern',
                         [c[1:] for c in BAD_CONSTRUCTIONS],
                         ids=[c[0] for c in BAD_CONSTRUCTIONS])
def test_bad_constructor_arguments_are_refused(backend, kwargs, error,
                                               pattern):
    kwargs = dict(kwargs)
    agents = kwargs.pop('agents', FirstObsAgent())
    envs = kwargs.pop('envs', 'CartPole-v1')
    kwargs.setdefault('n_workers', 1) if 'worker_factory' not in kwargs \
        else None
    with pytest.raises(error, match=pattern):
        backend(agents, envs, **kwargs)


# Construction and closing --------------------------------------------------

def test_n_workers_defaults(backend):
    from sampler.sampler import available_cpus
    with backend(FirstObsAgent(), 'CartPole-v1', seed=0) as s:
        assert s.n_workers == available_cpus()
    with backend(FirstObsAgent(), ['CartPole-v1'] * 3, seed=0) as s:
        assert s.n_workers == 3


def test_from_worker_factory(backend):
    factory = WorkerFactory(n_workers=2, seed=4, max_episode_length=6,
                            worker_class=VecWorker, worker_args={'n_envs': 2})
    with backend.from_worker_factory(factory, FirstObsAgent(),
                                     'CartPole-v1') as s:
        assert s.n_workers == 2 and s.seed == 4
        assert s.obtain_exact_episodes(1).lengths.max() <= 6


class ClosingEnv(FaultyEnv):
    """Leaves a file in ``folder`` when closed (seen from any process)."""

    def __init__(self, folder):
        super().__init__('none')
        self.folder = folder

    def close(self):
        (self.folder / f'closed-{os.getpid()}-{id(self)}').touch()


def test_close_is_idempotent_and_closes_envs(backend, tmp_path):
    s = backend(FirstObsAgent(), lambda: ClosingEnv(tmp_path), n_workers=2,
                seed=0)
    assert not s.closed
    s.obtain_samples(5)
    s.close()
    s.close()
    assert s.closed
    assert len(list(tmp_path.iterdir())) == 2
    with pytest.raises(SamplerClosedError, match='^this sampler is closed; '
                                                 'make a new one'):
        s.obtain_exact_episodes(1)


def test_context_manager_closes(backend):
    with backend(FirstObsAgent(), 'CartPole-v1', n_workers=1, seed=0) as s:
        s.obtain_samples(5)
    assert s.closed


def make_vector_env():
    return gym.vector.SyncVectorEnv([lambda: gym.make('CartPole-v1')] * 2)


def test_a_constructor_of_a_vector_env_is_named_where_it_is_built(backend):
    with pytest.raises(WorkerError, match=(
            r'^worker 0 failed in env update: TypeError: the env '
            r'constructor <function make_vector_env at .*> returned '
            r'SyncVectorEnv, not a gymnasium\.Env: a vector env of 2 envs, '
            r'but the workers step envs themselves: pass one env .* '
            r'worker_class=VecWorker, worker_args=\{"n_envs": 2\}')):
        backend(FirstObsAgent(), make_vector_env, n_workers=1)
