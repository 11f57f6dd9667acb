"""The step loop of workers that step several envs as one batch
(:class:`~workers.VecWorker`, :class:`~workers.EnvPoolWorker`), in named
phases. One pass of the loop is one step of the batch::

    start_idle   envs with no episode start one (as many as allowed); the
                 envs to step now
    observe      the observations the agent acts on, a row per env
    act          agent.get_actions -> actions, agent infos, and what the
                 envs are sent; checked against the action space
    step         the envs take the actions (the part each worker does its
                 own way: a list of gymnasium envs, or a C++ pool)
    record       the step goes into each env's segment in progress
    end          segments whose episode ended go to the buffer

The phases share one object, a :class:`BatchedStep`: what the call asked
(``n_steps``, ``max_starts``), how far it is (``started``, ``taken``),
the agent's calls, and ``where`` (the call running, said as the worker's
``error_site`` if anything raises).
"""

import numpy as np

from workers import _nest
from workers._episode import copy_nest
from workers.agents import batched
from workers.worker import Worker


class BatchedStep:
    """One call of the batched step loop: what it was asked and how far
    it is; workers add what their own phases keep."""

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

    def allowed_starts(self, candidates):
        """The first of ``candidates`` (envs) that may start an episode."""
        if self.max_starts is None:
            return candidates
        return candidates[:max(self.max_starts - self.started, 0)]


class BatchedEnvsWorker(Worker):
    """What workers that step several envs as one batch share: a segment
    in progress per env (``_records``, None before the first step and for
    an env whose next step starts an episode), the observations the next
    step acts on, row ``i`` for env ``i`` (``_observations``), and the
    step loop (:meth:`_advance`, in the phases of this module). A segment
    is an EpisodeRecord here; a subclass that keeps its segments another
    way says how long one is (``_open_length``) and turns it into a record
    whose episode goes on (``_cut``)."""

    _records = None
    _observations = None

    # The loop -----------------------------------------------------------

    def _advance(self, buffer, n_steps, max_starts):
        """Step the envs: ``n_steps`` times (every env, starting episodes
        as they end), or with ``n_steps=None`` until an episode completes,
        starting at most ``max_starts`` new ones (None: no limit). Envs
        with no episode and none to start stay idle. Returns how many
        episodes it started."""
        run = self._begin(buffer, n_steps, max_starts)
        try:
            while self._more(run):
                stepped = self._start_idle(run)
                if not stepped:
                    break
                batch = self._observe(run, stepped)
                actions, agent_infos, sent = self._act(run, batch)
                run.where = 'env.step'
                result = self._step(run, stepped, sent)
                self._record(run, stepped, batch, actions, agent_infos,
                             result)
                ended = self._end(run, stepped, result)
                run.taken += 1
                if ended and n_steps is None:
                    break
        except BaseException:
            self.error_site = run.where
            raise
        self.error_site = None
        return run.started

    def _act(self, run, batch):
        """The agent's actions for ``batch``: ``(actions, agent_infos,
        sent)``, ``sent`` being what the envs receive (the actions, or
        what the agent says to send instead, e.g. a Gaussian sample
        clipped), refused if the action space does not hold it."""
        run.where = 'agent.get_actions'
        actions, agent_infos = run.get_actions(batch)
        run.where = 'agent.get_actions output'
        actions, agent_infos = owned_outputs(
            actions, agent_infos, self._n_envs, run.check_outputs)
        run.check_outputs = False
        sent = agent_infos.get('env_action', actions)
        error = run.refused(sent)
        if error is not None:
            run.where = 'agent.get_actions'
            raise error
        return actions, agent_infos, sent

    def _reset_agent(self, run, envs):
        """Tell the agent (if it keeps state per env) that ``envs`` start
        episodes."""
        if run.agent_reset is not None:
            run.where = 'agent.reset'
            run.agent_reset(_mask(self._n_envs, envs))

    # The phases each worker has its own way -----------------------------

    def _begin(self, buffer, n_steps, max_starts):
        """Ready the envs; the :class:`BatchedStep` of this call."""
        raise NotImplementedError

    def _more(self, run):
        """Whether the call has steps left to take."""
        return run.n_steps is None or run.taken < run.n_steps

    def _start_idle(self, run):
        """Start episodes in the envs that have none, as ``run`` allows;
        the envs to step now (none: the call is over)."""
        raise NotImplementedError

    def _observe(self, run, stepped):
        """The batch of observations the agent acts on."""
        raise NotImplementedError

    def _step(self, run, stepped, sent):
        """Step ``stepped`` with the actions ``sent`` (a row per env)."""
        raise NotImplementedError

    def _record(self, run, stepped, batch, actions, agent_infos, result):
        """Add the step to each stepped env's segment in progress."""
        raise NotImplementedError

    def _end(self, run, stepped, result):
        """Send the segments whose episode ended to ``run.buffer``; how
        many ended."""
        raise NotImplementedError

    # Segments -----------------------------------------------------------

    def _open_length(self, i):
        """Steps recorded in env ``i``'s segment in progress (0: none)."""
        record = self._records[i]
        return 0 if record is None else len(record)

    def _cut(self, i):
        """Env ``i``'s segment in progress as a record, its episode going
        on in a new one from here."""
        record = self._records[i]
        self._records[i] = record.continuation()
        return record

    def _on_agent_changed(self):
        # An episode must not mix agents within a segment: one with steps
        # under the old agent is abandoned. A sampler cuts segments before
        # it updates, so running episodes then go on.
        if self._records is not None and any(
                self._open_length(i) for i in range(len(self._records))):
            self.abandon_episodes()

    def abandon_episodes(self):
        if self._records is None:
            return 0
        dropped = sum(self._open_length(i)
                      for i in range(len(self._records)))
        self._records = None
        return dropped

    @property
    def in_progress(self):
        if self._records is None:
            return 0
        return sum(r is not None for r in self._records)

    def rollout_into(self, buffer, max_starts=None):
        return self._advance(buffer, None, max_starts)

    def _take_steps(self, buffer, n_steps):
        self._advance(buffer, n_steps, None)

    def end_steps(self, buffer):
        self._steps_left = 0
        if self._records is None:
            return
        for i in range(len(self._records)):
            if self._open_length(i):
                buffer.add(self._cut(i), self._observations[i], False,
                           False, self.version, self._worker_number,
                           cut=True)


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
