import pickle
import re

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from helpers import (DictObsEnv, FaultyEnv, InPlaceEnv, ListPool, TaskEnv,
                     TextEnv, steps_of)
from workers import (DefaultWorker, EnvPool, EnvPoolWorker, EpisodeBatch,
                     EpisodeBuffer, MLPAgent, NewEnvUpdate, RandomAgent,
                     SetTaskUpdate, VecWorker, WorkerFactory)


def make_worker(env='CartPole-v1', agent='mlp', worker_class=DefaultWorker,
                seed=0, worker_number=0, max_episode_length=None, **args):
    factory = WorkerFactory(n_workers=worker_number + 1, seed=seed,
                            max_episode_length=max_episode_length,
                            worker_class=worker_class, worker_args=args)
    worker = factory(worker_number)
    worker.update_env(env)
    obs_space, act_space = worker.env_spaces
    if agent == 'mlp':
        agent = MLPAgent(obs_space, act_space, seed=1)
    elif agent == 'random':
        agent = RandomAgent(act_space)
    worker.update_agent(agent)
    return worker


def episodes(worker, n, round_number=0):
    worker.start_round(round_number)
    out = []
    while sum(b.n_episodes for b in out) < n:
        out.append(worker.rollout())
    return EpisodeBatch.concatenate(*out).head(n)


@pytest.mark.parametrize('env', ['CartPole-v1', 'Pendulum-v1',
                                 'FrozenLake-v1', 'Blackjack-v1'])
@pytest.mark.parametrize('agent', ['mlp', 'random'])
def test_vec_worker_with_one_env_equals_default_worker(env, agent):
    a = make_worker(env, agent, max_episode_length=40)
    b = make_worker(env, agent, VecWorker, max_episode_length=40, n_envs=1)
    for round_number in range(2):
        assert episodes(a, 5, round_number) == episodes(b, 5, round_number)
    a.shutdown()
    b.shutdown()


def test_same_seed_same_episodes_and_rounds_differ():
    a, b = make_worker(seed=5), make_worker(seed=5)
    first = episodes(a, 3, round_number=0)
    assert first == episodes(b, 3, round_number=0)
    assert episodes(a, 3, round_number=1) != first
    # Going back to a round reproduces it, whatever ran in between (its
    # episodes get new ids).
    again = episodes(a, 3, round_number=0)
    assert steps_of(again) == steps_of(first)
    assert not set(again.episode_ids) & set(first.episode_ids)


def test_workers_draw_independent_streams():
    w0 = make_worker(seed=5, worker_number=0)
    w1 = make_worker(seed=5, worker_number=1)
    assert episodes(w0, 3) != episodes(w1, 3)
    # Not seed + i: worker 1 of seed 5 is not worker 0 of seed 6.
    assert w1.round_seeds(0, 4) != make_worker(seed=6).round_seeds(0, 4)
    seeds = w0.round_seeds(0, 4) + w1.round_seeds(0, 4) + w0.round_seeds(1, 4)
    assert len(set(seeds)) == len(seeds)


def test_a_replacement_attempt_draws_seeds_of_its_own():
    w = make_worker(seed=5)
    first = w.round_seeds(2, 4)
    assert w.round_seeds(2, 4, attempt=0) == first
    again = w.round_seeds(2, 4, attempt=1) + w.round_seeds(2, 4, attempt=2)
    assert len(set(first + again)) == 12
    w.start_round(2)
    original = w.rollout().observations
    w.start_round(2, attempt=1)
    assert not np.array_equal(w.rollout().observations, original)
    w.start_round(2, attempt=0)  # attempt 0 is the round as it was
    np.testing.assert_array_equal(w.rollout().observations, original)
    with pytest.raises(ValueError, match='^attempt must be an int >= 0, '
                                         'got -1$'):
        w.start_round(2, attempt=-1)
    w.shutdown()


def test_vec_worker_envs_get_distinct_seeds():
    w = make_worker(worker_class=VecWorker, n_envs=4, agent='random', seed=3,
                    max_episode_length=1)
    w.start_round(0)
    batch = w.rollout()  # every env's one-step episode ends together
    assert batch.n_episodes == 4
    assert len({tuple(o) for o in batch.observations}) == 4


