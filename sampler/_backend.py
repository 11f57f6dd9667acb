"""What every backend shares: the rules around moving messages (see
:mod:`sampler._protocol` for the messages and the whole call).

:class:`Backend` owns, for every backend alike:

- start-up: spawn every worker, wait for each Ready, refuse a worker that
  failed or died while starting (never restarted: the same recipe would
  fail again), check that all workers share their spaces;
- a call's commands: Start on every worker with its updates, Finish,
  Stop, Push and Credit;
- the replies: Segments to the call's Collector and the progress bar,
  Ready of a replacement, Failed as a ``WorkerError`` carrying the
  worker's traceback, Gone as a ``WorkerCrashedError``;
- a failure: break the sampler, or retire the worker, spawn its
  replacement from its recipe, and start the call's round on it;
- a timeout: say what the call holds and where each worker it waits
  for is;
- hangs (``step_timeout``): while a call waits, watch every worker's
  pulse (``workers.Worker.pulse``: it beats as env and agent calls
  return, and says when its host waits for a command); a worker that is
  not waiting and has not beaten for ``step_timeout`` seconds is hung:
  its stack is read, it is killed, and it fails as a Hung reply (a
  ``WorkerHungError``), restarted or raised as any failure is.

A backend keeps only what is its own (all of it in its module):

=================================  ========================================
``_spawn(i) -> WorkerHandle``      start worker ``i`` from its recipe,
                                   without waiting for it
``_send(handle, command)``         deliver a command; never waits for the
                                   worker
``_wait(collector, deadline)``     the replies that came, as ``(handle,
                                   reply)`` pairs read one at a time
                                   (what is not asked for stays unread);
                                   None if ``deadline`` came first
``_retire(handle)``                end a failed worker, let go of it
``_where(numbers)``                what those workers are doing now
``_shutdown()``                    end every worker
``_pulses(numbers)``               (for ``step_timeout``) those workers'
                                   pulses, as ``(beats, env, idle)``
``_hang_report(handle)``           (for ``step_timeout``) ``(call,
                                   stack)`` of a hung worker, or None
``_kill(handle)``                  (for ``step_timeout``) end a hung
                                   worker now
=================================  ========================================
"""

import time

from sampler import _framing
from sampler._protocol import (Credit, EnvsDone, Failed, Finish, Gone,
                               Hung, Push, Ready, Segments, Start, Stop)
from sampler.errors import (RemoteTraceback, SamplerTimeoutError,
                            WorkerCrashedError, WorkerError,
                            WorkerHungError)
from sampler.sampler import Sampler


#: A vector env's command result of a worker that failed and was replaced.
RESTARTED = object()

#: The least time a worker must have spent in one env or agent call for a
#: timed-out call to take it for hung (see Backend._heal).
HUNG_AFTER_S = 1.0


class WorkerHandle:
    """The caller's view of one worker, whatever runs it.

    Attributes:
        number: the worker's number.
        pid: its process, once it said Ready (None before).
    """

    def __init__(self, number):
        self.number = number
        self.pid = None


def worker_error(number, reply, step_timeout=None):
    """The exception for a Failed, Gone or Hung reply of worker
    ``number``."""
    if type(reply) is Failed:
        err = WorkerError(number, reply.site, reply.exc_type, reply.message,
                          reply.traceback)
        err.__cause__ = RemoteTraceback(reply.traceback)
        return err
    if type(reply) is Hung:
        err = WorkerHungError(number, reply.site, reply.env, reply.seconds,
                              step_timeout, reply.stack)
        if reply.stack:
            err.__cause__ = RemoteTraceback(reply.stack)
        return err
    return WorkerCrashedError(number, reply.exitcode, reply.detail)


class _Watch:
    """What the caller saw of each worker's pulse: per worker number,
    ``[handle, beats, since, checked]``: since when (``time.monotonic()``)
    the worker has been busy with the same beat count, and when it was
    last looked at."""

    def __init__(self, step_timeout=None):
        self.step_timeout = step_timeout
        # Look four times per step_timeout (at most once a second): a
        # hang is found within 1.25 step_timeouts of its start. Without
        # one, it only keeps track, four times a second, for a call that
        # times out (Backend._heal).
        self.every = 0.25 if step_timeout is None else \
            min(step_timeout / 4, 1.0)
        self.seen = {}
        self.next_check = 0.0

    def hung(self, handles, pulses, now):
        """The workers (numbers) whose pulse says they are hung, each with
        how long it has been; ``pulses``: number -> ``(beats, env, idle)``,
        or None for a worker whose pulse could not be read."""
        out = []
        # A pulse not looked at for a while (no call was waiting) says
        # nothing of that time: watch it from now.
        fresh_after = now - 2 * self.every - 0.5
        for i, pulse in pulses.items():
            handle = handles[i]
            seen = self.seen.get(i)
            if seen is None or seen[0] is not handle or \
                    seen[3] < fresh_after or \
                    (pulse is not None and (pulse[2] or pulse[0] != seen[1])):
                beats = None if pulse is None else pulse[0]
                self.seen[i] = [handle, beats, now, now]
                continue
            seen[3] = now
            if self.step_timeout is not None and \
                    now - seen[2] >= self.step_timeout:
                out.append((i, now - seen[2]))
        return out


