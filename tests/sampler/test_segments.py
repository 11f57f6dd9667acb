"""Envs that keep running (obtain_steps), and whole-episode calls that do
not favour short episodes; on every backend, with one set of rules."""

import dataclasses
import functools
import os
import signal
import threading
import time

import gymnasium as gym
import numpy as np
import pytest

from helpers import CountingEnv, ListPool, TriggeredEnv, write_atomically
from sampler import EpisodeBatch, LocalSampler, SamplerTimeoutError
from sampler._call import Collector
from test_restarts import identical_pairs
from workers import (DefaultWorker, EnvPool, EnvPoolWorker, MLPAgent,
                     RandomAgent, VecWorker)

# (worker class, worker args, CartPole as that worker takes it); the pool
# is CartPole behind envpool's interface, which needs no envpool.
WORKER_KINDS = {
    'default': (DefaultWorker, None, 'CartPole-v1'),
    'vec': (VecWorker, {'n_envs': 3}, 'CartPole-v1'),
    'pool': (EnvPoolWorker, {'n_envs': 3},
             EnvPool('CartPole-v1', make=ListPool, reverse=True))}


def cartpole_sampler(make, kind, **kwargs):
    worker_class, args, cartpole = WORKER_KINDS[kind]
    env = gym.make('CartPole-v1')
    agent = MLPAgent(env.observation_space, env.action_space, seed=0)
    return make(agent, cartpole, n_workers=2, seed=3,
                worker_class=worker_class, worker_args=args, **kwargs), agent


def abandon(sampler, how, count):
    """Start ``obtain_steps(count)`` and give up on it after 0.5 s: by
    its timeout, or by Ctrl-C."""
    if how == 'timeout':
        with pytest.raises(SamplerTimeoutError):
            sampler.obtain_steps(count, timeout=0.5)
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            sampler.obtain_steps(count)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('how', ['timeout', 'ctrl-c'])
@pytest.mark.parametrize('kind', ['default', 'vec'])
def test_the_call_after_an_abandoned_obtain_steps_is_not_held_up(
        process_backend, kind, how):
    worker_class, args = {'default': (DefaultWorker, None),
                          'vec': (VecWorker, {'n_envs': 2})}[kind]
    with process_backend(lambda obs: 0, functools.partial(CountingEnv, 0.01),
                         n_workers=2, seed=0, worker_class=worker_class,
                         worker_args=args) as s:
        s.obtain_steps(2)
        abandon(s, how, 1000)  # 10 s of steps, given up after 0.5 s
        began = time.monotonic()
        batch = s.obtain_steps(20)
        took = time.monotonic() - began
        # Workers that finished the abandoned call first took 10 s.
        assert took < 1.0, f'the next call took {took:.1f} s'
        assert len(batch) == 20 * s.n_envs
        assert s.stats['discarded_transitions'] > 0
        assert s.stats['env_steps'] < 1000 * s.n_envs
        # Segments of the abandoned call were cut where it was given up,
        # and their episodes went on: a segment's first observation counts
        # its episode's steps before it.
        batch.check()
        np.testing.assert_array_equal(
            batch.observations[batch.episode_starts, 0], batch.prior_steps)
        again = s.obtain_steps(5)
        EpisodeBatch.concatenate(batch, again).check()


@pytest.mark.parametrize('kind', sorted(WORKER_KINDS))
def test_obtain_steps_returns_every_step_and_episodes_go_on(make_sampler,
                                                            kind):
    s, agent = cartpole_sampler(make_sampler, kind)
    first = s.obtain_steps(7, agent_update=agent.get_params())
    assert len(first) == s.n_envs * 7
    assert set(first.versions.tolist()) == {1}
    second = s.obtain_steps(40, agent_update=agent.get_params())
    assert len(second) == s.n_envs * 40
    assert set(second.versions.tolist()) == {2}
    # A third call, after one in which episodes ended (and a pool reset
    # some envs at a step of their own).
    third = s.obtain_steps(10, agent_update=agent.get_params())
    assert s.stats['env_steps'] == s.stats['transitions'] == s.n_envs * 57
    EpisodeBatch.concatenate(first, second, third).check()  # no segment
    # twice, none after its episode's end.
    # Every episode cut in a call goes on in the next: the same id, not a
    # start, its steps counted on, from the observation it was cut at.
    for before, after in ((first, second), (second, third)):
        for e in np.flatnonzero(before.cut):
            [k] = np.flatnonzero(after.episode_ids == before.episode_ids[e])
            assert not after.starts[k]
            assert after.prior_steps[k] == before.prior_steps[e] + \
                before.lengths[e]
            np.testing.assert_array_equal(
                after.observations[after.episode_starts[k]],
                before.last_observations[e])
    assert first.cut.sum() == s.n_envs  # CartPole outlives 7 steps
    assert second.episode_stats()['lengths'].min() > 7
    assert second.terminated.any() and second.cut.sum() == s.n_envs


def test_an_env_update_starts_new_episodes(make_sampler):
    s, _ = cartpole_sampler(make_sampler, 'vec')
    first = s.obtain_steps(5)
    after = s.obtain_steps(5, env_update='CartPole-v1')
    assert after.starts.all()
    assert not set(after.episode_ids.tolist()) & \
        set(first.episode_ids.tolist())


