"""The worker's side of a call: building a worker, and :class:`Round`,
which answers the commands of :mod:`sampler._protocol` (read its diagram
first) and runs a worker's part of each call.

These rules live here alone, whatever runs them: the worker process's
loop (:mod:`sampler._worker_process`), the Ray actor
(:mod:`sampler._ray_actor`) or :class:`~sampler.LocalSampler` in the
caller's thread. A host only moves commands in and replies out:

- ``round.handle(command)`` applies a command and returns the replies
  due now (what a halted round held; ``Failed`` if code raised);
- ``round.step()`` (a host that runs the round on its own, between
  looks at its commands) or ``round.produce()`` (a host that asks for
  each message) runs the round on and returns its next reply.

A ``Failed`` reply ends the worker: its host sends it and lets go.
"""

import sys
import time
import traceback

import cloudpickle

from sampler._process_setup import limit_threads, pin_to_cpu
from sampler._protocol import (CallEnvs, Credit, EnvsDone, Exit, Failed,
                               Finish, Push, ResetEnvs, RoundKind, Segments,
                               SetEnvAttrs, ShareRows, Start, StepEnvs,
                               Stop, UpdateKind)
from workers.worker import PULSE_BEATS
from workers.spaces import misfit

#: Longest a finished episode waits in a worker before it is sent.
FLUSH_AFTER_S = 0.05

#: About how long a worker in a steps round steps before it looks at its
#: commands again (a Stop, the Start of the next call): it takes the
#: round's steps in pieces of about this many seconds' worth.
LOOK_EVERY_S = 0.01

#: The most steps of every env in one piece.
MAX_PIECE = 1 << 16


def build_worker(worker_number, factory, setup, updates):
    """Set up this process as ``setup`` (a
    :class:`~sampler._process_setup.ProcessSetup`) says, then build the
    worker with ``factory`` (a WorkerFactory, or its pickle) and apply
    ``updates`` (:class:`~sampler._protocol.Update`) in order.

    Raises whatever the set-up or an update raised, with the worker (None
    before it exists) and the step that raised in ``err.build_site``.
    """
    worker, site = None, 'worker_init'
    try:
        if setup.pin:
            pin_to_cpu(worker_number)
        if setup.threads is not None:
            limit_threads(setup.threads)
        if setup.init is not None:
            init = setup.init
            if not callable(init):
                init = cloudpickle.loads(init)
            init(worker_number)
        site = 'building the worker'
        if not callable(factory):
            factory = cloudpickle.loads(factory)
        worker = factory(worker_number)
        for update in updates:
            apply_update(worker, update)
        if setup.threads is not None:
            limit_threads(setup.threads)  # torch may have come with them
    except Exception as err:
        err.build_site = site
        err.build_worker = worker
        raise
    return worker


def apply_update(worker, update):
    """Unpickle an :class:`~sampler._protocol.Update` and apply it as its
    kind says (decided once, in the caller)."""
    value = cloudpickle.loads(update.blob)
    if update.kind is UpdateKind.ENV:
        worker.update_env(value)
    elif update.kind is UpdateKind.AGENT:
        worker.set_agent(value)
    else:
        worker.set_agent_params(value)
    worker.pulse[PULSE_BEATS] += 1


def _misfit(batch, env_spaces):
    """Where ``batch`` does not fit the worker's spaces (see
    ``workers.spaces.misfit``): ``env_spaces`` is ``(observation space,
    action space)``, or per policy id for a multi-agent batch."""
    if isinstance(env_spaces, dict):
        for policy_id, part in batch.items():
            problem = misfit(part, *env_spaces[policy_id])
            if problem is not None:
                return problem
        return None
    return misfit(batch, *env_spaces)


