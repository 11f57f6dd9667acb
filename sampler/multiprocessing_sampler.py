"""MultiprocessingSampler: one process per worker, streaming episodes back.

The messages and the whole call are drawn in :mod:`sampler._protocol`;
the rules every backend shares are :mod:`sampler._backend`'s. This module
is how messages move between processes.

The actors:

- the caller's thread: the only reader of the result pipes; never blocks
  on a send (command pipes have a sender thread) and never polls: it
  sleeps in ``wait()`` until a pipe has data, a worker dies, or the call's
  ``timeout`` runs out.
- a command pipe per worker: caller -> worker, written by a sender thread
  of its own (:mod:`sampler._pipes`), so that the caller's thread only
  appends to a deque. (A
  ``multiprocessing.Queue`` would do the same with three named semaphores
  per worker, which its resource tracker may report as leaked when the
  interpreter exits; pipes and threads leave nothing to report.)
- a worker process per worker: the loop of
  :mod:`sampler._worker_process` around the worker's Round, and a
  watchdog thread that ends the
  process as soon as the caller's process is gone (a pidfd of it).
- a wake pipe in the caller's selector: ``close()`` from another thread
  writes to it, so a waiting call wakes and raises SamplerClosedError.
- shared rows (:mod:`sampler._arena`) for ``obtain_steps`` with
  observations of ARENA_MIN_ROW_BYTES or more a row: a memfd sized for
  the call's rows,
  sent to every worker over a socket of its own before Start; each
  worker writes its observations straight into its rows, and its
  message carries only where they are (``ArenaRows``). The batch the
  call returns has those rows as its observations: a frame is copied
  once between the env and the caller (by the worker, from the env's
  array; the env keeps its own array, so that copy cannot go).
- a result pipe per worker: worker -> caller. One pipe per worker, rather
  than one queue shared by all, is what lets a worker die at any moment,
  even in the middle of writing a message, without corrupting or locking
  the others' channel: its pipe just reads as end-of-file, and a
  replacement gets a new one.
"""

import dataclasses
import multiprocessing as mp
import os
import selectors
import socket
import sys
import time
import warnings
import weakref
from multiprocessing.connection import wait

import numpy as np
from gymnasium import spaces

from sampler import _framing, _pickling, _probe, _worker_process
from sampler._arena import ARENA_MIN_ROW_BYTES, ARENAS_KEPT, Arena
from sampler._backend import Backend, WorkerHandle
from sampler._forkserver import (check_preload, default_start_method,
                                 forkserver_samplers,
                                 make_room_for_descriptors, use_forkserver)
from sampler._options import check_streaming_options, process_setup
from sampler._pipes import Commands, read_reply, widen_pipe
from sampler._process_setup import EXIT_MAIN_NOT_GUARDED, NAME_PREFIX
from sampler._protocol import (ENV_COMMANDS, SHARE_ROWS_TAG, ArenaRows,
                               Exit, Gone, RoundKind, Segments, ShareRows,
                               Start)
from sampler.errors import SamplerError
from sampler.sampler import available_cpus
from workers import EpisodeBatch
from workers.worker import PULSE_BEATS, PULSE_ENV, PULSE_FIELDS, PULSE_IDLE


def _pins(option, worker_class):
    """Whether the workers' processes are pinned to a CPU each, from the
    ``pin_workers`` option."""
    if option == 'auto':
        return bool(getattr(worker_class, 'threads_alternate', False))
    if option is True or option is False:
        return option
    msg = f"pin_workers must be 'auto', True or False, got {option!r}"
    raise ValueError(msg)


class _Process(WorkerHandle):
    """The caller's view of one worker process."""

    def __init__(self, number, process, commands, results, fd_socket,
                 probe, pulse=None):
        super().__init__(number)
        self.pulse = pulse  # shared with the worker: its Worker.pulse
        self.process = process
        self.commands = commands
        self.results = results
        self.reader = _framing.MessageReader(results.fileno())
        self.fd_socket = fd_socket
        self.probe = probe  # the caller's end of its sampler._probe socket
        self.rows_shared = False  # it has had the vector env's ShareRows

    def close(self):
        if not self.results.closed:
            self.results.close()
        self.commands.close()
        self.fd_socket.close()
        self.probe.close()