def test_vec_worker_returns_the_episodes_completed_on_a_step():
    w = make_worker('Pendulum-v1', 'random', VecWorker, n_envs=3,
                    max_episode_length=7)
    w.start_round(0)
    batch = w.rollout()
    # All three envs reach the cap on the same step.
    assert batch.lengths.tolist() == [7, 7, 7]
    assert batch.truncated.sum() == 3 and not batch.terminated.any()


def test_vec_worker_update_resets_envs_so_no_episode_mixes_versions():
    w = make_worker('Pendulum-v1', 'mlp', VecWorker, n_envs=2,
                    max_episode_length=50)
    w.start_round(0, version=0)
    assert w.rollout().versions.tolist() == [0, 0]
    agent = w.agent
    w.update_agent(agent.get_params())
    w.start_round(1, version=1)
    batch = w.rollout()
    # Each episode starts after the update: full length, version 1.
    assert batch.versions.tolist() == [1, 1]
    assert batch.lengths.tolist() == [50, 50]


def test_max_episode_length_truncates_and_env_limit_is_kept():
    w = make_worker('Pendulum-v1', 'random', max_episode_length=13)
    batch = episodes(w, 2)
    assert batch.lengths.tolist() == [13, 13]
    assert batch.truncated[[12, 25]].all()
    own = episodes(make_worker('Pendulum-v1', 'random'), 1)
    assert own.lengths.tolist() == [200]  # Pendulum's own TimeLimit
    assert own.truncated[-1] and not own.terminated[-1]


def test_last_observation_is_the_one_after_the_final_step():
    w = make_worker('CartPole-v1', 'random', seed=2)
    batch = episodes(w, 1)
    env = gym.make('CartPole-v1')
    seeds = w.round_seeds(0, 2)
    obs, _ = env.reset(seed=seeds[1])
    np.testing.assert_array_equal(obs, batch.observations[0])
    for action in batch.actions:
        obs, *_ = env.step(int(action))
    np.testing.assert_array_equal(obs, batch.last_observations[0])
    assert batch.terminated[-1]


def test_observations_overwritten_in_place_are_copied():
    for worker_class, args in [(DefaultWorker, {}), (VecWorker,
                                                     {'n_envs': 2})]:
        w = make_worker(InPlaceEnv, 'random', worker_class, **args)
        batch = episodes(w, 1)
        assert batch.observations[:, 0].tolist() == [0, 1, 2, 3, 4]
        assert batch.last_observations[0].tolist() == [5, 5]


@pytest.mark.parametrize('worker_class', [VecWorker, EnvPoolWorker])
def test_the_step_log_keeps_only_the_steps_of_running_segments(
        worker_class):
    """A batched worker's segments are runs of its step log; steps no
    running segment refers to must go, or a long run would hold every
    frame."""
    import workers._batched as module
    env = 'CartPole-v1' if worker_class is VecWorker else \
        EnvPool('CartPole-v1', make=ListPool)
    w = make_worker(env, 'random', worker_class, n_envs=4)
    w.start_round(0, keep_episodes=True)
    buffer = EpisodeBuffer()
    w.step_into(buffer, 300)
    batch = buffer.to_batch()
    assert len(batch) == 4 * 300 and batch.cut.sum() == 4
    assert len(w._log[0]) == 0  # every segment was cut at the end
    w.start_round(1)
    taken = longest = most = 0
    while taken < 3000:
        buffer = EpisodeBuffer()
        w.rollout_into(buffer)
        taken += buffer.transitions
        longest = max(longest, max(w._open_length(i) for i in range(4)))
        most = max(most, len(w._log[0]))
    assert most <= 2 * longest + module._TRIM_MIN + 1
    w.shutdown()


@pytest.mark.parametrize('action_space', [
    spaces.MultiDiscrete([3, 2]),
    spaces.MultiBinary(4),
    spaces.Tuple((spaces.Discrete(3), spaces.Box(-1, 1, (2,), np.float32))),
    spaces.Dict({'move': spaces.Discrete(4),
                 'force': spaces.Box(0, 1, (1,), np.float32)}),
], ids=['MultiDiscrete', 'MultiBinary', 'Tuple', 'Dict'])
@pytest.mark.parametrize('worker_class', [DefaultWorker, VecWorker])
def test_nested_observations_and_every_action_family(action_space,
                                                     worker_class):
    args = {'n_envs': 3} if worker_class is VecWorker else {}
    w = make_worker(lambda: DictObsEnv(action_space), 'random', worker_class,
                    **args)
    batch = episodes(w, 4)
    n = len(batch)
    obs = batch.observations
    assert set(obs) == {'position', 'cell', 'flags', 'inventory', 'pair'}
    assert obs['position'].shape == (n, 2)
    assert obs['flags'].shape == (n, 3)
    assert obs['pair'][1].shape == (n, 1)
    assert batch.last_observations['inventory'].shape == (4, 2)
    assert batch.env_infos['t'].shape == (n,)
    assert batch.episode_infos['start'].tolist() == [0, 0, 0, 0]
    for i in range(n):
        action = _row(batch.actions, i)
        assert action_space.contains(action), action


