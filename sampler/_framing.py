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

A read interrupted by a signal whose handler raises (Ctrl-C) keeps what
it read: the next :meth:`MessageReader.read` goes on from there, so the
pipe stays at a message boundary for the caller.
"""

import os
import pickle
import struct

import numpy as np

HEADER = struct.Struct('<QQQ')

#: Where each out-of-band buffer starts in the body, so that the arrays
#: unpickled as views of it are aligned for every numpy dtype.
ALIGN = 64

#: Arrays smaller than this stay in the pickle: a separate buffer costs
#: more than copying a few bytes.
MIN_OUT_OF_BAND = 4096

#: Most buffers one ``writev`` takes (Linux's IOV_MAX is 1024).
_IOV_MAX = 512


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
    """``message`` (a tuple) with its large ``bytes`` items (pickled
    updates) wrapped so that :func:`encode` writes them from their own
    memory instead of copying them into the pickle; the reader gets them
    as memoryviews, which ``pickle.loads`` takes like bytes."""
    return tuple(pickle.PickleBuffer(item) if isinstance(item, bytes) and
                 len(item) >= MIN_OUT_OF_BAND else item for item in message)


def write_message(fd, message):
    """Write ``message`` to the pipe ``fd`` (blocking until it is all
    written)."""
    write_pieces(fd, encode(message))


def write_pieces(fd, pieces):
    views = [memoryview(p).cast('B') for p in pieces]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while written:
            n = len(views[0])
            if written >= n:
                written -= n
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0
        while views and not len(views[0]):
            views.pop(0)


class MessageReader:
    """Reads framed messages from the pipe ``fd``; see the module
    docstring."""

    def __init__(self, fd):
        self.fd = fd
        self._header = np.empty(HEADER.size, np.uint8)
        self._body = None
        self._got = 0

    @property
    def mid_message(self):
        """True after a read was interrupted part way."""
        return self._got > 0 or self._body is not None

    def read(self):
        """The next message; blocks until all of it is read. Raises
        ``EOFError`` if the writer closed the pipe (or died)."""
        if self._body is None:
            self._fill(self._header)
            body_length = HEADER.unpack(self._header.data)[0]
            # Not bytearray(n): zeroing megabytes first cost 0.5 ms each.
            self._body = np.empty(body_length, np.uint8)
            self._got = 0
        self._fill(self._body)
        body, self._body = self._body, None
        _, pickle_length, n_buffers = HEADER.unpack(self._header.data)
        self._got = 0
        return _decode(body, pickle_length, n_buffers)

    def _fill(self, buffer):
        view = memoryview(buffer)
        while self._got < len(view):
            n = _readinto(self.fd, view[self._got:])
            if not n:
                raise EOFError('the worker closed its result pipe')
            self._got += n
        if buffer is self._header:
            self._got = 0


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
