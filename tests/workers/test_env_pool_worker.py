"""EnvPoolWorker: a pool of envs with envpool's interface, stepped as one
batch. Most tests use helpers.ListPool (gymnasium envs behind envpool's
interface, with its reset-on-the-next-step), so they need no envpool;
those marked so run envpool itself."""

import numpy as np
import pytest

from helpers import ListPool
from workers import (DefaultWorker, EnvPool, EnvPoolWorker, EpisodeBatch,
                     EpisodeBuffer, MLPAgent, RandomAgent, VecWorker,
                     WorkerFactory)

try:
    import envpool
except ImportError:
    envpool = None

needs_envpool = pytest.mark.skipif(
    envpool is None, reason='envpool is not installed (pip install '
    '"rollout-sampler[bench]" on Linux x86_64, Python 3.11+)')


def pool_worker(task='CartPole-v1', n_envs=4, seed=0, worker_number=0,
                max_episode_length=None, reverse=True, agent='mlp',
                **options):
    factory = WorkerFactory(n_workers=worker_number + 1, seed=seed,
                            max_episode_length=max_episode_length,
                            worker_class=EnvPoolWorker,
                            worker_args={'n_envs': n_envs})
    worker = factory(worker_number)
    make = None if options.pop('real', False) else ListPool
    if make is not None:
        options['reverse'] = reverse
    worker.update_env(EnvPool(task, make=make, **options))
    obs_space, act_space = worker.env_spaces
    worker.update_agent(MLPAgent(obs_space, act_space, seed=1)
                        if agent == 'mlp' else RandomAgent(act_space))
    return worker


def steps_call(worker, n, round_number, keep=True):
    worker.start_round(round_number, keep_episodes=keep, reseed_envs=False)
    buffer = EpisodeBuffer()
    worker.step_into(buffer, n)
    return buffer.to_batch()


def transitions_of(log):
    """(observation, action, next observation) per step of one env's
    log, in order."""
    out, obs = [], None
    for action, next_obs in log:
        if action is not None:
            out.append((obs, action, next_obs))
        obs = next_obs
    return out


def test_every_step_is_a_transition_of_its_env_in_order():
    worker = pool_worker(n_envs=4, max_episode_length=None)
    batches = [steps_call(worker, 30, r) for r in range(3)]
    batch = EpisodeBatch.concatenate(*batches)
    batch.check()
    pool = worker.pool
    # Exactly 90 steps per env, all returned: no step of envpool's
    # reset-on-the-next-step kind was taken.
    assert pool.steps == [90] * 4
    assert len(batch) == 4 * 90
    env_of = batch.env_infos['env_id']
    next_obs = batch.next_observations
    for j in range(4):
        rows = np.flatnonzero(env_of == j)
        expected = transitions_of(pool.log[j])
        assert len(rows) == len(expected) == 90
        for k, (obs, action, after) in zip(rows, expected):
            np.testing.assert_array_equal(batch.observations[k], obs)
            assert batch.actions[k] == action
            np.testing.assert_array_equal(next_obs[k], after)
    # Episodes go on across calls as segments of one episode id.
    stats = batch.episode_stats()
    assert (stats['lengths'] > 0).all()
    worker.shutdown()
    assert pool.closed


def test_a_capped_episode_is_truncated_and_its_env_reset():
    worker = pool_worker(n_envs=3, max_episode_length=5)
    batch = steps_call(worker, 23, 0)
    batch.check()
    whole = batch.starts & ~batch.cut
    assert (batch.lengths[whole] <= 5).all()
    ends = np.cumsum(batch.lengths) - 1
    capped = whole & (batch.lengths == 5)
    assert capped.any()
    assert batch.truncated[ends[capped]].all()
    # Every episode the worker ended began with a reset of its env.
    pool = worker.pool
    starts = sum(action is None for log in pool.log for action, _ in log)
    assert starts == batch.starts.sum()
    worker.shutdown()


def test_whole_episodes_start_no_more_than_allowed_and_idle_envs_rest():
    worker = pool_worker(n_envs=4)
    worker.start_round(0)
    buffer = EpisodeBuffer()
    started = worker.rollout_into(buffer, max_starts=2)
    assert started == 2
    while worker.in_progress:
        assert worker.rollout_into(buffer, max_starts=0) == 0
    batch = buffer.to_batch()
    batch.check()
    assert batch.n_episodes == 2 and batch.starts.all()
    assert not batch.cut.any()
    pool = worker.pool
    assert sorted(pool.steps)[:2] == [0, 0]  # two envs never stepped
    assert sum(pool.steps) == len(batch)
    worker.shutdown()


