"""DefaultWorker: one env, one whole episode per rollout."""

from workers._episode import EpisodeRecord, copy_nest, reuses_buffers
from workers.worker import Worker


class DefaultWorker(Worker):
    """Runs one env; each :meth:`rollout` returns one whole episode.

    The episode ends when the env terminates or truncates, or after
    ``max_episode_length`` steps (``truncated=True``). The first reset of
    every round is seeded from the round's seeds; later resets continue
    the env's own generator.

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
        self._copy_observations = False

    def update_env(self, env_update):
        update = self._as_env_update(env_update)
        self.env = self._apply_env_update(update, self.env)
        self._copy_observations = False

    @property
    def env_spaces(self):
        """``(observation_space, action_space)`` of the env."""
        if self.env is None:
            return None
        return self.env.observation_space, self.env.action_space

    def _on_new_round(self, env_seeds):
        self._reset_seed = env_seeds[0]

    def rollout_into(self, buffer):
        env, agent = self.env, self.agent
        self._check_ready(env)
        get_action = agent.get_action
        step = env.step
        max_length = self._max_episode_length or float('inf')
        copy_obs = self._copy_observations
        where = 'env.reset'
        try:
            obs, reset_info = env.reset(seed=self._reset_seed)
            self._reset_seed = None
            if not copy_obs:
                first_obs = obs
                obs = copy_nest(obs)
            record = EpisodeRecord(reset_info)
            observations = record.observations
            actions = record.actions
            rewards = record.rewards
            env_infos = record.env_infos
            agent_infos = record.agent_infos
            reset = getattr(agent, 'reset', None)
            if reset is not None:
                where = 'agent.reset'
                reset()
            t = 0
            while True:
                where = 'agent.get_action'
                action, agent_info = get_action(obs)
                where = 'env.step'
                next_obs, reward, terminated, truncated, env_info = \
                    step(action)
                if t == 0 and not copy_obs and \
                        reuses_buffers(first_obs, next_obs):
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
                if terminated or truncated:
                    break
                if t >= max_length:
                    truncated = True
                    break
        except BaseException:
            self.error_site = where
            raise
        self.error_site = None
        buffer.add(record, obs, bool(terminated), bool(truncated),
                   self.version, self._worker_number)

    def shutdown(self):
        if self.env is not None:
            self.env.close()
            self.env = None