def _row(nest, i):
    if isinstance(nest, dict):
        return {k: _row(v, i) for k, v in nest.items()}
    if isinstance(nest, tuple):
        return tuple(_row(v, i) for v in nest)
    return nest[i]


@pytest.mark.parametrize('space,name', [
    (spaces.Text(5), 'Text'),
    (spaces.Graph(spaces.Box(0, 1, (2,)), None), 'Graph'),
    (spaces.Sequence(spaces.Discrete(2)), 'Sequence'),
])
def test_unstackable_spaces_are_refused_by_name(space, name):
    env = TextEnv()
    env.observation_space = space
    w = DefaultWorker(seed=0, max_episode_length=None, worker_number=0)
    with pytest.raises(TypeError, match=rf'^observation space is {name}\('):
        w.update_env(env)
    with pytest.raises(TypeError, match=rf"^action space\['b'\] is {name}"):
        RandomAgent(spaces.Dict({'a': spaces.Discrete(2), 'b': space}))


def test_workers_refuse_pickling_and_point_at_the_factory():
    w = make_worker()
    for dump in (pickle.dumps, cloudpickle.dumps):
        with pytest.raises(TypeError, match='^DefaultWorker objects hold live '
                                            'envs and cannot be pickled; '
                                            'pickle a WorkerFactory'):
            dump(w)
    factory = WorkerFactory(n_workers=2, seed=1, worker_class=VecWorker,
                            worker_args={'n_envs': 2})
    copy = pickle.loads(pickle.dumps(factory))
    assert copy(1).n_envs == 2 and copy.seed == 1


def test_rollout_before_setup_says_what_is_missing():
    w = DefaultWorker(seed=0, max_episode_length=None, worker_number=3)
    with pytest.raises(RuntimeError, match='^worker 3 has no env; call '
                                           'update_env and update_agent'):
        w.rollout()


def test_error_site_names_the_failing_call():
    w = make_worker(lambda: FaultyEnv('step', after=2), 'random')
    with pytest.raises(RuntimeError, match='boom'):
        episodes(w, 1)
    assert w.error_site == 'env.step'
    w.update_env(lambda: FaultyEnv('reset'))
    with pytest.raises(RuntimeError):
        w.rollout()
    assert w.error_site == 'env.reset'

    class BadAgent:
        def get_action(self, obs):
            raise KeyError('no')
    w = make_worker('CartPole-v1', BadAgent(), VecWorker, n_envs=2)
    with pytest.raises(KeyError):
        w.rollout()
    assert w.error_site == 'agent.get_actions'


# Agent updates -------------------------------------------------------------

def test_parameters_update_the_agent_and_agents_replace_it():
    w = make_worker()
    params = w.agent.get_params()
    params['b2'] = np.array([50.0, -50.0])  # always action 0
    w.update_agent(params)
    assert set(episodes(w, 2).actions.tolist()) == {0}
    replacement = RandomAgent(spaces.Discrete(2))
    w.update_agent(replacement)
    assert w.agent is replacement


def test_parameters_for_an_agent_without_set_params_are_refused():
    w = make_worker(agent=lambda obs: 1)
    with pytest.raises(TypeError, match='has no set_params, so it cannot take '
                                        'parameters'):
        w.update_agent({'w': 1})
    assert set(episodes(w, 1).actions.tolist()) == {1}


# Env updates ---------------------------------------------------------------

def test_env_updates_replace_and_close_the_old_env():
    w = make_worker('CartPole-v1', 'random')
    old = w.env
    w.update_env(NewEnvUpdate('CartPole-v1', max_episode_steps=3))
    assert w.env is not old and old.unwrapped.screen is None
    assert episodes(w, 1).lengths.max() <= 3