def test_same_seed_same_batches_other_workers_and_attempts_differ():
    def exact(worker_number=0, attempt=0, seed=3):
        worker = pool_worker(seed=seed, worker_number=worker_number)
        worker.start_round(0, attempt=attempt)
        buffer = EpisodeBuffer()
        while buffer.n_episodes < 4:
            worker.rollout_into(buffer, max_starts=4 - buffer.n_episodes
                                - worker.in_progress)
        worker.shutdown()
        return buffer.to_batch()

    first = exact()
    assert exact() == first
    assert exact(worker_number=1) != first
    assert exact(attempt=1) != first
    assert exact(seed=4) != first


def test_reseeding_rounds_rebuild_the_pool_and_repeat_the_round():
    worker = pool_worker()
    one = steps_call(worker, 20, 5, keep=False)
    pool = worker.pool
    # A round that reseeds every env (as obtain_exact_episodes does)
    # builds the pool anew from the round's seeds.
    worker.start_round(5, reseed_envs=True)
    buffer = EpisodeBuffer()
    worker.step_into(buffer, 20)
    assert worker.pool is not pool and pool.closed
    assert buffer.to_batch().observations.tolist() == \
        one.observations.tolist()
    # A round that keeps episodes keeps the pool.
    pool = worker.pool
    steps_call(worker, 5, 6)
    assert worker.pool is pool
    worker.shutdown()


def test_agent_change_abandons_unreturned_steps_but_not_the_pool():
    worker = pool_worker()
    # Segments cut at a call's end were returned: their episodes go on.
    steps_call(worker, 3, 0)
    pool = worker.pool
    worker.update_agent(worker.agent.get_params())
    assert worker.in_progress == 4
    # Steps not returned yet would mix agents in one segment: abandoned.
    worker.rollout_into(EpisodeBuffer())
    assert worker.in_progress > 0
    worker.update_agent(worker.agent.get_params())
    assert worker.in_progress == 0 and worker.pool is pool
    worker.shutdown()


def test_episodes_go_on_across_calls_with_new_parameters():
    """A call ends with every env's episode cut, not ended: new parameters
    between calls must leave them running, whichever env the pool reset
    late in the call (and so stepped once more than the others)."""
    worker = pool_worker(n_envs=4)
    params = worker.agent.get_params()
    cut, went_on = [], []
    for r in range(12):
        batch = steps_call(worker, 30, r)
        cut.append(int(batch.cut.sum()))
        went_on.append(int((~batch.starts).sum()))
        worker.update_agent(params)
    assert went_on == [0] + cut[:-1]
    assert sum(cut) > 30  # most calls end with every episode running
    worker.shutdown()


def test_outputs_without_a_row_per_env_are_refused():
    worker = pool_worker(agent=lambda obs: 0)
    worker.agent = type('OneRow', (), {
        'get_action': lambda self, o: (0, {}),
        'get_actions': lambda self, o: (np.zeros(1, dtype=np.int64), {})})()
    with pytest.raises(ValueError, match='one row per observation'):
        steps_call(worker, 2, 0)
    assert worker.error_site == 'agent.get_actions output'
    worker.shutdown()


def test_env_updates_that_do_not_fit_the_worker_class_are_refused():
    worker = EnvPoolWorker(seed=0, max_episode_length=None, worker_number=0)
    with pytest.raises(TypeError, match='EnvPoolWorker steps a pool of envs'
                       '.*VecWorker'):
        worker.update_env('CartPole-v1')
    pool = EnvPool('CartPole-v1', make=ListPool)
    for cls in (DefaultWorker, VecWorker):
        with pytest.raises(TypeError, match='worker_class=EnvPoolWorker'):
            cls.check_env_update(pool)
        with pytest.raises(TypeError, match='only an EnvPoolWorker'):
            cls(seed=0, max_episode_length=None,
                worker_number=0).update_env(pool)


