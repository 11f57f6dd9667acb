"""The call protocol: every message between a sampler and its workers,
and the one data-flow diagram of a call. Other modules point here.

One call (``obtain_samples(n)``, ``obtain_exact_episodes(k)``,
``obtain_steps(t)``, or each ``next()`` of a ``stream``)::

    caller's thread                            each worker, any process
    ---------------                            ------------------------
    Sampler (sampler.sampler): check the
      count and updates; pickle each update
      once, its kind decided (an Update);
      version += 1 if anything was updated
    Collector (sampler._call): the call's
      rules, a RoundStart per worker
      |
      |  Start(RoundStart, env, agent) ------>  Round (sampler._round):
      |                                         apply the updates, run
      |                                         the round, gather segments
      |  <------ Segments(round, version, batch, done, env_steps) ...
      |  collector.add: keep or discard; the progress bar
      |  obtain_samples, once it holds n:
      |  Finish(round) ---------------------->  start no new episode
      |  <------ Segments(..., done=True)       the worker's part is done
      v
    every worker said done:
    EpisodeBatch.concatenate(kept) --> the caller

    error, timeout, Ctrl-C: Stop() ------>  halt; send what is held, done
    stream: Push(version, env, agent) --->  applied at the next step
            Credit(transitions) --------->  the learner read them
    close(): Exit() --------------------->  leave

    a worker that cannot go on: <------ Failed(site, type, message,
                                               traceback)
    a worker that died without a word: Gone(exitcode, detail), made by
    the caller's side of the backend when the worker's channel ends.
    a worker whose env or agent call ran past step_timeout: Hung(site,
    env, seconds, stack), made by the caller's side, which watches each
    worker's pulse (workers.Worker.pulse) while it waits, reads the
    worker's stack (sampler._probe) and kills it.

Who moves the messages is the backend's own (sampler._backend holds what
every backend shares): a pipe pair and a process per worker
(sampler.multiprocessing_sampler, the worker loop in
sampler._worker_process), a Ray actor's method calls (sampler.ray_sampler,
sampler._ray_actor), or plain calls in the caller's thread
(sampler.local_sampler). The messages and their meaning are the same on
every backend; the worker's side of them lives in
:class:`sampler._round.Round` alone.

Commands, caller -> worker:

=========  ==================================================================
Start      begin a round: apply the updates, then run it (a round still
           running is halted first; what it held is sent)
Finish     an ``obtain_samples`` round: start no new episode, end the running
           ones, send them, say done
Stop       halt now: send what is held (a steps round's segments cut where
           they are), say done
Push       a new version (``push_update``): a stream round applies it at its
           next step, its segments cut there; another round when it ends
Credit     the learner read that many of a stream round's transitions
Exit       leave
=========  ==================================================================

A vector env (``sampler.vector``) keeps the policy in the learner: its
workers (``workers.EnvStepWorker``) run no rounds, and step their envs
for the actions they are sent, each command answered by one EnvsDone::

    ResetEnvs(seeds, options, mask) --->  reset the envs
    StepEnvs(actions, indices) -------->  step each env, autoreset as the
                                          vector env's mode says
    CallEnvs(name, args, kwargs, how,
             indices) ----------------->  call or read an attribute
    SetEnvAttrs(name, values, outer,
                indices) -------------->  set one
    <---------- EnvsDone(result)          the worker's envs' observations
                                          (one array where they stack),
                                          rewards and flags, and infos
                                          (merged over its envs, or one
                                          per env); or Failed / Gone

    process workers, before a worker's first of these (and again for a
    worker that replaces one):
    ShareRows(slot, tag) + its memfd ---->  from now on write the envs'
                                          observations into these rows;
                                          EnvsDone carries InSharedRows in
                                          their place (no reply of its own)

Replies, worker -> caller:

=========  ==================================================================
Ready      the worker is built: its spaces, its process id
Segments   what a round produced since the last message; ``done`` ends the
           worker's part of the round
Failed     env, agent or update code raised: where, what, the traceback;
           the worker is gone after it
Gone       (made by the caller's side) the worker died without a word
Hung       (made by the caller's side) a call ran past step_timeout; the
           worker was killed
EnvsDone   a vector env's command is done: what it returned
=========  ==================================================================
"""