def test_set_task_update_keeps_the_env_and_rebuilds_when_the_type_differs():
    w = make_worker(TaskEnv, 'random')
    env = w.env
    w.update_env(SetTaskUpdate(TaskEnv, 2.5))
    assert w.env is env
    assert episodes(w, 1).rewards.tolist() == [2.5]
    w.update_env('CartPole-v1')
    w.update_env(SetTaskUpdate(TaskEnv, -1.0))
    assert isinstance(w.env, TaskEnv)
    assert episodes(w, 1).rewards.tolist() == [-1.0]


def test_set_task_reaches_through_wrappers():
    w = make_worker(lambda: gym.wrappers.TimeLimit(TaskEnv(), 5), 'random')
    w.update_env(SetTaskUpdate(TaskEnv, 4.0))
    assert isinstance(w.env, gym.wrappers.TimeLimit)
    assert episodes(w, 1).rewards.tolist() == [4.0]


def test_vec_worker_copies_a_shared_env_instance():
    w = make_worker(NewEnvUpdate(gym.make('CartPole-v1')), 'random',
                    VecWorker, n_envs=3)
    assert len({id(e) for e in w.envs}) == 3


def test_unknown_env_id_is_a_value_error_with_a_suggestion():
    w = DefaultWorker(seed=0, max_episode_length=None, worker_number=0)
    with pytest.raises(ValueError, match=r"^env_update: unknown env id "
                                         r"'CartPol-v1'.*Did you mean: "
                                         r'`CartPole`\?'):
        w.update_env('CartPol-v1')


def test_module_prefixed_env_id_imports_the_module():
    w = make_worker('gymnasium.envs.classic_control:CartPole-v1', 'random')
    assert episodes(w, 1).n_episodes == 1
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod'"):
        NewEnvUpdate('no_such_mod:Foo-v0')


# Factory arguments ---------------------------------------------------------

@pytest.mark.parametrize('kwargs,error,pattern', [
    (dict(n_workers=0), ValueError, r'^n_workers must be an int >= 1, got 0$'),
    (dict(n_workers=2, seed=-1), ValueError,
     r'^seed must be None or an int >= 0, got -1$'),
    (dict(n_workers=2, max_episode_length=0), ValueError,
     r'^max_episode_length must be None or an int >= 1, got 0$'),
    (dict(n_workers=2, worker_class=dict), TypeError,
     r"^worker_class must be a subclass of workers.Worker, got <class "
     r"'dict'>$"),
    (dict(n_workers=2, worker_class=VecWorker, worker_args={'n_env': 2}),
     TypeError, r"^worker_args \{'n_env': 2\} do not fit VecWorker"),
])
def test_factory_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        WorkerFactory(**kwargs)


def test_factory_draws_a_seed_when_none_is_given():
    a, b = WorkerFactory(n_workers=1), WorkerFactory(n_workers=1)
    assert a.seed != b.seed and a.seed >= 0


def test_episode_buffer_builds_one_batch_equal_to_per_episode_batches():
    w = make_worker('FrozenLake-v1', 'mlp', seed=4)
    w.start_round(0)
    singles = [w.rollout() for _ in range(6)]
    w.start_round(0)
    buffer = EpisodeBuffer()
    for _ in range(6):
        w.rollout_into(buffer)
    assert buffer.n_episodes == 6
    assert buffer.transitions == sum(len(b) for b in singles)
    assert buffer.keep_first(4) == 2 and buffer.n_episodes == 4
    batch = buffer.to_batch()
    assert steps_of(batch) == steps_of(EpisodeBatch.concatenate(*singles[:4]))
    batch.check()
    assert buffer.n_episodes == 0 and buffer.transitions == 0
    with pytest.raises(ValueError, match='holds no episode'):
        buffer.to_batch()


def test_info_keys_missing_in_some_episodes_get_masks():
    class Sometimes(InPlaceEnv):
        def step(self, action):
            obs, r, term, trunc, info = super().step(action)
            if term and self.np_random.random() < 0.5:
                info = {'success': 1.0}
            return obs, r, term, trunc, info
    w = make_worker(Sometimes, 'random', seed=1)
    w.start_round(0)
    buffer = EpisodeBuffer()
    while buffer.n_episodes < 8:
        w.rollout_into(buffer)
    batch = buffer.to_batch()
    mask = batch.env_infos['_success']
    assert mask.shape == (len(batch),) and 0 < mask.sum() < 8
    ends = batch.episode_starts + batch.lengths - 1
    assert not mask[~np.isin(np.arange(len(batch)), ends)].any()
    assert (batch.env_infos['success'][mask] == 1.0).all()


