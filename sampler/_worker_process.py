"""The loop a worker process runs, and the messages it speaks.

A worker process owns one :class:`~workers.Worker`. It reads commands from
its command pipe and writes replies to its own result pipe::

                 command pipe                       result pipe
    caller  ---- START / FINISH /  ---->  worker  ---- READY / EPISODES /
                 STOP / EXIT               process      ERROR ---->  caller

States and transitions (checked between episodes, and between pieces of
about LOOK_EVERY_S of a steps round's steps; never inside a step)::

    IDLE ---START---> RUNNING ---its part of the round done---> IDLE
      ^                 |  |        (sends EPISODES with done=True)
      |                 |  +--FINISH: start no new episode, end the
      |                 |     running ones, then done
      +-----STOP--------+  (a START while running begins the new round;
                           a round ended early sends what it holds,
                           a steps round's running segments cut there)
    any state ---EXIT, or the parent process died---> exit

IDLE blocks on the command pipe and the parent's sentinel: no CPU at all.
RUNNING runs the round (:class:`Round`: whole episodes up to a quota or
until FINISH, or a number of steps of every env) and gathers what it
produces into one message, sent when it holds the START's ``chunk``
transitions, when its part of the round is done, or 50 ms after its
first episode: per-message costs (pickling, a system call, unpickling in
the caller) are paid per chunk, not per episode. Every round ends with a
message saying ``done``, so a call that waits for all of them leaves no
episode in a pipe. A send blocks only while the caller's end of the pipe
is full, which pauses the worker until the caller reads; the caller reads
whenever it waits, so a paused worker resumes as soon as there is room,
and a command is seen right after.
"""

import collections
import dataclasses
import enum
import mmap
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from multiprocessing import parent_process
from typing import Optional

import cloudpickle
import numpy as np

from sampler import _framing, _probe
from workers import EpisodeBuffer
from workers.spaces import misfit

#: Maps of the caller's arenas a worker keeps (the caller keeps two).
MAPS_KEPT = 2

#: Longest a finished episode waits in a worker before it is sent.
FLUSH_AFTER_S = 0.05

#: About how long a worker in a steps round steps before it looks at its
#: commands again (a STOP, the START of the next call): it takes the
#: round's steps in pieces of about this many seconds' worth.
LOOK_EVERY_S = 0.01

#: The most steps of every env in one piece.
MAX_PIECE = 1 << 16

#: A worker process's name; the caller gives it, and the worker knows
#: itself by it before anything else of its is set up.
NAME_PREFIX = 'sampler-worker-'

#: The exit code of a worker whose start re-imported a main module that
#: builds a sampler (see :func:`exit_if_importing_main`); EX_CONFIG of
#: sysexits.h, since the fix is in the user's script.
EXIT_MAIN_NOT_GUARDED = 78


def exit_if_importing_main():
    """End this process at once if it is a worker process still importing
    the user's main module, and that import is building a sampler.

    Worker processes started by ``forkserver`` or ``spawn`` import the main
    module again before they run anything of ours. A script that samples
    without ``if __name__ == "__main__":`` then builds a sampler in every
    worker, which fails there (a worker may not start processes) with a
    traceback per worker that never names the cause. Exiting quietly with
    EXIT_MAIN_NOT_GUARDED lets the caller raise one error that does.
    """
    import multiprocessing
    current = multiprocessing.current_process()
    if getattr(current, '_inheriting', False) and \
            current.name.startswith(NAME_PREFIX):
        os._exit(EXIT_MAIN_NOT_GUARDED)


class Command(enum.Enum):
    """Caller -> worker."""

    START = 'start'    # (RoundStart, env blob or None, agent blob or None)
    FINISH = 'finish'  # (round,): start no new episode, end the running
    #                     ones, send them and say done
    STOP = 'stop'      # (): go idle now, sending what is held
    EXIT = 'exit'      # ()
    UPDATE = 'update'  # (version, env blob or None, agent blob or None):
    #                     a stream round applies it at its next step, its
    #                     segments cut there; another round when it ends
    CREDIT = 'credit'  # (transitions,): the caller read that many of a
    #                     stream round's; a worker that far ahead goes on