class Backend(Sampler):
    """The skeleton every backend fills in (see the module's docstring);
    the public calls and their rules are :class:`~sampler.Sampler`'s."""

    #: Seconds a wait for replies polls before it sleeps (a backend whose
    #: waits can poll reads it; vector env calls set it).
    _spin_s = 0.0

    # Start-up ------------------------------------------------------------

    def _start_workers(self, deadline):
        """Spawn every worker and wait until each says Ready (until
        ``deadline``, or for ever if None); a worker that fails to start
        is an error here. The backend made ``self._handles``, a list."""
        for i in range(self.n_workers):
            self._handles.append(self._spawn(i))
            if deadline is not None and time.monotonic() > deadline:
                raise self._startup_timed_out(range(i + 1))
        spaces = {}
        while len(spaces) < self.n_workers:
            replies = self._wait(None, deadline)
            if replies is None:
                raise self._startup_timed_out(
                    [i for i in range(self.n_workers) if i not in spaces])
            for handle, reply in replies:
                if type(reply) is not Ready:
                    raise self._start_failure(handle, reply)
                handle.pid = reply.pid
                spaces[handle.number] = reply.spaces
        self._check_same_spaces([spaces[i] for i in range(self.n_workers)])
        # (observation_space, action_space), which the workers share
        self._env_spaces = spaces[0]
        return spaces

    def _startup_timed_out(self, numbers):
        names = ', '.join(str(i) for i in numbers)
        msg = (f'worker(s) {names} did not start within startup_timeout='
               f'{self._options["startup_timeout"]} s; '
               f'{self._startup_hint()}')
        return SamplerTimeoutError(msg)

    def _startup_hint(self):
        """What to do about workers that start too slowly."""
        return 'raise it, or find what makes building the env slow'

    def _start_failure(self, handle, reply):
        """The error for a worker that failed or died while starting."""
        if type(reply) is Gone:
            reply = reply._replace(detail=' while starting' + reply.detail)
        return worker_error(handle.number, reply)

    # A call's commands ---------------------------------------------------

    def _begin(self, collector, updates):
        """Start ``collector``'s round on every worker with ``updates``
        (per worker: env Update or None, agent Update or None)."""
        for handle, (env, agent) in zip(list(self._handles), updates):
            if handle.pid is None and self._places_late():
                # Not placed yet: it gets the call's Start (and the
                # updates it missed) once it is, if the call still wants
                # it; a call that can go on without it does.
                collector.wait_for_placement(handle.number)
                continue
            self._send(handle, Start(collector.round_start(handle.number),
                                     env, agent))

    def _finish(self, round_number):
        """Every worker is to finish its part of round ``round_number``."""
        for handle in list(self._handles):
            self._send(handle, Finish(round_number))

    def _stop(self):
        """Every worker halts its round at once (what it held follows)."""
        for handle in list(self._handles):
            self._send(handle, Stop())

    def _push(self, version, updates):
        """Send every worker its updates of ``version`` (push_update)."""
        for handle, (env, agent) in zip(list(self._handles), updates):
            self._send(handle, Push(version, env, agent))

    def _credit(self, worker, transitions):
        """The learner read ``transitions`` of worker ``worker``'s."""
        self._send(self._handles[worker], Credit(transitions))

    # Replies -------------------------------------------------------------

    def _wait_and_collect(self, collector, deadline, bar):
        """Wait for the next replies and hand them on; past ``deadline``
        (``time.monotonic()``, or None), SamplerTimeoutError."""
        replies = self._watched_wait(collector, deadline)
        if replies is None:
            held = collector.holding()
            where = self._where(held)
            for i, note in self._heal(held, collector).items():
                where[i] = f'{where[i]}; {note}' if i in where else note
            if collector.done:
                return  # the replacements leave it nothing to wait for
            raise SamplerTimeoutError(collector.describe(where, held))
        for handle, reply in replies:
            self._dispatch(handle, reply, collector, bar)
            # Stop once the call has what it needs: what a streaming call
            # leaves unread stays for the next call, which keeps it if its
            # version is still current.
            if collector.done:
                return

    def _dispatch(self, handle, reply, collector, bar):
        """Hand one reply of ``handle``'s worker to where it goes."""
        if self._handles[handle.number] is not handle:
            return  # from a worker replaced since
        kind = type(reply)
        if kind is Segments:
            got = collector.add(handle.number, reply)
            if bar is not None:
                bar.advance(got)
        elif kind is Ready:  # a replacement has started
            self._ready(handle, reply, collector)
        elif kind is Failed or kind is Gone or kind is Hung:
            self._on_failure(handle, self._reply_error(handle, reply),
                             collector)
        else:
            msg = f'worker {handle.number} sent an unknown reply {reply!r}'
            raise RuntimeError(msg)

    def _reply_error(self, handle, reply):
        """The exception for a Failed, Gone or Hung reply of ``handle``'s
        worker."""
        return worker_error(handle.number, reply,
                            self._options.get('step_timeout'))

    # Hangs (step_timeout) ------------------------------------------------

    def _watched_wait(self, collector, deadline):
        """``self._wait(collector, deadline)``; with ``step_timeout``,
        looking at the workers' pulses while it waits: the workers found
        hung come as ``(handle, Hung)`` replies, killed already."""
        step_timeout = self._options.get('step_timeout')
        if step_timeout is None and \
                self._options['on_worker_error'] != 'restart':
            return self._wait(collector, deadline)
        # Without step_timeout the pulses are watched all the same with
        # "restart": a call that times out replaces the hung (_heal).
        watch = getattr(self, '_watch', None)
        if watch is None:
            watch = self._watch = _Watch(step_timeout)
        while True:
            now = time.monotonic()
            if now >= watch.next_check:
                watch.next_check = now + watch.every
                hung = self._hung(watch)
                if hung:
                    return hung
            until = watch.next_check if deadline is None else \
                min(deadline, watch.next_check)
            replies = self._wait(collector, until)
            if replies is not None:
                return replies
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _heal(self, held, collector):
        """A call timed out waiting for the workers ``held``: with
        ``on_worker_error="restart"``, replace those that are hung (in one
        env or agent call for half the call's time or more, and
        HUNG_AFTER_S at least), and say of each why or why not (worker
        number -> a note for the error)."""
        watch = getattr(self, '_watch', None)
        if self._options['on_worker_error'] != 'restart' or watch is None:
            return {}
        now = time.monotonic()
        ran = now - collector.started
        notes = {}
        for i in held:
            handle = self._handles[i]
            seen = watch.seen.get(i)
            if handle.pid is None or seen is None or seen[0] is not handle:
                continue
            quiet = now - seen[2]
            if quiet < max(ran / 2, HUNG_AFTER_S):
                notes[i] = (f'still stepping (a call of its returned '
                            f'{quiet:.1f} s ago), so not replaced: raise '
                            f'timeout=, or set step_timeout= to bound one '
                            f'env or agent call')
                continue
            err = self._reply_error(handle, self._end_hung(handle, quiet))
            self._on_failure(handle, err, collector)
            notes[i] = (f'hung (no env or agent call of its returned in '
                        f'{quiet:.1f} s), so killed and replaced')
        return notes

    def _hung(self, watch):
        """``(handle, Hung)`` for each worker found hung now, read and
        killed."""
        live = [i for i, h in enumerate(self._handles) if h.pid is not None]
        found = watch.hung(self._handles, self._pulses(live),
                           time.monotonic())
        return [(self._handles[i], self._end_hung(self._handles[i], seconds))
                for i, seconds in found]

    def _end_hung(self, handle, seconds):
        """Read a hung worker's stack and env, kill it; its Hung reply."""
        pulse = self._pulses([handle.number]).get(handle.number)
        call, stack = self._hang_report(handle) or (None, '')
        self._kill(handle)
        self._watch.seen.pop(handle.number, None)
        self._stats['worker_hangs'] += 1
        env = None if pulse is None or pulse[1] < 0 else int(pulse[1])
        return Hung(call, env, seconds, stack)

    def _pulses(self, numbers):
        """Worker number -> its pulse ``(beats, env, idle)``, or None if it
        cannot be read now (see :class:`workers.Worker`'s ``pulse``)."""
        msg = f'{type(self).__name__} cannot watch for hangs (step_timeout)'
        raise NotImplementedError(msg)

    def _hang_report(self, handle):
        """``(call, stack)`` of a hung worker (see
        ``sampler._probe.report_frames``), or None if it cannot be read."""
        return None

    def _kill(self, handle):
        """End a hung worker now (``_retire`` follows)."""

    def _on_failure(self, handle, err, collector):
        """Worker ``handle`` failed with ``err``: raise it (the sampler is
        broken), or replace the worker and go on with the call."""
        if not self._worker_failed(err):
            raise err
        i = handle.number
        self._retire(handle)
        # Its recipe already holds this call's updates.
        self._handles[i] = replacement = self._spawn(i)
        if collector.restarted(i):
            if self._places_late():
                collector.wait_for_placement(i)  # see _placed
            else:
                self._send(replacement, Start(collector.round_start(i)))

    def _ready(self, handle, reply, collector):
        """A Ready reply during a call (``collector``, or None for a
        vector env's): a replacement has started."""
        placed = handle.pid is None
        handle.pid = reply.pid
        if placed:
            self._placed(handle, collector)

    def _places_late(self):
        """Whether a replacement may wait long to be placed (no resources
        free): commands are then not sent to it until it is, and calls
        that can go on without it do (see :meth:`_placed`)."""
        return False

    def _placed(self, handle, collector):
        """A replacement that :meth:`_places_late` has started: bring it up
        to date and into the call (``collector``) if the call wants it
        (``collector.joined``)."""

    # A vector env's commands (sampler.vector) ---------------------------

    def _envs_send(self, commands):
        """Send ``commands`` (``(worker number, command)`` pairs of a vector
        env's, see sampler._protocol; a worker may get several, answered
        in order) without waiting; returns what :meth:`_envs_wait` waits
        on: worker number -> its commands, in order."""
        sent = {}
        for i, command in commands:
            self._send(self._handles[i], command)
            sent.setdefault(i, []).append(command)
        return sent

    def _envs_share_rows(self, rows, slots):
        """Have the workers write their envs' observations into shared
        memory from their next command on: ``rows`` (an
        :class:`~sampler._arena.Arena` of the vector env's observations),
        ``slots`` (per worker its :class:`~sampler._protocol.ArenaSlot`).
        False where the backend cannot (its workers may be on other
        machines); they go on sending them in their replies."""
        return False

    def _envs_wait(self, waiting, results, deadline, enough=None):
        """Wait for the EnvsDone of each command in ``waiting`` (worker
        number -> its commands in the order sent; answered ones are
        removed), appending ``(worker number, command, result)`` to
        ``results`` as they come, or, given ``enough``, until
        ``enough(results)`` is true; False if ``deadline`` came first
        (what is still waited for stays in ``waiting``). A worker that
        failed raises its error, or, where it is replaced, appends
        ``(worker number, its commands that went unanswered,``
        :data:`RESTARTED` ``)``: the replacement has been sent nothing."""
        # Replies to these commands come about as fast each time: the
        # backend may poll for them a while before it sleeps.
        spin = getattr(self, '_envs_spin', None)
        if spin is None:
            spin = self._envs_spin = _framing.Spin()
        self._spin_s = spin.seconds()
        started = time.perf_counter()
        try:
            return self._envs_wait_spinning(waiting, results, deadline,
                                            enough)
        finally:
            self._spin_s = 0.0
            spin.waited(time.perf_counter() - started)

    def _envs_wait_spinning(self, waiting, results, deadline, enough):
        while waiting and not (enough is not None and enough(results)):
            replies = self._watched_wait(None, deadline)
            if replies is None:
                return False
            for handle, reply in replies:
                i = handle.number
                if self._handles[i] is not handle:
                    continue  # from a worker replaced since
                kind = type(reply)
                if kind is EnvsDone:
                    queue = waiting.get(i)
                    if queue:
                        command = queue.pop(0)
                        if not queue:
                            del waiting[i]
                        results.append((i, command, reply.result))
                elif kind is Ready:
                    self._ready(handle, reply, None)
                elif kind is Failed or kind is Gone or kind is Hung:
                    err = self._reply_error(handle, reply)
                    if not self._worker_failed(err):
                        raise err
                    self._retire(handle)
                    self._handles[i] = self._spawn(i)
                    results.append((i, waiting.pop(i, []), RESTARTED))
                else:
                    msg = f'worker {i} sent an unexpected reply {reply!r}'
                    raise RuntimeError(msg)
        return True

    # Backend hooks -------------------------------------------------------

    def _spawn(self, i):
        raise NotImplementedError

    def _send(self, handle, command):
        raise NotImplementedError

    def _wait(self, collector, deadline):
        raise NotImplementedError

    def _retire(self, handle):
        raise NotImplementedError

    def _where(self, numbers):
        """What each of workers ``numbers`` is doing now, where the
        backend can tell (see :mod:`sampler._probe`)."""
        return {}
