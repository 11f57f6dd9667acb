"""The loop a worker process runs: it hosts one worker's
:class:`~sampler._round.Round`, reading commands from its command pipe and
writing replies to its own result pipe (the messages and the whole call
are drawn in :mod:`sampler._protocol`)::

                 command pipe                      result pipe
    caller  ---- Start / Finish / Stop  --->  worker  ---- Ready /
                 Push / Credit / Exit         process      Segments /
                                                           Failed ---> caller

Idle, the loop blocks on the command pipe and the parent's sentinel: no
CPU at all. Running, it looks at its commands (one system call) between
the round's steps (``Round.step``): an episode step, or a piece of about
LOOK_EVERY_S of a steps round. What the round produces is gathered into
one message, sent when it holds the Start's ``chunk`` transitions, when
the worker's part of the round is done, or FLUSH_AFTER_S after its first
segment: per-message costs (pickling, a system call, unpickling in the
caller) are paid per chunk, not per episode. Every round ends with a
message saying ``done``, so a call that waits for all of them leaves no
segment in a pipe. A send blocks only while the caller's end of the pipe
is full, which pauses the worker until the caller reads; the caller reads
whenever it waits, so a paused worker resumes as soon as there is room,
and a command is seen right after. The loop ends on Exit, on a Failed
reply (sent first), or when the parent process is gone.
"""

import collections
import os
import selectors
import signal
import socket
import time
from multiprocessing import parent_process


from sampler import _framing, _probe
from sampler._process_setup import NAME_PREFIX, watch_caller
from sampler._arena import MappedRows
from sampler._protocol import (ENV_COMMANDS, Exit, Failed, Ready, ShareRows,
                               Start)
from sampler._round import Round, build_worker, failed_reply
from workers.worker import PULSE_IDLE, new_pulse

#: Maps of the caller's arenas a worker keeps (the caller keeps two).
MAPS_KEPT = 2


class _ParentGone(Exception):
    """The process that started this worker has died."""


def run(worker_number, factory_blob, setup, updates, commands, results,
        handles=None, probe=None, pulse=None):
    """Entry point of a worker process.

    Args:
        worker_number: which worker this is.
        factory_blob: the cloudpickled WorkerFactory.
        setup: a :class:`~sampler._process_setup.ProcessSetup`.
        updates: :class:`~sampler._protocol.Update` objects to apply in
            order before Ready: env updates, then the agent and its
            parameters.
        commands: the reading end of this worker's command pipe.
        results: the writing end of this worker's result pipe.
        handles: this worker's end of a Unix socket pair the caller sends
            file descriptors over (a steps round's shared rows), or None.
        probe: this worker's end of the socket pair its stacks are dumped
            to when the caller asks where it is (:mod:`sampler._probe`),
            or None.
        pulse: shared memory for the worker's pulse (``Worker.pulse``),
            which the caller watches for hangs (``step_timeout``), or
            None.
    """
    # Ctrl-C in a terminal reaches the whole process group: the caller alone
    # should raise KeyboardInterrupt, not one traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if probe is not None:
        _probe.listen(probe.fileno())
    if setup.caller is not None:
        watch_caller(setup.caller)
    try:
        import setproctitle
        setproctitle.setproctitle(f'{NAME_PREFIX}{worker_number}')
    except ImportError:  # pragma: no cover - a dependency, but be lenient
        pass
    loop = _Loop(worker_number, commands, results, handles, pulse)
    try:
        if loop.build(factory_blob, setup, updates):
            loop.serve()
    except _ParentGone:
        pass
    finally:
        loop.close()
        if probe is not None:
            _probe.stop_listening()
            probe.close()


