"""The caller's side of a call: the :class:`Collector` (the rules of a
call, the same for every backend; :class:`~sampler._round.Round` holds
them on the worker's side; the whole call is drawn in
:mod:`sampler._protocol`), the options every streaming backend takes, and
the caller's progress bar."""

import sys
import time

import click
import numpy as np

from sampler._protocol import RoundKind, RoundStart
from sampler.errors import SamplerError
from workers import EpisodeBatch, _nest
from workers._multi_agent import MultiAgentBatch


def progress_bar(show, kind, count, n_workers, n_envs=None):
    """A context giving a bar to ``advance(n)``, or None when not shown;
    ``show=None`` shows it only when stderr is a terminal."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return _NoBar()
    total = {RoundKind.EPISODES: count * n_workers,
             RoundKind.STEPS: count * (n_envs or n_workers)}.get(kind, count)
    # A steps call counts env steps: one transition each in a single-agent
    # env, one per agent in it in a multi-agent one.
    label = {RoundKind.EPISODES: 'episodes',
             RoundKind.STEPS: 'env steps'}.get(kind, 'transitions')
    return _Bar(click.progressbar(length=total, label=f'sampling {label}',
                                  file=sys.stderr))


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False


class _Bar:
    """A click progress bar redrawn at most ten times a second: drawing on
    every message would put terminal writes on the caller's hot path."""

    def __init__(self, bar):
        self.bar = bar
        self.pending = 0
        self.drawn_at = 0.0

    def __enter__(self):
        self.bar.__enter__()
        return self

    def advance(self, n):
        self.pending += n
        now = time.monotonic()
        if now - self.drawn_at >= 0.1:
            self.bar.update(self.pending)
            self.pending, self.drawn_at = 0, now

    def __exit__(self, *exc_info):
        if self.pending:
            self.bar.update(self.pending)
        return self.bar.__exit__(*exc_info)


#: Most steps of every env a stream's worker takes before it looks at its
#: commands again (the longest a push waits to apply, in steps).
STREAM_STEPS = 16


