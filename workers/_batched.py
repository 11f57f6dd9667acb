"""The step loop of workers that step several envs as one batch
(:class:`~workers.VecWorker`, :class:`~workers.EnvPoolWorker`), in named
phases. One pass of the loop is one step of the batch::

    start_idle   envs with no episode start one (as many as the call
                 allows); the envs to step now
    observe      the observations the agent acts on, a row per env
    act          agent.get_actions -> actions, agent infos, and what the
                 envs are sent; checked against the action space
    step         the envs take the actions: the part each worker does its
                 own way (a list of gymnasium envs, or a C++ pool), with
                 how it resets envs and keeps their observations
    record       the step goes into the step log
    end          segments whose episode ended go to the buffer

Everything but ``step`` (and the reset and observation it implies) is
here, shared: the step log that segments are runs of, how calls of steps
count each env's transitions, and where episodes end. The phases share
one object, a :class:`BatchedStep`: what the call asked (``n_steps``,
``max_starts``), how far it is (``started``, ``taken``, ``step``), the
agent's calls, and ``where`` (the call running, said as the worker's
``error_site`` if anything raises).
"""

import numbers
import operator

import numpy as np

from workers import _nest
from workers._episode import (BATCHED, BATCHED_WITH_ENV_INFOS,
                              EpisodeRecord, copy_nest)
from workers.agents import batched
from workers.worker import PULSE_BEATS, Worker


#: The log is trimmed once it holds this many steps, and again each time it
#: has doubled since.
_TRIM_MIN = 256
_NEVER = float('inf')


class BatchedStep:
    """One call of the batched step loop: what it was asked and how far
    it is. ``step`` is the step of the log it is at, ``limit`` the one it
    ends before, ``first_stop`` the first env's stop, ``first_cap`` the
    first step at which an episode may reach max_episode_length (None: to
    be found again, as segments started or ended), ``resetting`` the envs
    whose own env resets them at this step (see
    :attr:`BatchedEnvsWorker._resets_itself`)."""

    step = limit = first_stop = first_cap = None
    resetting = ()

    def __init__(self, worker, buffer, n_steps, max_starts):
        self.buffer = buffer
        self.n_steps = n_steps  # None: until an episode completes
        self.max_starts = max_starts  # None: no limit
        self.started = 0  # episodes started
        self.taken = 0  # steps of the batch taken
        self.where = 'env.reset'
        agent = worker.agent
        self.get_actions = batched(agent)
        self.agent_reset = getattr(agent, 'reset', None)
        self.refused = worker._action_check(batched=True)
        self.check_outputs = True  # the first step's outputs are checked
        self.all_envs = list(range(worker.n_envs))

    def allowed_starts(self, candidates):
        """The first of ``candidates`` (envs) that may start an episode."""
        if self.max_starts is None:
            return candidates
        return candidates[:max(self.max_starts - self.started, 0)]


class _Segment:
    """An env's segment in progress: its steps are those of the worker's
    log from step ``start`` on (up to the env's stop, see
    ``BatchedEnvsWorker._stops``); the rest as in
    :class:`~workers._episode.EpisodeRecord`."""

    __slots__ = ('reset_info', 'episode_id', 'prior_steps', 'prior_return',
                 'start')

    def __init__(self, reset_info, episode_id, prior_steps, prior_return,
                 start):
        self.reset_info = reset_info
        self.episode_id = episode_id
        self.prior_steps = prior_steps
        self.prior_return = prior_return
        self.start = start


