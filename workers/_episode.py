"""Collecting one episode's steps and turning them into an EpisodeBatch."""

import itertools
from typing import Any, NamedTuple

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


BATCHED = frozenset(['observations', 'actions', 'agent_infos'])
#: What an EnvPoolWorker records batched: its envs' infos come as one
#: dict of arrays per step too.
BATCHED_WITH_ENV_INFOS = BATCHED | {'env_infos'}


class EpisodeRecord:
    """The steps of one segment of an episode in progress.

    ``episode_id`` names the episode; ``prior_steps`` and ``prior_return``
    are what the episode took and gathered before this segment (0 for an
    episode's first segment), so that a segment cut at a call's end can be
    continued by a new record in the next call.

    With ``column=None`` each entry of ``observations``, ``actions`` and
    ``agent_infos`` is one step's value. A batched worker records instead,
    per step, the batched nest its agent saw or returned for every env at
    once (the same object in the records of all its envs) and this
    episode's row of it, ``column``: appending a shared reference costs
    less than slicing out a row, and gathering rows from a few large arrays
    at :meth:`EpisodeBuffer.to_batch` costs far less than stacking many
    small ones scattered through memory. ``batched`` names the fields recorded
    that way (``env_infos`` too for a pool of envs that reports them as
    one dict of arrays).
    """

    __slots__ = ('observations', 'actions', 'rewards', 'env_infos',
                 'agent_infos', 'reset_info', 'column', 'episode_id',
                 'prior_steps', 'prior_return', 'batched', 'agent_id')

    def __init__(self, reset_info, column=None, episode_id=0, prior_steps=0,
                 prior_return=0.0, batched=BATCHED, agent_id=None):
        self.observations = []
        self.actions = []
        self.rewards = []
        self.env_infos = []
        self.agent_infos = []
        self.reset_info = reset_info
        self.column = column
        self.episode_id = episode_id
        self.prior_steps = prior_steps
        self.prior_return = prior_return
        self.batched = batched
        self.agent_id = agent_id  # the env agent's, in a multi-agent env

    def continuation(self):
        """An empty record for the next segment of the same episode."""
        return EpisodeRecord(self.reset_info, self.column, self.episode_id,
                             self.prior_steps + len(self.rewards),
                             self.prior_return + float(sum(self.rewards)),
                             self.batched, self.agent_id)

    def __len__(self):
        return len(self.rewards)

    def rows(self, field):
        """The per-step values of ``field``, sliced out of batched steps."""
        steps = getattr(self, field)
        if self.column is None or field not in self.batched:
            return steps
        return [_nest.index(step, self.column) for step in steps]


class _Segment(NamedTuple):
    """One segment an :class:`EpisodeBuffer` holds."""

    record: Any  # its steps, as recorded
    last_observation: Any
    terminated: bool
    truncated: bool
    version: int
    worker_number: int
    cut: bool


