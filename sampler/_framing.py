"""Messages on a pipe, with arrays (and pickled updates) moved as raw
bytes.

A worker's reply is pickled with protocol 5, large contiguous arrays
out-of-band: their bytes are written to the pipe straight from the
arrays' memory (``os.writev``), not copied into the pickle first. The
caller reads a whole message into one buffer it allocates once for it,
and unpickles the arrays as views of that buffer: the observations of a
segment are copied once on the worker's side (into the pipe) and once on
the caller's (out of it), where ``recv_bytes`` and in-band pickles made
four copies of them. Commands to a worker travel the same way, their
pickled updates out-of-band (:func:`blobs_out_of_band`): a state dict
pushed to every worker is copied into each command pipe, not first into
each worker's pickled command.

One message::

    header   3 x uint64: body length, pickle length, number of buffers
    body     uint64 length of each buffer, the pickle, then each buffer
             (each starting at a multiple of ALIGN bytes into the body)

Ctrl-C: a read interrupted by a signal whose handler raises keeps what
it read, and the next :meth:`MessageReader.read` goes on from there. That
alone is not enough: Python runs a signal's handler between two bytecodes,
so a KeyboardInterrupt can come right after ``readv`` returned and before
its count is added up, and those bytes are lost (the next read then takes
a piece of an array for a header). Within :func:`reads_finish_first`, a
SIGINT that arrives while the main thread is reading is held until the
count is kept, then handed to the handler that was there before; the
pipe stays at a message boundary or at a known place inside one.
"""

import contextlib
import os
import pickle
import select
import signal
import struct
import threading
import time

import numpy as np

try:
    # The C functions under ``signal``'s: the same handlers, without the
    # enum conversions that made swapping them a tenth of a vector env
    # step's time in the caller.
    import _signal as _raw_signal
except ImportError:  # not CPython
    _raw_signal = signal

HEADER = struct.Struct('<QQQ')

#: Where each out-of-band buffer starts in the body, so that the arrays
#: unpickled as views of it are aligned for every numpy dtype.
ALIGN = 64

#: Arrays smaller than this stay in the pickle: a separate buffer costs
#: more than copying a few bytes.
MIN_OUT_OF_BAND = 4096

#: Most buffers one ``writev`` takes (Linux's IOV_MAX is 1024).
IOV_MAX = 512

#: Largest message body a reader accepts (a header claiming more is not a
#: header: the pipe lost its place).
MAX_BODY = 1 << 40

#: Longest a held Ctrl-C waits while a message is only part written.
_HELD_POLL_S = 0.05


class _Held:
    """The state of :func:`reads_finish_first` (main thread only)."""

    active = False    # inside reads_finish_first
    reading = False   # the main thread is inside MessageReader.read
    pending = None    # (signum, frame) of a SIGINT held meanwhile
    previous = None   # the handler to hand it to


_SIGINT = int(signal.SIGINT)


class Spin:
    """How long a process should poll for its next message before it
    sleeps, learnt from how long it waited for the last ones.

    A vector env's caller waits for its workers' replies, and a worker for
    the next command, for about as long each step. A process that sleeps
    costs a wake-up on both sides, which on a virtual machine can cost
    longer than the step (on a 2-CPU machine, a vector env of 8 CartPoles
    on 2 workers stepped 1.5x faster when both sides polled). So each
    polls (yielding the CPU between polls, so that a process that needs
    it more gets it) for twice the average wait, up to ``cap`` seconds;
    where waits last longer than ``cap`` (a learner that trains between
    steps), it does not poll at all."""

    def __init__(self, first=300e-6, cap=1e-3):
        self.average = first / 2
        self.cap = cap

    def seconds(self):
        if self.average > self.cap:
            return 0.0
        return min(2 * self.average, self.cap)

    def waited(self, seconds):
        self.average += 0.2 * (seconds - self.average)