class BatchedEnvsWorker(Worker):
    """What workers that step several envs as one batch share: the step
    loop (:meth:`_advance`, in the phases of this module), the step log
    and the segments in progress, and how calls of steps count them.

    **The step log.** Each step of the batch appends one entry to the log
    (``_log``): the observations the agent saw, its actions and agent
    infos (the batched objects, shared by every env), and the envs' rewards
    and infos. An env's segment in progress (a :class:`_Segment` in
    ``_segments``; None: its next step starts an episode) is where in the
    log it starts: every step of the log from there on is a transition of
    that env, until the segment ends (its episode ends, or a call ends and
    cuts it). So a step costs a fixed amount of list appends however many
    envs there are, and each segment costs one slice of the log when it
    ends. The log drops the steps no segment in progress refers to.

    **Counting.** An env with a segment is stepped at every step of the log
    until its stop (``_stops``): :meth:`begin_steps` sets every env's stop
    ``n`` steps ahead, and a step that is no transition of an env (its own
    env resetting it, :attr:`_resets_itself`) pushes its stop one further,
    so every env takes exactly ``n`` transitions in ``obtain_steps(n)``.

    **What a worker adds**: how its envs are held, reset, observed and
    stepped (:meth:`_ready_envs`, :meth:`_reset_envs`, :meth:`_observe`,
    :meth:`_step`), and how its envs' infos come (``_env_infos_batched``:
    one dict of arrays per step, or one dict per env).
    """

    #: Each step's env infos are one dict of arrays for every env (True),
    #: or a list of one dict per env (False).
    _env_infos_batched = False

    def __init__(self, *, seed, max_episode_length, worker_number, n_envs):
        super().__init__(seed=seed, max_episode_length=max_episode_length,
                         worker_number=worker_number)
        if isinstance(n_envs, bool) or not isinstance(
                n_envs, numbers.Integral) or n_envs < 1:
            msg = f'n_envs must be an int >= 1, got {n_envs!r}'
            raise ValueError(msg)
        self._n_envs = n = int(n_envs)
        self._observations = None  # a row per env: what the next step sees
        # Per env: its env resets it at its next step (its episode ended
        # on the env's own terms, as envpool's pools do), which is then no
        # transition of it.
        self._resets_itself = [False] * n
        self._init_segments()
        # Per env its _Segment in progress, or None: its next step starts
        # an episode. None instead of the list: every env needs a reset.
        self._segments = None

    @property
    def n_envs(self):
        return self._n_envs

    def _init_segments(self):
        """No segment in progress, no log: every env's next step starts an
        episode."""
        n = self._n_envs
        self._segments = [None] * n
        # Per env, the step of the log at which it stops being stepped in
        # this call (obtain_steps' n steps taken); _NEVER if it does not.
        self._stops = [_NEVER] * n
        # Per step, the observations, actions, rewards (a list), env infos
        # and agent infos; entry k is step _log_base + k.
        self._log = ([], [], [], [], [])
        self._log_base = 0
        self._trim_at = _TRIM_MIN

    # The loop -----------------------------------------------------------

    def _advance(self, buffer, n_steps, max_starts):
        """Step the envs: up to ``n_steps`` more steps of the log (every
        env up to its stop), or with ``n_steps=None`` until an episode
        completes, starting at most ``max_starts`` new ones (None: no
        limit). Envs with no episode and none to start stay idle. Returns
        how many episodes it started."""
        run = self._begin(buffer, n_steps, max_starts)
        pulse = self.pulse
        try:
            while self._more(run):
                stepped = self._start_idle(run)
                if not stepped:
                    break
                batch = self._observe(run, stepped)
                pulse[PULSE_BEATS] += 1
                actions, agent_infos, sent = self._act(run, batch)
                pulse[PULSE_BEATS] += 1
                run.where = 'env.step'
                result = self._step(run, stepped, sent)
                pulse[PULSE_BEATS] += 1
                self._record(run, batch, actions, agent_infos, result)
                ended = self._end(run, stepped, result)
                run.taken += 1
                if ended and n_steps is None:
                    break
        except BaseException:
            self.error_site = run.where
            raise
        self.error_site = None
        return run.started

    def _begin(self, buffer, n_steps, max_starts):
        """Ready the envs; the :class:`BatchedStep` of this call."""
        self._ready()
        run = self._call_state(buffer, n_steps, max_starts)
        if n_steps is None:
            self._stops[:] = [_NEVER] * self.n_envs
        run.first_stop = min(self._stops)
        run.limit = _NEVER if n_steps is None else self._log_end() + n_steps
        return run

    def _more(self, run):
        """Whether the call has steps left to take."""
        run.step = self._log_base + len(self._log[0])
        return run.step < run.limit

    def _start_idle(self, run):
        """Start episodes in the envs that have none, as ``run`` allows;
        the envs to step now (none: the call is over). Envs whose own env
        resets them at this step (``run.resetting``) are stepped and have
        their stop pushed one step further."""
        segments, stops, step = self._segments, self._stops, run.step
        if len(self._log[0]) >= self._trim_at:
            self._trim_log()
        run.resetting = ()
        if None not in segments:  # every env has an episode running
            if step < run.first_stop:
                return run.all_envs
        else:
            idle = run.allowed_starts(
                [i for i in run.all_envs if segments[i] is None and
                 step < stops[i]])
            itself = self._resets_itself
            now = [i for i in idle if not itself[i]]
            if now:
                run.where = 'env.reset'
                self._reset_envs(now)
                run.started += len(now)
                run.first_cap = None
                self._reset_agent(run, now)
            if len(now) < len(idle):
                run.resetting = set(idle) - set(now)
                if run.n_steps is not None:
                    for i in run.resetting:  # a step that is no
                        stops[i] += 1        # transition of theirs
                    run.first_stop = min(stops)
        if step < run.first_stop and segments.count(None) == \
                len(run.resetting):
            return run.all_envs
        return [i for i in run.all_envs if step < stops[i] and (
            i in run.resetting or segments[i] is not None)]

    def _act(self, run, batch):
        """The agent's actions for ``batch``: ``(actions, agent_infos,
        sent)``, ``sent`` being what the envs receive (the actions, or
        what the agent says to send instead, e.g. a Gaussian sample
        clipped), refused if the action space does not hold it."""
        run.where = 'agent.get_actions'
        actions, agent_infos = run.get_actions(batch)
        run.where = 'agent.get_actions output'
        actions, agent_infos = owned_outputs(
            actions, agent_infos, self.n_envs, run.check_outputs)
        run.check_outputs = False
        sent = agent_infos.get('env_action', actions)
        error = run.refused(sent)
        if error is not None:
            run.where = 'agent.get_actions'
            raise error
        return actions, agent_infos, sent

    def _record(self, run, batch, actions, agent_infos, result):
        """The step goes into the log."""
        observations, actions_log, rewards, env_infos, agent_infos_log = \
            self._log
        observations.append(batch)
        actions_log.append(actions)
        rewards.append(result[1])
        env_infos.append(result[4])
        agent_infos_log.append(agent_infos)

    def _end(self, run, stepped, result):
        """Send the segments whose episode ended (on the env's terms, or
        at max_episode_length) to ``run.buffer``; how many ended."""
        next_obs, _, terminated, truncated, _ = result
        segments, resetting = self._segments, run.resetting
        max_length = self._max_episode_length
        ends = []
        if True in terminated or True in truncated:
            ends = [i for i in stepped if (terminated[i] or truncated[i])
                    and i not in resetting]
        if max_length is not None:
            if run.first_cap is None:
                run.first_cap = min(
                    (s.start - s.prior_steps + max_length
                     for s in segments if s is not None), default=_NEVER)
            if run.step + 1 >= run.first_cap:
                ends += [i for i in stepped if segments[i] is not None
                         and i not in resetting and i not in ends
                         and segments[i].prior_steps +
                         self._open_length(i) >= max_length]
        for i in ends:
            term = bool(terminated[i])
            if term or truncated[i]:
                trunc = bool(truncated[i])
                self._ended_by_env(i)
            else:
                trunc = True  # capped at max_length
            run.buffer.add(self._record_of(i), next_obs[i], term, trunc,
                           self.version, self._worker_number)
            segments[i] = None
        if ends:
            run.first_cap = None
        self._observations = next_obs
        if resetting:
            self._reset_agent(run, sorted(resetting))
        return len(ends)

    def _reset_agent(self, run, envs):
        """Tell the agent (if it keeps state per env) that ``envs`` start
        episodes."""
        if run.agent_reset is not None:
            run.where = 'agent.reset'
            run.agent_reset(_mask(self.n_envs, envs))

    # What each worker does its own way ----------------------------------

    def _ready_envs(self):
        """Make the envs ready to step (built, seeded as the round says),
        or raise what stops them."""
        raise NotImplementedError

    def _call_state(self, buffer, n_steps, max_starts):
        """The :class:`BatchedStep` of a call; a worker may keep more."""
        return BatchedStep(self, buffer, n_steps, max_starts)

    def _reset_envs(self, envs):
        """Reset ``envs`` (indices, ascending) and start their segments
        (:meth:`_start_segments`); their rows of the observations become
        their first ones."""
        raise NotImplementedError

    def _observe(self, run, stepped):
        """The batch of observations the agent acts on, a row per env."""
        raise NotImplementedError

    def _step(self, run, stepped, sent):
        """Step ``stepped`` with the actions ``sent`` (a row per env):
        ``(next observations, rewards, terminated, truncated, infos)``,
        each with every env's row (envs not stepped: their observations
        as they were, 0 and False), the flags and rewards as lists, the
        infos as ``_env_infos_batched`` says. Envs in ``run.resetting``
        start their segments here, after this step."""
        raise NotImplementedError

    def _ended_by_env(self, i):
        """Env ``i``'s episode ended on the env's terms."""

    # Segments -----------------------------------------------------------

    def _ready(self):
        self._ready_envs()
        if self._segments is None:
            self._init_segments()

    def _start_segments(self, envs, reset_infos, start=None):
        """Segments of new episodes in ``envs`` (indices), with their
        reset infos, from step ``start`` of the log (default: its next)."""
        segments, itself = self._segments, self._resets_itself
        start = self._log_end() if start is None else start
        for i, info in zip(envs, reset_infos):
            segments[i] = _Segment(info, self._new_episode_id(), 0, 0.0,
                                   start)
            itself[i] = False

    def _log_end(self):
        """The number of the next step the log takes."""
        return self._log_base + len(self._log[0])

    def _clear_log(self):
        for steps in self._log:
            steps.clear()
        self._log_base = 0
        self._trim_at = _TRIM_MIN

    def _trim_log(self):
        """Drop the log's steps that no segment in progress refers to."""
        starts = [s.start for s in self._segments if s is not None]
        first = min(starts) if starts else self._log_end()
        drop = first - self._log_base
        if drop:
            for steps in self._log:
                del steps[:drop]
            self._log_base = first
        self._trim_at = max(_TRIM_MIN, 2 * len(self._log[0]))

    def _open_length(self, i):
        """Steps recorded in env ``i``'s segment in progress (0: none)."""
        segment = self._segments[i]
        if segment is None:
            return 0
        return min(self._log_end(), self._stops[i]) - segment.start

    def _record_of(self, i):
        """Env ``i``'s segment in progress as an EpisodeRecord: its run of
        the log (references to the batched steps, with its column)."""
        segment = self._segments[i]
        batched = BATCHED_WITH_ENV_INFOS if self._env_infos_batched \
            else BATCHED
        record = EpisodeRecord(
            segment.reset_info, column=i, episode_id=segment.episode_id,
            prior_steps=segment.prior_steps,
            prior_return=segment.prior_return, batched=batched)
        first = segment.start - self._log_base
        last = first + self._open_length(i)
        observations, actions, rewards, env_infos, agent_infos = self._log
        record.observations = observations[first:last]
        record.actions = actions[first:last]
        column = operator.itemgetter(i)
        record.rewards = list(map(column, rewards[first:last]))
        record.env_infos = env_infos[first:last] if self._env_infos_batched \
            else list(map(column, env_infos[first:last]))
        record.agent_infos = agent_infos[first:last]
        return record

    def _cut(self, i):
        """Env ``i``'s segment in progress as a record, its episode going
        on in a new one from the log's end."""
        record = self._record_of(i)
        self._segments[i] = _Segment(
            record.reset_info, record.episode_id,
            record.prior_steps + len(record),
            record.prior_return + float(sum(record.rewards)),
            self._log_end())
        return record

    def _on_agent_changed(self):
        # An episode must not mix agents within a segment: one with steps
        # under the old agent is abandoned. A sampler cuts segments before
        # it updates, so running episodes then go on.
        if self._segments is not None and any(
                self._open_length(i) for i in range(self.n_envs)):
            self.abandon_episodes()

    def abandon_episodes(self):
        if self._segments is None:
            return 0
        dropped = sum(self._open_length(i) for i in range(self.n_envs))
        self._segments = None
        self._clear_log()
        return dropped

    @property
    def in_progress(self):
        if self._segments is None:
            return 0
        return sum(s is not None for s in self._segments)

    # The calls ----------------------------------------------------------

    def rollout_into(self, buffer, max_starts=None):
        return self._advance(buffer, None, max_starts)

    def begin_steps(self, steps_per_env):
        self._ready()
        self._stops[:] = [self._log_end() + int(steps_per_env)] * \
            self.n_envs

    def continue_steps(self, buffer, max_steps=None):
        # A piece is a number of steps of the log: each env takes at most
        # that many (one its env resets it at takes one more later).
        self._advance(buffer, _NEVER if max_steps is None else max_steps,
                      None)
        if self._log_end() < max(self._stops):
            return False
        self.end_steps(buffer)
        return True

    def end_steps(self, buffer):
        if self._segments is None:
            return
        for i in range(self.n_envs):
            if self._open_length(i):
                buffer.add(self._cut(i), self._observations[i], False,
                           False, self.version, self._worker_number,
                           cut=True)
        # Every segment starts at the log's end now, and goes on in the
        # next call: no stop until that call sets one.
        self._stops[:] = [_NEVER] * self.n_envs
        self._trim_log()


