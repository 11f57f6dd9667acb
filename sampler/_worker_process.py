"""The loop a worker process runs, and the messages it speaks.

A worker process owns one :class:`~workers.Worker`. It reads commands from
its command pipe and writes replies to its own result pipe::

                 command pipe                       result pipe
    caller  ---- START / STOP / EXIT ---->  worker  ---- READY / EPISODES /
                                             process      ERROR ---->  caller

States and transitions (checked between episodes, never inside one)::

    IDLE ---START---> RUNNING ---STOP, or the episode quota met---> IDLE
      ^                  |  ^
      +----START---------+  +--TAIL (the same round: smaller messages)
                             (a START while running begins the new round)
    any state ---EXIT, or the parent process died---> exit

IDLE blocks on the command pipe and the parent's sentinel: no CPU at all.
RUNNING runs ``worker.rollout_into()`` and gathers the episodes into one
message, sent when it holds the START's ``chunk`` transitions, when the
episode quota is met, or 50 ms after its first episode: per-message costs
(pickling, a system call, unpickling in the caller) are paid per chunk,
not per episode. Past its ``share`` of a call's transitions, the end of
the call is near: it sends every episode at once, so that little finished
work is still held when STOP comes. TAIL says the same from the caller,
who sees every worker: the call needs at most a chunk per worker more, so
the worker sends what it holds (if it is a new, smaller chunk) and smaller
chunks after it; a worker slower than the others would otherwise hold
episodes that are wasted when the call ends. A send blocks only while the
caller's end of the pipe is full, which pauses the worker until the caller
reads; the caller reads whenever it waits, so a paused worker resumes as
soon as there is room, and a command is seen right after.
"""

import dataclasses
import enum
import os
import pickle
import selectors
import signal
import sys
import time
import traceback
from multiprocessing import parent_process
from typing import Optional

import cloudpickle

from workers import EpisodeBuffer

#: Longest a finished episode waits in a worker before it is sent.
FLUSH_AFTER_S = 0.05

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

    START = 'start'  # (RoundStart, env blob or None, agent blob or None)
    STOP = 'stop'    # ()
    TAIL = 'tail'    # (round, transitions per message): the call is nearly
    #                   done; send what is held and smaller messages
    EXIT = 'exit'    # ()


