"""DefaultWorker: one env, one whole episode per rollout, or a given
number of steps as segments."""

from collections.abc import Mapping

from workers._episode import EpisodeRecord, copy_nest, reuses_buffers
from workers.worker import (PULSE_BEATS, Worker, bad_action, bad_step,
                            unpack_reset)


class DefaultWorker(Worker):
    """Runs one env; each :meth:`rollout` returns one whole episode, and
    :meth:`step_into` a given number of steps as segments.

    The episode ends when the env terminates or truncates, or after
    ``max_episode_length`` steps (``truncated=True``), counted over all
    its segments. The first reset of every round is seeded from the
    round's seeds (only the env's first reset ever, with
    ``reseed_envs=False``); later resets continue the env's own
    generator.

    Args:
        seed: root seed shared by the sampler's workers.
        max_episode_length: step cap, or None for the env's own limit.
        worker_number: this worker's index.

    Example:
        >>> from workers import DefaultWorker, RandomAgent
        >>> import gymnasium
        >>> w = DefaultWorker(seed=0, max_episode_length=10, worker_number=0)
        >>> w.update_env('CartPole-v1')
        >>> w.update_agent(RandomAgent(gymnasium.make('CartPole-v1')
        ...                            .action_space))
        >>> batch = w.rollout()
        >>> batch.n_episodes, len(batch) <= 10
        (1, True)
        >>> w.shutdown()
    """

    def __init__(self, *, seed, max_episode_length, worker_number):
        super().__init__(seed=seed, max_episode_length=max_episode_length,
                         worker_number=worker_number)
        self.env = None
        self._reset_seed = None
        self._env_is_new = True  # never reset: the next round seeds it
        self._copy_observations = False
        # The running episode: its current segment, the observation its
        # next step acts on, its steps so far, and the reset observation
        # (to see whether the env overwrites its arrays in place).
        self._record = None
        self._obs = None
        self._t = 0
        self._first_obs = None

    def update_env(self, env_update):
        update = self._as_env_update(env_update)
        env = self._apply_env_update(update, self.env)
        if env is not self.env:
            self._env_is_new = True
        self.env = env
        self._copy_observations = False
        self._record = None

    @property
    def env_spaces(self):
        """``(observation_space, action_space)`` of the env."""
        if self.env is None:
            return None
        return self.env.observation_space, self.env.action_space

    def _on_new_round(self, env_seeds, reseed_envs):
        if reseed_envs or self._env_is_new:
            self._reset_seed = env_seeds[0]

    def abandon_episodes(self):
        dropped = 0 if self._record is None else len(self._record)
        self._record = None
        return dropped

    @property
    def in_progress(self):
        return int(self._record is not None)

    def rollout_into(self, buffer, max_starts=None):
        self._check_ready(self.env)
        started = 0
        if self._record is None:
            if max_starts == 0:
                return 0
            self._start_episode()
            started = 1
        self._run(buffer, None)
        return started

    def begin_steps(self, steps_per_env):
        self._check_ready(self.env)
        super().begin_steps(steps_per_env)

    def _take_steps(self, buffer, n_steps):
        while n_steps > 0:
            if self._record is None:
                self._start_episode()
            n_steps -= self._run(buffer, n_steps)

    def end_steps(self, buffer):
        self._steps_left = 0
        record = self._record
        if record is not None and len(record):
            buffer.add(record, self._obs, False, False, self.version,
                       self._worker_number, cut=True)
            self._record = record.continuation()

    def _start_episode(self):
        # error_site stays set if a call raises: it says which one did.
        self.error_site = 'env.reset'
        obs, reset_info = unpack_reset(self.env.reset(seed=self._reset_seed))
        self.pulse[PULSE_BEATS] += 1
        self._reset_seed = None
        self._env_is_new = False
        if not self._copy_observations:
            self._first_obs = obs
            obs = copy_nest(obs)
        reset = getattr(self.agent, 'reset', None)
        if reset is not None:
            self.error_site = 'agent.reset'
            reset()
        self.error_site = None
        self._record = EpisodeRecord(reset_info,
                                     episode_id=self._new_episode_id())
        self._obs = obs
        self._t = 0

    def _run(self, buffer, limit):
        """Step the running episode until it ends (its segment then goes
        to ``buffer``) or ``limit`` steps were taken (None: no limit);
        returns the steps taken."""
        get_action = self.agent.get_action
        step = self.env.step
        record = self._record
        observations = record.observations
        actions = record.actions
        rewards = record.rewards
        env_infos = record.env_infos
        agent_infos = record.agent_infos
        max_length = self._max_episode_length or float('inf')
        limit = float('inf') if limit is None else limit
        copy_obs = self._copy_observations
        refused = self._action_check(batched=False)
        obs, t, taken, ended = self._obs, self._t, 0, False
        pulse = self.pulse
        where = 'agent.get_action'
        try:
            while taken < limit:
                where = 'agent.get_action'
                result = get_action(obs)
                try:
                    action, agent_info = result
                except (TypeError, ValueError):
                    raise bad_action(result) from None
                if type(agent_info) is not dict and \
                        not isinstance(agent_info, Mapping):
                    raise bad_action(result)
                sent = agent_info.get('env_action', action)
                error = refused(sent)
                if error is not None:
                    raise error
                where = 'env.step'
                result = step(sent)
                pulse[PULSE_BEATS] += 1
                try:
                    next_obs, reward, terminated, truncated, env_info = \
                        result
                except (TypeError, ValueError):
                    raise bad_step(result) from None
                if t == 0 and not copy_obs and \
                        reuses_buffers(self._first_obs, next_obs):
                    copy_obs = self._copy_observations = True
                if copy_obs:
                    next_obs = copy_nest(next_obs)
                observations.append(obs)
                actions.append(action)
                rewards.append(reward)
                env_infos.append(env_info)
                agent_infos.append(agent_info)
                obs = next_obs
                t += 1
                taken += 1
                if terminated or truncated:
                    ended = True
                    break
                if t >= max_length:
                    truncated = ended = True
                    break
        except BaseException:
            self.error_site = where
            raise
        finally:
            self.env_steps += taken
        self.error_site = None
        if ended:
            buffer.add(record, obs, bool(terminated), bool(truncated),
                       self.version, self._worker_number)
            self._record = None
        else:
            self._obs, self._t = obs, t
        return taken

    def shutdown(self):
        if self.env is not None:
            self.env.close()
            self.env = None
        self._record = None
