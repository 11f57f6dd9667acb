"""Multi-agent envs on every backend: a PettingZoo-style ParallelEnv whose
agents come and go, one shared policy or two mapped ones, whole-episode
calls, steps and streams."""

import functools
import os
import re
import time

import numpy as np
import pytest

from helpers import (ComingAndGoingEnv, CountingAgent, closing_samplers,
                     write_atomically)
from sampler import LocalSampler, WorkerError
from workers import MultiAgentBatch, MultiAgentWorker
from workers._multi_agent import SHARED

pytestmark = pytest.mark.timeout(120)

#: Steps of each agent of one ComingAndGoingEnv episode.
STEPS = {'a': 5, 'b': 3, 'c': 2, 'd': 4}


def check_whole_episodes(batch):
    """Every env episode has each of its agents once, with all its steps
    in order and its own rewards; returns the episode ids."""
    segments = {}
    for part in batch.batches.values():
        for segment in part.split():
            key = (int(segment.episode_ids[0]), str(segment.agent_ids[0]))
            assert key not in segments, f'{key} twice'
            segments[key] = segment
    episodes = {e for e, _ in segments}
    for episode in episodes:
        agents = {a: s for (e, a), s in segments.items() if e == episode}
        assert {a: len(s) for a, s in agents.items()} == STEPS
        for name, segment in agents.items():
            first = 1 if name == 'd' else 0
            np.testing.assert_array_equal(
                segment.observations[:, 0],
                np.arange(first, first + len(segment)))
            np.testing.assert_allclose(
                segment.rewards, 'abcd'.index(name) +
                np.arange(first + 1, first + 1 + len(segment)) / 10)
    return episodes


def mapped(env_agent):
    return 'p1' if env_agent in 'ab' else 'p2'


def test_exact_episodes_with_one_shared_policy_match_local(backend):
    with closing_samplers(backend) as make:
        s = make(CountingAgent(), ComingAndGoingEnv(), n_workers=2, seed=3)
        batch = s.obtain_exact_episodes(2)
        assert isinstance(batch, MultiAgentBatch)
        assert list(batch.keys()) == [SHARED]
        assert len(check_whole_episodes(batch)) == 4
        assert batch.n_episodes == 4 and len(batch) == 4 * 14
        assert s.stats['episodes'] == 4
        assert sorted(set(batch.worker_numbers.tolist())) == [0, 1]
    # Reproducible, and the same on every backend.
    with closing_samplers(LocalSampler) as make:
        local = make(CountingAgent(), ComingAndGoingEnv(), n_workers=2,
                     seed=3).obtain_exact_episodes(2)
    assert batch == local


def test_two_mapped_policies_and_a_frozen_one(backend):
    with closing_samplers(backend) as make:
        s = make({'p1': CountingAgent(), 'p2': CountingAgent(offset=1)},
                 ComingAndGoingEnv, n_workers=2, seed=0,
                 policy_mapping=mapped)
        batch = s.obtain_exact_episodes(1)
        assert sorted(batch.keys()) == ['p1', 'p2']
        assert set(batch['p1'].agent_ids.tolist()) == {'a', 'b'}
        assert set(batch['p2'].agent_ids.tolist()) == {'c', 'd'}
        check_whole_episodes(batch)
        # New parameters for p1 only: p2 keeps its own (frozen).
        batch = s.obtain_exact_episodes(1, agent_update={'p1': 1})
        assert s.version == 1
        assert (batch['p1'].agent_infos['offset'] == 1).all()
        assert (batch['p2'].agent_infos['offset'] == 1).all()
        assert set(batch.versions.tolist()) == {1}


def test_obtain_samples_returns_whole_env_episodes(backend):
    with closing_samplers(backend) as make:
        s = make(CountingAgent(), ComingAndGoingEnv, n_workers=2, seed=0)
        seen = set()
        for _ in range(3):
            batch = s.obtain_samples(100)
            assert len(batch) >= 100
            episodes = check_whole_episodes(batch)
            assert not seen & episodes
            seen |= episodes