import dataclasses
import enum
from typing import NamedTuple, Optional, Union


class RoundKind(enum.Enum):
    """What a round (one worker's part of a call) is asked to do."""

    SAMPLES = 'samples'    # whole episodes until Finish (obtain_samples)
    EPISODES = 'episodes'  # exactly ``episodes`` whole episodes
    STEPS = 'steps'        # ``steps_per_env`` steps of every env, envs kept
    #                        running (obtain_steps)
    STREAM = 'stream'      # steps of every env until Stop, ``steps_per_env``
    #                        of them per message (stream)


class UpdateKind(enum.Enum):
    """What an :class:`Update` is; decided once, in the caller."""

    ENV = 'env'        # an EnvUpdate (``worker.update_env``)
    AGENT = 'agent'    # replaces the agent (``worker.set_agent``)
    PARAMS = 'params'  # for ``agent.set_params`` (``worker.set_params``)


class Update(NamedTuple):
    """One pickled update and what it is."""

    kind: UpdateKind
    blob: bytes


@dataclasses.dataclass(frozen=True)
class ArenaSlot:
    """Where a worker writes the observations of a steps round: rows
    ``first_row`` to ``first_row + n_rows`` of the call's shared array
    (a memfd the caller sends over the worker's fd socket, tagged with
    the round), each row of ``shape`` and ``dtype``. With it, each frame
    is copied once, from the env's array into the batch the caller
    returns; without it, four times (stacked, into the pipe, out of it,
    concatenated). Process workers only."""

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


@dataclasses.dataclass(frozen=True)
class RoundStart:
    """How a worker is to run one round (its part of one call).

    Attributes:
        kind: a :class:`RoundKind`.
        round: the sampler's call counter; seeds the round.
        version: stamped on every segment of the round.
        episodes: EPISODES rounds: how many.
        steps_per_env: STEPS rounds: steps of every env in the round;
            STREAM rounds: steps of every env per message.
        chunk: transitions per message, or None (send when done).
        first_episode_id: the least id the worker's next episode may have
            (past every id the caller has seen from this worker: where a
            replacement's ids start), or None.
        attempt: 0 for the worker that began the round; ``k`` for its
            ``k``-th replacement in a call that keeps what the failed
            worker sent: the replacement draws seeds of its own, so it
            never repeats those episodes. (An EPISODES call drops them
            instead and redoes the round from its seeds, attempt 0, which
            keeps the call reproducible.)
        budget: STREAM rounds: the transitions sent and not yet credited
            at which the worker pauses; None: no limit.
        arena: STEPS rounds of process workers: an :class:`ArenaSlot`
            for the observations, or None.
    """

    kind: RoundKind
    round: int
    version: int
    episodes: Optional[int] = None
    steps_per_env: Optional[int] = None
    chunk: Optional[int] = None
    first_episode_id: Optional[int] = None
    attempt: int = 0
    budget: Optional[int] = None
    arena: Optional[ArenaSlot] = None


# Commands --------------------------------------------------------------


class Start(NamedTuple):
    """Begin the round ``plan`` describes, after these updates."""

    plan: RoundStart
    env: Optional[Update] = None
    agent: Optional[Update] = None


class Finish(NamedTuple):
    """Start no new episode of round ``round``; end the running ones."""

    round: int


class Stop(NamedTuple):
    """Halt the round now; send what it holds."""


class Push(NamedTuple):
    """Version ``version``, with these updates (see the table above)."""

    version: int
    env: Optional[Update] = None
    agent: Optional[Update] = None

    def superseding(self, older):
        """This push folded over ``older``, not sent yet: the newer of
        each update wins, and one this push lacks comes from the older."""
        return Push(self.version, older.env if self.env is None else
                    self.env, older.agent if self.agent is None else
                    self.agent)


class Credit(NamedTuple):
    """The learner read ``transitions`` of a stream round's."""

    transitions: int