def run_sequence(sampler, agent):
    """A fixed mix of calls, with updates."""
    params = agent.get_params()
    return [sampler.obtain_steps(6, agent_update=params),
            sampler.obtain_exact_episodes(2),
            sampler.obtain_steps(4),
            sampler.obtain_steps(9, agent_update=params)]


@pytest.mark.parametrize('kind', sorted(WORKER_KINDS))
def test_steps_and_exact_episodes_are_the_same_on_every_backend(
        make_sampler, kind):
    s, agent = cartpole_sampler(make_sampler, kind)
    ours = run_sequence(s, agent)
    worker_class, args, cartpole = WORKER_KINDS[kind]
    with LocalSampler(agent, cartpole, n_workers=2, seed=3,
                      worker_class=worker_class, worker_args=args) as local:
        reference = run_sequence(local, agent)
    for got, expected in zip(ours, reference):
        assert got == expected


def test_a_restart_in_obtain_steps_loses_and_repeats_nothing(make_sampler,
                                                             tmp_path):
    triggers = [tmp_path / 'trigger-0', tmp_path / 'trigger-1']
    agent = RandomAgent(TriggeredEnv.action_space)
    s = make_sampler(agent, [functools.partial(TriggeredEnv, t)
                             for t in triggers],
                     seed=0, on_worker_error='restart', max_restarts=1,
                     worker_class=VecWorker, worker_args={'n_envs': 2})
    s.obtain_steps(20)
    write_atomically(triggers[1], 'raise 3')
    batch = s.obtain_steps(40)
    assert s.stats['worker_restarts'] == 1 and not triggers[1].exists()
    assert len(batch) == s.n_envs * 40
    assert batch.lengths[batch.worker_numbers == 1].sum() == 2 * 40
    assert identical_pairs(batch) == []
    # The replacement's envs are new: its episodes start in this call.
    assert batch.starts[batch.worker_numbers == 1].all()
    EpisodeBatch.concatenate(batch).check()


def test_a_pool_worker_restart_in_obtain_steps_loses_and_repeats_nothing(
        make_sampler, tmp_path):
    trigger = tmp_path / 'trigger'
    agent = RandomAgent(gym.make('CartPole-v1').action_space)
    s = make_sampler(agent, EnvPool('CartPole-v1', make=ListPool,
                                    trigger=str(trigger)),
                     n_workers=2, seed=0, on_worker_error='restart',
                     max_restarts=1, worker_class=EnvPoolWorker,
                     worker_args={'n_envs': 2})
    first = s.obtain_steps(20)
    write_atomically(trigger, '')
    batch = s.obtain_steps(40)
    assert s.stats['worker_restarts'] == 1 and not trigger.exists()
    assert len(batch) == s.n_envs * 40
    assert s.stats['transitions'] == s.n_envs * 60
    assert identical_pairs(EpisodeBatch.concatenate(first, batch)) == []
    EpisodeBatch.concatenate(first, batch).check()


# Whole episodes are not chosen by how soon they end --------------------------

@pytest.fixture(scope='module')
def plain_loop_mean_length():
    """Mean CartPole episode length of a random policy, from a plain loop
    over 8,000 episodes."""
    env = gym.make('CartPole-v1')
    env.action_space.seed(1)
    lengths = []
    env.reset(seed=1)
    for _ in range(8000):
        env.reset()
        t, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(
                env.action_space.sample())
            t += 1
            done = terminated or truncated
        lengths.append(t)
    return float(np.mean(lengths))


@pytest.mark.timeout(240)
@pytest.mark.parametrize('kind', ['vec', 'pool'])
@pytest.mark.parametrize('call', ['obtain_samples', 'obtain_exact_episodes'])
def test_mean_episode_length_matches_a_plain_loop(make_sampler, call, kind,
                                                  plain_loop_mean_length):
    env = gym.make('CartPole-v1')
    worker_class, _, cartpole = WORKER_KINDS[kind]
    s = make_sampler(RandomAgent(env.action_space), cartpole,
                     n_workers=2, seed=0, worker_class=worker_class,
                     worker_args={'n_envs': 16})
    lengths = []
    while len(lengths) < 8000:
        batch = s.obtain_samples(200) if call == 'obtain_samples' \
            else s.obtain_exact_episodes(4)
        assert batch.starts.all() and not batch.cut.any()
        lengths.extend(batch.lengths.tolist())
    ours = float(np.mean(lengths))
    # 8,000 episodes a side: the standard error of the difference is
    # about 0.9% of the mean, so 3% is well outside chance.
    assert abs(ours / plain_loop_mean_length - 1) < 0.03, \
        (ours, plain_loop_mean_length)


def test_every_backend_follows_the_one_set_of_call_rules(make_sampler,
                                                         monkeypatch):
    # Change two rules of the Collector, the only place they live: every
    # backend must follow, on the caller's side and in its workers.
    asked = Collector.round_start
    monkeypatch.setattr(Collector, 'round_start', lambda self, worker:
                        dataclasses.replace(asked(self, worker), episodes=1))
    kept = Collector.batches
    monkeypatch.setattr(Collector, 'batches', lambda self: [
        b for b in kept(self) if set(b.worker_numbers.tolist()) == {1}])
    s, _ = cartpole_sampler(make_sampler, 'vec')
    batch = s.obtain_exact_episodes(3)
    assert batch.n_episodes == 1 and batch.worker_numbers.tolist() == [1]