def join_pieces(batches, worker=None):
    """Per (env episode, agent), its segments from ``batches`` (in call
    order; only worker ``worker``'s if given) joined: ``(observation
    times, rewards, ended)``, checking that each piece goes on where the
    one before it was cut."""
    joined = {}
    for batch in batches:
        batch.check()
        for part in batch.batches.values():
            for segment in part.split():
                if worker is not None and \
                        segment.worker_numbers[0] != worker:
                    continue
                key = (int(segment.episode_ids[0]),
                       str(segment.agent_ids[0]))
                times = segment.observations[:, 0].tolist()
                if key in joined:
                    seen, rewards, ended = joined[key]
                    assert not ended, f'{key} goes on after it ended'
                    assert not segment.starts[0]
                    assert times[0] == seen[-1] + 1, (key, seen, times)
                else:
                    seen, rewards = [], []
                    assert segment.starts[0]
                joined[key] = (seen + times,
                               rewards + segment.rewards.tolist(),
                               not segment.cut[-1])
    return joined


def check_joined(joined):
    """The env episodes all of whose agents ended are whole: each agent's
    steps once, in order, with its own rewards. Returns how many."""
    episodes = {e for e, _ in joined}
    whole = 0
    for episode in episodes:
        agents = {a: v for (e, a), v in joined.items() if e == episode}
        if len(agents) < len(STEPS) or \
                not all(ended for _, _, ended in agents.values()):
            continue
        whole += 1
        for name, (times, rewards, _) in agents.items():
            first = 1 if name == 'd' else 0
            assert times == list(range(first, first + STEPS[name]))
            np.testing.assert_allclose(
                rewards, 'abcd'.index(name) +
                np.arange(first + 1, first + 1 + STEPS[name]) / 10)
    return whole


def test_obtain_steps_steps_every_env_and_cuts_agents_segments(backend):
    with closing_samplers(backend) as make:
        s = make({'p1': CountingAgent(), 'p2': CountingAgent()},
                 ComingAndGoingEnv, n_workers=2, seed=0,
                 policy_mapping=mapped)
        batches = []
        for _ in range(4):
            batch = s.obtain_steps(3)
            assert isinstance(batch, MultiAgentBatch)
            for worker in (0, 1):
                # Its env stepped 3 times: the (episode, time) pairs of
                # every agent's steps.
                env_steps = set()
                for part in batch.batches.values():
                    mine = part.worker_numbers[
                        np.repeat(np.arange(len(part.lengths)),
                                  part.lengths)] == worker
                    ids = np.repeat(part.episode_ids, part.lengths)[mine]
                    env_steps |= set(zip(
                        ids.tolist(), part.observations[mine, 0].tolist()))
                assert len(env_steps) == 3
            batches.append(batch)
        joined = join_pieces(batches)
        # 12 steps of each worker's env: two whole episodes of 5 each.
        assert check_joined(joined) == 4
        assert s.stats['episodes'] == 4
        # Agent 'c' ended at step 2 of the first episode, cut by nobody.
        assert joined[(0, 'c')][2]
        # Reproducible, and the same on every backend.
        with closing_samplers(LocalSampler) as make_local:
            local = make_local({'p1': CountingAgent(), 'p2': CountingAgent()},
                               ComingAndGoingEnv, n_workers=2, seed=0,
                               policy_mapping=mapped)
            assert [local.obtain_steps(3) for _ in range(4)] == batches
        # The episodes go on into whole-episode calls no more: those
        # start afresh.
        check_whole_episodes(s.obtain_exact_episodes(1))


def test_a_stream_of_agents_segments_with_pushes(backend):
    with closing_samplers(backend) as make:
        s = make(CountingAgent(), ComingAndGoingEnv, n_workers=2, seed=0)
        batches = []
        for batch in s.stream(20, timeout=60):
            batches.append(batch)
            assert len(batch) >= 20
            if len(batches) == 3:
                s.push_update(1)
            if len(batches) == 8:
                break
        assert set(batches[-1].versions.tolist()) == {1}
        for worker in (0, 1):
            assert check_joined(join_pieces(batches, worker)) >= 2
        assert s.stats['episodes'] >= 4


def test_an_aec_env_is_refused_with_the_fix(backend):
    class AecEnv(ComingAndGoingEnv):
        def agent_iter(self):
            return iter(self.agents)

        def last(self):
            return None

    with pytest.raises(TypeError, match='aec_to_parallel'):
        backend(CountingAgent(), AecEnv(), n_workers=1)


class CrashOnceEnv(ComingAndGoingEnv):
    """Raises at its 2nd reset while the file ``trigger`` exists (which
    it removes)."""

    def __init__(self, trigger):
        super().__init__()
        self.trigger = trigger
        self.resets = 0

    def reset(self, seed=None, options=None):
        self.resets += 1
        if self.resets == 2:
            try:
                os.remove(self.trigger)  # the first worker there wins
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError('triggered failure')
        return super().reset(seed=seed, options=options)