class EpisodeBuffer:
    """Completed segments (whole episodes, or the part of a running one a
    call ends), kept as the lists their steps were recorded in until
    :meth:`to_batch` stacks them all at once.

    One array per field for many episodes costs a fraction of one array
    per field per episode followed by a concatenation, and per-episode
    numpy calls are what short episodes are made of.
    """

    __slots__ = ('_episodes', 'transitions')

    def __init__(self):
        self._episodes = []
        self.transitions = 0

    def add(self, record, last_observation, terminated, truncated, version,
            worker_number, cut=False):
        """Add a segment (``record`` is not copied): a whole episode, the
        end of one, or with ``cut=True`` a part after which it goes on."""
        self._episodes.append(_Segment(record, last_observation, terminated,
                                       truncated, version, worker_number,
                                       cut))
        self.transitions += len(record)

    @property
    def n_episodes(self):
        return len(self._episodes)

    def keep_first(self, n_episodes):
        """Drop all but the first ``n_episodes``; return how many went."""
        dropped = self._episodes[n_episodes:]
        del self._episodes[n_episodes:]
        self.transitions -= sum(len(e.record) for e in dropped)
        return len(dropped)

    def to_batch(self, observations_out=None):
        """One EpisodeBatch of every episode held, in order; the buffer is
        emptied. Valid by construction: one row per recorded step, flags
        only on each episode's last step.

        ``observations_out``: an array ``(rows, *observation_shape)`` to write
        the observations into (they must be plain arrays), e.g. shared
        memory the caller reads them from; each is copied into it once.
        """
        episodes, self._episodes = self._episodes, []
        self.transitions = 0
        if not episodes:
            msg = 'EpisodeBuffer.to_batch: the buffer holds no episode'
            raise ValueError(msg)
        records = [e.record for e in episodes]
        lengths = np.array([len(r) for r in records], dtype=np.int64)
        n = int(lengths.sum())
        ends = np.cumsum(lengths) - 1
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        terminated[ends] = [e.terminated for e in episodes]
        truncated[ends] = [e.truncated for e in episodes]

        def steps(field):
            if len(records) == 1:
                return records[0].rows(field)
            return list(itertools.chain.from_iterable(
                r.rows(field) for r in records))

        like = None
        try:
            if all(r.column is not None for r in records):
                obs_steps = _Steps(records, 'observations', lengths)
                observations = obs_steps.gather() \
                    if observations_out is None else \
                    obs_steps.gather_into(observations_out)
                # An EnvPoolWorker's records hold one object per step in
                # every field, so the steps are told apart once.
                like = obs_steps if all('env_infos' in r.batched
                                        for r in records) else None
                actions = _Steps(records, 'actions', lengths, like).gather()
                agent_infos = _gather_infos(records, lengths, 'agent_infos',
                                            like)
            else:
                observations = _stack_into(steps('observations'),
                                           observations_out)
                actions = _nest.stack(steps('actions'))
                agent_infos = _nest.stack_infos(steps('agent_infos'))
            if all('env_infos' in r.batched for r in records):
                env_infos = _gather_infos(records, lengths, 'env_infos',
                                          like)
            else:
                env_infos = _nest.stack_infos(steps('env_infos'))
            last_observations = _nest.stack(
                [e.last_observation for e in episodes])
        except (ValueError, TypeError) as err:
            raise _unlike_steps(records, episodes) or err
        return EpisodeBatch._unchecked(
            observations=observations,
            actions=actions,
            rewards=np.asarray(steps('rewards'), dtype=np.float64),
            terminated=terminated,
            truncated=truncated,
            last_observations=last_observations,
            lengths=lengths,
            env_infos=env_infos,
            agent_infos=agent_infos,
            episode_infos=_nest.stack_infos([r.reset_info for r in records]),
            versions=np.array([e.version for e in episodes],
                              dtype=np.int64),
            worker_numbers=np.array([e.worker_number for e in episodes],
                                    dtype=np.int64),
            episode_ids=np.array([r.episode_id for r in records],
                                 dtype=np.int64),
            starts=np.array([r.prior_steps == 0 for r in records],
                            dtype=bool),
            cut=np.array([e.cut for e in episodes], dtype=bool),
            prior_steps=np.array([r.prior_steps for r in records],
                                 dtype=np.int64),
            prior_returns=np.array([r.prior_return for r in records],
                                   dtype=np.float64),
            agent_ids=None if records[0].agent_id is None else
            np.array([r.agent_id for r in records]))


def _structure(value):
    """Shapes and dtypes of a step's value, to compare steps by."""
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_structure(v) for v in value)
    array = np.asarray(value)
    if array.dtype == object:
        return f'{type(value).__name__}'
    return f'shape {array.shape}, {array.dtype.kind}'


