"""VecWorker: several envs stepped together with batched agent calls."""

import functools
import numbers

import cloudpickle
import numpy as np

from workers import _nest
from workers._batched import BatchedEnvsWorker, BatchedStep
from workers._episode import EpisodeRecord, copy_nest, reuses_buffers
from workers.worker import bad_step, unpack_reset


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

    # The phases of the step loop (workers._batched) --------------------

    def _begin(self, buffer, n_steps, max_starts):
        self._check_ready(self.envs[0])
        if self._records is None:
            # None marks an env whose next step starts with a reset.
            n = self._n_envs
            self._records = [None] * n
            self._observations = [None] * n
            self._first_observations = [None] * n
            self._steps = [0] * n
        run = BatchedStep(self, buffer, n_steps, max_starts)
        run.every_env = list(range(self._n_envs))
        return run

    def _start_idle(self, run):
        records = self._records
        if None not in records:  # every env has an episode running
            return run.every_env
        idle = run.allowed_starts(
            [i for i in range(self._n_envs) if records[i] is None])
        if idle:
            run.where = 'env.reset'
            for i in idle:
                self._reset_env(i)
            run.started += len(idle)
            self._reset_agent(run, idle)
        if None not in records:
            return run.every_env
        return [i for i in range(self._n_envs) if records[i] is not None]

    def _observe(self, run, stepped):
        observations = self._observations
        if len(stepped) == self._n_envs:
            return _nest.stack(observations)
        # Idle envs (no episode, none to start) are not stepped; their
        # rows of the agent's batch hold a placeholder.
        stand_in = observations[stepped[0]]
        records = self._records
        return _nest.stack([stand_in if records[i] is None
                            else observations[i]
                            for i in range(self._n_envs)])

    def _step(self, run, stepped, sent):
        if isinstance(sent, np.ndarray) and sent.ndim == 1:
            # Discrete actions: iterating the array gives each env a numpy
            # scalar, as SyncVectorEnv does; gymnasium's Discrete.contains
            # (asserted by most envs' step) checks those ~1.3 us faster
            # than a Python int.
            action_of = list(sent).__getitem__
        else:
            action_of = functools.partial(_nest.index, sent)
        envs = self.envs
        results = []
        for i in stepped:
            result = envs[i].step(action_of(i))
            if type(result) is not tuple or len(result) != 5:
                result = _five(result)
            results.append(result)
        self.env_steps += len(stepped)
        return results

    def _record(self, run, stepped, batch, actions, agent_infos, results):
        records, observations = self._records, self._observations
        steps, copy_obs = self._steps, self._copy_observations
        for i, (next_obs, reward, _, _, info) in zip(stepped, results):
            if steps[i] == 0 and not copy_obs[i] and \
                    reuses_buffers(self._first_observations[i], next_obs):
                copy_obs[i] = True
            if copy_obs[i]:
                next_obs = copy_nest(next_obs)
            record = records[i]
            record.observations.append(batch)
            record.actions.append(actions)
            record.rewards.append(reward)
            record.env_infos.append(info)
            record.agent_infos.append(agent_infos)
            observations[i] = next_obs
            steps[i] += 1

    def _end(self, run, stepped, results):
        records, steps = self._records, self._steps
        max_length = self._max_episode_length or float('inf')
        ended = 0
        for i, (_, _, terminated, truncated, _) in zip(stepped, results):
            if steps[i] >= max_length and not (terminated or truncated):
                truncated = True
            if terminated or truncated:
                run.buffer.add(records[i], self._observations[i],
                               bool(terminated), bool(truncated),
                               self.version, self._worker_number)
                records[i] = None
                ended += 1
        return ended

    def shutdown(self):
        for env in self.envs:
            if env is not None:
                env.close()
        self.envs = [None] * self._n_envs
        self._records = None


def _five(result):
    """What an env's ``step`` returned, as the five values it must be."""
    try:
        next_obs, reward, terminated, truncated, info = result
    except (TypeError, ValueError):
        raise bad_step(result) from None
    return next_obs, reward, terminated, truncated, info