def test_a_restart_loses_and_repeats_nothing(process_backend, tmp_path):
    trigger = str(tmp_path / 'crash')
    env = functools.partial(CrashOnceEnv, trigger)
    with closing_samplers(process_backend) as make:
        clean = make(CountingAgent(), env, n_workers=2,
                     seed=5).obtain_exact_episodes(3)
        write_atomically(trigger, 'x')
        s = make(CountingAgent(), env, n_workers=2, seed=5,
                 on_worker_error='restart')
        batch = s.obtain_exact_episodes(3)
        assert s.stats['worker_restarts'] == 1
        # The replacement redid the worker's part from the call's seeds.
        assert batch == clean
        check_whole_episodes(batch)
    with closing_samplers(process_backend) as make:
        write_atomically(trigger, 'x')
        s = make(CountingAgent(), env, n_workers=2, seed=5)
        with pytest.raises(WorkerError, match='triggered failure'):
            s.obtain_exact_episodes(3)


class HangOnceEnv(ComingAndGoingEnv):
    """Hangs in every 3rd step while the file ``trigger`` exists (the
    first to hang removes it)."""

    def __init__(self, trigger):
        super().__init__()
        self.trigger = trigger
        self.steps = 0

    def step(self, actions):
        self.steps += 1
        if self.steps % 3 == 0:
            try:
                os.remove(self.trigger)
            except FileNotFoundError:
                pass
            else:
                time.sleep(600)
        return super().step(actions)


def test_a_hung_env_is_replaced_and_nothing_is_lost_or_repeated(
        process_backend, tmp_path):
    trigger = str(tmp_path / 'hang')
    env = functools.partial(HangOnceEnv, trigger)
    with closing_samplers(process_backend) as make:
        clean = make(CountingAgent(), env, n_workers=2,
                     seed=5).obtain_exact_episodes(3)
        write_atomically(trigger, 'x')
        s = make(CountingAgent(), env, n_workers=2, seed=5, step_timeout=1,
                 on_worker_error='restart')
        assert s.obtain_exact_episodes(3) == clean
        assert s.stats['worker_hangs'] == 1
        write_atomically(trigger, 'x')
        batch = s.obtain_samples(100)
        assert s.stats['worker_hangs'] == 2
        check_whole_episodes(batch)
        # Steps: the episode the hung worker ran is lost with it, and
        # every piece of the others goes on where it was cut.
        write_atomically(trigger, 'x')
        steps = [s.obtain_steps(4) for _ in range(3)]
        assert s.stats['worker_hangs'] == 3
        check_joined(join_pieces(steps))


# Real PettingZoo envs (the multiagent extra; mpe2 for the particle envs).


def pursuit():
    from pettingzoo.sisl import pursuit_v5
    return pursuit_v5.parallel_env(max_cycles=500)


def spread():
    from mpe2 import simple_spread_v3
    return simple_spread_v3.parallel_env(max_cycles=500)