@dataclasses.dataclass(frozen=True)
class RoundStart:
    """How a worker is to run one call (a round); sent with START.

    Attributes:
        round: the sampler's call counter; seeds the round.
        version: stamped on every episode of the round.
        quota: episodes to produce (exact-episode calls), or None.
        chunk: transitions per message, or None (send at the quota).
        share: the worker's fair part of the call's transitions, or None.
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
    chunk: Optional[int] = None
    share: Optional[int] = None
    attempt: int = 0


class Reply(enum.Enum):
    """Worker -> caller."""

    READY = 'ready'        # (env_spaces,)
    EPISODES = 'episodes'  # (round, version, EpisodeBatch)
    ERROR = 'error'        # (site, exception type, message, traceback)


class _ParentGone(Exception):
    """The process that started this worker has died."""


def run(worker_number, factory_blob, payloads, commands, results):
    """Entry point of a worker process.

    Args:
        worker_number: which worker this is.
        factory_blob: the cloudpickled WorkerFactory.
        payloads: ``(kind, blob)`` pairs to apply in order before READY:
            env updates, then the agent and its parameters.
        commands: the reading end of this worker's command pipe, carrying
            pickled ``(Command, *args)`` tuples.
        results: the writing end of this worker's result pipe.
    """
    # Ctrl-C in a terminal reaches the whole process group: the caller alone
    # should raise KeyboardInterrupt, not one traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import setproctitle
        setproctitle.setproctitle(f'{NAME_PREFIX}{worker_number}')
    except ImportError:  # pragma: no cover - a dependency, but be lenient
        pass
    loop = _Loop(worker_number, commands, results)
    try:
        if loop.build(factory_blob, payloads):
            loop.serve()
    except _ParentGone:
        pass
    finally:
        loop.close()


class _Loop:

    def __init__(self, worker_number, commands, results):
        self.worker_number = worker_number
        self.commands = commands
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

    def build(self, factory_blob, payloads):
        """Build the worker and say READY, or report why not (False)."""
        try:
            factory = cloudpickle.loads(factory_blob)
            self.worker = factory(self.worker_number)
            for kind, blob in payloads:
                apply_update(self.worker, kind, blob)
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
            timeout = 0 if self.progress.running else None
            while True:
                events = self.selector.select(timeout)
                if not events:
                    break
                if any(key.data for key, _ in events):
                    raise _ParentGone
                try:
                    message = pickle.loads(self.commands.recv_bytes())
                except (EOFError, OSError):
                    raise _ParentGone from None  # the caller's end closed
                try:
                    keep_going = self._handle(message)
                except Exception:  # an unknown or malformed command
                    self._report_error()
                    return
                if not keep_going:
                    return
                timeout = 0 if self.progress.running else None
            if self.progress.running:
                if not self.pending.n_episodes:
                    self.pending_since = time.monotonic()
                try:
                    more = self.progress.rollout_into(self.pending)
                except Exception:
                    self._report_error()
                    return
                if not more or self.progress.message_due(
                        self.pending, self.pending_since):
                    if not self._flush():
                        return

    def _handle(self, message):
        """Apply one command; False means exit."""
        tag, *args = message
        if tag is Command.START:
            # Episodes still held are of the round this START ends.
            self.pending = EpisodeBuffer()
            try:
                self.progress.start(*args)
            except Exception:
                self._report_error()
                return False
        elif tag is Command.STOP:
            self.progress.running = False
            # Hand over what is done: the next call keeps it if its
            # version is still current.
            if self.pending.n_episodes and not self._flush():
                return False
        elif tag is Command.TAIL:
            round_number, chunk = args
            if self.progress.running and round_number == self.progress.round:
                self.progress.chunk = chunk
                if self.pending.transitions >= chunk and not self._flush():
                    return False
        elif tag is Command.EXIT:
            return False
        else:
            msg = f'worker {self.worker_number} got unknown command {tag!r}'
            raise ValueError(msg)
        return True

    def _flush(self):
        """Send the episodes held as one batch; False after an error."""
        try:
            self.worker.error_site = 'building the message'
            batch = self.pending.to_batch()
            self.worker.error_site = 'pickling the episodes'
            data = _dumps((Reply.EPISODES, self.progress.round,
                          self.progress.version, batch))
            self.worker.error_site = None
        except Exception:
            self._report_error()
            return False
        self._send_bytes(data)
        return True

    def _report_error(self):
        self._send(error_reply(self.worker))

    def _send(self, message):
        self._send_bytes(_dumps(message))

    def _send_bytes(self, data):
        try:
            self.results.send_bytes(data)
        except (BrokenPipeError, ConnectionResetError):
            raise _ParentGone from None

    def close(self):
        self.selector.close()
        self.commands.close()
        if self.worker is not None:
            try:
                self.worker.shutdown()
            except Exception:
                pass  # exiting anyway; the caller has what it needs
        self.results.close()


class Round:
    """A worker's progress through one call (a round): the START's
    updates, what it has produced, and when a message is due. Shared by
    the worker process loop here and the Ray actor."""

    def __init__(self, worker):
        self.worker = worker
        self.running = False
        self.round = self.version = 0
        self.quota = self.chunk = self.share = None
        self.produced = self.produced_transitions = 0

    def start(self, start, env_blob=None, agent_blob=None):
        """Apply the updates (pickled, or None) and begin the round that
        ``start`` (a :class:`RoundStart`) describes; raises what the
        updates raise."""
        self.running = False
        if env_blob is not None:
            apply_update(self.worker, 'env', env_blob)
        if agent_blob is not None:
            apply_update(self.worker, 'agent', agent_blob)
        self.worker.start_round(start.round, start.version,
                                attempt=start.attempt)
        self.round, self.version = start.round, start.version
        self.quota, self.chunk, self.share = \
            start.quota, start.chunk, start.share
        self.produced = self.produced_transitions = 0
        self.running = True

    def rollout_into(self, buffer):
        """Run episodes into ``buffer``; False once the round's episode
        quota is met, which ends the round."""
        episodes, transitions = buffer.n_episodes, buffer.transitions
        self.worker.rollout_into(buffer)
        self.produced += buffer.n_episodes - episodes
        self.produced_transitions += buffer.transitions - transitions
        if self.quota is not None and self.produced >= self.quota:
            self.running = False
        return self.running

    def message_due(self, buffer, since):
        """Whether ``buffer`` (holding episodes since ``since``) should be
        sent now: past the worker's share of the call, at a full chunk, or
        FLUSH_AFTER_S after its first episode."""
        if self.share is not None and self.produced_transitions >= self.share:
            return True
        if self.chunk is not None and buffer.transitions >= self.chunk:
            return True
        return time.monotonic() - since >= FLUSH_AFTER_S


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
    site = getattr(worker, 'error_site', None)
    if worker is None:
        site = 'building the worker'
    return (Reply.ERROR, site, exc_type.__name__, str(exc),
            traceback.format_exc())


def _dumps(message):
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data):
    """Decode a reply (the caller's side of :func:`_dumps`)."""
    return pickle.loads(data)