class MultiprocessingSampler(Backend):
    """Runs each worker in a process of its own and streams episodes back.

    Takes every argument of :class:`~sampler.LocalSampler`, and these
    options:

    Args:
        start_method: ``'forkserver'`` (default where available) or
            ``'spawn'``; ``'fork'`` is accepted but unsafe with threads.
        on_worker_error: ``'raise'`` (default) or ``'restart'``.
        max_restarts: restarts allowed in all (default 10).
        progress: show a progress bar on stderr; None (default) shows it
            only when stderr is a terminal.
        shutdown_timeout: seconds ``close()`` may take at most (default 5);
            workers that do not exit by themselves in time are terminated,
            then killed.
        startup_timeout: seconds the workers may take to build their envs
            (default 60).
        max_staleness: accept episodes up to this many versions old
            (default 0: only the current version, and workers go idle when
            a call returns; more keeps them sampling between calls).
        preload: modules the forkserver imports once, before it forks the
            workers, e.g. ``("torch",)``: workers then start in
            milliseconds instead of each importing them (a worker
            re-imports the main module, and with it everything the
            script imports). None (default) preloads torch if this process
            has imported it; ``()`` nothing. Only ``start_method=
            'forkserver'`` uses it.
        pin_workers: ``'auto'`` (default) pins the process of each worker
            whose class asks for it (``threads_alternate``, as
            :class:`~workers.EnvPoolWorker`'s envpool thread and its own
            do) to one CPU, worker ``i`` to the ``i``-th of the CPUs this
            process may use (modulo their count): its two threads then
            hand over on one core instead of waiting for a second one.
            True pins every worker; False none.
        worker_init, worker_threads: see :class:`~sampler.LocalSampler`.

    Example:
        >>> import gymnasium
        >>> from sampler import MultiprocessingSampler
        >>> from workers import RandomAgent
        >>> agent = RandomAgent(gymnasium.make('CartPole-v1').action_space)
        >>> with MultiprocessingSampler(agent, 'CartPole-v1', n_workers=2,
        ...                             seed=0) as s:
        ...     batch = s.obtain_exact_episodes(3)
        >>> batch.worker_numbers.tolist()
        [0, 0, 0, 1, 1, 1]
    """

    _OPTIONS = {**Backend._OPTIONS, 'start_method': None, 'progress': None,
                'shutdown_timeout': 5.0, 'startup_timeout': 60.0,
                'max_staleness': 0, 'preload': None, 'pin_workers': 'auto'}

    def _start(self, options):
        method = options['start_method'] or default_start_method()
        if method not in mp.get_all_start_methods():
            msg = (f'start_method must be one of '
                   f'{", ".join(mp.get_all_start_methods())}, got '
                   f'{method!r}')
            raise ValueError(msg)
        check_streaming_options(options)
        if self.n_workers > available_cpus():
            msg = (f'n_workers={self.n_workers} is more than the '
                   f'{available_cpus()} CPUs this process may use; workers '
                   f'will share CPUs and sampling may be slower, not faster')
            warnings.warn(msg, ResourceWarning, stacklevel=3)
        preload = check_preload(options['preload'])
        make_room_for_descriptors(self.n_workers)
        self._ctx = mp.get_context(method)
        if method == 'forkserver':
            # Workers fork from a server that already imported numpy and
            # gymnasium (and torch, say), so starting one takes
            # milliseconds, not a second.
            use_forkserver(self._ctx, preload)
            forkserver_samplers.add(self)
        self._factory_blob = _pickling.dumps(self._factory)
        # Workers end themselves when this process dies, whatever they do.
        self._setup = dataclasses.replace(
            process_setup(options), caller=os.getpid(),
            pin=_pins(options['pin_workers'], self._factory.worker_class))
        self._handles = []
        self._selector = None
        self._arena = None  # the shared rows of the obtain_steps call
        self._arenas = []  # ones kept for reuse (see sampler._arena)
        self._envs_rows = None  # a vector env's (see _envs_share_rows)
        # close() from another thread writes here to wake a waiting call.
        self._wake = list(os.pipe())
        os.set_blocking(self._wake[1], False)
        # Closes the workers if the sampler is dropped without close(),
        # also at interpreter exit; holds no reference to the sampler.
        self._finalizer = weakref.finalize(
            self, _shutdown, self._handles, options['shutdown_timeout'],
            self._wake)
        deadline = time.monotonic() + options['startup_timeout']
        try:
            with _framing.reads_finish_first():
                spaces = self._start_workers(deadline)
            # (observation_space, action_space), or per policy for a
            # multi-agent worker: no shared rows for those.
            first = spaces[0]
            self._observation_space = first[0] \
                if isinstance(first, tuple) else None
        except BaseException:
            # Nothing to save from workers that never started: end them
            # in a second at most, not shutdown_timeout.
            self._finalizer.detach()
            _shutdown(self._handles, min(options['shutdown_timeout'], 1.0),
                      self._wake)
            raise

    def _spawn(self, i):
        command_reader, command_writer = self._ctx.Pipe(duplex=False)
        reader, writer = self._ctx.Pipe(duplex=False)
        fds_here, fds_there = self._ctx.Pipe(duplex=True)  # a socket pair
        probe_here, probe_there = self._ctx.Pipe(duplex=True)  # sampler._probe
        widen_pipe(reader)
        widen_pipe(command_writer)
        # The worker's pulse, in shared memory where the caller watches it
        # for hangs (step_timeout, and timed-out calls with "restart").
        pulse = self._ctx.RawArray('q', PULSE_FIELDS)
        process = self._ctx.Process(
            target=_worker_process.run, name=f'{NAME_PREFIX}{i}',
            args=(i, self._factory_blob, self._setup,
                  self._recipes[i].updates(),
                  command_reader, writer, fds_there, probe_there, pulse),
            daemon=True)
        process.start()
        # Only the worker may hold these ends: its death then reads as
        # end-of-file here instead of a wait that never ends, and a send to
        # it fails instead of blocking.
        writer.close()
        command_reader.close()
        fds_there.close()
        probe_there.close()
        fd_socket = socket.socket(fileno=os.dup(fds_here.fileno()))
        fds_here.close()
        probe = socket.socket(fileno=os.dup(probe_here.fileno()))
        probe_here.close()
        return _Process(i, process, Commands(command_writer), reader,
                        fd_socket, probe, pulse)

    def _startup_hint(self):
        return ('raise it on a busy machine, or for an env (or a main '
                'module, which every worker imports again) that is slow to '
                'load')

    def _start_failure(self, handle, reply):
        if type(reply) is not Gone:
            return super()._start_failure(handle, reply)
        main = getattr(sys.modules.get('__main__'), '__file__', None)
        method = self._ctx.get_start_method()
        if reply.exitcode == EXIT_MAIN_NOT_GUARDED:
            msg = (f'worker {handle.number} could not start: the main '
                   f'module {main} builds a sampler when it is imported, '
                   f'and worker processes started with '
                   f"start_method='{method}' import it again. Put the code "
                   f'that samples under if __name__ == "__main__": at the '
                   f'end of the script')
            return SamplerError(msg)
        detail = '; anything it printed is on stderr above'
        if method != 'fork' and (main is None or not os.path.exists(main)):
            detail += (f". Worker processes started with start_method="
                       f"'{method}' re-import the main module, which a "
                       f"script read from stdin does not allow: run it from "
                       f"a file")
        return super()._start_failure(handle, reply._replace(detail=detail))

    def worker_pids(self):
        """Process ids of the workers, in worker order."""
        return [handle.process.pid for handle in self._handles]

    def _reads_guard(self):
        return _framing.reads_finish_first()

    def _interrupt_call(self):
        try:
            os.write(self._wake[1], b'x')
        except OSError:
            pass  # full (already woken) or closed

    def _forked(self):
        # Neither this module's finalizer nor multiprocessing's exit
        # handler (which would SIGTERM and join every daemon child it
        # knows) may run for the parent's workers in the child.
        self._finalizer.detach()
        children = getattr(mp.process, '_children', None)
        for handle in self._handles:
            if children is not None:
                children.discard(handle.process)

    # Sampling ------------------------------------------------------------

    def _sample(self, collector, updates, deadline):
        self._arena = self._arena_for(collector)
        try:
            return super()._sample(collector, updates, deadline)
        except BaseException:
            # Workers of an interrupted call may still write into it.
            if self._arena is not None:
                self._arena.close()
                self._arena = None
            raise

    def _arena_for(self, collector):
        """An :class:`~sampler._arena.Arena` for an obtain_steps call
        whose observations are one array of at least ARENA_MIN_ROW_BYTES a
        row (Linux): a kept one that is free, or a new one."""
        space = getattr(self, '_observation_space', None)
        if collector.kind is not RoundKind.STEPS or \
                not hasattr(os, 'memfd_create') or \
                type(space) is not spaces.Box or \
                self.n_envs % self.n_workers:
            return None
        if int(np.prod(space.shape)) * space.dtype.itemsize < \
                ARENA_MIN_ROW_BYTES:
            return None
        shape = (self.n_workers, self.n_envs // self.n_workers *
                 collector.count, space.shape, space.dtype)
        for arena in self._arenas:
            if arena.fits(*shape) and arena.free():
                self._arenas.remove(arena)
                arena.open_rows()
                return arena
        return Arena(*shape)

    def _concatenate(self, batches):
        arena, self._arena = self._arena, None
        rows = None if arena is None else arena.joined(batches)
        if rows is None:
            if arena is not None:
                arena.close()
            return super()._concatenate(batches)
        batch = EpisodeBatch._join(batches, 'mask', observations=rows)
        arena.rows = None
        self._arenas.append(arena)
        while len(self._arenas) > ARENAS_KEPT:
            self._arenas.pop(0).close()
        return batch

    def _send(self, handle, command):
        arena = self._arena
        if type(command) is Start and arena is not None:
            plan = dataclasses.replace(command.plan,
                                       arena=arena.slot(handle.number))
            arena.send(handle, plan.round)
            command = command._replace(plan=plan)
        elif self._envs_rows is not None and not handle.rows_shared and \
                type(command) in ENV_COMMANDS:
            # A vector env's worker (a replacement too) gets its rows
            # before its first command.
            rows, slots = self._envs_rows
            rows.send(handle, SHARE_ROWS_TAG)
            handle.commands.put(ShareRows(slots[handle.number],
                                          SHARE_ROWS_TAG))
            handle.rows_shared = True
        handle.commands.put(command)

    def _envs_share_rows(self, rows, slots):
        self._envs_rows = (rows, slots)
        return True

    def _events(self, timeout):
        """Block until a result pipe has data or a worker process exits.

        One selector registered with every pipe and sentinel lives as long
        as the workers do: a wait then costs one system call, where
        building the set anew cost several per message."""
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake[0], selectors.EVENT_READ,
                                    None)
            for handle in self._handles:
                self._selector.register(handle.results, selectors.EVENT_READ,
                                        (handle, False))
                self._selector.register(handle.process.sentinel,
                                        selectors.EVENT_READ, (handle, True))
        events = [key.data for key, _ in _framing.select_spinning(
            self._selector, timeout, self._spin_s)]
        if self._closed:
            self._check_closed_during()
        return events

    def _forget_selector(self):
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    def _wait(self, collector, deadline):
        timeout = None
        if deadline is not None:
            timeout = max(deadline - time.monotonic(), 0)
        events = self._events(timeout)
        if not events:
            return None
        return self._replies(events, collector)

    def _replies(self, events, collector):
        """The replies behind ``events``, each read when asked for."""
        for event in events:
            if event is None:
                continue  # the wake pipe
            handle, exited = event
            if self._handles[handle.number] is not handle:
                continue  # replaced since
            if not exited:
                yield handle, self._receive(handle, collector)
                continue
            # The process is gone: read what it sent before dying.
            while self._handles[handle.number] is handle and \
                    handle.results.poll():
                yield handle, self._receive(handle, collector)
            if self._handles[handle.number] is handle:
                yield handle, _gone(handle)

    def _receive(self, handle, collector):
        """The next reply from a worker, Gone if its pipe ended; shared
        rows made views of this call's arena."""
        reply = read_reply(handle)
        if reply is None:
            return _gone(handle)
        if type(reply) is Segments and collector is not None:
            reply = self._arena_rows(reply, collector)
        return reply

    def _where(self, workers):
        """What each of ``workers`` is doing now (see sampler._probe)."""
        return _probe.ask({
            i: (self._handles[i].process.pid, self._handles[i].probe)
            for i in workers if self._handles[i].process.is_alive()})

    def _pulses(self, numbers):
        out = {}
        for i in numbers:
            pulse = self._handles[i].pulse
            out[i] = (pulse[PULSE_BEATS], pulse[PULSE_ENV],
                      pulse[PULSE_IDLE])
        return out

    def _hang_report(self, handle):
        return _probe.ask({0: (handle.process.pid, handle.probe)},
                          read=_probe.hang_report).get(0)

    def _kill(self, handle):
        handle.process.kill()

    def _arena_rows(self, segments, collector):
        """``segments`` with observations written to shared memory made
        views of this call's rows; ones of an earlier call's rows (whose
        call ended) are discarded here, their rows gone with it."""
        batch = segments.batch
        if batch is None or type(getattr(batch, 'observations', None)) \
                is not ArenaRows:
            return segments
        if self._arena is not None and segments.round == collector.round:
            batch = batch._with(observations=self._arena.view(
                batch.observations))
            return dataclasses.replace(segments, batch=batch)
        self._stats['discarded_episodes'] += batch.n_episodes
        self._stats['discarded_transitions'] += len(batch)
        return dataclasses.replace(segments, batch=None)

    def _retire(self, handle):
        self._forget_selector()
        _stop_process(handle, timeout=1.0)

    # Shutdown ------------------------------------------------------------

    def _shutdown(self):
        self._forget_selector()
        for arena in getattr(self, '_arenas', ()):
            arena.close()
        self._arenas = []
        finalizer = getattr(self, '_finalizer', None)
        if finalizer is not None:
            finalizer()


