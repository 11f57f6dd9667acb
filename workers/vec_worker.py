"""VecWorker: several envs stepped together with batched agent calls."""

import functools
import numbers

import cloudpickle
import numpy as np

from workers import _nest
from workers._episode import EpisodeRecord, copy_nest, reuses_buffers
from workers.agents import batched
from workers.worker import Worker, bad_step, unpack_reset


class BatchedEnvsWorker(Worker):
    """What workers that step several envs as one batch share: a segment
    in progress per env (``_records``, None before the first step and for
    an env whose next step starts an episode), the observations the next
    step acts on, row ``i`` for env ``i`` (``_observations``), and
    ``_advance(buffer, n_steps, max_starts)``, which steps them. A segment
    is an EpisodeRecord here; a subclass that keeps its segments another
    way says how long one is (``_open_length``) and turns it into a record
    whose episode goes on (``_cut``)."""

    _records = None
    _observations = None

    def _advance(self, buffer, n_steps, max_starts):
        raise NotImplementedError

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


class VecWorker(BatchedEnvsWorker):
    """Steps ``n_envs`` envs with one batched ``get_actions`` call per step.

    :meth:`rollout` steps all envs until at least one episode completes and
    returns the episodes that completed on that step (in env order); envs
    whose episode ended start a new one on their next step. An agent or env
    update, or a new round, resets every env, so no episode mixes versions.
    With ``n_envs=1`` the episodes equal :class:`DefaultWorker`'s for the
    same seed.

    Args:
        seed: root seed shared by the sampler's workers.
        max_episode_length: step cap, or None for the env's own limit.
        worker_number: this worker's index.
        n_envs: how many envs this worker steps together.
    """

    def __init__(self, *, seed, max_episode_length, worker_number, n_envs=8):
        super().__init__(seed=seed, max_episode_length=max_episode_length,
                         worker_number=worker_number)
        if not isinstance(n_envs, numbers.Integral) or n_envs < 1:
            msg = f'n_envs must be an int >= 1, got {n_envs!r}'
            raise ValueError(msg)
        self._n_envs = int(n_envs)
        self.envs = [None] * self._n_envs
        self._reset_seeds = [None] * self._n_envs
        self._new_envs = [True] * self._n_envs  # never reset yet
        self._copy_observations = [False] * self._n_envs
        self._records = None  # None: every env needs a reset
        self._observations = None
        self._first_observations = None
        self._steps = None

    @property
    def n_envs(self):
        return self._n_envs

    def update_env(self, env_update):
        update = self._as_env_update(env_update)
        new_envs = []
        for env in self.envs:
            new_env = self._apply_env_update(update, env)
            if any(new_env is e for e in new_envs):
                # An update that returns one object (a NewEnvUpdate of an
                # env instance) must not make envs share state: copy it.
                new_env = cloudpickle.loads(cloudpickle.dumps(new_env))
            new_envs.append(new_env)
        first = new_envs[0]
        for i, env in enumerate(new_envs[1:], start=1):
            if env.observation_space != first.observation_space or \
                    env.action_space != first.action_space:
                msg = (f'VecWorker env {i} has spaces '
                       f'({env.observation_space}, {env.action_space}) but '
                       f'env 0 has ({first.observation_space}, '
                       f'{first.action_space}); all envs of a worker must '
                       f'share their spaces')
                raise ValueError(msg)
        self._new_envs = [new or env is not old for new, env, old in zip(
            self._new_envs, new_envs, self.envs)]
        self.envs = new_envs
        self._copy_observations = [False] * self._n_envs
        self._records = None

    @property
    def env_spaces(self):
        """``(observation_space, action_space)`` shared by the envs."""
        if self.envs[0] is None:
            return None
        return self.envs[0].observation_space, self.envs[0].action_space

    def _n_seeds(self):
        return 1 + self._n_envs

    def _on_new_round(self, env_seeds, reseed_envs):
        self._reset_seeds = [
            seed if reseed_envs or new else None
            for seed, new in zip(env_seeds, self._new_envs)]

    def _reset_env(self, i):
        obs, info = unpack_reset(self.envs[i].reset(
            seed=self._reset_seeds[i]))
        self._reset_seeds[i] = None
        self._new_envs[i] = False
        self._first_observations[i] = obs
        self._observations[i] = copy_nest(obs)
        self._records[i] = EpisodeRecord(info, column=i,
                                         episode_id=self._new_episode_id())
        self._steps[i] = 0

    def _advance(self, buffer, n_steps, max_starts):
        """Step the envs: ``n_steps`` times (every env, starting episodes
        as they end), or with ``n_steps=None`` until an episode completes,
        starting at most ``max_starts`` new ones (None: no limit). Envs
        with no episode and none to start stay idle. Returns how many
        episodes it started."""
        self._check_ready(self.envs[0])
        n_envs = self._n_envs
        if self._records is None:
            # None marks an env whose next step starts with a reset.
            self._records = [None] * n_envs
            self._observations = [None] * n_envs
            self._first_observations = [None] * n_envs
            self._steps = [0] * n_envs
        agent = self.agent
        get_actions = batched(agent)
        reset = getattr(agent, 'reset', None)
        max_length = self._max_episode_length or float('inf')
        records, observations = self._records, self._observations
        steps, envs = self._steps, self.envs
        copy_obs = self._copy_observations
        first_observations = self._first_observations
        check_outputs = True
        refused = self._action_check(batched=True)
        started = taken = 0
        where = 'env.reset'
        try:
            while n_steps is None or taken < n_steps:
                to_reset = [i for i in range(n_envs) if records[i] is None]
                if max_starts is not None:
                    to_reset = to_reset[:max(max_starts - started, 0)]
                if to_reset:
                    where = 'env.reset'
                    for i in to_reset:
                        self._reset_env(i)
                    started += len(to_reset)
                    if reset is not None:
                        where = 'agent.reset'
                        reset(_mask(n_envs, to_reset))
                active = [i for i in range(n_envs) if records[i] is not None]
                if not active:
                    break
                where = 'agent.get_actions'
                if len(active) < n_envs:
                    # Idle envs (no episode, none to start) are not stepped;
                    # their rows of the agent's batch hold a placeholder.
                    stand_in = observations[active[0]]
                    batch = _nest.stack([stand_in if records[i] is None
                                         else observations[i]
                                         for i in range(n_envs)])
                else:
                    batch = _nest.stack(observations)
                actions, agent_infos = get_actions(batch)
                where = 'agent.get_actions output'
                actions, agent_infos = owned_outputs(
                    actions, agent_infos, n_envs, check_outputs)
                check_outputs = False
                # What the envs receive: the actions, or what the agent
                # says to send instead (e.g. a Gaussian sample clipped).
                sent = agent_infos.get('env_action', actions)
                error = refused(sent)
                if error is not None:
                    where = 'agent.get_actions'
                    raise error
                if isinstance(sent, np.ndarray) and sent.ndim == 1:
                    # Discrete actions: iterating the array gives each env
                    # a numpy scalar, as SyncVectorEnv does; gymnasium's
                    # Discrete.contains (asserted by most envs' step)
                    # checks those ~1.3 us faster than a Python int.
                    action_of = list(sent).__getitem__
                else:
                    action_of = functools.partial(_nest.index, sent)
                completed = 0
                for i in active:
                    where = 'env.step'
                    result = envs[i].step(action_of(i))
                    try:
                        next_obs, reward, terminated, truncated, \
                            env_info = result
                    except (TypeError, ValueError):
                        raise bad_step(result) from None
                    self.env_steps += 1
                    if steps[i] == 0 and not copy_obs[i] and \
                            reuses_buffers(first_observations[i], next_obs):
                        copy_obs[i] = True
                    if copy_obs[i]:
                        next_obs = copy_nest(next_obs)
                    record = records[i]
                    record.observations.append(batch)
                    record.actions.append(actions)
                    record.rewards.append(reward)
                    record.env_infos.append(env_info)
                    record.agent_infos.append(agent_infos)
                    observations[i] = next_obs
                    steps[i] += 1
                    if steps[i] >= max_length and not (terminated or
                                                       truncated):
                        truncated = True
                    if terminated or truncated:
                        buffer.add(record, next_obs, bool(terminated),
                                   bool(truncated), self.version,
                                   self._worker_number)
                        records[i] = None
                        completed += 1
                taken += 1
                if completed and n_steps is None:
                    break
        except BaseException:
            self.error_site = where
            raise
        self.error_site = None
        return started

    def shutdown(self):
        for env in self.envs:
            if env is not None:
                env.close()
        self.envs = [None] * self._n_envs
        self._records = None


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
