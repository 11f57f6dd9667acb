"""VecWorker: several envs stepped together with batched agent calls."""

import functools

import cloudpickle
import numpy as np

from workers import _nest
from workers._batched import BatchedEnvsWorker
from workers._episode import copy_nest, reuses_buffers
from workers.worker import PULSE_BEATS, PULSE_ENV, bad_step, unpack_reset


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
                         worker_number=worker_number, n_envs=n_envs)
        n = self._n_envs
        self.envs = [None] * n
        self._reset_seeds = [None] * n
        self._new_envs = [True] * n  # never reset yet
        # Per env: it writes its observations into one array, so they are
        # copied as they come (found at the first step after a reset, which
        # returned that array too); the reset's observation is copied until
        # then.
        self._copy_observations = [False] * n
        self._first_observations = {}  # env -> its reset's observation

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
        self._segments = None  # every env starts with a reset

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

    # What the step loop (workers._batched) leaves to the worker --------

    def _ready_envs(self):
        self._check_ready(self.envs[0])
        if self._segments is None:
            self._observations = [None] * self._n_envs
            self._first_observations = {}

    def _reset_envs(self, envs):
        reset_infos = []
        pulse = self.pulse
        for i in envs:
            pulse[PULSE_ENV] = i
            obs, info = unpack_reset(self.envs[i].reset(
                seed=self._reset_seeds[i]))
            pulse[PULSE_BEATS] += 1
            self._reset_seeds[i] = None
            self._new_envs[i] = False
            self._first_observations[i] = obs
            self._observations[i] = copy_nest(obs)
            reset_infos.append(info)
        self._start_segments(envs, reset_infos)

    def _observe(self, run, stepped):
        observations = self._observations
        if len(stepped) == self._n_envs:
            return _nest.stack(observations)
        # Idle envs (no episode, none to start) are not stepped; their
        # rows of the agent's batch hold a placeholder.
        stand_in = observations[stepped[0]]
        segments = self._segments
        return _nest.stack([stand_in if segments[i] is None
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
        pulse = self.pulse
        for i in stepped:
            pulse[PULSE_ENV] = i
            result = envs[i].step(action_of(i))
            pulse[PULSE_BEATS] += 1
            if type(result) is not tuple or len(result) != 5:
                result = _five(result)
            results.append(result)
        self.env_steps += len(stepped)
        next_obs, rewards, terminated, truncated, infos = zip(*results)
        n = self._n_envs
        if len(stepped) == n:
            next_obs = list(next_obs)
        else:
            next_obs = _spread(stepped, next_obs, self._observations)
            rewards = _spread(stepped, rewards, [0.0] * n)
            terminated = _spread(stepped, terminated, [False] * n)
            truncated = _spread(stepped, truncated, [False] * n)
            infos = _spread(stepped, infos, [None] * n)
        firsts, copies = self._first_observations, self._copy_observations
        if firsts:  # envs reset since their last step (all stepped now)
            for i, first in firsts.items():
                if reuses_buffers(first, next_obs[i]):
                    copies[i] = True
            firsts.clear()
        if True in copies:
            for i in stepped:
                if copies[i]:
                    next_obs[i] = copy_nest(next_obs[i])
        return next_obs, rewards, terminated, truncated, infos

    def shutdown(self):
        for env in self.envs:
            if env is not None:
                env.close()
        self.envs = [None] * self._n_envs
        self._segments = None


def _spread(envs, values, every):
    """A list of every env's value: ``values`` at ``envs``, the rest as
    in ``every``."""
    out = list(every)
    for i, value in zip(envs, values):
        out[i] = value
    return out


def _five(result):
    """What an env's ``step`` returned, as the five values it must be."""
    try:
        next_obs, reward, terminated, truncated, info = result
    except (TypeError, ValueError):
        raise bad_step(result) from None
    return next_obs, reward, terminated, truncated, info