class ActionEchoEnv(InPlaceEnv):
    """Observes the action it was given, so batches can be checked against
    what the env really received."""

    def step(self, action):
        obs, *rest = super().step(action)
        return np.array([obs[0], action]), *rest


class BatchedAgent:
    def get_action(self, observation):
        actions, infos = self.get_actions(np.asarray(observation)[None])
        return actions[0], {k: v[0] for k, v in infos.items()}


class OverwritingAgent(BatchedAgent):
    """A batched agent that writes every output into the same arrays."""

    def __init__(self, n):
        self._rng = np.random.default_rng(0)
        self._actions = np.zeros(n, dtype=np.int64)
        self._infos = {'draw': np.zeros(n)}

    def get_actions(self, observations):
        self._actions[:] = self._rng.integers(0, 2, len(self._actions))
        self._infos['draw'][:] = self._actions
        return self._actions, self._infos


def test_vec_worker_copies_outputs_an_agent_overwrites_in_place():
    w = make_worker(ActionEchoEnv, OverwritingAgent(3), VecWorker, n_envs=3)
    batch = episodes(w, 12)
    received = batch.next_observations[:, 1]
    assert 0 < batch.actions.sum() < len(batch)
    np.testing.assert_array_equal(batch.actions, received)
    np.testing.assert_array_equal(batch.agent_infos['draw'], received)


class BoxEchoEnv(ActionEchoEnv):
    """ActionEchoEnv of one number in [0, 1] a step."""

    action_space = spaces.Box(0.0, 1.0, (), np.float64)


class ClippingAgent(BatchedAgent):
    """Draws actions in [-1, 2] and sends the env their values clipped to
    [0, 1] through ``info['env_action']``, as TorchAgent does."""

    def __init__(self):
        self._rng = np.random.default_rng(0)

    def get_actions(self, observations):
        raw = self._rng.uniform(-1, 2, len(observations))
        return raw, {'env_action': np.clip(raw, 0, 1)}


@pytest.mark.parametrize('worker_class,args', [(DefaultWorker, {}),
                                               (VecWorker, {'n_envs': 3})])
def test_an_env_action_info_is_what_the_env_receives(worker_class, args):
    w = make_worker(BoxEchoEnv, ClippingAgent(), worker_class, **args)
    batch = episodes(w, 6)
    received = batch.next_observations[:, 1]
    np.testing.assert_array_equal(received, np.clip(batch.actions, 0, 1))
    assert (batch.actions < 0).any() and (batch.actions > 1).any()
    np.testing.assert_array_equal(batch.agent_infos['env_action'], received)
    w.shutdown()


@pytest.mark.parametrize('bad, name', [
    (lambda n: (np.zeros(n + 1, dtype=np.int64), {}), 'actions'),
    (lambda n: (np.zeros(n, dtype=np.int64), {'v': np.zeros(1)}),
     "agent_infos['v']"),
])
def test_vec_worker_refuses_outputs_without_one_row_per_env(bad, name):
    class Agent(BatchedAgent):
        def get_actions(self, observations):
            return bad(len(observations))
    w = make_worker(InPlaceEnv, Agent(), VecWorker, n_envs=3)
    w.start_round(0)
    with pytest.raises(ValueError, match=rf'returned {re.escape(name)} '
                       r'with shape \(\d,\) for 3 observations'):
        w.rollout()
    assert w.error_site == 'agent.get_actions output'


def test_vec_worker_agent_info_keys_that_vary_between_steps_get_masks():
    class Agent(BatchedAgent):
        def get_actions(self, observations):
            n = len(observations)
            infos = {'t': observations[:, 0].copy()}
            if observations[0, 0] == 2:
                infos['extra'] = np.ones(n)
            return np.zeros(n, dtype=np.int64), infos
    w = make_worker(InPlaceEnv, Agent(), VecWorker, n_envs=2)
    batch = episodes(w, 4)
    np.testing.assert_array_equal(batch.agent_infos['t'],
                                  batch.observations[:, 0])
    expected = batch.observations[:, 0] == 2
    np.testing.assert_array_equal(batch.agent_infos['_extra'], expected)
    np.testing.assert_array_equal(batch.agent_infos['extra'], expected)