@pytest.mark.parametrize('options, pattern', [
    ({'num_envs': 4}, 'num_envs cannot be given'),
    ({'seed': 1, 'batch_size': 2}, 'batch_size, seed cannot be given'),
])
def test_options_the_worker_sets_are_refused(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        EnvPool('CartPole-v1', make=ListPool, **options)


@needs_envpool
def test_unknown_tasks_and_options_are_refused_where_written():
    with pytest.raises(ValueError, match="no task 'ALE/Pong-v5' "
                       "\\(envpool names it 'Pong-v5'\\)"):
        EnvPool('ALE/Pong-v5')
    with pytest.raises(ValueError, match="no task 'Nope-v0' \\(e.g. "):
        EnvPool('Nope-v0')
    with pytest.raises(ValueError, match='does not take the options'):
        EnvPool('CartPole-v1', not_an_option=3)


@needs_envpool
@pytest.mark.parametrize('task, options', [
    ('CartPole-v1', {}),
    ('Hopper-v5', {}),
    ('Pong-v5', {'stack_num': 4, 'img_height': 84, 'img_width': 84}),
])
def test_envpool_pools_give_valid_segments_of_exact_length(task, options):
    worker = pool_worker(task, n_envs=3, agent='random', real=True,
                         **options)
    obs_space, _ = worker.env_spaces
    for r in range(2):
        batch = steps_call(worker, 7, r)
        batch.check()
        assert len(batch) == 21
        assert batch.observations.shape == (21,) + obs_space.shape
        assert batch.observations.dtype == obs_space.dtype
        assert 'players' not in batch.env_infos
        counts = np.bincount(batch.env_infos['env_id'], minlength=3)
        assert counts.tolist() == [7, 7, 7]
    worker.shutdown()


@needs_envpool
@pytest.mark.parametrize('task, options, agent', [
    ('CartPole-v1', {}, 'random'),
    ('Hopper-v5', {}, 'mlp'),
    ('Pong-v5', {'stack_num': 4, 'img_height': 84, 'img_width': 84},
     'random'),
])
def test_the_direct_step_returns_what_envpools_step_does(
        task, options, agent, monkeypatch):
    """The worker steps envpool's pools through their C++ send and
    receive; batches must equal those stepped through envpool's step."""
    import workers.env_pool_worker as module
    real = module._direct_step

    def batches(direct):
        used = []

        def direct_step(pool):
            step = real(pool) if direct else None
            used.append(step is not None)
            return step

        monkeypatch.setattr(module, '_direct_step', direct_step)
        worker = pool_worker(task, n_envs=3, agent=agent, real=True,
                             max_episode_length=40, **options)
        out = [steps_call(worker, 25, r) for r in range(3)]
        worker.start_round(3)
        buffer = EpisodeBuffer()
        worker.rollout_into(buffer)
        out.append(buffer.to_batch())
        worker.shutdown()
        assert used and set(used) == {direct}
        return out

    direct, public = batches(True), batches(False)
    assert any(b.terminated.any() or b.truncated.any() for b in direct)
    for ours, theirs in zip(direct, public):
        assert ours.env_infos.keys() == theirs.env_infos.keys()
        assert ours == theirs


def test_pools_other_than_envpools_are_stepped_by_their_step():
    import workers.env_pool_worker as module
    pool = EnvPool('CartPole-v1', make=ListPool).build(3, 0)
    assert module._direct_step(pool) is None


@needs_envpool
def test_the_direct_step_leaves_actions_of_another_shape_to_envpool():
    import workers.env_pool_worker as module
    pool = EnvPool('CartPole-v1').build(3, 0)
    step = module._direct_step(pool)
    pool.reset()
    # int64 actions are cast, as envpool's step casts them.
    obs, rewards, terminated, truncated, infos = step(np.ones(3, np.int64))
    assert obs.shape == (3, 4) and infos['env_id'].tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError, match='Expected shape'):
        step(np.ones((3, 2), dtype=np.int32))
    pool.close()


class DictObsPool(ListPool):
    """Observations as a dict of arrays, which EnvPoolWorker refuses."""

    def reset(self, env_id=None):
        obs, info = super().reset(env_id)
        return {'x': obs}, info


def test_observations_that_are_not_one_array_are_refused_by_name():
    worker = pool_worker()
    worker.update_env(EnvPool('CartPole-v1', make=DictObsPool))
    with pytest.raises(TypeError, match='returned observations as dict for '
                       '4 envs; EnvPoolWorker needs one array with a row '
                       'per env'):
        steps_call(worker, 2, 0)
    assert worker.error_site == 'env.reset'
    worker.shutdown()
