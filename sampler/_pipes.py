"""The caller's ends of a worker process's pipes: their size, the command
pipe's sender thread (the caller never blocks on a worker), and reading a
reply."""

import collections
import os
import select
import signal
import threading

from sampler import _framing
from sampler._protocol import Push


#: Bytes a result pipe holds (Linux; its limit for an unprivileged
#: process is /proc/sys/fs/pipe-max-size, 1 MiB by default). With the
#: default of 64 KiB, a worker sending a message of large observations
#: waits for the caller every 64 KiB, and a pushed state dict crosses
#: each command pipe in as many pieces: both cost a context switch each.
#: (Frames of 84x84x3 came a few percent faster, and a 4 MB state dict
#: reached 8 workers a quarter sooner.)
PIPE_BYTES = 1 << 20


def widen_pipe(connection):
    """Give a pipe PIPE_BYTES of room where the system allows it; where it
    does not, the pipe keeps its default size."""
    try:
        import fcntl
        fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or above the system's limit


class Commands:
    """The caller's end of a worker's command pipe.

    ``put`` pickles (:mod:`sampler._framing`, the updates' bytes not
    copied), then writes what the pipe takes at once, if nothing is
    queued before it (the pipe does not block: a full pipe takes
    nothing); what it does not take is queued for a daemon thread,
    started on first use, that writes it as the worker reads. So the
    caller never blocks on a worker that is busy, paused or stuck, and a
    worker that died just ends the thread. (Handing every message to the
    thread cost a vector env's lock-step call about 350 us of thread and
    GIL hand-offs; the small commands of a step now go straight into the
    pipe.)
    """

    def __init__(self, writer):
        self._writer = writer
        self._queued = collections.deque()
        self._wake = threading.Condition()
        self._thread = None
        self._writing = False  # the thread is writing a message
        self._closed = False
        os.set_blocking(writer.fileno(), False)

    def put(self, message):
        with self._wake:
            if self._closed:
                msg = 'the command pipe of this worker is closed'
                raise ValueError(msg)
            if type(message) is Push:
                message = self._supersede(message)
            data = [memoryview(p).cast('B') for p in _framing.encode(
                _framing.blobs_out_of_band(message))]
            kind = type(message)
            if not self._queued and not self._writing:
                try:
                    data = _framing.write_some(self._writer.fileno(), data)
                except (OSError, ValueError):
                    return  # the worker is gone; its end tells the caller
                if not data:
                    return
                kind = None  # begun: never superseded
            self._queued.append((kind, message, data))
            self._wake.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._send_queued, name='sampler-commands',
                    daemon=True)
                _start_without_signals(self._thread)

    def _send_queued(self):
        while True:
            with self._wake:
                self._writing = False
                while not self._queued and not self._closed:
                    self._wake.wait()
                if not self._queued:
                    break
                _, _, data = self._queued.popleft()
                self._writing = True
            try:
                fd = self._writer.fileno()
                while data:
                    select.select([], [fd], [])  # room in the pipe
                    data = _framing.write_some(fd, data)
            except (OSError, ValueError):
                break  # the worker is gone; nothing more can reach it
        with self._wake:
            self._writing = False
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


def read_reply(handle):
    """The next reply from a worker, or None if its pipe ended."""
    try:
        return handle.reader.read()
    except (EOFError, OSError):
        return None
