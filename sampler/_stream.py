"""The life of a :meth:`~sampler.Sampler.stream`: opening it (with what
the last stream's workers sent after it), each batch, and its end, which
pauses the workers and holds what they send until they say done. A part
of :class:`~sampler.Sampler`, kept apart because it is the one call that
lives across ``next()`` calls."""

import time

from sampler._call import Collector, ended_episodes
from sampler._protocol import RoundKind
from sampler.errors import SamplerError, SamplerTimeoutError


class StreamCalls:
    """The stream's side of :class:`~sampler.Sampler` (a mixin: it uses
    the sampler's state, calls and backend hooks)."""

    def _stream_batches(self, count, timeout, max_staleness, budget):
        what = f'stream({count})'
        with self._one_call(what):
            # Checked again at the first next(): two streams may have been
            # made before either ran.
            collector = self._open_stream(count, max_staleness, budget)
        ended = False
        try:
            with self._one_call(what):
                self._begin(collector, [(None, None)] * self.n_workers)
            while True:
                with self._one_call(what):
                    batch = self._next_batch(collector, timeout, what)
                yield batch
        except GeneratorExit:
            ended = True
            raise
        finally:
            self._stream = None
            if not self._closed and self._broken is None and \
                    not self._is_fork():
                with self._reads_guard():
                    self._end_stream(collector, ended)

    def _open_stream(self, count, max_staleness, budget):
        self._check_no_stream(f'stream({count})')
        round_number = self._calls
        self._calls += 1
        self._stats['calls'] += 1
        collector = Collector(
            kind=RoundKind.STREAM, count=count, round_number=round_number,
            version=self._version, n_workers=self.n_workers,
            n_envs=self.n_envs, max_staleness=max_staleness,
            stats=self._stats, next_episode_ids=self._next_episode_ids,
            budget=budget)
        held, self._held = self._held, []
        for batch in held:  # from the last stream: kept if not too stale
            if max_staleness is None or \
                    int(batch.versions.min()) >= self._version - max_staleness:
                collector.arrived.append(batch)
                collector.transitions += len(batch)
            else:
                self._count_discarded(batch)
        self._stream = collector
        return collector

    def _next_batch(self, collector, timeout, what):
        deadline = None if timeout is None else time.monotonic() + timeout
        self._resume(collector)
        try:
            while not collector.done:
                self._wait_and_collect(collector, deadline, None)
                # What is read frees budget, kept or discarded.
                for worker, n in collector.take_credits():
                    self._credit(worker, n)
        except SamplerTimeoutError as err:
            msg = f'{what} timed out after {timeout} s: {err}'
            raise SamplerTimeoutError(msg) from None
        batch = self._concatenate(collector.take())
        self._stats['episodes'] += ended_episodes(batch)
        self._stats['transitions'] += len(batch)
        return batch

    def _end_stream(self, collector, cleanly):
        """Pause the workers of a stream that ended; hold what they sent
        until they said done. After an error, only stop them."""
        self._stop()
        if not cleanly:
            return
        collector.draining = True
        deadline = time.monotonic() + self._options.get('shutdown_timeout', 5)
        try:
            while not collector.done:
                self._wait_and_collect(collector, deadline, None)
        except SamplerTimeoutError:
            pass  # a stuck worker: the next call ignores its late segments
        self._held = collector.take()

    def _drop_held(self):
        """A call that is not a stream discards what the last stream
        held."""
        held, self._held = self._held, []
        for batch in held:
            self._count_discarded(batch)

    def _count_discarded(self, batch):
        self._stats['discarded_episodes'] += batch.n_episodes
        self._stats['discarded_transitions'] += len(batch)

    def _check_no_stream(self, what):
        if self._stream is not None:
            msg = (f'{what} while a stream of this sampler is open: one call '
                   f'at a time; leave the stream\'s loop (or close() it) '
                   f'first')
            raise SamplerError(msg)