def test_episode_buffer_gathers_vec_workers_of_different_widths():
    workers = [make_worker('CartPole-v1', 'mlp', VecWorker, worker_number=k,
                           n_envs=k + 2) for k in range(2)]
    singles, buffer = [], EpisodeBuffer()
    for w in workers:
        w.start_round(0)
        singles.append(w.rollout())
    for w in workers:
        w.start_round(0)
        w.rollout_into(buffer)
    batch = buffer.to_batch()
    assert steps_of(batch) == steps_of(EpisodeBatch.concatenate(*singles))
    batch.check()
    assert set(batch.agent_infos) == {'logits'}


# Segments: envs that keep running across calls ------------------------------

SEGMENT_WORKERS = {'default': (DefaultWorker, {}),
                   'vec': (VecWorker, {'n_envs': 3})}


def segment_worker(kind, **kwargs):
    worker_class, args = SEGMENT_WORKERS[kind]
    return make_worker('CartPole-v1', 'mlp', worker_class, seed=2,
                       **{**args, **kwargs})


def step_batch(worker, n_steps, round_number):
    worker.start_round(round_number, version=round_number,
                       keep_episodes=True)
    buffer = EpisodeBuffer()
    worker.step_into(buffer, n_steps)
    batch = buffer.to_batch()
    batch.check()
    return batch


@pytest.mark.parametrize('kind', sorted(SEGMENT_WORKERS))
def test_step_into_takes_exactly_the_steps_and_episodes_go_on(kind):
    w = segment_worker(kind)
    n_envs = getattr(w, 'n_envs', 1)
    before = w.env_steps
    first = step_batch(w, 7, 0)
    second = step_batch(w, 40, 1)
    assert len(first) == 7 * n_envs and len(second) == 40 * n_envs
    assert w.env_steps - before == 47 * n_envs
    # CartPole runs longer than 7 steps: every episode is cut, and goes on
    # in the next call under the new version.
    assert first.cut.all() and first.starts.all()
    assert first.n_episodes == n_envs
    both = EpisodeBatch.concatenate(first, second)
    both.check()  # no segment twice, none after its episode's end
    for e in range(n_envs):
        [k] = np.flatnonzero((second.episode_ids == first.episode_ids[e]) &
                             ~second.starts)
        later = second.episode(int(k))
        assert later.prior_steps[0] == 7
        assert later.versions[0] == 1
        # The cut segment's last observation is the next one's first.
        np.testing.assert_array_equal(later.observations[0],
                                      first.last_observations[e])
    # Ended episodes count their first segment's steps too.
    stats = both.episode_stats()
    ended = set(stats['episode_ids'].tolist())
    assert ended and ended <= set(both.episode_ids.tolist())
    for episode_id, length in zip(stats['episode_ids'], stats['lengths']):
        assert length == both.lengths[both.episode_ids == episode_id].sum()


def piece_worker(kind, **kwargs):
    """A segment worker, or (``'pool'``) an EnvPoolWorker of CartPole
    behind envpool's interface, whose pool resets an env at a step of its
    own."""
    if kind != 'pool':
        return segment_worker(kind, **kwargs)
    return make_worker(EnvPool('CartPole-v1', make=ListPool, reverse=True),
                       'mlp', EnvPoolWorker, seed=2, n_envs=3, **kwargs)


@pytest.mark.parametrize('kind', ['default', 'pool', 'vec'])
@pytest.mark.parametrize('max_episode_length', [None, 9])
def test_steps_taken_in_pieces_are_the_steps_taken_at_once(
        kind, max_episode_length):
    whole = piece_worker(kind, max_episode_length=max_episode_length)
    pieces = piece_worker(kind, max_episode_length=max_episode_length)
    rng = np.random.default_rng(0)
    for round_number, n_steps in enumerate([7, 40, 23]):
        for w in (whole, pieces):
            w.start_round(round_number, version=round_number,
                          keep_episodes=True)
        at_once, in_pieces = EpisodeBuffer(), EpisodeBuffer()
        whole.step_into(at_once, n_steps)
        pieces.begin_steps(n_steps)
        taken = 1
        while not pieces.continue_steps(in_pieces, int(rng.integers(1, 6))):
            taken += 1
        assert taken > 1
        expected = at_once.to_batch()
        assert in_pieces.to_batch() == expected
        assert (expected.terminated | expected.truncated).any() or \
            round_number == 0
    assert pieces.env_steps == whole.env_steps
    whole.shutdown()
    pieces.shutdown()