class SeededRandom:
    """Random Discrete(5) actions from a generator the worker seeds."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def seed(self, seed):
        self.rng = np.random.default_rng(seed)

    def get_actions(self, observations):
        return self.rng.integers(0, 5, len(observations)), {}

    def get_action(self, observation):
        return int(self.rng.integers(0, 5)), {}


def halves(env_agent):
    """Two policies: the agents with an even number, and the others."""
    return 'even' if int(env_agent.rsplit('_', 1)[1]) % 2 == 0 else 'odd'


@pytest.mark.parametrize('make_env, module, agents', [
    (pursuit, 'pettingzoo.sisl', 8), (spread, 'mpe2', 3)])
def test_pettingzoo_envs_with_two_mapped_policies(backend, make_env, module,
                                                  agents):
    pytest.importorskip(module)
    policies = {'even': SeededRandom(), 'odd': SeededRandom()}
    with closing_samplers(backend) as make:
        s = make(policies, make_env, n_workers=2, seed=1,
                 max_episode_length=20, policy_mapping=halves)
        batch = s.obtain_steps(15)
        assert sorted(batch.keys()) == ['even', 'odd']
        for policy_id, part in batch.items():
            part.check()
            assert {halves(a) for a in part.agent_ids} == {policy_id}
        # 2 envs x 15 steps, every agent in each: one segment per agent
        # and env, cut at the call's end.
        assert len(batch) == 2 * 15 * agents
        assert batch.cut.all() and len(batch.cut) == 2 * agents
        # The episodes end at 20 env steps: each agent's goes on for 5
        # steps and ends truncated, and a new one runs 10 steps, cut.
        batch = s.obtain_steps(15)
        assert len(batch) == 2 * 15 * agents
        ends = ~batch.cut
        lengths = np.concatenate([p.lengths for p in batch.batches.values()])
        assert ends.sum() == 2 * agents and (lengths[ends] == 5).all()
        assert (lengths[~ends] == 10).all() and batch.starts[~ends].all()
        stats = batch.episode_stats()
        assert stats['n_agents'].tolist() == [agents, agents]
    with closing_samplers(LocalSampler) as make:
        local = make({'even': SeededRandom(), 'odd': SeededRandom()},
                     make_env, n_workers=2, seed=1, max_episode_length=20,
                     policy_mapping=halves)
        local.obtain_steps(15)
        assert local.obtain_steps(15) == batch


@pytest.mark.parametrize('make_env, module, agents', [
    (pursuit, 'pettingzoo.sisl', 8), (spread, 'mpe2', 3)])
def test_pettingzoo_envs_on_every_backend(backend, make_env, module,
                                          agents):
    pytest.importorskip(module)
    with closing_samplers(backend) as make:
        # A constructor that is a plain function says nothing of what it
        # builds: worker_class says it (or policy_mapping, below).
        s = make(SeededRandom(), make_env, n_workers=2, seed=1,
                 max_episode_length=20, worker_class=MultiAgentWorker)
        batch = s.obtain_exact_episodes(1)[SHARED]
        # Every agent of both env episodes, 20 steps each, truncated.
        assert batch.n_episodes == 2 * agents
        assert (batch.lengths == 20).all() and batch.truncated.sum() == \
            2 * agents
        assert len(set(zip(batch.episode_ids.tolist(),
                           batch.agent_ids.tolist()))) == 2 * agents
        batch.check()
    with closing_samplers(LocalSampler) as make:
        local = make(SeededRandom(), make_env, n_workers=2, seed=1,
                     max_episode_length=20, policy_mapping=lambda a: SHARED,
                     ).obtain_exact_episodes(1)[SHARED]
    assert batch == local


def test_episode_stats_per_agent_and_per_env_episode():
    with closing_samplers(LocalSampler) as make:
        s = make({'p1': CountingAgent(), 'p2': CountingAgent()},
                 ComingAndGoingEnv, n_workers=1, seed=0,
                 policy_mapping=mapped)
        stats = s.obtain_exact_episodes(2).episode_stats()
        # An agent's return: the sum of agent number + t / 10 over its
        # steps (see ComingAndGoingEnv).
        expected = {}
        for name, steps in STEPS.items():
            first = 1 if name == 'd' else 0
            times = np.arange(first + 1, first + 1 + steps)
            expected[name] = float(np.sum('abcd'.index(name) + times / 10))
        for policy_id, agents in (('p1', 'ab'), ('p2', 'cd')):
            per_agent = stats['agents'][policy_id]
            assert sorted(per_agent['agent_ids'].tolist()) == \
                sorted(list(agents) * 2)
            for agent, value in zip(per_agent['agent_ids'],
                                    per_agent['returns']):
                assert value == pytest.approx(expected[str(agent)])
        assert stats['episode_ids'].tolist() == [0, 1]
        assert stats['n_agents'].tolist() == [4, 4]
        np.testing.assert_allclose(stats['returns'],
                                   [sum(expected.values())] * 2)
        # Steps: an env episode counts in the call where its last
        # agents' segments end.
        counted = []
        for _ in range(4):
            counted += s.obtain_steps(3).episode_stats()[
                'episode_ids'].tolist()
        assert counted == [2, 3]


class SlowEnv(ComingAndGoingEnv):
    def step(self, actions):
        time.sleep(0.05)
        return super().step(actions)


def test_a_steps_call_that_times_out_counts_env_steps(process_backend):
    from sampler import SamplerTimeoutError
    with closing_samplers(process_backend) as make:
        s = make(CountingAgent(), SlowEnv, n_workers=2, seed=0)
        with pytest.raises(SamplerTimeoutError) as caught:
            s.obtain_steps(100, timeout=1)
        # Each env's steps, not its agents' transitions (up to 4 a step).
        have = re.search(r'(\d+) of 200 env steps were collected',
                         str(caught.value))
        assert have and int(have.group(1)) <= 60, str(caught.value)
