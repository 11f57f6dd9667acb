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
  of its own, so that the caller's thread only appends to a deque. (A
  ``multiprocessing.Queue`` would do the same with three named semaphores
  per worker, which its resource tracker may report as leaked when the
  interpreter exits; pipes and threads leave nothing to report.)
- a worker process per worker: the loop of
  :mod:`sampler._worker_process` around the worker's Round, and a
  watchdog thread that ends the
  process as soon as the caller's process is gone (a pidfd of it).
- a wake pipe in the caller's selector: ``close()`` from another thread
  writes to it, so a waiting call wakes and raises SamplerClosedError.
- shared rows (:class:`_Arena`) for ``obtain_steps`` with observations of
  ARENA_MIN_ROW_BYTES or more a row: a memfd sized for the call's rows,
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

import collections
import dataclasses
import importlib.util
import mmap
import multiprocessing as mp
import os
import selectors
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from multiprocessing.connection import wait

import numpy as np
from gymnasium import spaces

from sampler import _framing, _pickling, _probe, _worker_process
from sampler._backend import Backend, WorkerHandle
from sampler._options import check_streaming_options, process_setup
from sampler._process_setup import EXIT_MAIN_NOT_GUARDED, NAME_PREFIX
from sampler._protocol import (ArenaRows, ArenaSlot, Exit, Gone, Push,
                               RoundKind, Segments, Start)
from sampler.errors import SamplerError
from sampler.sampler import available_cpus
from workers import EpisodeBatch


#: Bytes a result pipe holds (Linux; its limit for an unprivileged
#: process is /proc/sys/fs/pipe-max-size, 1 MiB by default). With the
#: default of 64 KiB, a worker sending a message of large observations
#: waits for the caller every 64 KiB, and a pushed state dict crosses
#: each command pipe in as many pieces: both cost a context switch each.
#: (Frames of 84x84x3 came a few percent faster, and a 4 MB state dict
#: reached 8 workers a quarter sooner.)
PIPE_BYTES = 1 << 20


def _widen_pipe(connection):
    """Give a pipe PIPE_BYTES of room where the system allows it; where it
    does not, the pipe keeps its default size."""
    try:
        import fcntl
        fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or above the system's limit


#: Always imported by the forkserver before it forks workers: the worker
#: loop and, through it, numpy, gymnasium and cloudpickle.
_SERVER_MODULES = ('sampler._worker_process',)

#: What the forkserver this module started imported, or None before that.
_server_preload = None

#: Open samplers whose workers came from the forkserver.
_forkserver_samplers = weakref.WeakSet()


def _check_preload(preload):
    """The ``preload`` option as a tuple of importable module names; None
    means torch if the caller has imported it."""
    if preload is None:
        return ('torch',) if 'torch' in sys.modules else ()
    if isinstance(preload, str) or not all(
            isinstance(name, str) for name in preload):
        msg = (f'preload must be a list of module names like '
               f'("torch",), got {preload!r}')
        raise TypeError(msg)
    for name in preload:
        if name == '__main__':
            msg = ('preload may not name __main__: name the modules your '
                   'script imports instead, e.g. ("torch",)')
            raise ValueError(msg)
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            msg = (f'preload names {name!r}, which cannot be imported here; '
                   f'install it or fix the name')
            raise ValueError(msg)
    return tuple(preload)


def _use_forkserver(ctx, preload):
    """Have ``ctx``'s forkserver import ``preload`` before it forks workers.

    The forkserver is one per process and imports its modules once, when
    it starts. If it is running without some of ``preload`` and no open
    sampler has workers from it, it is stopped so that the next worker
    starts a new one that imports them; with samplers open, a warning
    says the modules will be imported by each worker instead.
    """
    global _server_preload
    from multiprocessing import forkserver
    modules = list(dict.fromkeys(_SERVER_MODULES + preload))
    server = getattr(forkserver, '_forkserver', None)
    running = getattr(server, '_forkserver_pid', None) is not None
    if running and _server_preload is not None and \
            not set(modules) <= set(_server_preload):
        busy = any(not s.closed for s in _forkserver_samplers)
        if not busy and hasattr(server, '_stop'):
            server._stop()
            running = False
        elif preload:
            msg = (f'preload={preload!r} cannot take effect: the '
                   f'forkserver is already running for open samplers, '
                   f'without {sorted(set(modules) - set(_server_preload))}; '
                   f'each worker imports them itself')
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
    if not running:
        ctx.set_forkserver_preload(modules)
        _server_preload = modules


#: File descriptors the caller holds per worker (its two pipe ends, the
#: fd and probe sockets and the process sentinel, measured at 5 with the
#: selector's share), with room for the ones a start briefly needs.
FDS_PER_WORKER = 6