@pytest.mark.parametrize('kind', ['default', 'pool', 'vec'])
def test_steps_ended_early_cut_the_segments_and_episodes_go_on(kind):
    w = piece_worker(kind)
    n_envs = getattr(w, 'n_envs', 1)
    w.start_round(0, version=0, keep_episodes=True)
    buffer = EpisodeBuffer()
    w.begin_steps(1000)
    assert not w.continue_steps(buffer, 5)
    w.end_steps(buffer)
    first = buffer.to_batch()
    first.check()
    assert 0 < len(first) <= 5 * n_envs
    assert first.cut.sum() == n_envs  # no CartPole episode ends in 5 steps
    second = step_batch(w, 30, 1)
    assert len(second) == 30 * n_envs  # the 1000 steps are forgotten
    EpisodeBatch.concatenate(first, second).check()
    for e in np.flatnonzero(first.cut):
        [k] = np.flatnonzero((second.episode_ids == first.episode_ids[e]) &
                             ~second.starts)
        assert second.prior_steps[k] == first.prior_steps[e] + \
            first.lengths[e]
        np.testing.assert_array_equal(
            second.observations[second.episode_starts[k]],
            first.last_observations[e])
    w.shutdown()


@pytest.mark.parametrize('kind', sorted(SEGMENT_WORKERS))
def test_max_episode_length_counts_every_segment(kind):
    w = segment_worker(kind, max_episode_length=5)
    first = step_batch(w, 3, 0)
    second = step_batch(w, 3, 1)
    assert first.cut.all()
    # Each episode truncates at its 5th step: 2 steps into the second call.
    ends = second.episode_stats()
    assert ends['lengths'].tolist() == [5] * len(ends['lengths'])
    assert len(ends['lengths']) == first.n_episodes


@pytest.mark.parametrize('kind', sorted(SEGMENT_WORKERS))
def test_a_new_round_abandons_running_episodes_unless_kept(kind):
    w = segment_worker(kind)
    first = step_batch(w, 5, 0)
    w.start_round(1)  # a whole-episode call: fresh episodes
    assert w.in_progress == 0
    batch = w.rollout()
    assert batch.starts.all() and not batch.cut.any()
    assert not set(batch.episode_ids) & set(first.episode_ids)


def test_vec_worker_starts_only_the_episodes_it_may_and_finishes_them():
    w = segment_worker('vec', n_envs=4)
    w.start_round(0)
    buffer, started = EpisodeBuffer(), 0
    while started < 2 or w.in_progress:
        started += w.rollout_into(buffer, max_starts=2 - started)
    assert started == 2
    batch = buffer.to_batch()
    assert batch.n_episodes == 2 and not batch.cut.any()
    # Nothing more to start and nothing running: it returns at once.
    assert w.rollout_into(buffer, max_starts=0) == 0
    assert buffer.n_episodes == 0


class SeedLog(gym.Env):
    """Episodes of 3 steps; records the seed of every reset."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self):
        self.seeds = []
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seeds.append(seed)
        self._t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self._t += 1
        return np.zeros(1, np.float32), 0.0, self._t >= 3, False, {}


@pytest.mark.parametrize('worker_class,args', [(DefaultWorker, None),
                                               (VecWorker, {'n_envs': 2})])
def test_only_new_envs_are_seeded_unless_every_env_is_reseeded(
        worker_class, args):
    worker = make_worker(SeedLog, 'random', worker_class, **(args or {}))
    envs = worker.envs if worker_class is VecWorker else [worker.env]

    def run_round(number, reseed_envs):
        worker.start_round(number, reseed_envs=reseed_envs)
        for env in envs:
            env.seeds.clear()
        for _ in range(2):
            worker.rollout()
        return [env.seeds for env in envs]

    # New envs take the round's seeds at their first reset, and only then.
    first = run_round(0, reseed_envs=False)
    assert all(s[0] is not None and s[1:] == [None] * (len(s) - 1)
               for s in first)
    assert all(s == [None] * len(s) for s in run_round(1, False))
    # Reseeding every env: the first reset of the round is seeded again.
    again = run_round(2, reseed_envs=True)
    assert all(s[0] is not None for s in again)
    # An env update that builds a new env: that env is seeded again.
    worker.update_env(SeedLog)
    envs[:] = worker.envs if worker_class is VecWorker else [worker.env]
    assert all(s[0] is not None for s in run_round(3, False))
    worker.shutdown()