def select_spinning(selector, timeout, spin_s):
    """``selector.select(timeout)``, polling without sleeping (yielding
    the CPU between polls) for up to ``spin_s`` seconds first."""
    if spin_s and (timeout is None or timeout > 0):
        end = time.perf_counter() + spin_s
        while True:
            events = selector.select(0)
            if events:
                return events
            if time.perf_counter() > end:
                break
            os.sched_yield()
        if timeout is not None:
            timeout = max(timeout - spin_s, 0)
    return selector.select(timeout)


def _handle_sigint(signum, frame):
    if _Held.reading:
        _Held.pending = (signum, frame)
    else:
        _Held.previous(signum, frame)


@contextlib.contextmanager
def reads_finish_first():
    """Within it, Ctrl-C never lands inside a read's bookkeeping: a
    SIGINT arriving while the main thread reads a message is handed to
    the previous handler (which raises KeyboardInterrupt) once what was
    read is counted, at most 50 ms later; at any other moment, at once.
    Does nothing in other threads, which signal handlers never run in,
    or when SIGINT has no Python handler."""
    if _Held.active or threading.current_thread() is not \
            threading.main_thread():
        yield  # already held by an outer one, or nothing to hold
        return
    previous = _raw_signal.getsignal(_SIGINT)
    if not callable(previous):
        yield
        return
    _Held.previous, _Held.pending = previous, None
    _raw_signal.signal(_SIGINT, _handle_sigint)
    _Held.active = True
    try:
        yield
    finally:
        _Held.active = False
        _Held.reading = False
        if _raw_signal.getsignal(_SIGINT) is _handle_sigint:
            _raw_signal.signal(_SIGINT, previous)
        pending, _Held.pending = _Held.pending, None
        if pending is not None:
            previous(*pending)


@contextlib.contextmanager
def interrupts_held():
    """Within :func:`reads_finish_first`, hold Ctrl-C for the whole body
    (work that must not stop half done), then hand it over."""
    if not _Held.active or _Held.reading or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    _Held.reading = True
    try:
        yield
    finally:
        _Held.reading = False
        pending, _Held.pending = _Held.pending, None
        if pending is not None:
            _Held.previous(*pending)


def _deliver_held():
    """Hand a held SIGINT to its handler (the reader's count is kept)."""
    pending, _Held.pending = _Held.pending, None
    _Held.reading = False
    try:
        _Held.previous(*pending)
    finally:
        _Held.reading = True


def _pad(offset):
    return -offset % ALIGN


def encode(message):
    """The pieces (bytes-like) of ``message`` as one framed message."""
    buffers = []

    def out_of_band(buffer):
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: stays in the pickle
            return True
        if raw.nbytes < MIN_OUT_OF_BAND:
            return True
        buffers.append(raw)
        return False

    data = pickle.dumps(message, protocol=5, buffer_callback=out_of_band)
    lengths = struct.pack(f'<{len(buffers)}Q', *(b.nbytes for b in buffers))
    pieces = [None, lengths, data]
    offset = len(lengths) + len(data)
    for raw in buffers:
        pad = _pad(offset)
        if pad:
            pieces.append(bytes(pad))
        pieces.append(raw)
        offset += pad + raw.nbytes
    pieces[0] = HEADER.pack(offset, len(data), len(buffers))
    return pieces


def blobs_out_of_band(message):
    """``message`` (a command: a NamedTuple) with the large ``bytes`` of
    its updates (pickled agents, parameters, envs) wrapped so that
    :func:`encode` writes them from their own memory instead of copying
    them into the pickle; the reader gets them as memoryviews, which
    ``pickle.loads`` takes like bytes."""
    if not hasattr(message, '_fields'):
        return message  # not a command: the worker says so by name
    return type(message)(*[_out_of_band(item) for item in message])


def _out_of_band(item):
    if isinstance(item, bytes) and len(item) >= MIN_OUT_OF_BAND:
        return pickle.PickleBuffer(item)
    blob = getattr(item, 'blob', None)
    if isinstance(item, tuple) and isinstance(blob, bytes):
        return item._replace(blob=_out_of_band(blob))
    return item