def _gone(handle, detail=''):
    """Gone, for a worker whose pipe ended: the pipe can report
    end-of-file a moment before the process is reaped, so wait briefly
    for the exit code that says what happened."""
    handle.process.join(timeout=1.0)
    return Gone(handle.process.exitcode, detail)


def _stop_process(handle, timeout):
    process = handle.process
    process.join(timeout=timeout)
    if process.is_alive():
        process.terminate()
        process.join(timeout=timeout)
    if process.is_alive():
        process.kill()
        process.join()
    handle.close()


def _shutdown(handles, timeout, wake):
    """Ask every worker to exit, then terminate and kill the ones still
    there; returns within ``timeout`` seconds. Interrupted (a second
    Ctrl-C), it kills the workers still there before it raises: nothing
    may be left for multiprocessing's exit handler, which would join a
    worker that ignores SIGTERM for ever."""
    with _framing.reads_finish_first():
        try:
            _stop_workers(handles, timeout)
        finally:
            _kill_workers(handles, wake)


def _kill_workers(handles, wake):
    """Kill the workers still there and close every pipe, with Ctrl-C
    held until done."""
    with _framing.interrupts_held():
        for handle in handles:
            if handle.process.is_alive():
                handle.process.kill()
        for handle in handles:
            handle.process.join(timeout=1.0)
            handle.close()
        handles.clear()
        for fd in wake:
            try:
                os.close(fd)
            except OSError:
                pass
        wake.clear()


