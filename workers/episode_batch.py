"""EpisodeBatch: segments of episodes (whole episodes, or the runs of
steps that calls which keep envs running cut them into) as flat numpy
arrays."""

from typing import Any, Dict, List, Optional

import numpy as np

from workers import _nest

_STEP_NESTS = ('observations', 'actions')
_STEP_INFOS = ('env_infos', 'agent_infos')


class EpisodeBatch:
    """A batch of E segments holding N transitions in all.

    A segment is a run of consecutive steps of one episode under one
    version. Whole-episode calls return segments that are whole episodes
    (``starts`` all True, ``cut`` all False); calls that keep envs running
    (``obtain_steps``) cut a running episode at the call's end
    (``cut=True``) and go on with it in the next call (``starts=False``,
    the same ``episode_ids``). "Episode" below means segment where the
    difference does not matter.

    Per-step fields have N rows, segment after segment; per-segment fields
    have E rows. Observations and actions of ``Dict`` / ``Tuple`` spaces
    are dicts / tuples of such arrays (``last_observations`` too).

    Construction checks every invariant and raises ``ValueError`` naming the
    field and the shapes. Arrays are not copied.

    Args:
        observations: ``(N, ...)`` observation seen before each action.
        actions: ``(N, ...)`` action taken.
        rewards: ``(N,)`` reward received (stored as floats).
        terminated: ``(N,)`` bool; True only at a segment's last step, where
            the environment reached a terminal state.
        truncated: ``(N,)`` bool; True only at a segment's last step, where
            the episode was truncated (the env's time limit or
            ``max_episode_length``). Every last step of a segment that is
            not ``cut`` has ``terminated`` or ``truncated`` set.
        last_observations: ``(E, ...)`` observation after each segment's
            final step (of a cut segment: the one to bootstrap from).
        lengths: ``(E,)`` ints >= 1 summing to N.
        env_infos: dict of ``(N, ...)`` arrays from ``env.step``.
        agent_infos: dict of ``(N, ...)`` arrays from ``agent.get_action``.
        episode_infos: dict of ``(E, ...)`` arrays (e.g. the reset info).
        versions: ``(E,)`` ints, the sampler version of each episode
            (zeros if omitted).
        worker_numbers: ``(E,)`` ints, the worker that ran each episode
            (zeros if omitted).
        episode_ids: ``(E,)`` ints, the same for every segment of one
            episode (``0 .. E-1`` if omitted: whole episodes).
        starts: ``(E,)`` bool, the segment's first step is its episode's
            first (all True if omitted).
        cut: ``(E,)`` bool, the episode goes on after the segment; its last
            step then has neither flag set (all False if omitted).
        prior_steps: ``(E,)`` ints, steps the episode took before the
            segment (0 where ``starts``; zeros if omitted).
        prior_returns: ``(E,)`` floats, reward the episode gathered before
            the segment (0 where ``starts``; zeros if omitted).
        agent_ids: ``(E,)`` ids (ints or strings) of the env agent whose
            steps each segment holds, in a multi-agent batch (None, the
            default: one agent per episode). The agents of one env episode
            share its ``episode_ids``; every check of how segments fit
            together then holds per episode and agent.

    Example:
        >>> import numpy as np
        >>> b = EpisodeBatch(observations=np.zeros((3, 2)),
        ...                  actions=np.array([0, 1, 1]),
        ...                  rewards=np.ones(3),
        ...                  terminated=np.array([False, True, False]),
        ...                  truncated=np.array([False, False, True]),
        ...                  last_observations=np.ones((2, 2)),
        ...                  lengths=np.array([2, 1]))
        >>> len(b), b.n_episodes, b.episode_returns.tolist()
        (3, 2, [2.0, 1.0])
    """

    __slots__ = ('observations', 'actions', 'rewards', 'terminated',
                 'truncated', 'last_observations', 'env_infos',
                 'agent_infos', 'episode_infos', 'lengths', 'versions',
                 'worker_numbers', 'episode_ids', 'starts', 'cut',
                 'prior_steps', 'prior_returns', 'agent_ids', '_starts')

    def __init__(self, *, observations, actions, rewards, terminated,
                 truncated, last_observations, lengths, env_infos=None,
                 agent_infos=None, episode_infos=None, versions=None,
                 worker_numbers=None, episode_ids=None, starts=None,
                 cut=None, prior_steps=None, prior_returns=None,
                 agent_ids=None):
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or lengths.dtype.kind not in 'iu':
            msg = (f'lengths must be a 1-D integer array, got shape '
                   f'{lengths.shape} and dtype {lengths.dtype}')
            raise ValueError(msg)
        if lengths.size and lengths.min() < 1:
            bad = int(np.argmax(lengths < 1))
            msg = (f'lengths must all be >= 1, got lengths[{bad}] = '
                   f'{int(lengths[bad])}')
            raise ValueError(msg)
        n_eps = len(lengths)
        n = int(lengths.sum())
        self.lengths = lengths
        self.observations = _check_nest('observations', observations, n)
        self.actions = _check_nest('actions', actions, n)
        self.rewards = _check_flat('rewards', rewards, n, 'f')
        self.terminated = _check_flat('terminated', terminated, n, 'b')
        self.truncated = _check_flat('truncated', truncated, n, 'b')
        self.last_observations = _check_nest('last_observations',
                                             last_observations, n_eps,
                                             'E, the number of segments')
        self.env_infos = _check_infos('env_infos', env_infos, n)
        self.agent_infos = _check_infos('agent_infos', agent_infos, n)
        self.episode_infos = _check_infos('episode_infos', episode_infos,
                                          n_eps, 'E, the number of segments')
        self.versions = _check_per_episode('versions', versions, n_eps)
        self.worker_numbers = _check_per_episode('worker_numbers',
                                                 worker_numbers, n_eps)
        self.episode_ids = _check_per_episode(
            'episode_ids', np.arange(n_eps) if episode_ids is None
            else episode_ids, n_eps)
        self.starts = _check_flags('starts', starts, n_eps, True)
        self.cut = _check_flags('cut', cut, n_eps, False)
        self.prior_steps = _check_per_episode('prior_steps', prior_steps,
                                              n_eps)
        self.prior_returns = _check_flat(
            'prior_returns', np.zeros(n_eps) if prior_returns is None
            else prior_returns, n_eps, 'f', 'E, the number of segments')
        self.agent_ids = _check_agent_ids(agent_ids, n_eps)
        _check_alike('last_observations', self.last_observations,
                     'observations', self.observations, 'they must match')
        self._starts = _starts(lengths)
        self._check_episode_ends()
        self._check_segments()

    @classmethod
    def _unchecked(cls, **fields):
        """Build without the checks, from fields valid by construction.

        For workers, ``concatenate`` and slicing only: each builds its
        arrays so that every invariant holds, and checking them again cost
        as much per episode as running a short CartPole episode.
        """
        self = object.__new__(cls)
        for name in _FIELDS:
            setattr(self, name, fields.get(name) if name in _OPTIONAL
                    else fields[name])
        self._starts = _starts(self.lengths)
        return self

    def _check_episode_ends(self):
        if not len(self.lengths):
            return
        ends = self._starts + self.lengths - 1
        done = self.terminated | self.truncated
        missing = ~done[ends] & ~self.cut
        if missing.any():
            ep = int(np.argmax(missing))
            msg = (f'terminated/truncated: segment {ep} ends at step '
                   f'{int(ends[ep])} with neither flag set and is not cut; '
                   f'the last step of every segment that ends its episode '
                   f'must have terminated or truncated True')
            raise ValueError(msg)
        flagged = done[ends] & self.cut
        if flagged.any():
            ep = int(np.argmax(flagged))
            msg = (f'cut: segment {ep} is cut (its episode goes on) but its '
                   f'last step {int(ends[ep])} is flagged terminated or '
                   f'truncated; a cut segment has neither flag set')
            raise ValueError(msg)
        inside = done.copy()
        inside[ends] = False
        if inside.any():
            step = int(np.argmax(inside))
            ep = int(np.searchsorted(ends, step))
            which = 'terminated' if self.terminated[step] else 'truncated'
            msg = (f'{which}: step {step} lies inside segment {ep} (steps '
                   f'{int(self._starts[ep])}..{int(ends[ep])}) but is flagged '
                   f'{which}; only a segment\'s last step may be')
            raise ValueError(msg)

    def _check_segments(self):
        """Segments of one episode fit together: a first segment has
        nothing before it, no segment comes twice, and none follows the
        one that ended the episode."""
        first = self.starts & ((self.prior_steps != 0) |
                               (self.prior_returns != 0))
        if first.any():
            ep = int(np.argmax(first))
            msg = (f'starts: segment {ep} starts its episode but has '
                   f'prior_steps={int(self.prior_steps[ep])} and '
                   f'prior_returns={float(self.prior_returns[ep])}; both '
                   f'must be 0')
            raise ValueError(msg)
        later = ~self.starts & (self.prior_steps < 1)
        if later.any():
            ep = int(np.argmax(later))
            msg = (f'starts: segment {ep} continues its episode but has '
                   f'prior_steps={int(self.prior_steps[ep])}; it must be '
                   f'>= 1')
            raise ValueError(msg)
        # Segments of one episode (and agent, in a multi-agent batch), in
        # the order of their steps.
        agents = np.zeros(self.n_episodes, dtype=np.int64) \
            if self.agent_ids is None else \
            np.unique(self.agent_ids, return_inverse=True)[1].reshape(-1)
        order = np.lexsort((self.prior_steps, agents, self.episode_ids))
        ids = self.episode_ids[order]
        same = (ids[1:] == ids[:-1]) & (agents[order][1:] ==
                                        agents[order][:-1])
        twice = same & (self.prior_steps[order][1:] ==
                        self.prior_steps[order][:-1])
        if twice.any():
            a, b = sorted(order[np.argmax(twice):][:2].tolist())
            msg = (f'episode_ids: segments {a} and {b} are the same steps of '
                   f'episode {int(self.episode_ids[a])}{self._of_agent(a)} '
                   f'(prior_steps {int(self.prior_steps[a])}); no segment '
                   f'may come twice')
            raise ValueError(msg)
        after_end = same & ~self.cut[order][:-1]
        if after_end.any():
            i = int(np.argmax(after_end))
            a, b = int(order[i]), int(order[i + 1])
            msg = (f'cut: segment {a} ends episode '
                   f'{int(self.episode_ids[a])}{self._of_agent(a)}, but '
                   f'segment {b} has later steps of it')
            raise ValueError(msg)

    def _of_agent(self, segment):
        """`` of agent X`` for a segment of a multi-agent batch."""
        if self.agent_ids is None:
            return ''
        return f' of agent {self.agent_ids[segment].item()!r}'

    # Sizes -------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def n_episodes(self) -> int:
        """E, the number of segments."""
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        """Bytes held by all the batch's arrays."""
        return sum(leaf.nbytes for name in _FIELDS
                   for _, leaf in _nest.leaves(getattr(self, name))
                   if isinstance(leaf, np.ndarray))

    def check(self) -> None:
        """Check every invariant again (after editing arrays in place, or
        for batches made by the unchecked internal path); raises
        ``ValueError`` like construction does."""
        type(self)(**{name: getattr(self, name) for name in _FIELDS})

    @property
    def episode_starts(self) -> np.ndarray:
        """``(E,)`` index of each segment's first step (compare ``starts``:
        whether that step is its episode's first)."""
        return self._starts

    # Derived fields ----------------------------------------------------

    @property
    def next_observations(self) -> Any:
        """``(N, ...)`` observation after each step: the next step's
        observation, or ``last_observations`` at an episode's end."""
        ends = self._starts + self.lengths - 1

        def shift(obs, last):
            nxt = np.empty_like(obs)
            nxt[:-1] = obs[1:]
            nxt[ends] = last
            return nxt

        return _map2(shift, self.observations, self.last_observations)

    @property
    def episode_returns(self) -> np.ndarray:
        """``(E,)`` undiscounted sum of each segment's rewards (of each
        episode's, for whole episodes)."""
        if not self.n_episodes:
            return np.zeros(0, dtype=self.rewards.dtype)
        return np.add.reduceat(self.rewards, self._starts)

    def episode_stats(self) -> Dict[str, np.ndarray]:
        """The episodes that ended in this batch, whole: their steps in
        earlier batches count too.

        Returns:
            dict of ``(F,)`` arrays for the F segments that end their
            episode (not ``cut``), in batch order: ``episode_ids``,
            ``returns`` (undiscounted) and ``lengths``; in a multi-agent
            batch, per agent, with its ``agent_ids``.
        """
        ends = ~self.cut
        stats = {
            'episode_ids': self.episode_ids[ends],
            'returns': self.prior_returns[ends] +
            self.episode_returns[ends],
            'lengths': self.prior_steps[ends] + self.lengths[ends],
        }
        if self.agent_ids is not None:
            stats['agent_ids'] = self.agent_ids[ends]
        return stats

    # Combining and splitting -------------------------------------------

    @classmethod
    def concatenate(cls, *batches: 'EpisodeBatch',
                    missing_infos: str = 'raise') -> 'EpisodeBatch':
        """One batch holding the episodes of ``batches`` in order.

        Args:
            *batches: at least one EpisodeBatch, all with the same
                observation and action structure and the same info keys.
            missing_infos: ``'raise'`` (default) refuses batches whose info
                dicts have different keys; ``'mask'`` fills a key some
                batches lack with zeros and a boolean ``_key`` mask.

        Raises:
            ValueError: no batch given, or their structures or keys differ.
        """
        if not batches:
            msg = ('EpisodeBatch.concatenate needs at least one batch, got '
                   'none')
            raise ValueError(msg)
        if missing_infos not in ('raise', 'mask'):
            msg = (f"missing_infos must be 'raise' or 'mask', got "
                   f'{missing_infos!r}')
            raise ValueError(msg)
        for b in batches:
            if not isinstance(b, EpisodeBatch):
                msg = (f'EpisodeBatch.concatenate takes EpisodeBatch '
                       f'objects, got {type(b).__name__}')
                raise ValueError(msg)
        if len(batches) == 1:
            return batches[0]
        return cls._join(batches, missing_infos)

    def _with(self, **fields):
        """This batch with some fields replaced, unchecked (internal)."""
        return self._unchecked(**{name: fields.get(name, getattr(self, name))
                                  for name in _FIELDS})

    @classmethod
    def _join(cls, batches, missing_infos, observations=None):
        """:meth:`concatenate` of checked arguments; ``observations``, if
        given, are the batches' observations already joined (rows in
        shared memory that workers wrote in place), used as they are."""
        first = batches[0]
        for i, b in enumerate(batches[1:], start=1):
            for name in ('observations', 'actions', 'last_observations'):
                _check_alike(f'batch {i} {name}', getattr(b, name),
                             f'batch 0 {name}', getattr(first, name),
                             'only batches of the same spaces can be '
                             'concatenated')
        multi = [b.agent_ids is not None for b in batches]
        if any(multi) and not all(multi):
            i = multi.index(not multi[0])
            which = ('has', 'does not') if multi[i] else ('does not have',
                                                          'does')
            msg = (f'batch {i} {which[0]} agent_ids and batch 0 {which[1]}: '
                   f'a multi-agent batch cannot be joined with a '
                   f'single-agent one')
            raise ValueError(msg)
        n_sizes = [len(b) for b in batches]
        e_sizes = [b.n_episodes for b in batches]

        def infos(name, sizes):
            return _nest.concatenate_infos(
                [getattr(b, name) for b in batches], sizes, what=name,
                missing=missing_infos)

        def cat(name):
            return _nest.concatenate([getattr(b, name) for b in batches])

        return cls._unchecked(
            observations=cat('observations') if observations is None
            else observations,
            actions=cat('actions'),
            rewards=cat('rewards'),
            terminated=cat('terminated'),
            truncated=cat('truncated'),
            last_observations=cat('last_observations'),
            lengths=cat('lengths'),
            env_infos=infos('env_infos', n_sizes),
            agent_infos=infos('agent_infos', n_sizes),
            episode_infos=infos('episode_infos', e_sizes),
            versions=cat('versions'),
            worker_numbers=cat('worker_numbers'),
            episode_ids=cat('episode_ids'),
            starts=cat('starts'),
            cut=cat('cut'),
            prior_steps=cat('prior_steps'),
            prior_returns=cat('prior_returns'),
            agent_ids=cat('agent_ids') if multi[0] else None)

    def split(self) -> List['EpisodeBatch']:
        """A list of single-episode batches, in order."""
        return [self.episode(i) for i in range(self.n_episodes)]

    def episode(self, i: int) -> 'EpisodeBatch':
        """Episode ``i`` as a batch of its own."""
        if not -self.n_episodes <= i < self.n_episodes:
            msg = (f'episode index {i} is out of range for a batch of '
                   f'{self.n_episodes} episodes')
            raise IndexError(msg)
        i %= self.n_episodes
        return self._episodes(i, i + 1)

    def head(self, n_episodes: int) -> 'EpisodeBatch':
        """A batch of the first ``n_episodes`` episodes (all if fewer)."""
        return self._episodes(0, min(n_episodes, self.n_episodes))

    def _episodes(self, first, stop):
        start = int(self._starts[first]) if first < self.n_episodes \
            else len(self)
        end = start + int(self.lengths[first:stop].sum())
        steps = slice(start, end)
        eps = slice(first, stop)
        return type(self)._unchecked(
            observations=_nest.index(self.observations, steps),
            actions=_nest.index(self.actions, steps),
            rewards=self.rewards[steps],
            terminated=self.terminated[steps],
            truncated=self.truncated[steps],
            last_observations=_nest.index(self.last_observations, eps),
            lengths=self.lengths[eps],
            env_infos=_nest.index(self.env_infos, steps),
            agent_infos=_nest.index(self.agent_infos, steps),
            episode_infos=_nest.index(self.episode_infos, eps),
            versions=self.versions[eps],
            worker_numbers=self.worker_numbers[eps],
            episode_ids=self.episode_ids[eps],
            starts=self.starts[eps],
            cut=self.cut[eps],
            prior_steps=self.prior_steps[eps],
            prior_returns=self.prior_returns[eps],
            agent_ids=None if self.agent_ids is None
            else self.agent_ids[eps])

    def padded(self, max_length: Optional[int] = None) -> Dict[str, Any]:
        """Per-step fields as ``(E, T, ...)`` arrays, zero-padded.

        Args:
            max_length: T; defaults to the longest episode. A shorter T than
                the longest episode is a ``ValueError``.

        Returns:
            dict with ``observations``, ``actions``, ``rewards``,
            ``terminated``, ``truncated``, ``next_observations``,
            ``env_infos``, ``agent_infos`` (nests of ``(E, T, ...)``
            arrays), ``valids`` (``(E, T)`` bool, True on real steps), and
            per segment ``lengths``, ``episode_ids``, ``starts`` and
            ``cut`` (``(E,)``), and ``agent_ids`` in a multi-agent batch.
        """
        longest = int(self.lengths.max()) if self.n_episodes else 0
        if max_length is None:
            max_length = longest
        if not isinstance(max_length, (int, np.integer)) or \
                max_length < longest:
            msg = (f'max_length must be an int >= the longest episode '
                   f'({longest}), got {max_length!r}')
            raise ValueError(msg)
        max_length = int(max_length)
        rows = np.repeat(np.arange(self.n_episodes), self.lengths)
        cols = np.arange(len(self)) - np.repeat(self._starts, self.lengths)

        def pad(arr):
            out = np.zeros((self.n_episodes, max_length) + arr.shape[1:],
                           dtype=arr.dtype)
            out[rows, cols] = arr
            return out

        valids = np.zeros((self.n_episodes, max_length), dtype=bool)
        valids[rows, cols] = True
        out = {
            'observations': _nest.map_nest(pad, self.observations),
            'actions': _nest.map_nest(pad, self.actions),
            'rewards': pad(self.rewards),
            'terminated': pad(self.terminated),
            'truncated': pad(self.truncated),
            'next_observations': _nest.map_nest(pad,
                                                self.next_observations),
            'env_infos': _nest.map_nest(pad, self.env_infos),
            'agent_infos': _nest.map_nest(pad, self.agent_infos),
            'valids': valids,
            'lengths': self.lengths,
            'episode_ids': self.episode_ids,
            'starts': self.starts,
            'cut': self.cut,
        }
        if self.agent_ids is not None:
            out['agent_ids'] = self.agent_ids
        return out

    # Comparison and display --------------------------------------------

    def __eq__(self, other):
        if not isinstance(other, EpisodeBatch):
            return NotImplemented
        return all(_nest.nest_equal(getattr(self, f), getattr(other, f))
                   for f in _FIELDS)

    __hash__ = None

    def __repr__(self):
        cut = int(self.cut.sum())
        agents = '' if self.agent_ids is None else \
            f' of {len(set(self.agent_ids.tolist()))} agents'
        return (f'<EpisodeBatch: {self.n_episodes} '
                f'{"segments" if cut or not self.starts.all() else "episodes"}'
                f'{agents}, {len(self)} transitions, versions '
                f'{sorted(set(self.versions.tolist()))}>')


