"""Collecting one episode's steps and turning them into an EpisodeBatch."""

import numpy as np

from workers import _nest
from workers.episode_batch import EpisodeBatch


def copy_nest(obs):
    if isinstance(obs, np.ndarray):
        return obs.copy()
    return _nest.map_nest(
        lambda x: x.copy() if isinstance(x, np.ndarray) else x, obs)


def reuses_buffers(first, second):
    """True if the env returned the same array object twice in a row, which
    means it overwrites its observation in place: stored steps must then be
    copies, or every row would end up holding the last observation."""
    if isinstance(first, np.ndarray):
        return first is second
    if _nest.is_branch(first):
        pairs = zip(_nest.leaves(first), _nest.leaves(second))
        return any(isinstance(a, np.ndarray) and a is b
                   for (_, a), (_, b) in pairs)
    return False


class EpisodeRecord:
    """The steps of one episode in progress."""

    __slots__ = ('observations', 'actions', 'rewards', 'env_infos',
                 'agent_infos', 'reset_info')

    def __init__(self, reset_info):
        self.observations = []
        self.actions = []
        self.rewards = []
        self.env_infos = []
        self.agent_infos = []
        self.reset_info = reset_info

    def __len__(self):
        return len(self.rewards)

    def to_batch(self, last_observation, terminated, truncated, version,
                 worker_number):
        n = len(self.rewards)
        term = np.zeros(n, dtype=bool)
        trunc = np.zeros(n, dtype=bool)
        term[-1] = terminated
        trunc[-1] = truncated
        # Valid by construction: one step per row, flags only on the last.
        return EpisodeBatch._unchecked(
            observations=_nest.stack(self.observations),
            actions=_nest.stack(self.actions),
            rewards=np.asarray(self.rewards, dtype=np.float64),
            terminated=term,
            truncated=trunc,
            last_observations=_nest.stack([last_observation]),
            lengths=np.array([n]),
            env_infos=_nest.stack_infos(self.env_infos),
            agent_infos=_nest.stack_infos(self.agent_infos),
            episode_infos=_nest.stack_infos([self.reset_info]),
            versions=np.array([version]),
            worker_numbers=np.array([worker_number]))