class Round:
    """A worker's part of one call (a round): the Start's updates, what the
    round asks (see :class:`~sampler._protocol.RoundStart`), what it has
    produced and not sent (``pending``), and when a message is due.

    States (commands are looked at between episodes, and between pieces of
    about LOOK_EVERY_S of a steps round's steps; never inside a step)::

        idle ---Start---> running ---its part of the round done---> idle
          ^                 |  |        (its last message says done)
          |                 |  +--Finish: start no new episode, end the
          |                 |     running ones, then done
          +-----Stop--------+  (a Start while running begins the new
                               round; a round ended early sends what it
                               holds, a steps round's segments cut there)

    A stream round runs until Stop and pauses (``active`` False) while
    ``budget`` transitions it sent are not credited.
    """

    def __init__(self, worker):
        self.worker = worker
        self.running = False
        self.exited = False  # Exit came: the host lets go
        self.kind = None
        self.round = self.version = 0
        self.episodes = self.steps_per_env = self.chunk = None
        self.started = 0
        self.finishing = False
        self.budget = None
        self.in_flight = 0  # stream rounds: sent, not yet credited
        self.deferred = None  # a Push that waits for the round's end
        self.arena = None  # MappedRows of a steps round, or None
        self.pending = worker.new_buffer()  # produced, not sent yet
        self.pending_since = 0.0
        # A steps round's steps are begun and not all taken; they are
        # taken ``piece`` steps of every env at a time (see LOOK_EVERY_S),
        # a size learned over the rounds.
        self.stepping = False
        self.piece = 1
        self._steps_reported = worker.env_steps

    @property
    def stream(self):
        return self.kind is RoundKind.STREAM

    @property
    def paused(self):
        """A stream round this far ahead of the caller waits for Credit."""
        return self.running and self.stream and self.budget is not None \
            and self.in_flight >= self.budget

    @property
    def active(self):
        """Running and not paused: a host runs it on between commands."""
        return self.running and not self.paused

    # Commands ----------------------------------------------------------

    def handle(self, command, arena=None):
        """Apply ``command``; returns the replies to send now, in order.
        ``arena`` (:class:`~sampler._worker_process.MappedRows`) goes with
        a Start whose plan has one, and with a ShareRows."""
        out = []
        try:
            handler = self._HANDLERS.get(type(command))
            if handler is None:
                msg = (f'worker {self.worker.worker_number} got unknown '
                       f'command {command!r}')
                raise ValueError(msg)
            handler(self, command, arena, out)
        except Exception:
            self.running = False
            out.append(failed_reply(self.worker))
        return out

    def _on_start(self, command, arena, out):
        # A round still running ends here: what it holds (with a steps
        # round's running segments, cut) goes to the caller, which keeps
        # or discards it, and counts what it discards.
        if self.running:
            self.halt()
            if self.pending.n_episodes:
                out.append(self.message())
        self.pending = self.worker.new_buffer()
        self.start(command.plan, command.env, command.agent, arena)

    def _on_finish(self, command, arena, out):
        if self.running and command.round == self.round:
            self.finishing = True

    def _on_stop(self, command, arena, out):
        # Hand over what is done: the next call keeps it if its version
        # is still current.
        was_running = self.running
        self.halt()
        if was_running:
            out.append(self.message())
        self._end()
        self.arena = None

    def _on_push(self, command, arena, out):
        if self.stream and self.pending.n_episodes:
            out.append(self.message())  # a message holds one version
        self.update(command.version, command.env, command.agent)

    def _on_credit(self, command, arena, out):
        self.in_flight = max(0, self.in_flight - int(command.transitions))

    def _on_exit(self, command, arena, out):
        self.exited = True

    # A vector env's commands: its worker (an EnvStepWorker) answers each.

    def _on_reset_envs(self, command, arena, out):
        out.append(EnvsDone(self.worker.reset_envs(
            command.seeds, command.options, command.mask)))

    def _on_step_envs(self, command, arena, out):
        out.append(EnvsDone(self.worker.step_envs(*command)))

    def _on_call_envs(self, command, arena, out):
        out.append(EnvsDone(self.worker.call_envs(*command)))

    def _on_set_env_attrs(self, command, arena, out):
        self.worker.set_env_attrs(*command)
        out.append(EnvsDone(None))

    def _on_share_rows(self, command, arena, out):
        self.worker.share_rows(arena)  # no reply: see ShareRows

    _HANDLERS = {Start: _on_start, Finish: _on_finish, Stop: _on_stop,
                 Push: _on_push, Credit: _on_credit, Exit: _on_exit,
                 ResetEnvs: _on_reset_envs, StepEnvs: _on_step_envs,
                 CallEnvs: _on_call_envs, SetEnvAttrs: _on_set_env_attrs,
                 ShareRows: _on_share_rows}

    def start(self, plan, env=None, agent=None, arena=None):
        """Apply the updates (or None) and begin the round ``plan`` (a
        RoundStart) describes, writing observations into ``arena`` if
        given; raises what the updates raise."""
        self._end()  # a Push that waited for the last round first
        self.arena = arena
        worker = self.worker
        for update in (env, agent):
            if update is not None:
                apply_update(worker, update)
        if plan.first_episode_id is not None:
            worker.next_episode_id = max(worker.next_episode_id,
                                         plan.first_episode_id)
        # Steps rounds let running episodes go on; whole-episode rounds
        # start every episode afresh. Only exact-episode rounds reseed
        # every env: a replacement redoes them from the round's seeds
        # alone. Other rounds seed only envs never reset yet (a seeded
        # reset can be costly), which keeps their episodes distinct.
        if self.stepping:  # a round not halted: its segments are lost
            self.halt(self.worker.new_buffer())
        kind = plan.kind
        worker.start_round(
            plan.round, plan.version, attempt=plan.attempt,
            keep_episodes=kind in (RoundKind.STEPS, RoundKind.STREAM),
            reseed_envs=kind is RoundKind.EPISODES)
        if kind is RoundKind.STEPS:
            worker.begin_steps(plan.steps_per_env)
            self.stepping = True
        self.kind = kind
        self.round, self.version = plan.round, plan.version
        self.episodes, self.steps_per_env = plan.episodes, plan.steps_per_env
        self.chunk = plan.chunk
        self.started = 0
        self.finishing = False
        self.budget = plan.budget
        self.in_flight = 0
        self.deferred = None
        self.running = True

    def update(self, version, env=None, agent=None):
        """Apply a Push: now, unless a round that is not a stream runs
        (its episodes keep one version): then when it ends. Raises what
        the updates raise."""
        if self.running and not self.stream:
            self.deferred = (version, env, agent)
            return
        worker = self.worker
        if env is not None:
            apply_update(worker, env)
            # A new env (or task) starts new episodes; a stream round's
            # running ones were cut at its last step, so nothing is lost.
            worker.abandon_episodes()
        if agent is not None:
            apply_update(worker, agent)
        worker.version = int(version)
        if self.stream:
            self.version = worker.version  # the round's messages from now

    def halt(self, buffer=None):
        """End the round now, before the worker's part of it is done (a
        Stop, the Start of another round, a caller that gave up on it): a
        steps round's running segments are cut into ``buffer`` (default:
        what is pending) where they are, so that no segment spans two
        rounds and the envs' episodes go on in the next one. The round's
        message, sent next, says done."""
        if self.stepping:
            self.stepping = False
            self.worker.end_steps(self.pending if buffer is None else buffer)
        self.running = False

    def _end(self):
        """The round is over: apply a Push that waited for it."""
        self.running = False
        if self.deferred is not None:
            deferred, self.deferred = self.deferred, None
            self.update(*deferred)

    # Running -----------------------------------------------------------

    def step(self):
        """Run the round on a little (an episode step, a piece of a steps
        round); the reply due now (Segments once a message is due or the
        worker's part is done; Failed if code raised), or None. For hosts
        that look at their commands between steps."""
        try:
            if not self.pending.n_episodes:
                self.pending_since = time.monotonic()
            more = self._rollout()
            if not more or (self.pending.n_episodes and
                            self.message_due(self.pending_since)):
                return self.message()
            return None
        except Exception:
            self.running = False
            return failed_reply(self.worker)

    def produce(self):
        """Run the round until a message is due or the worker's part is
        done, and return the reply: Segments, or Failed (the round then
        ends). For hosts that ask for each message (the Ray actor,
        LocalSampler): a message comes at least every FLUSH_AFTER_S, with
        nothing in it if need be, so that their callers look at the
        time as often as the other backends do."""
        since = time.monotonic()
        try:
            while self.running and self._rollout() and \
                    not self.message_due(since):
                pass
            return self.message()
        except Exception:
            self.running = False
            return failed_reply(self.worker)

    def _rollout(self):
        """Run the round on into ``pending``; False once the worker's part
        of it is done, which ends the round."""
        worker, buffer = self.worker, self.pending
        kind = self.kind
        if kind is RoundKind.STREAM:
            # Cut at every message's steps: the segments sent are all
            # there is of them, and a Push can apply at the next step.
            worker.step_into(buffer, self.steps_per_env)
        elif kind is RoundKind.STEPS:
            if self._step_piece(buffer):
                self.stepping = False
                self._end()
        elif kind is RoundKind.EPISODES:
            # Only the episodes the quota allows are started, and all of
            # them are completed: which episodes a call returns does not
            # depend on how soon they end.
            self.started += worker.rollout_into(
                buffer, max_starts=self.episodes - self.started)
            if self.started >= self.episodes and not worker.in_progress:
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

    def message_due(self, since):
        """Whether what is pending (segments since ``since``) should be
        sent now: at a full chunk, or FLUSH_AFTER_S after ``since``."""
        if self.chunk is not None and self.pending.transitions >= self.chunk:
            return True
        return time.monotonic() - since >= FLUSH_AFTER_S

    def message(self):
        """The Segments reply for what is pending (which is emptied),
        saying whether the round is done."""
        worker = self.worker
        buffer, self.pending = self.pending, self.worker.new_buffer()
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
            problem = _misfit(batch, worker.env_spaces)
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
            self.arena = None  # whoever gave the rows keeps or unmaps them
        steps = worker.env_steps - self._steps_reported
        self._steps_reported = worker.env_steps
        return Segments(self.round, self.version, batch, not self.running,
                        steps)


def failed_reply(worker):
    """The Failed reply for the exception being handled: the call that
    raised (``worker.error_site``), its type, message and traceback."""
    exc_type, exc, _ = sys.exc_info()
    worker = getattr(exc, 'build_worker', worker)
    if worker is None:
        site = getattr(exc, 'build_site', 'building the worker')
    else:
        site = worker.error_site or getattr(exc, 'build_site', None)
    return Failed(site, exc_type.__name__, safe_str(exc),
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