def write_message(fd, message):
    """Write ``message`` to the pipe ``fd`` (blocking until it is all
    written)."""
    write_pieces(fd, encode(message))


def write_pieces(fd, pieces):
    """Write ``pieces`` to the blocking pipe ``fd``, all of them."""
    views = [memoryview(p).cast('B') for p in pieces]
    while views:
        views = write_some(fd, views)


def write_some(fd, views):
    """Write what the pipe ``fd`` takes now of ``views`` (byte
    memoryviews): all of them if it blocks; if it does not, what it has
    room for. Returns the views (or the rest of one) left to write."""
    views = [v for v in views if len(v)]
    while views:
        try:
            written = os.writev(fd, views[:IOV_MAX])
        except BlockingIOError:
            return views
        while written:
            n = len(views[0])
            if written >= n:
                written -= n
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0
    return views


class MessageReader:
    """Reads framed messages from the pipe ``fd``; see the module
    docstring."""

    def __init__(self, fd):
        self.fd = fd
        self._header = np.empty(HEADER.size, np.uint8)
        self._body = None
        self._got = 0
        self._poll = None

    @property
    def mid_message(self):
        """True after a read was interrupted part way."""
        return self._got > 0 or self._body is not None

    def read(self):
        """The next message; blocks until all of it is read. Raises
        ``EOFError`` if the writer closed the pipe (or died)."""
        held = _Held.active and threading.current_thread() is \
            threading.main_thread()
        if not held:
            return self._read(False)
        _Held.reading = True
        try:
            message = self._read(True)
        finally:
            _Held.reading = False
        if _Held.pending is not None:
            # Arrived as the message completed: it is dropped, the pipe
            # is at the next message.
            pending, _Held.pending = _Held.pending, None
            _Held.previous(*pending)
        return message

    def _read(self, held):
        if self._body is None:
            self._fill(self._header, held)
            body_length, pickle_length, n_buffers = HEADER.unpack(
                self._header.data)
            if body_length > MAX_BODY or \
                    pickle_length + 8 * n_buffers > body_length:
                msg = (f'a message header that makes no sense (body '
                       f'{body_length} bytes, pickle {pickle_length}, '
                       f'{n_buffers} buffers): the pipe lost its place')
                raise ValueError(msg)
            # Not bytearray(n): zeroing megabytes first cost 0.5 ms each.
            self._body = np.empty(body_length, np.uint8)
            self._got = 0
        self._fill(self._body, held)
        _, pickle_length, n_buffers = HEADER.unpack(self._header.data)
        body, self._body, self._got = self._body, None, 0
        return _decode(body, pickle_length, n_buffers)

    def _fill(self, buffer, held):
        view = memoryview(buffer)
        while self._got < len(view):
            if held:
                self._wait_readable()
            n = _readinto(self.fd, view[self._got:])
            if not n:
                raise EOFError('the worker closed its result pipe')
            self._got += n
            if held and _Held.pending is not None:
                _deliver_held()  # what was read is counted
        if buffer is self._header:
            self._got = 0

    def _wait_readable(self):
        """Block until the pipe has data, looking at a held Ctrl-C every
        50 ms: a blocking read would resume after the handler held it."""
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLIN)
        while not self._poll.poll(int(_HELD_POLL_S * 1000)):
            if _Held.pending is not None:
                _deliver_held()


def _decode(body, pickle_length, n_buffers):
    view = memoryview(body)
    lengths = struct.unpack_from(f'<{n_buffers}Q', view, 0)
    start = 8 * n_buffers
    data = view[start:start + pickle_length]
    offset = start + pickle_length
    buffers = []
    for n in lengths:
        offset += _pad(offset)
        buffers.append(view[offset:offset + n])
        offset += n
    return pickle.loads(data, buffers=buffers)


def _readinto(fd, view):
    if hasattr(os, 'readv'):
        return os.readv(fd, [view])
    data = os.read(fd, len(view))  # pragma: no cover - not on Linux
    view[:len(data)] = data
    return len(data)
