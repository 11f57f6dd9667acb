"""SubprocVecEnv: stable-baselines3's ``VecEnv`` on our workers.

Imported only when ``sampler.vector.SubprocVecEnv`` is asked for, as it
needs stable-baselines3 (``pip install "rollout-sampler[sb3]"``). The envs
step in ``EnvStepWorker``s in same_step autoreset mode, which is SB3's: an
env whose episode ends is reset at once, its last observation going out
as ``infos[i]["terminal_observation"]`` and the reset's info into
``reset_infos[i]``. The calls to the workers are ``EnvWorkers``', shared
with :class:`sampler.vector.AsyncVectorEnv`.
"""

import multiprocessing
import warnings

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

from sampler._protocol import CallEnvs, ResetEnvs, SetEnvAttrs, StepEnvs


class SubprocVecEnv(VecEnv):
    """A stable-baselines3 ``VecEnv`` whose envs step in our workers; a
    drop-in for SB3's ``SubprocVecEnv`` (``make_vec_env(...,
    vec_env_cls=SubprocVecEnv)`` works).

    Args:
        env_fns: zero-argument callables, each returning a
            ``gymnasium.Env``.
        start_method: the start method of the worker processes (default:
            the multiprocessing backend's, ``forkserver`` where there is
            one, as SB3's).
        n_workers: how many worker processes the envs are spread over
            (default: the CPUs this process may use, at most one per
            env); SB3's ``SubprocVecEnv`` starts one per env.
        backend: ``"multiprocessing"`` (default), ``"ray"`` or
            ``"local"``.
        on_worker_error: ``"raise"`` (a worker that dies raises
            :class:`~sampler.WorkerCrashedError`) or ``"restart"``: it is
            replaced (at most ``max_restarts`` times), its envs built anew
            and reset, and their step comes back done, truncated
            (``"TimeLimit.truncated"``), with reward 0, their last
            observation as ``"terminal_observation"`` and
            ``"worker_restarted"`` True in their infos.
        backend_options: ``max_restarts``, ``startup_timeout``,
            ``shutdown_timeout``, ``pin_workers`` and ``step_timeout``, as
            :class:`sampler.vector.AsyncVectorEnv`'s.

    An env that raises in a worker raises here as in
    :class:`sampler.vector.AsyncVectorEnv`: a :class:`~sampler.WorkerError`
    naming the env, which is also the env's built-in exception type.
    """

    def __init__(self, env_fns, start_method=None, *, n_workers=None,
                 backend='multiprocessing', on_worker_error='raise',
                 **backend_options):
        from sampler.vector import EnvWorkers, checked_env_fns
        self.closed = True  # until the workers are up
        self.waiting = False
        self._workers = None
        env_fns = checked_env_fns(env_fns, on_worker_error)
        if start_method is not None:
            multiprocessing.get_context(start_method)  # SB3's error
        self._workers = EnvWorkers(
            env_fns, n_workers=n_workers, backend=backend,
            autoreset_mode=AutoresetMode.SAME_STEP,
            start_method=start_method,
            backend_options=dict(backend_options,
                                 on_worker_error=on_worker_error))
        self._last = {}  # worker number -> its envs' last observations
        self.closed = False
        try:
            self._workers.check_same('observation_space')
            self._workers.check_same('action_space')
            super().__init__(len(env_fns), self._workers.observation_spaces[0],
                             self._workers.action_spaces[0])
            # Each step's observations are copied out of the shared rows
            # (_stack): SB3's algorithms keep the last batch across steps.
            self._workers.share_observations(self.observation_space)
            self._workers.before_restart = self._keep_last
        except BaseException:
            self.close()
            raise

    def reset(self):
        seeds, options = self._seeds, self._options
        results = self._workers.run('reset', self._workers.per_worker(
            lambda k, a, n: ResetEnvs(
                seeds[a:a + n], [o or None for o in options[a:a + n]])))
        observations, self.reset_infos = [], []
        for k in range(len(self._workers.shares)):
            obs, infos = results[k]
            observations.append(obs)
            self._last[k] = obs
            self.reset_infos += infos
        # Seeds and options are for one reset, as SB3's vec envs take them.
        self._reset_seeds()
        self._reset_options()
        return _stack(self.observation_space, observations)

    def step_async(self, actions):
        self._check_open()
        if self.waiting:
            msg = 'step_async while a step is pending: call step_wait first'
            raise RuntimeError(msg)
        rows = list(actions)
        if len(rows) != self.num_envs:
            msg = (f'step_async got actions for {len(rows)} envs; this '
                   f'vec env has num_envs={self.num_envs}')
            raise ValueError(msg)
        self._workers.send('step', self._workers.per_worker(
            lambda k, a, n: StepEnvs(rows[a:a + n])))
        self.waiting = True

    def step_wait(self):
        if self.closed or not self.waiting:
            msg = ('step_wait without a step_async before it' if
                   not self.closed else 'this SubprocVecEnv is closed')
            raise RuntimeError(msg)
        results = self._workers.wait()
        self.waiting = False
        observations, rewards, dones, infos = [], [], [], []
        for k, (a, n) in enumerate(self._workers.shares):
            if k in self._workers.restarted:
                results[k] = self._restarted(k, n, results[k])
            obs, rs, terms, truncs, env_infos, finals = results[k]
            observations.append(obs)
            self._last[k] = obs
            rewards += rs
            for j in range(n):
                dones.append(bool(terms[j] or truncs[j]))
                if finals[j] is None:
                    info = env_infos[j]
                else:  # the episode ended, and the env was reset
                    final_obs, info = finals[j]
                    info['terminal_observation'] = final_obs
                    self.reset_infos[a + j] = env_infos[j]
                info['TimeLimit.truncated'] = bool(truncs[j] and
                                                   not terms[j])
                infos.append(info)
        return (_stack(self.observation_space, observations),
                np.stack(rewards), np.stack(dones), infos)

    def _keep_last(self, k):
        """Worker ``k`` was replaced: keep its envs' last observations
        before their reset overwrites its shared rows."""
        if type(self._last.get(k)) is np.ndarray:
            self._last[k] = self._last[k].copy()

    def _restarted(self, k, n, reset):
        """The reset of a replaced worker's envs as the step that ended
        their episodes (see ``on_worker_error``)."""
        self._workers.restarted.discard(k)
        observations, reset_infos = reset
        last = self._last.get(k, [None] * n)
        finals = [(last[j], {'worker_restarted': True}) for j in range(n)]
        return (observations, [0.0] * n, [False] * n, [True] * n,
                reset_infos, finals)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.waiting = False
        workers, self._workers = self._workers, None
        workers.close()

    def __del__(self):
        if not getattr(self, 'closed', True):
            self.close()

    def get_images(self):
        if self.render_mode != 'rgb_array':
            warnings.warn(
                f'The render mode is {self.render_mode}, but this method '
                f'assumes it is `rgb_array` to obtain images.')
            return [None] * self.num_envs
        return self._call('render', 'method', None)

    def has_attr(self, attr_name):
        return all(self._call(attr_name, 'has', None))

    def get_attr(self, attr_name, indices=None):
        return self._call(attr_name, 'get', indices)

    def set_attr(self, attr_name, value, indices=None):
        indices = list(self._get_indices(indices))
        parts = self._workers.split(self._checked(indices))
        self._workers.run('set_attr', {
            k: SetEnvAttrs(attr_name, [value] * len(part), True, part)
            for k, part in parts.items()})

    def env_method(self, method_name, *method_args, indices=None,
                   **method_kwargs):
        return self._call(method_name, 'method', indices, method_args,
                          method_kwargs)

    def env_is_wrapped(self, wrapper_class, indices=None):
        return self._call('', 'is_wrapped', indices, (wrapper_class,))

    def _call(self, name, how, indices, args=(), kwargs=None):
        self._check_open()
        indices = self._checked(list(self._get_indices(indices)))
        parts = self._workers.split(indices)
        results = self._workers.run(f'{how} {name}'.strip(), {
            k: CallEnvs(name, args, kwargs, how, part)
            for k, part in parts.items()})
        return self._workers.join(indices, results)

    def _checked(self, indices):
        """``indices`` with negative ones counted from the end, as SB3
        indexes its list of pipes; an IndexError for one out of range."""
        n, out = self.num_envs, []
        for i in indices:
            if not -n <= i < n:
                msg = f'env index {i} is out of range for num_envs={n}'
                raise IndexError(msg)
            out.append(int(i) % n)
        return out

    def _check_open(self):
        if self.closed:
            msg = 'this SubprocVecEnv is closed'
            raise RuntimeError(msg)
        if self._workers.pending is not None and not self.waiting:
            msg = (f'a call to {self._workers.pending} is still pending '
                   f'(it was interrupted); close the vec env')
            raise RuntimeError(msg)


def _stack(space, blocks):
    """The workers' observations (per worker one array of its envs', or a
    list of one per env) as one batch: arrays stacked on a new first axis,
    per key of a Dict space and per item of a Tuple space."""
    if all(type(block) is np.ndarray for block in blocks):
        return np.concatenate(blocks)
    rows = [row for block in blocks for row in block]
    if isinstance(space, spaces.Dict):
        return {key: np.stack([row[key] for row in rows])
                for key in space.spaces}
    if isinstance(space, spaces.Tuple):
        return tuple(np.stack([row[i] for row in rows])
                     for i in range(len(space.spaces)))
    return np.stack(rows)
