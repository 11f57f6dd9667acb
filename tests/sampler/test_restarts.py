"""Restarts never return an episode twice, and every episode they let
through has the current version, on every backend; a replacement is
rebuilt from a bounded recipe."""

import functools
import os
import warnings

import numpy as np
import pytest

from helpers import (FailOnceEnv, FirstObsAgent, TaskEnv, TriggeredEnv,
                     closing_samplers, write_atomically)
from sampler import EpisodeBatch, LocalSampler, WorkerError
from workers import EnvUpdate, MLPAgent


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
    seen_ids = set()
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
            # Episode ids are unique over the sampler's life, replacements
            # included.
            ids = batch.episode_ids.tolist()
            assert len(set(ids)) == len(ids)
            assert not seen_ids & set(ids), f'call {call}'
            seen_ids.update(ids)
            assert set(batch.versions.tolist()) == {s.version}, f'call {call}'
        # Every planned failure happened, and nothing else failed.
        assert not [t for t in triggers if t.exists()]
        assert s.stats['worker_restarts'] == failures


class SetGoal(EnvUpdate):
    """Sets the TaskEnv's goal absolutely; ``overrides`` says so."""

    def __init__(self, goal, overrides):
        self.goal = goal
        self.overrides = overrides

    def __call__(self, old_env):
        env = old_env if old_env is not None else TaskEnv()
        env.set_task(self.goal)
        return env


def test_a_restart_recipe_keeps_only_the_env_updates_that_matter(tmp_path):
    marker = str(tmp_path / 'failed')

    def failing_once():
        return FailOnceEnv(marker)

    with closing_samplers(LocalSampler) as make:
        s = make(FirstObsAgent(), TaskEnv, n_workers=1, seed=0,
                 on_worker_error='restart')
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # no warning: the run is bounded
            for goal in range(150):
                s.obtain_exact_episodes(1, env_update=SetGoal(goal, True))
        assert len(s._recipes[0].envs) == 2  # TaskEnv, then the last goal
        # A new env forgets the rest; the replacement is built from it.
        s.obtain_exact_episodes(1, env_update=failing_once)
        assert s.stats['worker_restarts'] == 1
        assert len(s._recipes[0].envs) == 1
        s.obtain_exact_episodes(1, env_update=TaskEnv)
        s.obtain_exact_episodes(1, env_update=SetGoal(7.0, True))
        with pytest.warns(ResourceWarning, match='^a worker restart would '
                          'replay 101 env updates of type SetGoal; set '
                          'replaces_env = True'):
            for goal in range(100):
                s.obtain_exact_episodes(1, env_update=SetGoal(goal, False))


def test_a_replacement_gets_the_last_overriding_update(tmp_path):
    marker = str(tmp_path / 'failed')
    with closing_samplers(LocalSampler) as make:
        s = make(FirstObsAgent(), TaskEnv, n_workers=1, seed=0,
                 on_worker_error='restart')
        for goal in (1.0, 2.0, 3.0):
            batch = s.obtain_exact_episodes(1, env_update=SetGoal(goal, True))
        assert batch.rewards.tolist() == [3.0]
        crash = CrashOnceAgent(marker)
        batch = s.obtain_exact_episodes(1, agent_update=crash)
        assert s.stats['worker_restarts'] == 1
        assert batch.rewards.tolist() == [3.0]


class CrashOnceAgent:
    """Action 0; raises on its first action anywhere (a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def get_action(self, observation):
        if not os.path.exists(self.marker):
            open(self.marker, 'w').close()
            raise RuntimeError('failing once')
        return 0, {}


@pytest.mark.timeout(60)
def test_replacements_that_cannot_start_count_as_restarts(make_sampler):
    def no_licence():
        raise OSError('no simulator licence')
    s = make_sampler(FirstObsAgent(), 'CartPole-v1', n_workers=1, seed=0,
                     on_worker_error='restart', max_restarts=3)
    # Every replacement replays the update that failed: three restarts,
    # then the failure is raised, never an endless loop.
    with pytest.raises(WorkerError, match='OSError: no simulator licence'):
        s.obtain_exact_episodes(1, env_update=no_licence, timeout=30)
    assert s.stats['worker_restarts'] == 3