@dataclasses.dataclass(frozen=True)
class RoundStart:
    """How a worker is to run one call (a round); sent with START.

    The kind of round follows from ``quota`` and ``steps``: with
    ``quota``, exactly that many whole episodes (``obtain_exact_episodes``);
    with ``steps``, that many steps of every env, the envs kept running
    (``obtain_steps``); with neither, whole episodes until FINISH
    (``obtain_samples``).

    Attributes:
        round: the sampler's call counter; seeds the round.
        version: stamped on every episode of the round.
        quota: episodes to produce, or None.
        steps: steps of every env, or None.
        chunk: transitions per message, or None (send when done).
        first_episode_id: the least id the worker's next episode may
            have (past every id the caller has seen from this worker: where
            a replacement's ids start), or None.
        stream: a stream round: ``steps`` steps of every env at a time,
            the envs kept running, until STOP; UPDATE commands apply at
            the next step.
        budget: in a stream round, the transitions sent and not yet
            credited (CREDIT) at which the worker pauses; None: no limit.
        attempt: 0 for the worker that began the round; ``k`` for its
            ``k``-th replacement in a call that keeps what the failed
            worker sent: the replacement draws seeds of its own, so it
            never repeats those episodes. (An exact-episode call drops
            them instead and redoes the round from its seeds, attempt 0,
            which keeps the call reproducible.)
    """

    round: int
    version: int
    quota: Optional[int] = None
    steps: Optional[int] = None
    chunk: Optional[int] = None
    first_episode_id: Optional[int] = None
    attempt: int = 0
    stream: bool = False
    budget: Optional[int] = None
    arena: Optional['ArenaSlot'] = None


@dataclasses.dataclass(frozen=True)
class ArenaSlot:
    """Where a worker writes the observations of a steps round: rows
    ``first_row`` to ``first_row + n_rows`` of the call's shared array
    (a memfd the caller sends over the worker's fd socket, tagged with
    the round), each row of ``shape`` and ``dtype``. With it, each frame
    is copied once, from the env's array into the batch the caller
    returns; without it, four times (stacked, into the pipe, out of it,
    concatenated)."""

    first_row: int
    n_rows: int
    shape: tuple
    dtype: str


@dataclasses.dataclass(frozen=True)
class ArenaRows:
    """Stands in for a message's observations: rows ``start`` to
    ``start + n`` of the call's shared array, written in place."""

    start: int
    n: int


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


@dataclasses.dataclass
class Segments:
    """What a worker sends of a round (the EPISODES reply).

    Attributes:
        round, version: of the round that produced them.
        batch: an EpisodeBatch of segments, or None (nothing new).
        done: the worker's part of the round is over; nothing more of it
            follows.
        env_steps: ``env.step`` calls since the worker's last message,
            returned or not.
    """

    round: int
    version: int
    batch: object
    done: bool
    env_steps: int


@dataclasses.dataclass(frozen=True)
class ProcessSetup:
    """What a worker's process does before it builds the worker (sampler
    options ``worker_threads`` and ``worker_init``).

    Attributes:
        threads: threads for torch and for the BLAS / OpenMP pools of the
            process, or None to leave them as they are.
        init: the pickled ``worker_init`` callable, run as
            ``worker_init(worker_number)``, or None.
        caller: the process id of the sampler's process: the worker ends
            within a second of its death (:func:`watch_caller`), or None.
        pin: pin the process to one CPU (:func:`pin_to_cpu`) before the
            worker (and any thread it starts) is built.
    """

    threads: Optional[int] = None
    init: Optional[bytes] = None
    caller: Optional[int] = None
    pin: bool = False


#: The exit code of a worker that ended because its caller died.
EXIT_CALLER_GONE = 70

#: How often the watchdog looks where the caller cannot be waited on.
WATCH_EVERY_S = 0.25