def _stop_workers(handles, timeout):
    deadline = time.monotonic() + timeout
    for handle in handles:
        try:
            handle.commands.put(Exit())
        except (OSError, ValueError):
            pass  # its command pipe is already closed
    # Graceful phase: read (and drop) what workers still send, so that one
    # paused on a full pipe can see EXIT; stop at half the budget.
    graceful = time.monotonic() + timeout / 2
    alive = [h for h in handles if h.process.is_alive()]
    while alive:
        remaining = graceful - time.monotonic()
        if remaining <= 0:
            break
        sources = {}
        for h in alive:
            if not h.results.closed:
                sources[h.results] = h
            sources[h.process.sentinel] = h
        for source in wait(list(sources), timeout=remaining):
            handle = sources[source]
            if source is handle.results:
                try:
                    gone = read_reply(handle) is None
                except ValueError:  # the pipe lost its place
                    gone = True
                if gone:
                    handle.results.close()
        alive = [h for h in alive if h.process.is_alive()]
    for handle in alive:
        handle.process.terminate()
    for handle in alive:
        handle.process.join(timeout=max(
            (deadline - time.monotonic()) / 2, 0.05))
    for handle in alive:
        if handle.process.is_alive():
            handle.process.kill()
            handle.process.join(timeout=max(deadline - time.monotonic(),
                                            0.05))