class _Loop:

    def __init__(self, worker_number, commands, results, handles=None,
                 pulse=None):
        self.worker_number = worker_number
        self.pulse = new_pulse(pulse)
        self.handles = handles
        # The caller keeps ARENAS_KEPT arenas and reuses them: keeping
        # their maps saves mapping (populating) and unmapping the rows
        # every call, 7% of a worker's time on 84x84x3 frames.
        self.maps = collections.OrderedDict()
        self.commands = commands
        self.command_reader = _framing.MessageReader(commands.fileno())
        self.results = results
        # One selector for the whole life of the process: checking it
        # between episodes is a single system call.
        self.selector = selectors.DefaultSelector()
        self.selector.register(commands, selectors.EVENT_READ, False)
        parent = parent_process()
        if parent is not None:
            self.selector.register(parent.sentinel, selectors.EVENT_READ,
                                   True)
        self.worker = None
        self.round = None  # a Round, once the worker is built

    def build(self, factory_blob, setup, updates):
        """Build the worker and say Ready, or report why not (False)."""
        try:
            self.worker = build_worker(self.worker_number, factory_blob,
                                       setup, updates)
        except Exception:
            self._send(failed_reply(self.worker))
            return False
        self.worker.pulse = self.pulse
        self.round = Round(self.worker)
        self._send(Ready(self.worker.env_spaces, os.getpid()))
        return True

    def serve(self):
        """Answer commands and run rounds until Exit or a failure."""
        spin, spin_s, replied = _framing.Spin(), 0.0, None
        pulse = self.pulse
        while True:
            # Handle every queued command before the next step, in order:
            # none is lost, and the last word decides the state. Idle,
            # this blocks (after a vector env's command, polling a moment
            # first: the next comes soon); running, it only looks.
            while True:
                # Waiting for a command, the worker is idle, not hung (see
                # Worker.pulse); it says so while it waits.
                idle = not self.round.active
                if idle:
                    pulse[PULSE_IDLE] = 1
                events = _framing.select_spinning(
                    self.selector, None if idle else 0, spin_s)
                if idle:
                    pulse[PULSE_IDLE] = 0
                if not events:
                    break
                if any(key.data for key, _ in events):
                    raise _ParentGone
                if replied is not None:
                    spin.waited(time.perf_counter() - replied)
                try:
                    command = self.command_reader.read()
                except (EOFError, OSError):
                    raise _ParentGone from None  # the caller's end closed
                kind = type(command)
                if kind is Start:
                    arena = self._arena(command.plan)
                elif kind is ShareRows:
                    arena = MappedRows(self._receive_fd(command.tag),
                                       command.slot)
                else:
                    arena = None
                if not self._send_all(self.round.handle(command, arena)) \
                        or type(command) is Exit:
                    return
                if type(command) in ENV_COMMANDS:
                    spin_s, replied = spin.seconds(), time.perf_counter()
                else:
                    spin_s, replied = 0.0, None
            if self.round.active:
                reply = self.round.step()
                if reply is not None and not self._send_all([reply]):
                    return

    def _send_all(self, replies):
        """Send ``replies``; False once one says the worker failed."""
        for reply in replies:
            if type(reply) is Failed:
                self._send(reply)
                return False
            try:
                self.worker.error_site = 'pickling the episodes'
                pieces = _framing.encode(reply)
                self.worker.error_site = None
            except Exception:
                self._send(failed_reply(self.worker))
                return False
            self._write(pieces)
        return True

    def _arena(self, plan):
        """The :class:`MappedRows` of ``plan``'s arena, its memfd read
        from the fd socket (one per Start that has an arena, tagged with
        the round: one left by a Start the caller never sent, after a
        Ctrl-C, is closed and skipped), or None."""
        if plan.arena is None:
            return None
        return self._map(self._receive_fd(plan.round), plan.arena)

    def _receive_fd(self, tag):
        """The file descriptor the caller sent tagged ``tag`` (others,
        left by commands the caller never sent, are closed)."""
        with socket.socket(fileno=os.dup(self.handles.fileno())) as sock:
            while True:
                got, fds, _, _ = socket.recv_fds(sock, 8, 1)
                if not got and not fds:
                    raise _ParentGone
                if int.from_bytes(got, 'little') == tag and fds:
                    return fds[0]
                for fd in fds:
                    os.close(fd)

    def _map(self, fd, slot):
        """``slot`` of the memfd ``fd`` mapped: the map kept from an
        earlier round of the same memfd, or a new one (the oldest of more
        than MAPS_KEPT unmapped)."""
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino, slot)
        rows = self.maps.pop(key, None)
        if rows is not None:
            os.close(fd)
            rows.rewind()
        else:
            rows = MappedRows(fd, slot)
        self.maps[key] = rows
        while len(self.maps) > MAPS_KEPT:
            self.maps.popitem(last=False)[1].close()
        return rows

    def _send(self, message):
        self._write(_framing.encode(message))

    def _write(self, pieces):
        # A full pipe waits for the caller: idle, not hung.
        self.pulse[PULSE_IDLE] = 1
        try:
            _framing.write_pieces(self.results.fileno(), pieces)
        except (BrokenPipeError, ConnectionResetError):
            raise _ParentGone from None
        finally:
            self.pulse[PULSE_IDLE] = 0

    def close(self):
        self.selector.close()
        self.commands.close()
        for rows in self.maps.values():
            rows.close()
        if self.handles is not None:
            self.handles.close()
        if self.worker is not None:
            try:
                self.worker.shutdown()
            except Exception:
                pass  # exiting anyway; the caller has what it needs
        self.results.close()
