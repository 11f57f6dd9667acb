"""What the streaming backends share: the options of a streaming call,
the caller's progress bar, and the :class:`Collector` that decides which
episodes a call keeps."""

import sys
import time

import click
import numpy as np

from sampler._worker_process import RoundStart


def check_streaming_options(options):
    """Refuse bad values of the options every streaming backend takes."""
    for name in ('shutdown_timeout', 'startup_timeout'):
        value = options[name]
        if isinstance(value, bool) or not isinstance(
                value, (int, float)) or not value > 0:
            msg = f'{name} must be a number of seconds > 0, got {value!r}'
            raise ValueError(msg)
    staleness = options['max_staleness']
    if isinstance(staleness, bool) or not isinstance(staleness, int) \
            or staleness < 0:
        msg = f'max_staleness must be an int >= 0, got {staleness!r}'
        raise ValueError(msg)
    if options['progress'] not in (None, True, False):
        msg = (f'progress must be None, True or False, got '
               f'{options["progress"]!r}')
        raise ValueError(msg)


def progress_bar(show, kind, count, n_workers):
    """A context giving a bar to ``advance(n)``, or None when not shown;
    ``show=None`` shows it only when stderr is a terminal."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return _NoBar()
    total = count * n_workers if kind == 'episodes' else count
    label = 'episodes' if kind == 'episodes' else 'transitions'
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


#: In a call's tail, chunks are this many times smaller.
TAIL_DIVISOR = 8


class Collector:
    """Keeps the episodes a call may return and counts the rest."""

    def __init__(self, sampler, kind, count, round_number):
        self.sampler = sampler
        self.kind = kind
        self.count = count
        self.round = round_number
        self.quota = count if kind == 'episodes' else None
        # Transitions per message: enough to make per-message costs small,
        # few enough that the partial chunks dropped when a call ends stay
        # near 3% of it. Exact episodes are sent when a worker's quota is
        # met (or after FLUSH_AFTER_S).
        self.chunk = None if kind == 'episodes' else \
            max(1, count // (16 * sampler.n_workers))
        # A worker's fair part of the call; past it, it sends at once.
        self.share = None if kind == 'episodes' else \
            -(-count // sampler.n_workers)
        # The tail of a call: once what is still needed could be sitting in
        # the workers' unsent chunks, chunks shrink (see enter_tail), so
        # that a worker slower than the rest does not hold finished
        # episodes when the call ends, which would be wasted work.
        self.in_tail = kind == 'episodes'
        self.min_version = sampler.version - \
            sampler._options['max_staleness']
        self.kept = [[] for _ in range(sampler.n_workers)]  # exact episodes
        self.arrived = []  # samples, in the order they arrived
        self.per_worker = [0] * sampler.n_workers
        self.transitions = 0
        self.attempts = [0] * sampler.n_workers

    def round_start(self, worker):
        """The :class:`RoundStart` that worker ``worker`` (or its
        replacement) runs this call with."""
        return RoundStart(self.round, self.sampler.version, self.quota,
                          self.chunk, self.share, self.attempts[worker])

    def run(self, wait_and_collect, deadline, stop_workers):
        """Call ``wait_and_collect(self, deadline, bar)`` until done and
        return the batches kept. ``stop_workers()`` follows, also after an
        error or Ctrl-C (workers must not go on), unless ``max_staleness``
        keeps them sampling between calls."""
        sampler = self.sampler
        stop = True
        try:
            with progress_bar(sampler._options['progress'], self.kind,
                              self.count, sampler.n_workers) as bar:
                while not self.done:
                    wait_and_collect(self, deadline, bar)
            batches = self.batches()
            stop = sampler._options['max_staleness'] == 0
        finally:
            if stop and not sampler.closed:
                stop_workers()
        return batches

    def enter_tail(self):
        """True once per call, when the workers should send smaller
        chunks (``self.chunk`` is then the smaller size): what the call
        still needs is at most one chunk per worker."""
        if self.in_tail or self.done or \
                self.count - self.transitions > \
                self.chunk * self.sampler.n_workers:
            return False
        self.in_tail = True
        self.chunk = max(1, self.chunk // TAIL_DIVISOR)
        return True

    @property
    def done(self):
        if self.kind == 'episodes':
            return all(n >= self.count for n in self.per_worker)
        return self.transitions >= self.count

    def add(self, worker, round_number, version, batch):
        """Keep or discard a batch; return the progress it made."""
        stats = self.sampler._stats
        if self.kind == 'episodes':
            wanted = self.count - self.per_worker[worker]
            if round_number != self.round or wanted <= 0:
                stats['discarded_episodes'] += batch.n_episodes
                return 0
            batch = self.sampler._keep_episodes(batch, wanted)
            self.kept[worker].append(batch)
            self.per_worker[worker] += batch.n_episodes
            return batch.n_episodes
        if version < self.min_version or self.done:
            stats['discarded_episodes'] += batch.n_episodes
            return 0
        need = self.count - self.transitions
        if len(batch) > need:
            # Whole episodes up to the one that meets the goal; no more.
            enough = int(np.searchsorted(np.cumsum(batch.lengths), need)) + 1
            batch = self.sampler._keep_episodes(batch, enough)
        self.arrived.append(batch)
        self.transitions += len(batch)
        return len(batch)

    def restarted(self, worker):
        """Worker ``worker`` failed and is replaced; call before
        :meth:`round_start` for the replacement."""
        if self.kind == 'episodes':
            # The replacement redoes the round from its seeds, so the call
            # stays reproducible; what the failed worker sent of it would
            # come again, and is dropped.
            dropped = sum(b.n_episodes for b in self.kept[worker])
            self.sampler._stats['discarded_episodes'] += dropped
            self.kept[worker] = []
            self.per_worker[worker] = 0
        else:
            # What the failed worker sent is kept; the replacement draws
            # seeds of its own so that it cannot send those episodes again.
            self.attempts[worker] += 1

    def batches(self):
        if self.kind == 'episodes':
            return [b for kept in self.kept for b in kept]
        return self.arrived

    def describe(self):
        if self.kind == 'episodes':
            short = [f'worker {i} had returned {n} of {self.count} episodes'
                     for i, n in enumerate(self.per_worker) if n < self.count]
            return '; '.join(short)
        return f'{self.transitions} of {self.count} transitions were collected'