class Collector:
    """The rules of one call on the caller's side, the same for every
    backend: what each worker is asked (:meth:`round_start`), which
    segments the call keeps, when it is done, what a failed worker's
    replacement does, and the statistics.

    The backend skeleton (:mod:`sampler._backend`) drives it: it starts
    the round on every worker, hands each Segments reply to :meth:`add`,
    tells the workers to finish when :meth:`finish_due` says so, and
    replaces a failed worker, calling :meth:`restarted` before it starts
    the replacement.

    Whole-episode calls never choose episodes by how soon they end:
    ``obtain_exact_episodes`` starts exactly the quota on every worker and
    completes them all; ``obtain_samples`` lets every env start episodes
    until the call holds ``count`` transitions, then Finish has every
    worker complete the episodes it started and start no more, and the
    call returns them all (more than ``count``, never fewer). Steps calls
    return every step of every env. Each ends when every worker has said
    its part is done, so no segment of it is left in a pipe.

    Args:
        kind: a :class:`~sampler._protocol.RoundKind`.
        count: SAMPLES and STREAM: transitions (per batch of a stream);
            EPISODES: episodes per worker; STEPS: steps of every env.
        round_number, version: of this call.
        n_workers: how many workers take part.
        n_envs: envs over all workers (for the progress of steps calls).
        max_staleness: segments this many versions old are still kept
            (samples calls only; with more than 0 the workers keep
            sampling after the call, which then ends as soon as it holds
            ``count`` transitions).
        stats: the sampler's statistics, updated in place.
        next_episode_ids: per worker, an episode id past every one it
            returned; updated in place, and where a replacement starts.
    """

    def __init__(self, *, kind, count, round_number, version, n_workers,
                 max_staleness, stats, next_episode_ids, n_envs=None,
                 budget=None):
        self.kind = kind
        self.n_envs = n_envs
        self.unit = 'transitions'  # of steps: 'env steps' if multi-agent
        self.count = count
        self.round = round_number
        self.version = version
        self.n_workers = n_workers
        self.stats = stats
        self.next_episode_ids = next_episode_ids
        self.episodes = count if kind is RoundKind.EPISODES else None
        self.steps_per_env = count if kind is RoundKind.STEPS else None
        self.stream = kind is RoundKind.STREAM
        self.max_staleness = max_staleness
        self.budget = budget
        self.draining = False  # a stream after Stop: until all say done
        self.credits = [0] * n_workers  # stream transitions read, per worker
        if self.stream:
            # Messages of about count / n_workers transitions from each
            # worker; its envs step STREAM_STEPS at a time at most (each
            # piece cut there), so that it sees commands (a Push,
            # Stop) that often however large the batches.
            envs = max(1, n_envs or n_workers)
            self.steps_per_env = max(1, min(count // envs, STREAM_STEPS))
            self.chunk = max(self.steps_per_env * max(1, envs // n_workers),
                             count // n_workers)
            self.budget = budget or 4 * self.chunk
        # Transitions per message: enough to make per-message costs
        # small. Exact episodes and steps are sent when a worker's part is
        # done (or after FLUSH_AFTER_S).
        if not self.stream:
            self.chunk = max(1, count // (16 * n_workers)) \
                if kind is RoundKind.SAMPLES else None
        # An obtain_samples call whose workers sample on after it.
        self.keeps_sampling = kind is RoundKind.SAMPLES and max_staleness > 0
        self.min_version = version - (max_staleness
                                      if kind is RoundKind.SAMPLES else 0)
        self.kept = [[] for _ in range(n_workers)]
        self.arrived = []  # samples, in the order they arrived
        self.transitions = 0
        self.finished = False  # Finish sent
        self.done_workers = set()
        self.attempts = [0] * n_workers
        # Per worker, for a timeout's message: when the caller last heard
        # from it, and what of this call it sent.
        self.started = time.monotonic()
        self.heard = [self.started] * n_workers
        self.sent = [0] * n_workers

    def round_start(self, worker):
        """The :class:`RoundStart` that worker ``worker`` (or its
        replacement) runs this call with."""
        # Past every episode id the worker returned: a no-op for a worker
        # that has run all along, where a replacement's ids start (also
        # one started after the call that replaced it).
        return RoundStart(self.kind, self.round, self.version,
                          episodes=self.episodes,
                          steps_per_env=self.steps_per_env, chunk=self.chunk,
                          first_episode_id=self.next_episode_ids[worker],
                          attempt=self.attempts[worker],
                          budget=self.budget)

    def run(self, wait_and_collect, deadline, stop_workers, finish_workers,
            progress, closed):
        """Call ``wait_and_collect(self, deadline, bar)`` until done and
        return the batches kept; ``finish_workers(round)`` once the call
        holds enough (see :meth:`finish_due`). ``stop_workers()`` follows
        an error, a timeout or Ctrl-C: workers must not go on. After a
        call that ends well they are idle already (every one said done),
        or, in a streaming call, they are meant to go on sampling;
        ``closed()`` says the sampler was closed meanwhile."""
        stop = True
        try:
            with progress_bar(progress, self.kind, self.count,
                              self.n_workers, self.n_envs) as bar:
                while not self.done:
                    if self.finish_due():
                        finish_workers(self.round)
                    wait_and_collect(self, deadline, bar)
            stop = False
            batches = self.batches()
        finally:
            if stop and not closed():
                stop_workers()
        return batches

    @property
    def done(self):
        if self.stream and not self.draining:
            return self.transitions >= self.count
        if self.keeps_sampling:
            return self.transitions >= self.count
        if self.kind is RoundKind.SAMPLES and not self.finished:
            # Workers say done only after Finish, except replacements not
            # placed yet (wait_for_placement): never done without count.
            return False
        return len(self.done_workers) == self.n_workers

    def push(self, version):
        """A stream's sampler pushed ``version``: staleness counts from
        it."""
        self.version = version

    def take(self):
        """A stream's segments so far, in the order they arrived (the next
        batch it yields); what they used of the workers' budgets, per
        worker, is in :attr:`credits` until :meth:`take_credits`."""
        batches, self.arrived, self.transitions = self.arrived, [], 0
        return batches

    def take_credits(self):
        """``(worker, transitions)`` read from each worker since the last
        call, for Credit."""
        out = [(i, n) for i, n in enumerate(self.credits) if n]
        self.credits = [0] * self.n_workers
        return out

    def finish_due(self):
        """True once, when an ``obtain_samples`` call holds ``count``
        transitions: the workers are then to complete their episodes."""
        if self.kind is not RoundKind.SAMPLES or self.keeps_sampling or \
                self.finished or self.transitions < self.count:
            return False
        self.finished = True
        return True

    def add(self, worker, segments):
        """Keep or discard what a worker sent (a :class:`Segments`);
        return the progress it made (transitions, or episodes)."""
        stats = self.stats
        stats['env_steps'] += segments.env_steps
        self.heard[worker] = time.monotonic()
        current = segments.round == self.round
        if segments.done and current:
            self.done_workers.add(worker)
        batch = segments.batch
        if batch is None:
            return 0
        self.next_episode_ids[worker] = max(
            self.next_episode_ids[worker], int(batch.episode_ids.max()) + 1)
        if self.stream:
            if segments.round == self.round:  # the budget is per round
                self.credits[worker] += len(batch)
            current = segments.round == self.round and (
                self.max_staleness is None or
                segments.version >= self.version - self.max_staleness)
        if self.kind is RoundKind.SAMPLES:
            # Whole episodes of the current version, also from an earlier
            # call that ended early; not the segments of a steps call.
            current = segments.version >= self.min_version and (
                segments.round == self.round or
                (batch.starts.all() and not batch.cut.any()))
            if self.keeps_sampling and self.done:
                current = False  # more than the call needs
        if not current:
            stats['discarded_episodes'] += batch.n_episodes
            stats['discarded_transitions'] += len(batch)
            return 0
        if self.kind in (RoundKind.SAMPLES, RoundKind.STREAM):
            self.arrived.append(batch)
            self.transitions += len(batch)
            self.sent[worker] += len(batch)
            return len(batch)
        self.kept[worker].append(batch)
        if self.kind is RoundKind.EPISODES:
            got = batch.n_episodes
        elif isinstance(batch, MultiAgentBatch):
            # Steps of a multi-agent env: counted in env steps (each has
            # as many transitions as agents in it).
            got, self.unit = segments.env_steps, 'env steps'
        else:
            got = len(batch)
        self.sent[worker] += got
        return got

    def restarted(self, worker):
        """Worker ``worker`` failed and is replaced; call before
        :meth:`round_start` for the replacement. Returns False when the
        replacement has nothing to do in this call."""
        if self.stream or self.kind is RoundKind.SAMPLES:
            # The episodes its envs were running are lost with it.
            self.stats['lost_episodes'] = self.stats.get(
                'lost_episodes', 0) + (self.n_envs // self.n_workers
                                       if self.n_envs else 1)
        if self.stream:
            # What the failed worker sent is kept; the replacement steps
            # new envs from seeds of its own, unless the stream is ending.
            self.attempts[worker] += 1
            self.credits[worker] = 0
            if self.draining:
                self.done_workers.add(worker)
                return False
            return True
        if self.kind is RoundKind.SAMPLES:
            # What the failed worker sent is kept; the replacement draws
            # seeds of its own so that it cannot send those episodes again.
            self.attempts[worker] += 1
            if self.finished:
                # The call holds enough; the failed worker's unfinished
                # episodes are lost with it.
                self.done_workers.add(worker)
                return False
            return True
        # The replacement redoes the worker's part from the round's seeds,
        # so the call stays reproducible; what the failed worker sent of it
        # would come again, and is dropped.
        self.stats['discarded_episodes'] += sum(
            b.n_episodes for b in self.kept[worker])
        self.stats['discarded_transitions'] += sum(
            len(b) for b in self.kept[worker])
        self.kept[worker] = []
        self.sent[worker] = 0
        self.done_workers.discard(worker)
        return True

    def wait_for_placement(self, worker):
        """Worker ``worker`` is a replacement not placed yet (a Ray actor
        waiting for a free CPU): an ``obtain_samples`` call goes on
        without it until it is (:meth:`joined`); other calls wait for
        it (a stream never waits for any one worker)."""
        if self.kind is RoundKind.SAMPLES:
            self.done_workers.add(worker)

    def joined(self, worker):
        """Worker ``worker``, a replacement placed late, has started:
        whether it is to run this call's round now."""
        if self.stream:
            return not self.draining
        if self.kind is RoundKind.SAMPLES:
            if self.finished or self.done:
                return False
            self.done_workers.discard(worker)
            return True
        return worker not in self.done_workers

    def batches(self):
        """What the call returns: samples in the order they arrived;
        exact episodes and steps worker by worker, exact episodes in the
        order they started."""
        if self.kind is RoundKind.SAMPLES:
            return self.arrived
        out = []
        for kept in self.kept:
            if self.kind is RoundKind.EPISODES and len(kept) > 1:
                kept = [_in_start_order(kept)]
            out.extend(kept)
        return out

    def holding(self):
        """The workers the call still waits for."""
        return [i for i in range(self.n_workers)
                if i not in self.done_workers]

    def describe(self, where=None, workers=None):
        """What the call has, and which workers held it up and how, for a
        timeout's message (the same words for every kind of call).
        ``where`` maps a worker to what it was doing when the time ran
        out (``'inside env.step (File ...)'``), where a backend knows;
        ``workers``: the workers that held it up (default those it still
        waits for)."""
        where = where or {}
        per_worker = self.n_envs // self.n_workers if self.n_envs else 1
        if self.kind is RoundKind.EPISODES:
            have = f'{sum(self.sent)} of {self.count * self.n_workers} ' \
                   f'episodes were collected'
            part = f'{{}} of {self.count} episodes'
        elif self.kind is RoundKind.STEPS:
            total = self.count * (self.n_envs or self.n_workers)
            have = f'{sum(self.sent)} of {total} {self.unit} were collected'
            part = f'{{}} of {self.count * per_worker} {self.unit}'
        else:
            have = f'{self.transitions} of {self.count} transitions were ' \
                   f'collected'
            part = '{} transitions'
        now = time.monotonic()
        held = []
        for i in self.holding() if workers is None else workers:
            said = [part.format(self.sent[i])]
            if i in where:
                said.append(where[i])
            said.append(f'nothing sent for {now - self.heard[i]:.1f} s')
            held.append(f'worker {i} ({"; ".join(said)})')
        if not held:
            return have
        return f'{have}; held up by {_and(held)}'


def _and(items):
    return items[0] if len(items) == 1 else \
        ', '.join(items[:-1]) + f' and {items[-1]}'


def _in_start_order(batches):
    """One batch of a worker's whole episodes, ordered by their ids: the
    order it started them in."""
    if isinstance(batches[0], MultiAgentBatch):
        # One env's episodes: they end in the order they start.
        return MultiAgentBatch.concatenate(*batches, missing_infos='mask')
    batch = EpisodeBatch.concatenate(*batches, missing_infos='mask')
    order = np.argsort(batch.episode_ids, kind='stable')
    if (order == np.arange(len(order))).all():
        return batch
    return EpisodeBatch.concatenate(
        *[batch.episode(int(i)) for i in order], missing_infos='mask')


def ended_episodes(batch):
    """How many episodes ended in ``batch``: its segments not cut; for a
    multi-agent batch, the env episodes none of whose agents' segments
    in it is cut (an agent that left earlier ended its segment while the
    episode went on)."""
    if not isinstance(batch, MultiAgentBatch):
        return int((~batch.cut).sum())
    ids, cut = batch.episode_ids, batch.cut
    return len(set(ids[~cut].tolist()) - set(ids[cut].tolist()))


def join_batches(batches):
    """One EpisodeBatch of what a call kept; batches whose workers' data
    do not fit each other are named, with where they differ."""
    if batches and isinstance(batches[0], MultiAgentBatch):
        return MultiAgentBatch.concatenate(*batches, missing_infos='mask')
    try:
        return EpisodeBatch.concatenate(*batches, missing_infos='mask')
    except (ValueError, TypeError) as err:
        first = batches[0]
        for batch in batches[1:]:
            try:
                EpisodeBatch.concatenate(first, batch,
                                         missing_infos='mask')
            except (ValueError, TypeError) as why:
                a, b = (int(x.worker_numbers[0]) for x in (first, batch))
                msg = (f"worker {b}'s episodes do not fit worker {a}'s, "
                       f'so they cannot make one batch: '
                       f'{_difference(first, batch, a, b) or why}. '
                       f'Every worker must return the same structure '
                       f'(keys, shapes and dtypes of observations, '
                       f'actions and infos)')
                raise SamplerError(msg) from err
        raise


def _difference(first, other, a, b):
    """Where two batches' arrays differ in shape per step, or None."""
    for field in ('observations', 'actions', 'last_observations',
                  'env_infos', 'agent_infos', 'episode_infos'):
        mine = dict(_nest.leaves(getattr(first, field)))
        theirs = dict(_nest.leaves(getattr(other, field)))
        for path in mine.keys() & theirs.keys():
            x, y = mine[path], theirs[path]
            if np.shape(x)[1:] != np.shape(y)[1:]:
                return (f"{field}{path} has shape {np.shape(x)[1:]} per "
                        f"step in worker {a}'s and {np.shape(y)[1:]} in "
                        f"worker {b}'s")
    return None