def _make_room_for_descriptors(n_workers):
    """Before any worker starts: raise this process's soft limit on open
    files (up to the hard limit, as Ray does) if ``n_workers`` need more,
    or say what to do if even the hard limit is too low."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir('/proc/self/fd'))
    except (ImportError, OSError):
        return  # not Linux: start, and the system says if it runs out
    need = in_use + FDS_PER_WORKER * n_workers + 16
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if hard == resource.RLIM_INFINITY or need <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return
    msg = (f'n_workers={n_workers} needs about {need} open files in this '
           f'process ({in_use} are open, {FDS_PER_WORKER} per worker), but '
           f'its limit is {soft} and cannot go above {hard}; raise it '
           f'before starting Python (ulimit -n {need}, or LimitNOFILE= for '
           f'a service) or use fewer workers')
    raise SamplerError(msg)


#: Observations of at least this many bytes a row go through shared
#: memory in obtain_steps (see _Arena); smaller ones are cheaper to pickle.
ARENA_MIN_ROW_BYTES = 4096


#: Arenas a sampler keeps for reuse: a training loop holds the last
#: batch while it asks for the next, so two alternate.
ARENAS_KEPT = 2


class _Arena:
    """The observations of one obtain_steps call, in shared memory: a
    memfd (anonymous: nothing in /dev/shm, so nothing to leak whatever
    dies) of every row the call returns, worker 0's first. Each worker
    maps its rows and writes its observations there as it builds its
    message: the one copy of a frame between the env and the batch this
    call returns, whose observations are these rows. The caller's map
    lives as long as the batch does.

    Fresh shared pages cost a fault and zeroing each (a 42 MB call of
    84x84x3 frames: 42 ms of the workers' time, against 6 ms for the
    copy itself), so the sampler keeps ARENAS_KEPT arenas and reuses one
    once nothing of the batch it was given to is left: every array over
    its memory holds its map, so a map that only the arena holds is
    free."""

    def __init__(self, n_workers, rows_per_worker, shape, dtype):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.rows_per_worker = rows_per_worker
        self.row_bytes = int(np.prod(shape, dtype=np.int64)) * \
            self.dtype.itemsize
        self.size = n_workers * rows_per_worker * self.row_bytes
        self.fd = os.memfd_create('rollout-sampler-rows', os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.map = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self.open_rows()

    def open_rows(self):
        self.rows = np.frombuffer(self.map, self.dtype).reshape(
            (-1,) + self.shape)
        self._base = self.rows.__array_interface__['data'][0]

    def fits(self, n_workers, rows_per_worker, shape, dtype):
        return (self.rows_per_worker == rows_per_worker and
                self.size == n_workers * rows_per_worker * self.row_bytes
                and self.shape == tuple(shape) and
                self.dtype == np.dtype(dtype))

    def free(self):
        """True if no array over this memory is left but the arena's."""
        self.rows = None
        return sys.getrefcount(self.map) <= 2  # the attribute, the call

    def slot(self, worker):
        return ArenaSlot(worker * self.rows_per_worker, self.rows_per_worker,
                         self.shape, self.dtype.str)

    def send(self, handle, round_number):
        """The memfd to ``handle``'s worker, tagged with the round (a
        datagram-sized message: never blocks)."""
        try:
            socket.send_fds(handle.fd_socket,
                            [round_number.to_bytes(8, 'little')], [self.fd])
        except OSError:
            pass  # the worker died: its sentinel says so, and it is replaced

    def view(self, where):
        return self.rows[where.start:where.start + where.n]

    def joined(self, batches):
        """The rows themselves if ``batches``' observations are views of
        them that follow one another from row 0 to the end; else None."""
        row = 0
        for batch in batches:
            obs = batch.observations
            if not isinstance(obs, np.ndarray) or \
                    obs.__array_interface__['data'][0] != \
                    self._base + row * self.row_bytes:
                return None
            row += len(obs)
        return self.rows if row == len(self.rows) else None

    def close(self):
        """Forget it: its memory lives on in the batch, if any."""
        self.rows = self.map = None
        os.close(self.fd)


def _pins(option, worker_class):
    """Whether the workers' processes are pinned to a CPU each, from the
    ``pin_workers`` option."""
    if option == 'auto':
        return bool(getattr(worker_class, 'threads_alternate', False))
    if option is True or option is False:
        return option
    msg = f"pin_workers must be 'auto', True or False, got {option!r}"
    raise ValueError(msg)


def _default_start_method():
    if 'forkserver' in mp.get_all_start_methods():
        return 'forkserver'
    return 'spawn'


class _Process(WorkerHandle):
    """The caller's view of one worker process."""

    def __init__(self, number, process, commands, results, fd_socket,
                 probe):
        super().__init__(number)
        self.process = process
        self.commands = commands
        self.results = results
        self.reader = _framing.MessageReader(results.fileno())
        self.fd_socket = fd_socket
        self.probe = probe  # the caller's end of its sampler._probe socket

    def close(self):
        if not self.results.closed:
            self.results.close()
        self.commands.close()
        self.fd_socket.close()
        self.probe.close()


