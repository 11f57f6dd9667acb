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


class EpisodeBuffer:
    """Completed episodes, kept as the lists their steps were recorded in
    until :meth:`to_batch` stacks them all at once.

    One array per field for many episodes costs a fraction of one array
    per field per episode followed by a concatenation, and per-episode
    numpy calls are what short episodes are made of.
    """

    __slots__ = ('_episodes', 'transitions')

    def __init__(self):
        self._episodes = []
        self.transitions = 0

    def add(self, record, last_observation, terminated, truncated, version,
            worker_number):
        """Add a completed episode (``record`` is not copied)."""
        self._episodes.append((record, last_observation, terminated,
                               truncated, version, worker_number))
        self.transitions += len(record)

    @property
    def n_episodes(self):
        return len(self._episodes)

    def keep_first(self, n_episodes):
        """Drop all but the first ``n_episodes``; return how many went."""
        dropped = self._episodes[n_episodes:]
        del self._episodes[n_episodes:]
        self.transitions -= sum(len(e[0]) for e in dropped)
        return len(dropped)

    def to_batch(self):
        """One EpisodeBatch of every episode held, in order; the buffer is
        emptied. Valid by construction: one row per recorded step, flags
        only on each episode's last step."""
        episodes, self._episodes = self._episodes, []
        self.transitions = 0
        if not episodes:
            msg = 'EpisodeBuffer.to_batch: the buffer holds no episode'
            raise ValueError(msg)
        records = [e[0] for e in episodes]
        lengths = np.array([len(r) for r in records], dtype=np.int64)
        n = int(lengths.sum())
        ends = np.cumsum(lengths) - 1
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        terminated[ends] = [e[2] for e in episodes]
        truncated[ends] = [e[3] for e in episodes]

        def steps(field):
            if len(records) == 1:
                return getattr(records[0], field)
            return [x for r in records for x in getattr(r, field)]

        return EpisodeBatch._unchecked(
            observations=_nest.stack(steps('observations')),
            actions=_nest.stack(steps('actions')),
            rewards=np.asarray(steps('rewards'), dtype=np.float64),
            terminated=terminated,
            truncated=truncated,
            last_observations=_nest.stack([e[1] for e in episodes]),
            lengths=lengths,
            env_infos=_nest.stack_infos(steps('env_infos')),
            agent_infos=_nest.stack_infos(steps('agent_infos')),
            episode_infos=_nest.stack_infos([r.reset_info for r in records]),
            versions=np.array([e[4] for e in episodes], dtype=np.int64),
            worker_numbers=np.array([e[5] for e in episodes],
                                    dtype=np.int64))