def watch_caller(pid):
    """End this process as soon as process ``pid`` (the caller) is gone,
    whatever the worker is doing: in the middle of an episode, blocked in
    an env, asleep. A daemon thread waits on a pidfd of the caller (Linux
    5.3 and later; elsewhere it looks every WATCH_EVERY_S), then calls
    ``os._exit``. Waiting on the parent process would not do: a worker's
    parent is the forkserver, which outlives the caller while workers
    hold its pipe open."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(EXIT_CALLER_GONE)  # gone before this worker looked
    except (AttributeError, OSError):
        pidfd = None

    def watch():
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once it has exited
        else:
            while _alive(pid):
                time.sleep(WATCH_EVERY_S)
        os._exit(EXIT_CALLER_GONE)

    threading.Thread(target=watch, name='sampler-watchdog',
                     daemon=True).start()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # there, but another user's: not reused by a caller
    return True


#: Read by OpenMP, MKL, OpenBLAS, numexpr and Accelerate when they load.
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS',
                    'OPENBLAS_NUM_THREADS', 'NUMEXPR_NUM_THREADS',
                    'VECLIB_MAXIMUM_THREADS')


def limit_threads(n):
    """Run torch and the BLAS / OpenMP pools of this process with ``n``
    threads: the environment variables for libraries loaded later, torch's
    setting if torch is loaded, and ``threadpoolctl`` (when installed) for
    pools already loaded (numpy's BLAS)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    torch = sys.modules.get('torch')
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        import threadpoolctl
    except ImportError:
        return
    threadpoolctl.threadpool_limits(n)


def pin_to_cpu(worker_number):
    """Run this thread, and the threads it starts from now on, on one
    CPU: the ``worker_number``-th of those it may use (modulo their
    count). Returns the CPU, or None where affinity cannot be set."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[worker_number % len(cpus)]
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    return cpu


def build_worker(worker_number, factory_blob, setup, payloads):
    """Set up this process as ``setup`` says, then build the worker and
    apply ``payloads`` (``(kind, blob)`` pairs) in order.

    Raises whatever the set-up or a payload raised, with the worker (None
    before it exists) and the step that raised in ``err.build_site``.
    """
    worker, site = None, 'worker_init'
    try:
        if setup.pin:
            pin_to_cpu(worker_number)
        if setup.threads is not None:
            limit_threads(setup.threads)
        if setup.init is not None:
            cloudpickle.loads(setup.init)(worker_number)
        site = 'building the worker'
        worker = cloudpickle.loads(factory_blob)(worker_number)
        for kind, blob in payloads:
            apply_update(worker, kind, blob)
        if setup.threads is not None:
            limit_threads(setup.threads)  # torch may have come with them
    except Exception as err:
        err.build_site = site
        err.build_worker = worker
        raise
    return worker


class Reply(enum.Enum):
    """Worker -> caller."""

    READY = 'ready'        # (env_spaces,)
    EPISODES = 'episodes'  # (Segments,)
    ERROR = 'error'        # (site, exception type, message, traceback)


class _ParentGone(Exception):
    """The process that started this worker has died."""


def run(worker_number, factory_blob, setup, payloads, commands, results,
        handles=None, probe=None):
    """Entry point of a worker process.

    Args:
        worker_number: which worker this is.
        factory_blob: the cloudpickled WorkerFactory.
        setup: a :class:`ProcessSetup`.
        payloads: ``(kind, blob)`` pairs to apply in order before READY:
            env updates, then the agent and its parameters.
        commands: the reading end of this worker's command pipe, carrying
            pickled ``(Command, *args)`` tuples.
        results: the writing end of this worker's result pipe.
        handles: this worker's end of a Unix socket pair the caller sends
            file descriptors over (a steps round's shared rows), or None.
        probe: this worker's end of the socket pair its stacks are dumped
            to when the caller asks where it is (:mod:`sampler._probe`),
            or None.
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
    loop = _Loop(worker_number, commands, results, handles)
    try:
        if loop.build(factory_blob, setup, payloads):
            loop.serve()
    except _ParentGone:
        pass
    finally:
        loop.close()
        if probe is not None:
            _probe.stop_listening()
            probe.close()


class _Loop:

    def __init__(self, worker_number, commands, results, handles=None):
        self.worker_number = worker_number
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
        self.progress = None  # a Round, once the worker is built
        self.pending = EpisodeBuffer()
        self.pending_since = 0.0

    def build(self, factory_blob, setup, payloads):
        """Build the worker and say READY, or report why not (False)."""
        try:
            self.worker = build_worker(self.worker_number, factory_blob,
                                       setup, payloads)
        except Exception:
            self._report_error()
            return False
        self.progress = Round(self.worker)
        self._send((Reply.READY, self.worker.env_spaces))
        return True

    def serve(self):
        while True:
            # Handle every queued command before the next episode, in order:
            # none is lost, and the last word decides the state. Idle, this
            # blocks; running, it only looks.
            timeout = 0 if self._stepping else None
            while True:
                events = self.selector.select(timeout)
                if not events:
                    break
                if any(key.data for key, _ in events):
                    raise _ParentGone
                try:
                    message = self.command_reader.read()
                except (EOFError, OSError):
                    raise _ParentGone from None  # the caller's end closed
                try:
                    keep_going = self._handle(message)
                except Exception:  # an unknown or malformed command
                    self._report_error()
                    return
                if not keep_going:
                    return
                timeout = 0 if self._stepping else None
            if self._stepping:
                if not self.pending.n_episodes:
                    self.pending_since = time.monotonic()
                try:
                    more = self.progress.rollout_into(self.pending)
                except Exception:
                    self._report_error()
                    return
                if not more or (self.pending.n_episodes and
                                self.progress.message_due(
                                    self.pending, self.pending_since)):
                    if not self._flush():
                        return

    @property
    def _stepping(self):
        return self.progress.running and not self.progress.paused

    def _handle(self, message):
        """Apply one command; False means exit."""
        tag, *args = message
        if tag is Command.START:
            # A round still running ends here: what it holds (with a steps
            # round's running segments, cut) goes to the caller, which
            # keeps or discards it, and counts what it discards.
            if self.progress.running:
                self.progress.halt(self.pending)
                if self.pending.n_episodes and not self._flush():
                    return False
            self.pending = EpisodeBuffer()
            try:
                self.progress.start(*args, arena=self._arena(args[0]))
            except Exception:
                self._report_error()
                return False
        elif tag is Command.FINISH:
            if self.progress.running and args[0] == self.progress.round:
                self.progress.finish()
        elif tag is Command.STOP:
            was_running = self.progress.running
            self.progress.halt(self.pending)
            # Hand over what is done: the next call keeps it if its
            # version is still current.
            if was_running and not self._flush():
                return False
            try:
                self.progress.stop()
            except Exception:
                self._report_error()
                return False
        elif tag is Command.UPDATE:
            # A message holds one version: what is held goes first.
            if self.progress.stream and self.pending.n_episodes and \
                    not self._flush():
                return False
            try:
                self.progress.update(*args)
            except Exception:
                self._report_error()
                return False
        elif tag is Command.CREDIT:
            self.progress.credit(*args)
        elif tag is Command.EXIT:
            return False
        else:
            msg = f'worker {self.worker_number} got unknown command {tag!r}'
            raise ValueError(msg)
        return True

    def _arena(self, start):
        """The :class:`MappedRows` of ``start``'s arena, its memfd read
        from the fd socket (one per START that has an arena, tagged with
        the round: one left by a START the caller never sent, after a
        Ctrl-C, is closed and skipped), or None."""
        if start.arena is None:
            return None
        with socket.socket(fileno=os.dup(self.handles.fileno())) as sock:
            while True:
                tag, fds, _, _ = socket.recv_fds(sock, 8, 1)
                if not tag and not fds:
                    raise _ParentGone
                if int.from_bytes(tag, 'little') == start.round and fds:
                    return self._map(fds[0], start.arena)
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

    def _flush(self):
        """Send the segments held as one message (also with none held, if
        the round is over: it says done); False after an error."""
        try:
            reply = self.progress.message(self.pending)
            self.worker.error_site = 'pickling the episodes'
            pieces = _framing.encode(reply)
            self.worker.error_site = None
        except Exception:
            self._report_error()
            return False
        self._write(pieces)
        return True

    def _report_error(self):
        self._send(error_reply(self.worker))

    def _send(self, message):
        self._write(_framing.encode(message))

    def _write(self, pieces):
        try:
            _framing.write_pieces(self.results.fileno(), pieces)
        except (BrokenPipeError, ConnectionResetError):
            raise _ParentGone from None

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


class Round:
    """A worker's part of one call (a round): the START's updates, what
    the round asks (see :class:`RoundStart`), what it has produced, and
    when a message is due. The one place these rules live on the worker's
    side, whatever runs it: the worker process loop here, the Ray actor,
    or LocalSampler in the caller's process."""

    def __init__(self, worker):
        self.worker = worker
        self.running = False
        self.round = self.version = 0
        self.quota = self.steps = self.chunk = None
        self.started = 0
        self.finishing = False
        self.stream = False
        self.budget = None
        self.in_flight = 0  # stream rounds: sent, not yet credited
        self.deferred = None  # an UPDATE that waits for the round's end
        self.arena = None  # MappedRows of a steps round, or None
        # A steps round's steps are begun and not all taken; they are
        # taken ``piece`` steps of every env at a time (see LOOK_EVERY_S),
        # a size learned over the rounds.
        self.stepping = False
        self.piece = 1
        self._steps_reported = worker.env_steps

    def start(self, start, env_blob=None, agent_blob=None, arena=None):
        """Apply the updates (pickled, or None) and begin the round that
        ``start`` (a :class:`RoundStart`) describes, writing observations
        into ``arena`` (:class:`MappedRows`) if given; raises what the
        updates raise."""
        self._end()  # an UPDATE that waited for the last round first
        self._drop_arena()
        self.arena = arena
        worker = self.worker
        if env_blob is not None:
            apply_update(worker, 'env', env_blob)
        if agent_blob is not None:
            apply_update(worker, 'agent', agent_blob)
        if start.first_episode_id is not None:
            worker.next_episode_id = max(worker.next_episode_id,
                                         start.first_episode_id)
        # Steps rounds let running episodes go on; whole-episode rounds
        # start every episode afresh. Only exact-episode rounds reseed
        # every env: a replacement redoes them from the round's seeds
        # alone. Other rounds seed only envs never reset yet (a seeded
        # reset can be costly), which keeps their episodes distinct.
        if self.stepping:  # a round not halted: its segments are lost
            self.halt(EpisodeBuffer())
        worker.start_round(start.round, start.version, attempt=start.attempt,
                           keep_episodes=start.steps is not None,
                           reseed_envs=start.quota is not None)
        if start.steps is not None and not start.stream:
            worker.begin_steps(start.steps)
            self.stepping = True
        self.round, self.version = start.round, start.version
        self.quota, self.steps, self.chunk = \
            start.quota, start.steps, start.chunk
        self.started = 0
        self.finishing = False
        self.stream, self.budget = start.stream, start.budget
        self.in_flight = 0
        self.deferred = None
        self.running = True

    @property
    def paused(self):
        """A stream round this far ahead of the caller waits for CREDIT."""
        return self.running and self.stream and self.budget is not None \
            and self.in_flight >= self.budget

    def credit(self, transitions):
        """The caller read ``transitions`` of this stream round's."""
        self.in_flight = max(0, self.in_flight - int(transitions))

    def update(self, version, env_blob=None, agent_blob=None):
        """Apply an UPDATE: now, unless a round that is not a stream runs
        (its episodes keep one version): then when it ends. Raises what
        the updates raise."""
        if self.running and not self.stream:
            self.deferred = (version, env_blob, agent_blob)
            return
        worker = self.worker
        if env_blob is not None:
            apply_update(worker, 'env', env_blob)
            # A new env (or task) starts new episodes; a stream round's
            # running ones were cut at its last step, so nothing is lost.
            worker.abandon_episodes()
        if agent_blob is not None:
            apply_update(worker, 'agent', agent_blob)
        worker.version = int(version)
        if self.stream:
            self.version = worker.version  # the round's messages from now

    def stop(self):
        """STOP: the round is over (what it holds was sent)."""
        self._end()
        self._drop_arena()

    def halt(self, buffer):
        """End the round now, before the worker's part of it is done (a
        STOP, the START of another round, a caller that gave up on it):
        a steps round's running segments are cut into ``buffer`` where
        they are, so that no segment spans two rounds and the envs'
        episodes go on in the next one. The round's message, sent next,
        says done."""
        if self.stepping:
            self.stepping = False
            self.worker.end_steps(buffer)
        self.running = False

    def _drop_arena(self):
        """The round is done with its rows (whoever gave them keeps or
        unmaps them)."""
        self.arena = None

    def _end(self):
        """The round is over: apply an UPDATE that waited for it."""
        self.running = False
        if self.deferred is not None:
            deferred, self.deferred = self.deferred, None
            self.update(*deferred)

    def finish(self):
        """Start no new episode; the round ends once the running ones
        have."""
        self.finishing = True

    def rollout_into(self, buffer):
        """Run the round on into ``buffer``; False once the worker's part
        of it is done, which ends the round."""
        worker = self.worker
        if self.stream:
            # Cut at every message's steps: the segments sent are all
            # there is of them, and an UPDATE can apply at the next step.
            worker.step_into(buffer, self.steps)
        elif self.steps is not None:
            if self._step_piece(buffer):
                self.stepping = False
                self._end()
        elif self.quota is not None:
            # Only the episodes the quota allows are started, and all of
            # them are completed: which episodes a call returns does not
            # depend on how soon they end.
            self.started += worker.rollout_into(
                buffer, max_starts=self.quota - self.started)
            if self.started >= self.quota and not worker.in_progress:
                self._end()
        elif self.finishing:
            worker.rollout_into(buffer, max_starts=0)
            if not worker.in_progress:
                self._end()
        else:
            worker.rollout_into(buffer)
        return self.running

    def _step_piece(self, buffer):
        """Take the next piece of a steps round's steps; True once all are
        taken. A piece is about LOOK_EVERY_S of steps: a whole round of
        slow steps in one go would keep a worker from its commands for as
        long (a call that timed out, or was interrupted, would hold up the
        next one), while a look at them between every two fast steps
        would cost more than the steps."""
        began = time.monotonic()
        done = self.worker.continue_steps(buffer, self.piece)
        took = time.monotonic() - began
        if not done and took < LOOK_EVERY_S / 2:
            self.piece = min(2 * self.piece, MAX_PIECE)
        elif took > 2 * LOOK_EVERY_S and self.piece > 1:
            self.piece //= 2
        return done

    def message_due(self, buffer, since):
        """Whether ``buffer`` (holding segments since ``since``) should be
        sent now: at a full chunk, or FLUSH_AFTER_S after its first
        segment."""
        if self.chunk is not None and buffer.transitions >= self.chunk:
            return True
        return time.monotonic() - since >= FLUSH_AFTER_S

    def message(self, buffer):
        """The EPISODES reply for what ``buffer`` holds (it is emptied),
        saying whether the round is done."""
        worker = self.worker
        batch = None
        if buffer.n_episodes:
            worker.error_site = 'building the message'
            place = None if self.arena is None else \
                self.arena.take(buffer.transitions)
            try:
                batch = buffer.to_batch(
                    observations_out=None if place is None else place[0])
            except Exception as err:
                worker.error_site = getattr(err, 'site', worker.error_site)
                raise
            problem = misfit(batch, *worker.env_spaces)
            if problem is not None:
                worker.error_site = problem[0]
                raise ValueError(problem[1])
            worker.error_site = None
            if place is not None:  # written in place: the caller has them
                batch = batch._with(observations=place[1])
                place = None
            if self.stream:
                self.in_flight += len(batch)
        if not self.running:
            self._drop_arena()
        steps = worker.env_steps - self._steps_reported
        self._steps_reported = worker.env_steps
        return (Reply.EPISODES, Segments(self.round, self.version, batch,
                                         not self.running, steps))

    def produce(self):
        """Run the round until a message is due or it is done, and return
        the reply: EPISODES, or ERROR if env or agent code raised (the
        round then ends). For callers that ask for each message (the Ray
        actor, LocalSampler)."""
        buffer = EpisodeBuffer()
        since = time.monotonic()
        try:
            while self.running and self.rollout_into(buffer) and \
                    not self.message_due(buffer, since):
                pass
            return self.message(buffer)
        except Exception:
            self.running = False
            return error_reply(self.worker)


def apply_update(worker, kind, blob):
    """Unpickle an update and apply it: an env update, or an agent (or its
    parameters)."""
    update = cloudpickle.loads(blob)
    if kind == 'env':
        worker.update_env(update)
    else:
        worker.update_agent(update)


def error_reply(worker):
    """The ERROR reply for the exception being handled: the call that
    raised (``worker.error_site``), its type, message and traceback."""
    exc_type, exc, _ = sys.exc_info()
    worker = getattr(exc, 'build_worker', worker)
    if worker is None:
        site = getattr(exc, 'build_site', 'building the worker')
    else:
        site = worker.error_site or getattr(exc, 'build_site', None)
    return (Reply.ERROR, site, exc_type.__name__, safe_str(exc),
            safe_traceback(exc_type, exc))


def safe_str(exc):
    """``str(exc)``, or what is known when its ``__str__`` raises."""
    try:
        return str(exc)
    except Exception as err:
        return (f'<str() of this {type(exc).__name__} raised '
                f'{type(err).__name__}: {_plain_str(err)}>')


def _plain_str(err):
    try:
        return str(err)
    except Exception:
        return '?'


def safe_traceback(exc_type, exc):
    try:
        return traceback.format_exc()
    except Exception:
        # Formatting calls str() of the exception; the frames alone then.
        frames = traceback.format_tb(exc.__traceback__)
        return ('Traceback (most recent call last):\n' + ''.join(frames) +
                f'{exc_type.__name__}: {safe_str(exc)}\n')