_FIELDS = ('observations', 'actions', 'rewards', 'terminated', 'truncated',
           'last_observations', 'env_infos', 'agent_infos', 'episode_infos',
           'lengths', 'versions', 'worker_numbers', 'episode_ids', 'starts',
           'cut', 'prior_steps', 'prior_returns', 'agent_ids')

#: Fields that may be None (absent): the agents of a multi-agent batch.
_OPTIONAL = frozenset(['agent_ids'])


def _starts(lengths):
    if not len(lengths):
        return np.zeros(0, dtype=np.int64)
    starts = np.empty(len(lengths), dtype=np.int64)
    starts[0] = 0
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def _map2(fn, a, b):
    if isinstance(a, dict):
        return {k: _map2(fn, a[k], b[k]) for k in a}
    if isinstance(a, tuple):
        return tuple(_map2(fn, x, y) for x, y in zip(a, b))
    return fn(a, b)


def _check_nest(name, nest, rows, rows_name='N, the sum of lengths'):
    if nest is None:
        msg = f'{name} is required, got None'
        raise ValueError(msg)
    nest = _nest.as_arrays(nest)
    for path, leaf in _nest.leaves(nest):
        if leaf.ndim == 0 or leaf.shape[0] != rows:
            msg = (f'{name}{path} has shape {leaf.shape}; its leading '
                   f'dimension must be {rows} ({rows_name})')
            raise ValueError(msg)
    return nest


