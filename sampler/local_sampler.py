"""LocalSampler: every worker in the calling process, one after another.

The same call as every backend (see :mod:`sampler._protocol`), with
messages that are plain function calls: a command is applied to the
worker's :class:`~sampler._round.Round` at once, and its replies wait in
the worker's inbox for the caller's next look, as they would in a pipe.
Waiting for replies runs the next running worker's round until it has a
message (``Round.produce``), each worker in turn.
"""

import collections
import contextlib
import ctypes
import os
import threading
import time
import warnings

from sampler import _probe
from sampler._backend import Backend, WorkerHandle, _Watch
from sampler._process_setup import ProcessSetup
from sampler._protocol import Credit, Hung, Ready
from sampler._round import Round, build_worker, failed_reply
from sampler.errors import WorkerHungError
from workers.worker import PULSE_BEATS, PULSE_ENV


class LocalSampler(Backend):
    """Runs its workers in the calling process, in turn.

    The simplest backend and the reference for the others: no processes,
    so it suits debugging, tiny envs and tests, and its
    ``obtain_exact_episodes`` batches are the ones every backend must match
    for the same seed. Each worker still gets its own unpickled copy of the
    agent and env, exactly as a worker process would.

    ``timeout`` is checked between episodes: a single ``env.step`` that
    never returns cannot be interrupted in-process (use
    ``MultiprocessingSampler`` for that). ``step_timeout`` here raises
    :class:`~sampler.WorkerHungError` in the call (a watchdog thread
    raises it inside the hung env or agent code) and leaves the sampler
    broken whatever ``on_worker_error`` says: a call in this process
    cannot be killed, so the worker cannot be replaced safely. A call
    blocked in C code (a sleep, a lock, a socket) takes it only when it
    returns, if ever; a process backend kills such a worker instead.

    Args:
        agents: an agent (``get_action(obs) -> (action, info)``, or a
            callable ``obs -> action``), or a list of one per worker.
        envs: a gymnasium env id, a ``gymnasium.Env``, a zero-argument
            constructor or an ``EnvUpdate``, or a list of one per worker.
        worker_factory: a ``WorkerFactory``; if given, leave ``n_workers``,
            ``max_episode_length``, ``seed``, ``worker_class`` and
            ``worker_args`` unset.
        n_workers: number of workers; None means the length of ``agents``
            or ``envs`` if either is a list, else the CPUs this process may
            use.
        max_episode_length: cut episodes after this many steps
            (``truncated=True``); None keeps the env's own limit only.
        seed: root seed (int >= 0); None draws one, readable as ``seed``.
        worker_class: ``DefaultWorker`` (one env) or ``VecWorker``.
        worker_args: extra keyword arguments for ``worker_class``.
        on_worker_error: ``'raise'`` (default: the sampler is broken after
            a worker fails) or ``'restart'`` (the worker is rebuilt with
            the current agent and env and the call goes on).
        max_restarts: how many restarts in all before a failure breaks the
            sampler (default 10).
        progress: show a progress bar on stderr; None (default) shows it
            only when stderr is a terminal.
        worker_init: a callable run as ``worker_init(worker_number)``
            before each worker (and each replacement) is built: the place
            for a user's own set-up. The process backends pickle it
            (cloudpickle) and run it in the worker's process.
        worker_threads: threads for torch and the BLAS / OpenMP pools in
            each worker process (default 1: workers share the CPUs, and
            one thread each is fastest for the small batches a worker
            runs); None leaves them as they are. Set when the process
            starts, before the agent is built. ``LocalSampler`` ignores
            it: its workers share the caller's threads.

    Example:
        >>> import gymnasium
        >>> from sampler import LocalSampler
        >>> from workers import MLPAgent
        >>> env = gymnasium.make('CartPole-v1')
        >>> agent = MLPAgent(env.observation_space, env.action_space, seed=0)
        >>> with LocalSampler(agent, 'CartPole-v1', n_workers=2,
        ...                   seed=0) as s:
        ...     batch = s.obtain_samples(100, agent_update=agent.get_params())
        >>> len(batch) >= 100, s.version
        (True, 1)
    """

    #: Its workers live in the caller's memory: a fork's child has a
    #: copy of its own, which it may use.
    _PROCESS_WORKERS = False

    def _start(self, options):
        self._handles = []
        self._turn = 0
        try:
            self._start_workers(deadline=None)
        except BaseException:
            self._shutdown()
            raise

    def _spawn(self, i):
        handle = _Local(i)
        # worker_init runs as given: the workers share this process.
        setup = ProcessSetup(init=self._options['worker_init'])
        try:
            handle.worker = build_worker(i, self._factory, setup,
                                         self._recipes[i].updates())
        except Exception as exc:
            handle.inbox.append(failed_reply(None))
            built = getattr(exc, 'build_worker', None)
            if built is not None:
                _close_quietly(built, i)
            return handle
        handle.round = Round(handle.worker)
        handle.inbox.append(Ready(handle.worker.env_spaces, os.getpid()))
        return handle

    def _send(self, handle, command):
        if handle.round is None:
            return  # never built: its Failed reply waits in the inbox
        if type(command) is Credit:
            return  # asked for each message, a worker is never ahead
        with self._watched(handle):
            handle.inbox.extend(handle.round.handle(command))

    # Hangs (step_timeout): a watchdog thread, since the worker runs in
    # the caller's thread.

    def _watched_wait(self, collector, deadline):
        return self._wait(collector, deadline)

    def _watched(self, handle):
        step_timeout = self._options['step_timeout']
        if step_timeout is None:
            return contextlib.nullcontext()
        watchdog = getattr(self, '_watchdog', None)
        if watchdog is None:
            watchdog = self._watchdog = _Watchdog(step_timeout)
        return watchdog.watching(handle)

    def _reply_error(self, handle, reply):
        err = super()._reply_error(handle, reply)
        if isinstance(err, WorkerHungError):
            err.outcome = ('a call in the caller\'s process cannot be '
                           'killed, so the sampler is broken (a process '
                           'backend replaces such a worker)')
            err.name_call(None)
        return err

    def _worker_failed(self, err):
        if isinstance(err, WorkerHungError):
            self._stats['worker_hangs'] += 1
            self._broken = err  # never replaced: see the class
            return False
        return super()._worker_failed(err)

    def _wait(self, collector, deadline):
        self._check_closed_during()
        for handle in self._handles:
            if handle.inbox:
                return self._read(handle)
        if deadline is not None and time.monotonic() > deadline:
            return None
        n = self.n_workers
        running = [(self._turn + k) % n for k in range(n)
                   if self._handles[(self._turn + k) % n].running]
        if not running:
            msg = (f'no worker is running but the call is not done: '
                   f'{collector.describe()}')
            raise RuntimeError(msg)
        handle = self._handles[running[0]]
        self._turn = (handle.number + 1) % n
        with self._watched(handle):
            handle.inbox.append(handle.round.produce())
        return self._read(handle)

    @staticmethod
    def _read(handle):
        while handle.inbox:
            yield handle, handle.inbox.popleft()

    def _retire(self, handle):
        if handle.worker is not None:
            _close_quietly(handle.worker, handle.number)
            handle.worker = handle.round = None

    def _shutdown(self):
        watchdog = getattr(self, '_watchdog', None)
        if watchdog is not None:
            watchdog.stop()
        handles, self._handles = getattr(self, '_handles', []), []
        for handle in handles:
            self._retire(handle)