class _Commands:
    """The caller's end of a worker's command pipe.

    ``put`` pickles (:mod:`sampler._framing`, the updates' bytes not
    copied) and queues; a daemon thread started on first use does
    the writing, so the caller never blocks on a worker that is busy,
    paused or stuck, and a worker that died just ends the thread.
    """

    def __init__(self, writer):
        self._writer = writer
        self._queued = collections.deque()
        self._wake = threading.Condition()
        self._thread = None
        self._closed = False

    def put(self, message):
        with self._wake:
            if self._closed:
                msg = 'the command pipe of this worker is closed'
                raise ValueError(msg)
            if type(message) is Push:
                message = self._supersede(message)
            self._queued.append((type(message), message,
                                 _framing.encode(_framing.blobs_out_of_band(
                                     message))))
            self._wake.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._send_queued, name='sampler-commands',
                    daemon=True)
                _start_without_signals(self._thread)

    def _send_queued(self):
        while True:
            with self._wake:
                while not self._queued and not self._closed:
                    self._wake.wait()
                if not self._queued:
                    break
                _, _, data = self._queued.popleft()
            try:
                _framing.write_pieces(self._writer.fileno(), data)
            except (OSError, ValueError):
                break  # the worker is gone; nothing more can reach it
        self._writer.close()

    def _supersede(self, message):
        """A Push last in the queue, not sent yet, is folded into
        ``message`` (see ``Push.superseding``). Returns what to queue.
        (Called with the lock held.)"""
        if not self._queued or self._queued[-1][0] is not Push:
            return message
        _, older, _ = self._queued.pop()
        return message.superseding(older)

    def close(self):
        """Stop after what is queued; never waits for a stuck worker."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            if self._thread is None:
                self._writer.close()


#: Signals a helper thread must leave to the main thread: the kernel may
#: give a signal sent to the process to any thread that does not block it,
#: and Python runs the handler in the main thread, at a bytecode boundary;
#: a main thread asleep in select() would not wake for a Ctrl-C that the
#: sender thread took. Faults (SIGSEGV and the like) go to the thread that
#: caused them and are not blocked.
_ASYNC_SIGNALS = frozenset(
    getattr(signal, name) for name in (
        'SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGALRM', 'SIGVTALRM',
        'SIGPROF', 'SIGUSR1', 'SIGUSR2', 'SIGCHLD', 'SIGPIPE', 'SIGWINCH',
        'SIGTSTP', 'SIGTTIN', 'SIGTTOU', 'SIGCONT', 'SIGIO', 'SIGURG',
        'SIGXCPU', 'SIGXFSZ')
    if hasattr(signal, name))


def _start_without_signals(thread):
    """Start ``thread`` with the asynchronous signals blocked in it (it
    inherits this thread's mask, so no signal can reach it in between)."""
    if not hasattr(signal, 'pthread_sigmask'):  # Windows
        thread.start()
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
        method = options['start_method'] or _default_start_method()
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
        preload = _check_preload(options['preload'])
        _make_room_for_descriptors(self.n_workers)
        self._ctx = mp.get_context(method)
        if method == 'forkserver':
            # Workers fork from a server that already imported numpy and
            # gymnasium (and torch, say), so starting one takes
            # milliseconds, not a second.
            _use_forkserver(self._ctx, preload)
            _forkserver_samplers.add(self)
        self._factory_blob = _pickling.dumps(self._factory)
        # Workers end themselves when this process dies, whatever they do.
        self._setup = dataclasses.replace(
            process_setup(options), caller=os.getpid(),
            pin=_pins(options['pin_workers'], self._factory.worker_class))
        self._handles = []
        self._selector = None
        self._arena = None  # the shared rows of the obtain_steps call
        self._arenas = []  # ones kept for reuse (see _Arena)
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
            self._observation_space = spaces[0][0]
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
        _widen_pipe(reader)
        _widen_pipe(command_writer)
        process = self._ctx.Process(
            target=_worker_process.run, name=f'{NAME_PREFIX}{i}',
            args=(i, self._factory_blob, self._setup,
                  self._recipes[i].updates(),
                  command_reader, writer, fds_there, probe_there),
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
        return _Process(i, process, _Commands(command_writer), reader,
                        fd_socket, probe)

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
        """An :class:`_Arena` for an obtain_steps call whose observations
        are one array of at least ARENA_MIN_ROW_BYTES a row (Linux): a
        kept one that is free, or a new one."""
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
        return _Arena(*shape)

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
        handle.commands.put(command)

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
        events = [key.data for key, _ in self._selector.select(timeout)]
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
        reply = _read(handle)
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

    def _arena_rows(self, segments, collector):
        """``segments`` with observations written to shared memory made
        views of this call's rows; ones of an earlier call's rows (whose
        call ended) are discarded here, their rows gone with it."""
        batch = segments.batch
        if batch is None or type(batch.observations) is not ArenaRows:
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


def _read(handle):
    """The next reply from a worker, or None if its pipe ended."""
    try:
        return handle.reader.read()
    except (EOFError, OSError):
        return None


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
                    gone = _read(handle) is None
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