def _check_flat(name, values, rows, kind, rows_name='N, the sum of lengths'):
    arr = np.asarray(values)
    if arr.shape != (rows,):
        msg = (f'{name} has shape {arr.shape}, expected ({rows},) '
               f'({rows_name})')
        raise ValueError(msg)
    if kind == 'b' and arr.dtype != bool:
        if arr.dtype.kind not in 'biu' or not np.isin(arr, (0, 1)).all():
            msg = f'{name} must hold booleans, got dtype {arr.dtype}'
            raise ValueError(msg)
        arr = arr.astype(bool)
    elif kind == 'f' and arr.dtype.kind != 'f':
        if arr.dtype.kind not in 'biu':
            msg = f'{name} must hold numbers, got dtype {arr.dtype}'
            raise ValueError(msg)
        arr = arr.astype(np.float64)
    return arr


def _check_flags(name, values, n_eps, default):
    if values is None:
        return np.full(n_eps, default)
    return _check_flat(name, values, n_eps, 'b', 'E, the number of segments')


def _check_infos(name, infos, rows, rows_name='N, the sum of lengths'):
    if infos is None:
        return {}
    if not isinstance(infos, dict):
        msg = f'{name} must be a dict of arrays, got {type(infos).__name__}'
        raise ValueError(msg)
    return {k: _check_nest(f'{name}[{k!r}]', v, rows, rows_name)
            for k, v in infos.items()}