def owned_outputs(actions, agent_infos, n_envs, check):
    """The agent's outputs for a batch of ``n_envs`` observations as a
    worker keeps them: actions given as a list made an array, both checked
    for a row per env if ``check`` (a call's first step), and copied.
    Records keep references to them, and a copy costs far less than a
    step and keeps them safe from an agent that writes each call's outputs
    into the same arrays."""
    if isinstance(actions, list):
        actions = np.asarray(actions)
    if check:
        _check_rows(actions, agent_infos, n_envs)
    return copy_nest(actions), copy_nest(agent_infos) if agent_infos else {}


def _check_rows(actions, agent_infos, n_envs):
    if not isinstance(agent_infos, dict):
        msg = (f'get_actions must return (actions, agent_infos) with '
               f'agent_infos a dict, got {type(agent_infos).__name__}')
        raise TypeError(msg)
    named = [(f'actions{path}', leaf)
             for path, leaf in _nest.leaves(actions)]
    named += [(f'agent_infos{path}', leaf)
              for path, leaf in _nest.leaves(agent_infos)]
    for name, leaf in named:
        if np.shape(leaf)[:1] != (n_envs,):
            msg = (f'get_actions returned {name} with shape '
                   f'{np.shape(leaf)} for {n_envs} observations; it must '
                   f'return one row per observation')
            raise ValueError(msg)


def _mask(n, indices):
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    return mask
