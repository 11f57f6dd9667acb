"""MultiAgentWorker: PettingZoo's Parallel API in a worker, agents that
come and go, one shared policy or several mapped ones."""

import numpy as np
import pytest
from gymnasium import spaces

from helpers import ComingAndGoingEnv, CountingAgent
from workers import EpisodeBatch
from workers._multi_agent import (SHARED, MultiAgentBatch, MultiAgentBuffer,
                                  MultiAgentWorker, is_parallel_env)


def make_worker(agent, mapping=None, seed=0, **kwargs):
    worker = MultiAgentWorker(seed=seed, max_episode_length=None,
                              worker_number=0, policy_mapping=mapping,
                              **kwargs)
    worker.update_env(ComingAndGoingEnv)
    worker.update_agent(agent)
    return worker


def one_episode(worker):
    buffer = MultiAgentBuffer()
    assert worker.rollout_into(buffer) == 1
    assert buffer.n_episodes == 1
    return buffer.to_batch()


def by_agent(batch):
    """Agent id -> its one segment of ``batch`` (an EpisodeBatch)."""
    return {s.agent_ids[0]: s for s in batch.split()}


def test_every_agent_steps_once_in_order_with_its_own_rewards():
    agent = CountingAgent()
    batch = one_episode(make_worker(agent))
    assert isinstance(batch, MultiAgentBatch)
    assert list(batch.keys()) == [SHARED]
    shared = batch[SHARED]
    segments = by_agent(shared)
    # Steps of each agent: while it was in env.agents.
    lengths = {a: len(s) for a, s in segments.items()}
    assert lengths == {'a': 5, 'b': 3, 'c': 2, 'd': 4}
    assert len(batch) == 14 and batch.n_episodes == 1
    # One env episode: one id; each agent's steps in order from its
    # first observation.
    assert set(shared.episode_ids.tolist()) == {0}
    for name, segment in segments.items():
        first = 1 if name == 'd' else 0
        np.testing.assert_array_equal(segment.observations[:, 0],
                                      np.arange(first, first + len(segment)))
        assert (segment.observations[:, 1] == 'abcd'.index(name)).all()
        np.testing.assert_allclose(
            segment.rewards, 'abcd'.index(name) +
            np.arange(first + 1, first + 1 + len(segment)) / 10)
        np.testing.assert_array_equal(segment.env_infos['echo'],
                                      segment.actions)
        assert segment.last_observations[0, 0] == first + len(segment)
    # 'c' and the last two terminated; 'b' left without a flag:
    # truncated, so a learner bootstraps it.
    assert segments['c'].terminated[-1] and segments['a'].terminated[-1]
    assert segments['b'].truncated[-1] and not segments['b'].terminated[-1]
    # All live agents' observations went to one call per step.
    assert agent.calls[0] == [0, 1, 2] and agent.calls[1] == [0, 1, 2, 3]
    assert agent.calls[2] == [0, 1, 3] and agent.calls[3] == [0, 3]
    shared.check()


def test_two_policies_act_for_the_agents_mapped_to_them():
    first, second = CountingAgent(), CountingAgent(offset=1)
    worker = make_worker({'p1': first, 'p2': second},
                         mapping=lambda a: 'p1' if a in 'ab' else 'p2')
    assert set(worker.env_spaces) == {'p1', 'p2'}
    batch = one_episode(worker)
    assert sorted(batch.keys()) == ['p1', 'p2']
    assert sorted(batch['p1'].agent_ids.tolist()) == ['a', 'b']
    assert sorted(batch['p2'].agent_ids.tolist()) == ['c', 'd']
    assert first.calls[0] == [0, 1] and second.calls[0] == [2]
    assert (batch['p2'].agent_infos['offset'] == 1).all()
    # A policy left out of new parameters keeps its own (frozen).
    worker.update_agent({'p1': 1})
    assert (first.offset, second.offset) == (1, 1)
    with pytest.raises(KeyError, match="policy 'p3', which is not one of"):
        worker.update_agent({'p3': 0})


def test_episodes_are_reproducible_from_the_seed_and_ids_go_on():
    a, b = make_worker(CountingAgent()), make_worker(CountingAgent())
    assert one_episode(a) == one_episode(b)
    other = make_worker(CountingAgent(), seed=1)
    assert one_episode(other) != one_episode(make_worker(CountingAgent()))
    second, third = one_episode(a), one_episode(a)
    assert set(second[SHARED].episode_ids.tolist()) == {1}
    joined = MultiAgentBatch.concatenate(second, third)
    assert joined.n_episodes == 2 and len(joined) == 28
    assert isinstance(joined[SHARED], EpisodeBatch)


def test_max_episode_length_truncates_every_agent_still_in():
    worker = MultiAgentWorker(seed=0, max_episode_length=2, worker_number=0)
    worker.update_env(ComingAndGoingEnv)
    worker.update_agent(CountingAgent())
    segments = by_agent(one_episode(worker)[SHARED])
    assert {a: len(s) for a, s in segments.items()} == \
        {'a': 2, 'b': 2, 'c': 2, 'd': 1}
    assert segments['c'].terminated[-1]  # its own end came first
    assert segments['a'].truncated[-1] and segments['d'].truncated[-1]


def test_envs_and_agents_it_cannot_take_are_refused():
    class AecEnv(ComingAndGoingEnv):
        agent_selection = 'a'

        def agent_iter(self):
            return iter(self.agents)

        def last(self):
            return None

    worker = MultiAgentWorker(seed=0, max_episode_length=None,
                              worker_number=0)
    with pytest.raises(TypeError, match='aec_to_parallel'):
        worker.update_env(AecEnv)
    with pytest.raises(TypeError, match='steps PettingZoo ParallelEnvs'):
        worker.update_env('CartPole-v1')
    assert is_parallel_env(ComingAndGoingEnv())
    with pytest.raises(ValueError, match='needs policy_mapping'):
        worker.update_agent({'p1': CountingAgent()})


def test_one_policy_needs_one_space_for_its_agents():
    class Mixed(ComingAndGoingEnv):
        def observation_space(self, agent):
            size = 4 if agent == 'd' else 3
            return spaces.Box(-100, 100, (size,), np.float32)

    worker = MultiAgentWorker(seed=0, max_episode_length=None,
                              worker_number=0)
    worker.update_env(Mixed)
    worker.update_agent(CountingAgent())
    with pytest.raises(ValueError, match=(
            r"env agents 'a' and 'd' both act under policy 'shared' but "
            r"have the spaces")):
        worker.env_spaces


def test_a_pettingzoo_env_runs(tmp_path):
    sisl = pytest.importorskip('pettingzoo.sisl')
    worker = MultiAgentWorker(seed=0, max_episode_length=20,
                              worker_number=0)
    worker.update_env(lambda: sisl.pursuit_v5.parallel_env())
    space = worker.env.action_space(worker.env.possible_agents[0])

    class Random:
        def get_actions(self, observations):
            return np.array([space.sample() for _ in observations]), {}

        def get_action(self, observation):
            return space.sample(), {}

    worker.update_agent(Random())
    batch = one_episode(worker)[SHARED]
    assert len(set(batch.agent_ids.tolist())) == 8
    assert (batch.lengths == 20).all() and batch.truncated.sum() == 8
    worker.shutdown()