def _check_per_episode(name, values, n_eps):
    if values is None:
        return np.zeros(n_eps, dtype=np.int64)
    arr = np.asarray(values)
    if arr.shape != (n_eps,) or (n_eps and arr.dtype.kind not in 'iu'):
        msg = (f'{name} has shape {arr.shape} and dtype {arr.dtype}, '
               f'expected ({n_eps},) integers (E, the number of segments)')
        raise ValueError(msg)
    return arr.astype(np.int64, copy=False)


def _check_agent_ids(values, n_eps):
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.dtype == object and all(isinstance(v, str) for v in arr.flat):
        arr = arr.astype(str)
    if arr.shape != (n_eps,) or (n_eps and arr.dtype.kind not in 'iuU'):
        msg = (f'agent_ids has shape {arr.shape} and dtype {arr.dtype}, '
               f'expected ({n_eps},) ints or strings (E, the number of '
               f'segments), or None')
        raise ValueError(msg)
    return arr


def _check_alike(name, nest, ref_name, ref, hint):
    """Raise ValueError unless two nests share their structure and the shape
    of their rows (everything after the leading dimension)."""
    if _nest.structure(nest) != _nest.structure(ref):
        msg = (f'{name} has structure {_describe(nest)} but {ref_name} has '
               f'{_describe(ref)}; {hint}')
        raise ValueError(msg)
    for (path, a), (_, b) in zip(_nest.leaves(nest), _nest.leaves(ref)):
        if a.shape[1:] != b.shape[1:]:
            msg = (f'{name}{path} has per-row shape {a.shape[1:]} but '
                   f'{ref_name}{path} has {b.shape[1:]}; {hint}')
            raise ValueError(msg)


def _describe(nest):
    if isinstance(nest, dict):
        return '{' + ', '.join(f'{k!r}: {_describe(v)}'
                               for k, v in nest.items()) + '}'
    if isinstance(nest, tuple):
        return '(' + ', '.join(_describe(v) for v in nest) + ',)'
    return 'array'