class Exit(NamedTuple):
    """Leave: close the envs and end."""


# Commands of a vector env's workers (sampler.vector): each is answered
# by one EnvsDone, or Failed; no round runs.


class ResetEnvs(NamedTuple):
    """Reset the worker's envs (``mask``: those that are True, default
    all) with ``seeds`` (one per env, or None) and ``options`` (a dict, or
    one per env)."""

    seeds: Optional[list] = None
    options: Union[dict, list, None] = None
    mask: Optional[list] = None


class StepEnvs(NamedTuple):
    """Step each of the worker's envs (``indices``: those of the worker's,
    default all) with its action."""

    actions: list
    indices: Optional[list] = None


class CallEnvs(NamedTuple):
    """Per env (``indices``: those of the worker's, default all), its
    attribute ``name`` called with these arguments, or its value, as
    ``how`` says (``EnvStepWorker.call_envs``)."""

    name: str
    args: tuple = ()
    kwargs: Optional[dict] = None
    how: str = 'call'
    indices: Optional[list] = None


class SetEnvAttrs(NamedTuple):
    """Set attribute ``name`` of each env (``indices``: those of the
    worker's, default all) to its one of ``values``, through the wrappers
    or (``outer``) on the outermost."""

    name: str
    values: list
    outer: bool = False
    indices: Optional[list] = None


class ShareRows(NamedTuple):
    """A vector env's observations go through shared memory: the worker
    writes its envs' observations into ``slot`` of the memfd that the
    caller sent just before this over the worker's fd socket, tagged
    ``tag``, and its EnvsDone carry ``workers.env_stepper.InSharedRows``
    in their place. So a
    frame is copied once between the env and the caller's batch, and a
    step's message stays small (a pipe moves 64 KiB per wake-up). No
    reply: the command after it is answered as ever."""

    slot: ArenaSlot
    tag: int


#: Tags the memfd of a ShareRows on the fd socket; a steps round's memfd
#: is tagged with its round number, which stays far below it.
SHARE_ROWS_TAG = 1 << 62

#: A vector env's commands (``sampler.vector``).
ENV_COMMANDS = (ResetEnvs, StepEnvs, CallEnvs, SetEnvAttrs, ShareRows)

COMMANDS = (Start, Finish, Stop, Push, Credit, Exit) + ENV_COMMANDS


# Replies ---------------------------------------------------------------


class Ready(NamedTuple):
    """The worker is built.

    Attributes:
        spaces: ``(observation_space, action_space)`` of its envs.
        pid: the process it runs in.
    """

    spaces: tuple
    pid: int


@dataclasses.dataclass
class Segments:
    """What a worker sends of a round.

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


class Failed(NamedTuple):
    """Code the worker ran raised; the worker is gone after it.

    Attributes:
        site: the call that raised, e.g. ``'env.step'``.
        exc_type: the exception's type name.
        message: its message.
        traceback: its traceback text, as the worker saw it.
    """

    site: Optional[str]
    exc_type: str
    message: str
    traceback: str


class Gone(NamedTuple):
    """The worker died without a word (made on the caller's side).

    Attributes:
        exitcode: its process's exit code (``-N`` for signal ``N``), or
            None where the backend cannot know it.
        detail: what else is known, as the end of a sentence.
    """

    exitcode: Optional[int]
    detail: str = ''


class EnvsDone(NamedTuple):
    """What a vector env's command returned: per env of the worker, its
    rows (see ``workers.EnvStepWorker``'s methods)."""

    result: object


class Hung(NamedTuple):
    """A worker's env or agent call ran past ``step_timeout``; the
    caller's side found it so and killed the worker.

    Attributes:
        site: the call it hung in (``'env.step'``), or None if unknown.
        env: the index, among the worker's envs, of the env it stepped or
            reset last, or None.
        seconds: how long it had been in the call when killed.
        stack: the worker's stack then (text), or ``''``.
    """

    site: Optional[str]
    env: Optional[int]
    seconds: float
    stack: str = ''


REPLIES = (Ready, Segments, Failed, Gone, Hung, EnvsDone)