class _HungInterrupt(BaseException):
    """Raised by the watchdog inside a worker's call that ran past
    step_timeout (a BaseException: env code that catches Exception does
    not swallow it)."""


class _Watchdog:
    """A thread that watches the pulse of the worker whose code the
    caller's thread runs (see ``sampler._backend._Watch``), and raises
    _HungInterrupt in that thread when the worker hangs."""

    def __init__(self, step_timeout):
        self.watch = _Watch(step_timeout)
        self.lock = threading.Lock()
        self.current = None  # (thread id, handle) being watched
        self.fired = None  # (handle, seconds, (call, stack))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name='sampler-step-timeout')
        self.thread.start()

    @contextlib.contextmanager
    def watching(self, handle):
        ident = threading.get_ident()
        with self.lock:
            self.current = (ident, handle)
            self.fired = None
        try:
            yield
        except _HungInterrupt:
            pass
        finally:
            # The watchdog may have raised it just as the call returned:
            # cancel it if still pending, and take it if it lands here.
            while True:
                try:
                    with self.lock:
                        self.current = None
                        if self.fired is not None:
                            _async_raise(ident, None)
                    break
                except _HungInterrupt:
                    pass
        fired, self.fired = self.fired, None
        if fired is not None:
            handle, seconds, (call, stack) = fired
            pulse = handle.worker.pulse
            handle.inbox.append(Hung(call, int(pulse[PULSE_ENV]), seconds,
                                     stack))

    def _run(self):
        watch = self.watch
        while not self.stopped.wait(watch.every):
            with self.lock:
                if self.current is None or self.fired is not None:
                    continue
                ident, handle = self.current
                pulse = handle.worker.pulse
                found = watch.hung(
                    {handle.number: handle},
                    {handle.number: (pulse[PULSE_BEATS], pulse[PULSE_ENV],
                                     0)}, time.monotonic())
                if not found:
                    continue
                del watch.seen[handle.number]
                frames = _probe.thread_frames(ident) or []
                # From where the sampler ran the worker on.
                for k, (path, _, _) in enumerate(frames):
                    if path == __file__:
                        frames = frames[:k]
                        break
                self.fired = (handle, found[0][1],
                              _probe.report_frames(frames))
                _async_raise(ident, _HungInterrupt)

    def stop(self):
        self.stopped.set()


def _async_raise(ident, exc_type):
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode (None:
    cancel one not raised yet)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type
        else ctypes.c_void_p(0))


class _Local(WorkerHandle):
    """A worker in this process, and the replies it has for the caller."""

    def __init__(self, number):
        super().__init__(number)
        self.worker = None
        self.round = None
        self.inbox = collections.deque()

    @property
    def running(self):
        return self.round is not None and self.round.running


def _close_quietly(worker, i):
    try:
        worker.shutdown()
    except Exception as exc:
        msg = (f'worker {i} raised while closing its env: '
               f'{type(exc).__name__}: {exc}')
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
