"""Shared rows for ``obtain_steps``: the observations of a call in one
memfd that every worker writes its own rows of, so that a frame is copied
once between the env and the batch the call returns. The caller's side is
:class:`Arena`, the worker's :class:`MappedRows` (see
:mod:`sampler._protocol` for ``ArenaSlot`` and ``ArenaRows``)."""

import mmap
import os
import socket
import sys

import numpy as np

from sampler._protocol import ArenaRows, ArenaSlot


#: Observations of at least this many bytes a row go through shared
#: memory in obtain_steps (see _Arena); smaller ones are cheaper to pickle.
ARENA_MIN_ROW_BYTES = 4096


#: Arenas a sampler keeps for reuse: a training loop holds the last
#: batch while it asks for the next, so two alternate.
ARENAS_KEPT = 2


class Arena:
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


class MappedRows:
    """A worker's map of its :class:`ArenaSlot` of the memfd ``fd`` (which
    it closes); :meth:`take` hands out its rows in order."""

    def __init__(self, fd, slot):
        dtype = np.dtype(slot.dtype)
        row_bytes = int(np.prod(slot.shape, dtype=np.int64)) * dtype.itemsize
        start = slot.first_row * row_bytes
        base = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            # Populated: its pages mapped in one go, not faulted in one by
            # one as the rows are written.
            self._map = mmap.mmap(
                fd, start + slot.n_rows * row_bytes - base, offset=base,
                flags=mmap.MAP_SHARED | getattr(mmap, 'MAP_POPULATE', 0))
        finally:
            os.close(fd)
        self.rows = np.frombuffer(
            self._map, dtype, count=slot.n_rows * row_bytes // dtype.itemsize,
            offset=start - base).reshape((slot.n_rows,) + tuple(slot.shape))
        self.first_row = slot.first_row
        self.used = 0

    def take(self, n):
        """``(rows to write n observations into, their ArenaRows)``, or
        None if fewer than ``n`` are left."""
        if self.used + n > len(self.rows):
            return None
        rows = self.rows[self.used:self.used + n]
        where = ArenaRows(self.first_row + self.used, n)
        self.used += n
        return rows, where

    def rewind(self):
        """Its rows are handed out from the first again (the caller reuses
        an arena only once nothing of the batch it went into is left)."""
        self.used = 0

    def close(self):
        """Unmap: the memory is the caller's batch's alone from now."""
        self.rows = None
        try:
            self._map.close()
        except BufferError:  # a view is still alive; it goes with it
            pass