def _unlike_steps(records, episodes):
    """Why steps would not stack: the first step whose observation or
    action is not shaped like the first step's, as a ValueError whose
    ``site`` names who produced it; None if none is found."""
    for field, site, name in (('observations', 'env.step', 'observation'),
                              ('actions', 'agent.get_action', 'action')):
        first = None
        for record in records:
            for t, value in enumerate(record.rows(field)):
                shape = _structure(value)
                if first is None:
                    first = shape
                elif shape != first:
                    msg = (f'the {name} at step {record.prior_steps + t} of '
                           f'episode {record.episode_id} has {shape}, but '
                           f'earlier ones have {first}: every {name} must '
                           f'have the shape of its space')
                    err = ValueError(msg)
                    err.site = site
                    return err
    first = _structure(records[0].rows('observations')[0])
    for record, episode in zip(records, episodes):
        if _structure(episode.last_observation) != first:
            msg = (f'the last observation of episode {record.episode_id} '
                   f'has {_structure(episode.last_observation)}, but its '
                   f'steps have '
                   f'{first}')
            err = ValueError(msg)
            err.site = 'env.step'
            return err
    return None


class _Steps:
    """The distinct batched steps that records of one field refer to, and
    per recorded step its row in their concatenation.

    ``like``: the :class:`_Steps` of another field recorded alongside this
    one, one object per step in both (an EnvPoolWorker's records): this
    field's steps are then found at the same places, without telling them
    apart again.
    """

    def __init__(self, records, field, lengths, like=None):
        flat = list(itertools.chain.from_iterable(
            getattr(r, field) for r in records))
        if like is not None:
            self._first, self._slots = like._first, like._slots
            self._columns = like._columns
            self.unique = [flat[i] for i in self._first]
            self._like = like
            return
        self._like = self._sizes = None
        # Steps are told apart by identity: sorting the ids costs far less
        # than a dict lookup per step.
        ids = np.fromiter(map(id, flat), dtype=np.uintp, count=len(flat))
        _, first, self._slots = np.unique(ids, return_index=True,
                                          return_inverse=True)
        self._first = first.tolist()
        self.unique = [flat[i] for i in self._first]
        self._columns = np.repeat([r.column for r in records], lengths)

    def gather_into(self, out):
        """:meth:`gather` written into ``out`` (plain arrays): each row
        copied once, where gather copies the distinct steps, then rows.
        Steps that do not fit ``out`` exactly are gathered as usual."""
        if any(not isinstance(u, np.ndarray) or u.dtype != out.dtype or
               u.shape[1:] != out.shape[1:] for u in self.unique):
            return self.gather()
        out = out[:len(self._columns)]
        unique, slots, columns = self.unique, self._slots.reshape(-1), \
            self._columns
        for k in range(len(columns)):
            out[k] = unique[slots[k]][columns[k]]
        return out

    def sizes(self):
        """The rows of each distinct step (those of ``like``'s)."""
        if self._like is not None:
            return self._like.sizes()
        if self._sizes is None:
            self._sizes = np.fromiter(map(_rows_of, self.unique),
                                      dtype=np.int64, count=len(self.unique))
        return self._sizes

    def gather(self):
        sizes = self.sizes()
        starts = np.cumsum(sizes) - sizes
        rows = starts[self._slots.reshape(-1)] + self._columns
        return _nest.index(_nest.concatenate(self.unique), rows)


def _rows_of(step):
    """How many rows a batched step has (its first leaf's length)."""
    if type(step) is np.ndarray:
        return len(step)
    if type(step) is dict and step:
        first = next(iter(step.values()))
        if type(first) is np.ndarray:
            return len(first)
    return len(next(_nest.leaves(step))[1])


def _stack_into(rows, out):
    """Rows stacked into ``out`` if given and they fit it exactly (dtype
    and shape); otherwise as usual, so that the worker's checks say what
    does not fit instead of numpy casting it silently."""
    if out is not None:
        try:
            return np.stack(rows, out=out[:len(rows)], casting='no')
        except (TypeError, ValueError):
            pass
    return _nest.stack(rows)


def _gather_infos(records, lengths, field, like=None):
    if not any(itertools.chain.from_iterable(getattr(r, field)
                                             for r in records)):
        return {}
    steps = _Steps(records, field, lengths, like)
    keys = steps.unique[0].keys()
    if all(info.keys() == keys for info in steps.unique):
        return steps.gather()
    # Keys that differ between steps: stack per-step rows, which fills
    # the absent ones and adds their masks.
    return _nest.stack_infos([x for r in records for x in r.rows(field)])
