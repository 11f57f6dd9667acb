"""Restarts never return an episode twice, and every episode they let
through has the current version; on every backend."""

import functools

import numpy as np
import pytest

from helpers import TriggeredEnv, closing_samplers, write_atomically
from sampler import EpisodeBatch, LocalSampler
from workers import MLPAgent


def identical_pairs(batch):
    """Pairs of segments of ``batch`` with equal observations, actions and
    rewards."""
    seen, pairs = {}, []
    for i, segment in enumerate(batch.split()):
        key = (segment.observations.tobytes(), segment.actions.tobytes(),
               segment.rewards.tobytes())
        if key in seen:
            pairs.append((seen[key], i))
        seen.setdefault(key, i)
    return pairs


#: Call number -> how each worker fails in it: (how, at which of its resets
#: from then). Both workers fail early in the same call, so the call cannot
#: finish before both replacements have added episodes of their own.
FAILURE_PLAN = {2: [('raise', 4), ('raise', 5)],
                11: [('kill', 5), ('raise', 4)],
                23: [('raise', 5), ('kill', 4)],
                37: [('kill', 4), ('kill', 5)]}


@pytest.mark.timeout(240)
def test_restart_soak_returns_no_episode_twice(backend, tmp_path):
    triggers = [tmp_path / f'trigger-{i}' for i in range(2)]
    agent = MLPAgent(TriggeredEnv.observation_space,
                     TriggeredEnv.action_space, hidden_sizes=(8,), seed=0)
    rng = np.random.default_rng(0)
    failures = 2 * len(FAILURE_PLAN)
    with closing_samplers(backend) as make:
        s = make(agent, [functools.partial(TriggeredEnv, t)
                         for t in triggers],
                 seed=0, on_worker_error='restart', max_restarts=failures)
        for call in range(60):
            for trigger, (how, at) in zip(triggers,
                                          FAILURE_PLAN.get(call, ())):
                if backend is LocalSampler:
                    how = 'raise'  # a kill would end the test's process
                write_atomically(trigger, f'{how} {at}')
            params = {k: v + 0.05 * rng.standard_normal(v.shape)
                      for k, v in agent.get_params().items()}
            batch = s.obtain_samples(300, agent_update=params)
            if call == 0:  # the check can fail
                assert identical_pairs(EpisodeBatch.concatenate(batch, batch))
            assert len(batch) >= 300
            assert identical_pairs(batch) == [], f'call {call}'
            assert set(batch.versions.tolist()) == {s.version}, f'call {call}'
        # Every planned failure happened, and nothing else failed.
        assert not [t for t in triggers if t.exists()]
        assert s.stats['worker_restarts'] == failures
