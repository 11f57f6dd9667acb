"""Vector envs on our workers, for training loops that keep the policy in
the learner (CleanRL, stable-baselines3, most research code).

:class:`AsyncVectorEnv` is a ``gymnasium.vector.VectorEnv`` that takes
gymnasium's ``AsyncVectorEnv`` arguments and returns, step for step, what
``SyncVectorEnv`` returns for the same ``env_fns``, seeds and actions, in
every autoreset mode. Its envs are spread over ``n_workers`` worker
processes (a sampler's backend: their start-up, pipes, errors and
shutdown), each stepping its share as ``SyncVectorEnv`` steps each env
(``workers.EnvStepWorker``). The commands and replies are those of
:mod:`sampler._protocol` (``ResetEnvs``, ``StepEnvs``, ``CallEnvs``,
``SetEnvAttrs`` -> ``EnvsDone``)::

    learner: actions (num_envs, ...)
      --> per worker, its envs' rows --StepEnvs--> worker k: its envs step,
          their observations stacked, their infos merged as gymnasium's
          _add_info merges them (over its envs)
      <-- EnvsDone: the worker's rewards, flags and infos, and its
          observations: with process workers written into its rows of
          one shared array (ShareRows; the message says only that),
          else in the message
      --> observations: the shared array itself where every worker
          wrote its rows (copied once if ``copy``), else concatenated
          in env order; the workers' infos merged into one dict
          (merge_info_blocks)

The caller and the workers poll a while for each other's messages
before sleeping (``sampler._framing.Spin``): a vector env's steps come
and go at a steady beat, and a wake-up costs more than the poll.

:class:`SubprocVecEnv` (``sampler/_sb3.py``, imported when asked for, as
it needs stable-baselines3) is SB3's ``VecEnv`` on the same workers
(:class:`EnvWorkers`), in same_step autoreset mode, with SB3's infos.
"""

import builtins
import copy as copy_module
import multiprocessing
import numbers
import os
import time

import numpy as np
from gymnasium.error import (AlreadyPendingCallError,
                             ClosedEnvironmentError, NoAsyncCallError)
from gymnasium.spaces import Box, MultiBinary, MultiDiscrete, Space
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import (
    batch_differing_spaces, batch_space, concatenate, create_empty_array,
    iterate)

from sampler._arena import Arena
from sampler._backend import RESTARTED
from sampler._protocol import (ArenaSlot, CallEnvs, ResetEnvs, SetEnvAttrs,
                               StepEnvs)
from sampler.errors import SamplerError, WorkerError, WorkerHungError
from sampler.sampler import available_cpus
from workers.env_stepper import (EnvFns, EnvStepWorker, InfoMerger,
                                 InSharedRows, NoPolicy, STACKING_SPACES,
                                 as_autoreset_mode, batch_rows,
                                 merge_info_blocks)


#: Batched spaces whose batches are one array, iterated row by row.
_ARRAY_SPACES = (Box, MultiDiscrete, MultiBinary)


def _backend_class(backend):
    if backend == 'multiprocessing':
        from sampler.multiprocessing_sampler import MultiprocessingSampler
        return MultiprocessingSampler
    if backend == 'ray':
        from sampler.ray_sampler import RaySampler
        return RaySampler
    if backend == 'local':
        from sampler.local_sampler import LocalSampler
        return LocalSampler
    msg = (f'backend must be "multiprocessing", "ray" or "local", got '
           f'{backend!r}')
    raise ValueError(msg)


def checked_env_fns(env_fns, on_worker_error):
    """``env_fns`` as a list, and ``on_worker_error``, checked for a vector
    env before it starts any worker."""
    env_fns = list(env_fns)
    if not env_fns:
        raise ValueError('env_fns must hold at least one env constructor')
    if on_worker_error not in ('raise', 'restart'):
        msg = (f'on_worker_error must be "raise" or "restart", got '
               f'{on_worker_error!r}')
        raise ValueError(msg)
    return env_fns


def shares(n_envs, n_workers):
    """``(first env, number of envs)`` of each worker: ``n_envs`` envs
    spread over ``n_workers`` as evenly as they go, in order."""
    out, first = [], 0
    for k in range(n_workers):
        size = n_envs // n_workers + (k < n_envs % n_workers)
        out.append((first, size))
        first += size
    return out


class EnvWorkers:
    """The workers of a vector env, and the one call to them that may be
    pending; what ``AsyncVectorEnv`` and ``SubprocVecEnv`` share.

    ``env_fns`` are spread over ``n_workers`` workers of a backend
    (``shares``), each an ``EnvStepWorker`` in ``autoreset_mode``. Calls
    go out as commands (worker number -> command, :meth:`send`) and their
    results come back per worker (:meth:`wait`). An env's error raises
    here as a :class:`~sampler.WorkerError` that is also an instance of
    its built-in exception type (see :func:`_as_env_error`).
    """

    def __init__(self, env_fns, *, n_workers, backend, autoreset_mode,
                 start_method, backend_options, merge_infos=False,
                 worker_class=EnvStepWorker):
        self.n_envs = len(env_fns)
        if n_workers is None:
            n_workers = min(available_cpus(), self.n_envs)
        if not isinstance(n_workers, numbers.Integral) or \
                isinstance(n_workers, bool) or \
                not 1 <= n_workers <= self.n_envs:
            msg = (f'n_workers must be an int from 1 to num_envs='
                   f'{self.n_envs}, got {n_workers!r}')
            raise ValueError(msg)
        self.shares = shares(self.n_envs, int(n_workers))
        #: per env, the worker that holds it
        self.worker_of = [k for k, (_, n) in enumerate(self.shares)
                          for _ in range(n)]
        options = dict(backend_options)
        if start_method is not None:
            if backend != 'multiprocessing':
                msg = (f'a start method ({start_method!r}) is for the '
                       f'"multiprocessing" backend; backend={backend!r} '
                       f'starts its workers its own way')
                raise ValueError(msg)
            options['start_method'] = start_method
        options.setdefault('progress', False)
        cls = _backend_class(backend)
        self.sampler = cls(
            NoPolicy(), [EnvFns(env_fns[a:a + n], a) for a, n in self.shares],
            n_workers=int(n_workers), worker_class=worker_class,
            worker_args={'autoreset_mode': autoreset_mode,
                         'merge_infos': merge_infos}, seed=0,
            **options)
        self.pending = None  # what the pending call is, if one is
        self._waiting, self._results = None, []
        self._sent = {}  # worker number -> the last command sent to it
        #: workers replaced during the pending step: their result is that
        #: of the reset of their envs (ResetEnvs), not of the step
        self.restarted = set()
        #: called with a replaced worker's number before its envs are
        #: reset: its rows in shared memory are about to be overwritten
        self.before_restart = None
        #: the envs' observations in shared memory (share_observations)
        self.shared_rows = None
        self.views = None  # per worker, its rows of shared_rows
        self._arena = None
        try:
            #: per env, its observation space and its action space
            self.observation_spaces = self._read_spaces('observation_space')
            self.action_spaces = self._read_spaces('action_space')
        except BaseException:
            self.close()
            raise

    def _read_spaces(self, name):
        return self.rows(self.run(f'reading the envs\' {name}',
                                  self.per_worker(lambda k, a, n: CallEnvs(
                                      name, how='get'))))

    def share_observations(self, space):
        """Have the workers write their envs' observations (of ``space``,
        every env's) into shared memory, where the backend can: from then
        on a result's observations are the worker's rows of
        :attr:`shared_rows` (:attr:`views`), overwritten by its next
        reset or step. A frame is then copied once on its way, and a
        step's message stays small."""
        if type(space) not in STACKING_SPACES or \
                not hasattr(os, 'memfd_create'):  # Linux only
            return
        arena = Arena(1, self.n_envs, space.shape, space.dtype)
        slots = [ArenaSlot(a, n, arena.shape, arena.dtype.str)
                 for a, n in self.shares]
        if not self.sampler._envs_share_rows(arena, slots):
            arena.close()
            return
        self._arena, self.shared_rows = arena, arena.rows
        self.views = [arena.rows[a:a + n] for a, n in self.shares]

    def check_same(self, name, fix=''):
        """Raise a RuntimeError (gymnasium's vector envs' error) naming the
        first env whose ``name`` space differs from env 0's."""
        values = getattr(self, f'{name}s')
        for i, value in enumerate(values):
            if value != values[0]:
                msg = (f'env {i} has the {name} {value}, but env 0 has '
                       f'{values[0]}: the sub-environments {name}s are not '
                       f'equivalent.{fix}')
                raise RuntimeError(msg)

    def per_worker(self, make):
        """Commands: ``make(k, first, n)`` for each worker ``k`` holding
        envs ``first .. first + n - 1`` (a worker whose command is None is
        left out)."""
        out = {}
        for k, (a, n) in enumerate(self.shares):
            command = make(k, a, n)
            if command is not None:
                out[k] = command
        return out

    def split(self, indices):
        """The vector env's env ``indices`` as worker number -> that
        worker's own env indices, in the order given."""
        out = {}
        for i in indices:
            k = self.worker_of[i]
            out.setdefault(k, []).append(i - self.shares[k][0])
        return out

    def join(self, indices, results):
        """Per env of ``indices``, its value in ``results`` (worker number
        -> one value per env of its part of :meth:`split`)."""
        rows = {k: iter(values) for k, values in results.items()}
        return [next(rows[self.worker_of[i]]) for i in indices]

    def rows(self, results):
        """Per worker results holding one value per env, in env order."""
        return [value for k in range(len(self.shares))
                for value in results[k]]

    def send(self, what, commands):
        """Send ``commands`` for the call ``what``, which is then pending:
        worker number -> command, or ``(worker number, command)`` pairs
        where a worker gets several (it answers them in order)."""
        pairs = list(commands.items()) if isinstance(commands, dict) \
            else list(commands)
        sampler = self.sampler
        # Sending reads nothing: no Ctrl-C guard for reads to set up.
        with sampler._one_call(f'{what}()', reads=False):
            sent = sampler._envs_send(pairs)
        if what == 'recv' and self.pending == 'recv':
            for k, queue in sent.items():  # more envs in flight
                self._waiting.setdefault(k, []).extend(queue)
        else:
            self._waiting, self._results = sent, []
        self._sent.update(pairs)
        self.pending = what

    def wait(self, timeout=None, enough=None):
        """The pending call's results, worker number -> result (one
        command per worker), or None if ``timeout`` seconds ran out first
        (it stays pending). Given ``enough`` (the call ``'recv'``):
        ``(worker number, command, result)`` in the order they came, as
        soon as ``enough`` of them holds true; what is still in flight
        stays pending. Raises an env's error (see the class), or the
        backend's if the workers are gone; either ends the call."""
        sampler = self.sampler
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with sampler._one_call(f'{self.pending}_wait()'):
                done = sampler._envs_wait(self._waiting, self._results,
                                          deadline, enough)
                while done and any(r is RESTARTED
                                   for _, _, r in self._results):
                    self._resend(sampler)
                    done = sampler._envs_wait(self._waiting, self._results,
                                              deadline, enough)
        except WorkerError as err:
            self.pending = None
            if isinstance(err, WorkerHungError) and \
                    err.env_index is not None:
                # Named by the vector env's index of the env.
                err.env_name = \
                    f'env {self.shares[err.worker_number][0] + err.env_index}'
                err.name_call(None)
            raise _as_env_error(err) from err.__cause__
        except SamplerError:
            self.pending = None  # the workers are gone
            raise
        # Anything else (Ctrl-C) leaves the call pending, as a timeout
        # does: its replies are still coming, and must not be taken for
        # the next call's.
        if not done:
            return None
        results, self._results = self._results, []
        if self.views is not None:
            results = [(k, command, self._in_rows(k, result))
                       for k, command, result in results]
        self.pending = 'recv' if enough is not None and self._waiting \
            else None
        if enough is not None:
            return results
        return {k: result for k, _, result in results}

    def _in_rows(self, k, result):
        """``result`` of worker ``k`` with the observations it wrote into
        its shared rows in place of their InSharedRows."""
        if type(result) is tuple and result and \
                type(result[0]) is InSharedRows:
            indices = result[0].indices
            rows = self.views[k] if indices is None else \
                self.views[k][indices]
            return (rows,) + result[1:]
        return result

    def _resend(self, sampler):
        """Send each replaced worker what it had not answered again; a
        step cannot be redone by envs built anew, which are reset instead
        (all of the worker's: :attr:`restarted`)."""
        again = []
        for entry in [e for e in self._results if e[2] is RESTARTED]:
            self._results.remove(entry)
            k, lost, _ = entry
            if self.before_restart is not None:
                self.before_restart(k)
            lost = lost or [self._sent[k]]
            if any(type(command) is StepEnvs for command in lost):
                lost = [ResetEnvs()]
                self.restarted.add(k)
            again += [(k, command) for command in lost]
        self._sent.update(again)
        for k, queue in sampler._envs_send(again).items():
            self._waiting.setdefault(k, []).extend(queue)

    def in_flight(self):
        """The workers whose replies to the pending call have not all
        come."""
        return list(self._waiting or ()) if self.pending else []

    def run(self, what, commands):
        """Send ``commands`` and wait for their results."""
        self.send(what, commands)
        return self.wait()

    def close(self):
        """End the workers, within the backend's ``shutdown_timeout``."""
        sampler, self.sampler = self.sampler, None
        self.pending = None
        if sampler is not None:
            sampler.close()
        arena, self._arena = self._arena, None
        if arena is not None:
            arena.close()  # its memory lives on in the arrays over it


class AsyncVectorEnv(VectorEnv):
    """A vector env whose envs step in our workers; a drop-in for
    gymnasium's ``AsyncVectorEnv``.

    Args:
        env_fns: zero-argument callables, each returning a
            ``gymnasium.Env``.
        shared_memory: the workers write the observations into shared
            memory (True, where they are arrays: Box, Discrete,
            MultiDiscrete or MultiBinary observations, worker processes
            of the multiprocessing backend, on Linux) or send them in
            their replies (False).
        copy: return a copy of the observations (True), or the vector
            env's own array, valid until the next reset or step (False;
            with shared memory, the very rows the workers write).
        context: the start method of the worker processes (the
            multiprocessing backend's ``start_method``).
        daemon: accepted for gymnasium's signature; our workers end with
            the process that made them whatever it says.
        observation_mode: ``"same"`` (the envs' observation spaces are
            equal), ``"different"`` (they differ, but batch as gymnasium's
            ``batch_differing_spaces`` batches them), or
            ``(observation_space, single_observation_space)``.
        autoreset_mode: a ``gymnasium.vector.AutoresetMode`` or its value.
        worker: gymnasium's custom worker function; refused (our workers
            step the envs).
        n_workers: how many worker processes the envs are spread over
            (default: the CPUs this process may use, at most one per
            env).
        backend: ``"multiprocessing"`` (default), ``"ray"`` (envs on other
            machines) or ``"local"`` (in this process, for debugging).
        on_worker_error: ``"raise"`` (a worker that dies raises
            :class:`~sampler.WorkerCrashedError`) or ``"restart"``: it is
            replaced (at most ``max_restarts`` times), its envs built anew
            and reset, and the step comes back for them truncated, with
            the reset's observations, reward 0 and
            ``infos["worker_restarted"]`` True (in same_step mode
            ``final_obs`` is their last observation before it). An env
            that raises still raises: only a dead or hung worker is
            replaced.
        step_timeout: seconds one env call (a step, a reset) may take;
            a worker whose call runs longer is killed and raises
            :class:`~sampler.WorkerHungError` (naming the env and the
            call, with the worker's stack where it hung), or with
            ``"restart"`` is replaced as a dead one is. Default None: no
            limit.
        batch_size: how many envs :meth:`recv` returns (default all).
            Where it is less than all, a divisor of the envs each worker
            holds (each worker then steps the envs it is sent in groups
            of ``batch_size``, one after the other, replying per group),
            or a multiple of them (workers holding as many envs each).
        startup_timeout, shutdown_timeout, pin_workers, max_restarts: as
            the backend's options.

    Raises, where gymnasium raises them: ``AlreadyPendingCallError``,
    ``NoAsyncCallError``, ``ClosedEnvironmentError``,
    ``multiprocessing.TimeoutError`` (a call whose ``timeout`` runs out
    stays pending: wait for it again, or close). An env that raises in a
    worker raises here as a :class:`~sampler.WorkerError` that is also an
    instance of the env's exception type where that is a built-in one
    (``except ValueError`` catches an env's ``ValueError``), naming the
    env, the worker and the call, with the worker's traceback as its
    cause. A worker that dies raises :class:`~sampler.WorkerCrashedError`.
    """

    def __init__(self, env_fns, shared_memory=True, copy=True, context=None,
                 daemon=True, observation_mode='same',
                 autoreset_mode=AutoresetMode.NEXT_STEP, worker=None, *,
                 n_workers=None, backend='multiprocessing',
                 on_worker_error='raise', batch_size=None,
                 **backend_options):
        self._workers = None
        # Results received that recv() has not returned: (worker, its
        # envs' indices or None for all, result).
        self._ready = []
        self.closed = False
        env_fns = checked_env_fns(env_fns, on_worker_error)
        if worker is not None:
            msg = (f'worker={worker!r}: AsyncVectorEnv steps the envs in its '
                   f'own workers and takes no custom worker function; leave '
                   f'worker out (or use gymnasium.vector.AsyncVectorEnv for '
                   f'one)')
            raise ValueError(msg)
        self.env_fns = env_fns
        self.num_envs = len(env_fns)
        self.shared_memory = shared_memory
        self.copy = copy
        self.context = context
        self.daemon = daemon
        self.observation_mode = observation_mode
        self.autoreset_mode = as_autoreset_mode(autoreset_mode)
        custom = isinstance(observation_mode, tuple)
        if custom and not (len(observation_mode) == 2 and all(
                isinstance(s, Space) for s in observation_mode)):
            msg = (f'observation_mode as a tuple must be (observation_space, '
                   f'single_observation_space), got {observation_mode!r}')
            raise TypeError(msg)
        if not custom and observation_mode not in ('same', 'different'):
            msg = (f'observation_mode must be "same", "different" or '
                   f'(observation_space, single_observation_space), got '
                   f'{observation_mode!r}')
            raise ValueError(msg)
        self._workers = workers = EnvWorkers(
            env_fns, n_workers=n_workers, backend=backend,
            autoreset_mode=self.autoreset_mode,
            start_method=context if backend == 'multiprocessing' else None,
            backend_options=dict(backend_options,
                                 on_worker_error=on_worker_error),
            merge_infos=True)
        try:
            self._shares = workers.shares
            self.batch_size = self._check_batch_size(batch_size)
            self._set_spaces(workers)
            if shared_memory and observation_mode == 'same':
                workers.share_observations(self.single_observation_space)
                workers.before_restart = self._keep_block
            self._read_metadata()
        except BaseException:
            self.close()
            raise
        self._nothing_in_flight()

    def _set_spaces(self, workers):
        mode, n_envs = self.observation_mode, self.num_envs
        workers.check_same('action_space')
        self.single_action_space = workers.action_spaces[0]
        self.action_space = batch_space(self.single_action_space, n_envs)
        if isinstance(mode, tuple):
            self.observation_space, self.single_observation_space = mode
        elif mode == 'same':
            workers.check_same('observation_space', fix=(
                " If this is intentional, use observation_mode='different' "
                "instead."))
            self.single_observation_space = workers.observation_spaces[0]
            self.observation_space = batch_space(
                self.single_observation_space, n_envs)
        else:
            self.single_observation_space = workers.observation_spaces[0]
            self.observation_space = batch_differing_spaces(
                workers.observation_spaces)

    def _read_metadata(self):
        """``metadata`` (with the autoreset mode) and ``render_mode``, the
        first env's."""
        self.metadata = dict(self._first_env('metadata'))
        self.metadata['autoreset_mode'] = self.autoreset_mode
        self.render_mode = self._first_env('render_mode')

    def _nothing_in_flight(self):
        """The stepping state of a vector env that has not been reset."""
        self.observations = None
        # Per worker, its envs' observations: one array (the worker
        # stacked them) or a list of one per env.
        self._blocks = [None] * len(self._workers.shares)
        self._ended = np.zeros(self.num_envs, dtype=bool)
        self._busy = np.zeros(self.num_envs, dtype=bool)  # sent, not recv'd
        self._reset_mask_sent = None

    def _first_env(self, name):
        return self._workers.run('reading the env metadata', {0: CallEnvs(
            name, how='get', indices=[0])})[0][0]

    # gymnasium's calls ---------------------------------------------------

    def reset(self, *, seed=None, options=None):
        self.reset_async(seed=seed, options=options)
        return self.reset_wait()

    def reset_async(self, seed=None, options=None):
        self._assert_is_running()
        if seed is None:
            seed = [None] * self.num_envs
        elif isinstance(seed, numbers.Integral) and \
                not isinstance(seed, bool):
            seed = [int(seed) + i for i in range(self.num_envs)]
        seed = list(seed)
        if len(seed) != self.num_envs:
            msg = (f'If seeds are passed as a list the length must match '
                   f'num_envs={self.num_envs} but got length={len(seed)}.')
            raise ValueError(msg)
        self._assert_no_call('reset_async')
        mask = None
        if options is not None and 'reset_mask' in options:
            mask = self._reset_mask(options.pop('reset_mask'))

        def command(k, a, n):
            part = None if mask is None else mask[a:a + n].tolist()
            if part is not None and not any(part):
                return None  # none of its envs reset
            return ResetEnvs(seed[a:a + n], options, part)

        self._workers.send('reset', self._workers.per_worker(command))
        self._reset_mask_sent = mask

    def _reset_mask(self, mask):
        if not isinstance(mask, np.ndarray):
            msg = (f"`options['reset_mask']` must be a numpy array, got "
                   f"{type(mask)}")
            raise TypeError(msg)
        if mask.shape != (self.num_envs,):
            msg = (f"`options['reset_mask']` must have shape "
                   f"`({self.num_envs},)`, got {mask.shape}")
            raise ValueError(msg)
        if mask.dtype != np.bool_:
            msg = (f"`options['reset_mask']` must have `dtype=np.bool_`, "
                   f"got {mask.dtype}")
            raise TypeError(msg)
        if not mask.any():
            msg = (f"`options['reset_mask']` must contain a boolean array "
                   f"with at least one True value, got reset_mask={mask}")
            raise ValueError(msg)
        return mask.copy()

    def reset_wait(self, timeout=None):
        results = self._wait('reset', timeout)
        mask = self._reset_mask_sent
        blocks = []
        for k, (observations, infos) in sorted(results.items()):
            # The envs not reset keep their observations in the block.
            self._blocks[k] = observations
            blocks.append((*self._shares[k], infos))
        if mask is None:
            self._ended[:] = False
        else:
            self._ended[mask] = False
        return self._observations(), merge_info_blocks(self.num_envs,
                                                       blocks)

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions):
        rows = self._action_rows(actions)
        if self.autoreset_mode is AutoresetMode.DISABLED and \
                self._ended.any():
            ended = np.flatnonzero(self._ended).tolist()
            msg = (f'envs {ended} ended their episodes at the last step and '
                   f'autoreset_mode is DISABLED: reset them first, with '
                   f'reset(options={{"reset_mask": mask}})')
            raise ValueError(msg)
        self._workers.send('step', self._workers.per_worker(
            lambda k, a, n: StepEnvs(rows[a:a + n])))

    def step_wait(self, timeout=None):
        results = self._replaced(self._wait('step', timeout))
        n_envs = self.num_envs
        rewards = np.empty(n_envs, dtype=np.float64)
        terminated = np.empty(n_envs, dtype=np.bool_)
        truncated = np.empty(n_envs, dtype=np.bool_)
        blocks = []
        for k, (a, n) in enumerate(self._shares):
            observations, rs, terms, truncs, infos, _ = results[k]
            self._blocks[k] = observations
            rewards[a:a + n] = rs
            terminated[a:a + n] = terms
            truncated[a:a + n] = truncs
            blocks.append((a, n, infos))
        self._ended = terminated | truncated
        return (self._observations(), rewards, terminated, truncated,
                merge_info_blocks(n_envs, blocks))

    def _action_rows(self, actions, what='envs'):
        """For a step: the checks of the call, and ``actions`` as one row
        per env."""
        self._assert_is_running()
        self._assert_no_call('step_async')
        if type(actions) is np.ndarray and \
                type(self.action_space) in _ARRAY_SPACES:
            rows = actions  # its rows are what iterate() would give
        else:
            rows = list(iterate(self.action_space, actions))
        if len(rows) != self.num_envs:
            msg = (f'step_async got actions for {len(rows)} {what}; this '
                   f'vector env has num_envs={self.num_envs}')
            raise ValueError(msg)
        return rows

    def call(self, name, *args, **kwargs):
        self.call_async(name, *args, **kwargs)
        return self.call_wait()

    def call_async(self, name, *args, **kwargs):
        self._assert_is_running()
        self._assert_no_call('call_async')
        self._workers.send('call', self._workers.per_worker(
            lambda k, a, n: CallEnvs(name, args, kwargs)))

    def call_wait(self, timeout=None):
        return tuple(self._workers.rows(self._wait('call', timeout)))

    def get_attr(self, name):
        return self.call(name)

    def set_attr(self, name, values):
        self._assert_is_running()
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            msg = (f'Values must be a list or tuple with length equal to the '
                   f'number of environments. Got `{len(values)}` values for '
                   f'{self.num_envs} environments.')
            raise ValueError(msg)
        self._assert_no_call('set_attr')
        self._workers.send('set_attr', self._workers.per_worker(
            lambda k, a, n: SetEnvAttrs(name, list(values[a:a + n]))))
        self._wait('set_attr', None)

    def render(self):
        return self.call('render')

    # Asynchronous batches, as envpool's ------------------------------------

    def send(self, actions, env_ids=None):
        """Step the envs ``env_ids`` (default all) with ``actions`` (one
        per id, in that order) without waiting: their results come from
        :meth:`recv`, so that the learner computes the next actions of
        some envs while others step. Each worker steps its envs among
        them in groups of ``batch_size`` (or all of its envs, where
        ``batch_size`` is not less than a worker's envs), in the order
        given: send a whole number of groups of each worker's envs."""
        self._assert_is_running()
        pending = self._workers.pending
        if pending not in (None, 'recv'):
            msg = (f'Calling `send` while waiting for a pending call to '
                   f'`{pending}` to complete')
            raise AlreadyPendingCallError(msg, pending)
        ids = np.arange(self.num_envs) if env_ids is None else \
            np.asarray(env_ids).reshape(-1)
        if ids.dtype.kind not in 'iu' or len(set(ids.tolist())) != len(ids) \
                or (len(ids) and not 0 <= ids.min() <= ids.max()
                    < self.num_envs):
            msg = (f'env_ids must be distinct env indices from 0 to '
                   f'{self.num_envs - 1}, got {env_ids!r}')
            raise ValueError(msg)
        if len(actions) != len(ids):
            msg = (f'send got {len(actions)} actions for {len(ids)} '
                   f'env_ids')
            raise ValueError(msg)
        busy = ids[self._busy[ids]]
        if len(busy):
            msg = (f'envs {busy.tolist()} are still stepping (sent and not '
                   f'yet returned by recv())')
            raise AlreadyPendingCallError(msg, 'recv')
        if self.autoreset_mode is AutoresetMode.DISABLED:
            ended = ids[self._ended[ids]]
            if len(ended):
                msg = (f'envs {ended.tolist()} ended their episodes and '
                       f'autoreset_mode is DISABLED: reset them first')
                raise ValueError(msg)
        commands = self._groups(ids)
        if type(actions) is np.ndarray and \
                type(self.action_space) in _ARRAY_SPACES:
            rows = actions
        else:
            rows = list(iterate(batch_space(self.single_action_space,
                                            len(ids)), actions))
        self._workers.send('recv', [
            (k, StepEnvs(rows[positions] if type(rows) is np.ndarray else
                         [rows[p] for p in positions], indices))
            for k, positions, indices in commands])
        self._busy[ids] = True

    def _groups(self, ids):
        """The groups the envs ``ids`` step in: ``(worker, positions in
        ids, the worker's own indices of them or None for all its envs in
        order)``, or a ValueError for ids that do not make whole
        groups."""
        positions = {}
        for p, i in enumerate(ids.tolist()):
            positions.setdefault(self._workers.worker_of[i], []).append(p)
        out = []
        for k, held in sorted(positions.items()):
            a, n = self._shares[k]
            size = self._group or n
            if len(held) % size:
                msg = (f'env_ids hold {len(held)} of the envs {a}..'
                       f'{a + n - 1}, which one worker steps in groups of '
                       f'{size} (batch_size={self.batch_size}): send a '
                       f'whole number of groups of them')
                raise ValueError(msg)
            for g in range(0, len(held), size):
                part = held[g:g + size]
                indices = [int(ids[p]) - a for p in part]
                if indices == list(range(n)):
                    indices = None  # all of them, in order
                out.append((k, part, indices))
        return out

    def recv(self, timeout=None):
        """The results of the first ``batch_size`` envs whose steps (from
        :meth:`send`) are done: ``(observations, rewards, terminated,
        truncated, infos)`` as :meth:`step` returns them, over those envs,
        with ``infos["env_id"]`` their indices (in the order of the rows)."""
        self._assert_is_running()
        size = self.batch_size
        have = sum(self._count(k, idx) for k, idx, _ in self._ready)
        if have < size:
            if self._workers.pending != 'recv':
                msg = ('Calling `recv` without envs sent to step: call '
                       '`send` first')
                raise NoAsyncCallError(msg, 'recv')
            try:
                results = self._workers.wait(
                    timeout, enough=lambda r: have + sum(
                        self._count(k, getattr(c, 'indices', None))
                        for k, c, _ in r) >= size)
            except BaseException:
                if self._workers.pending is None:  # the call ended
                    self._busy[:] = False  # what was in flight is lost
                    for k, idx, _ in self._ready:
                        self._busy[self._ids(k, idx)] = True
                raise
            if results is None:
                msg = (f'The call to `recv` has timed out after {timeout} '
                       f'second(s); the envs still step: call recv again, '
                       f'or close the vector env.')
                raise multiprocessing.TimeoutError(msg)
            for k, command, result in results:
                self._add_ready(k, command, result)
            have = sum(self._count(k, idx) for k, idx, _ in self._ready)
            if have < size:
                msg = (f'recv returns batch_size={size} envs, but only '
                       f'{have} were sent to step: send(actions, env_ids) '
                       f'for more first')
                raise ValueError(msg)
        taken, count = [], 0
        while count < size:
            taken.append(self._ready.pop(0))
            count += self._count(taken[-1][0], taken[-1][1])
        return self._batch_of(taken)

    def _count(self, k, indices):
        return self._shares[k][1] if indices is None else len(indices)

    def _ids(self, k, indices):
        """The vector env's indices of worker ``k``'s envs ``indices``."""
        a, n = self._shares[k]
        return np.arange(a, a + n) if indices is None else \
            a + np.asarray(indices, dtype=np.int64)

    def _add_ready(self, k, command, result):
        """Keep one result for recv; a replaced worker's (the reset of
        all its envs) stands for all of them, in groups, in place of what
        was kept of theirs."""
        if k not in self._workers.restarted:
            self._ready.append((k, command.indices, result))
            return
        result = self._replaced({k: result})[k]
        self._ready = [entry for entry in self._ready if entry[0] != k]
        n = self._shares[k][1]
        size = self._group or n
        for g in range(0, n, size):
            part = list(range(g, g + size))
            self._ready.append((k, None if size == n else part,
                                _rows_of(result, part)))
        self._busy[self._ids(k, None)] = True

    def _replaced(self, results):
        """``results`` of a step, where a worker that died and was
        replaced has the result of its envs' reset instead: as a step
        that truncated their episodes (see ``on_worker_error``)."""
        for k in self._workers.restarted & set(results):
            self._workers.restarted.discard(k)
            a, n = self._shares[k]
            observations, infos = results[k]
            merger = InfoMerger(n)
            if self.autoreset_mode is AutoresetMode.SAME_STEP:
                last = self._blocks[k]
                for j in range(n):
                    # A row of ours is overwritten later: the env's own
                    # array is what gymnasium hands out.
                    final = last[j].copy() if type(last[j]) is np.ndarray \
                        else last[j]
                    infos = merger._add_info(
                        infos, {'final_obs': final, 'final_info': {}}, j)
            for j in range(n):
                infos = merger._add_info(infos, {'worker_restarted': True}, j)
            results[k] = (observations, np.zeros(n), np.zeros(n, np.bool_),
                          np.ones(n, np.bool_), infos, None)
        return results

    def _batch_of(self, taken):
        """The rows of the results ``taken`` (``(worker, its envs'
        indices or None for all, result)``) as one batch."""
        blocks, ids, info_blocks, position = [], [], [], 0
        rewards, terminated, truncated = [], [], []
        for k, indices, (observations, rs, terms, truncs, infos, _) in taken:
            env_ids = self._ids(k, indices)
            self._keep_rows(k, indices, observations)
            self._ended[env_ids] = terms | truncs
            self._busy[env_ids] = False
            blocks.append(observations)
            rewards.append(rs)
            terminated.append(terms)
            truncated.append(truncs)
            ids.append(env_ids)
            info_blocks.append((position, len(env_ids), infos))
            position += len(env_ids)
        if all(type(b) is np.ndarray for b in blocks):
            observations = np.concatenate(blocks)
        else:
            space = self.single_observation_space
            observations = concatenate(
                space, [row for block in blocks for row in block],
                create_empty_array(space, position))
        infos = merge_info_blocks(position, info_blocks)
        infos['env_id'] = np.concatenate(ids).astype(np.int32)
        return (observations, np.concatenate(rewards),
                np.concatenate(terminated), np.concatenate(truncated), infos)

    def _keep_rows(self, k, indices, observations):
        """Keep worker ``k``'s envs' last observations (a restart needs
        them for ``final_obs``): those of its envs at ``indices``."""
        if indices is None:
            self._blocks[k] = observations
            return
        block = self._blocks[k]
        views = self._workers.views
        if views is not None and block is views[k]:
            return  # the worker wrote them into its rows
        if type(block) is np.ndarray and type(observations) is np.ndarray:
            if not block.flags.writeable:
                block = self._blocks[k] = block.copy()
            block[indices] = observations
        else:
            block = self._blocks[k] = list(block)
            for j, row in zip(indices, observations):
                block[j] = row

    def _check_batch_size(self, batch_size):
        """``batch_size`` checked; sets the size of the groups workers step
        their envs in for recv (None: each worker's envs together)."""
        n_envs = self.num_envs
        self._group = None
        if batch_size is None:
            return n_envs
        sizes = [n for _, n in self._shares]
        if not isinstance(batch_size, numbers.Integral) or \
                isinstance(batch_size, bool) or \
                not 1 <= batch_size <= n_envs:
            msg = (f'batch_size must be an int from 1 to num_envs={n_envs}, '
                   f'got {batch_size!r}')
            raise ValueError(msg)
        batch_size = int(batch_size)
        if batch_size == n_envs or (len(set(sizes)) == 1 and
                                    batch_size % sizes[0] == 0):
            return batch_size  # whole workers' envs
        if all(n % batch_size == 0 for n in sizes) and \
                batch_size < min(sizes):
            self._group = batch_size
            return batch_size
        msg = (f'batch_size={batch_size}: recv returns whole groups of '
               f'envs that one worker steps together, and the '
               f'{len(self._shares)} workers hold {sizes} envs; give a '
               f'divisor of the envs each worker holds, or a multiple of '
               f'them (with num_envs a multiple of n_workers)')
        raise ValueError(msg)

    def close_extras(self, timeout=None, terminate=False):
        """End the workers. A call still pending is not waited for (its
        results would be thrown away): the workers are told to leave, and
        those that do not within the backend's ``shutdown_timeout`` are
        killed, so ``close`` is bounded whatever the envs do. ``timeout``
        and ``terminate`` are accepted for gymnasium's signature."""
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.close()

    def __del__(self):
        if not getattr(self, 'closed', True) and \
                getattr(self, '_workers', None) is not None:
            self.close(terminate=True)

    # The state of calls, as gymnasium's errors say it --------------------

    def _assert_is_running(self):
        if self.closed:
            msg = (f'Trying to operate on `{type(self).__name__}`, after a '
                   f'call to `close()`.')
            raise ClosedEnvironmentError(msg)

    def _assert_no_call(self, what):
        pending = self._workers.pending
        if pending is None and self._ready:
            pending = 'recv'  # results received that recv has not returned
        if pending is not None:
            msg = (f'Calling `{what}` while waiting for a pending call to '
                   f'`{pending}` to complete')
            raise AlreadyPendingCallError(msg, pending)

    def _wait(self, what, timeout):
        """The results of the pending call ``what`` (worker number ->
        result)."""
        self._assert_is_running()
        if self._workers.pending != what:
            msg = (f'Calling `{what}_wait` without any prior call to '
                   f'`{what}_async`.')
            raise NoAsyncCallError(msg, what)
        results = self._workers.wait(timeout)
        if results is None:
            msg = (f'The call to `{what}_wait` has timed out after '
                   f'{timeout} second(s); it is still pending: wait for it '
                   f'again, or close the vector env.')
            raise multiprocessing.TimeoutError(msg)
        return results

    def _keep_block(self, k):
        """Worker ``k`` was replaced: its rows are about to take its
        envs' reset, so keep a copy of their last observations."""
        if type(self._blocks[k]) is np.ndarray:
            self._blocks[k] = self._blocks[k].copy()

    def _observations(self):
        blocks, shared = self._blocks, self._workers.shared_rows
        if shared is not None and all(
                b is v for b, v in zip(blocks, self._workers.views)):
            self.observations = shared  # each worker wrote its rows
        elif all(type(b) is np.ndarray for b in blocks):
            if self.observations is None or self.observations is shared:
                self.observations = create_empty_array(
                    self.single_observation_space, self.num_envs)
            np.concatenate(blocks, axis=0, out=self.observations)
        else:
            rows = [row for block in blocks for row in block]
            self.observations = batch_rows(self, rows, self.observations)
        if not self.copy:
            return self.observations
        if type(self.observations) is np.ndarray:
            return self.observations.copy()
        return copy_module.deepcopy(self.observations)


def _rows_of(result, rows):
    """A step's ``result`` (merged infos) over its envs ``rows`` alone."""
    observations, rewards, terminated, truncated, infos, _ = result
    if type(observations) is np.ndarray:
        observations = observations[rows]
    else:
        observations = [observations[j] for j in rows]
    return (observations, rewards[rows], terminated[rows], truncated[rows],
            _info_rows(infos, rows), None)


def _info_rows(infos, rows):
    return {key: _info_rows(value, rows) if type(value) is dict
            else value[rows] for key, value in infos.items()}


_ENV_ERRORS = {}


def _as_env_error(err):
    """``err`` (a WorkerError) as one that is also an instance of the env's
    exception type, where that is a built-in exception class that can be
    mixed in; else ``err`` itself."""
    if isinstance(err, WorkerHungError):
        return err
    cls = getattr(builtins, err.exc_type, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or \
            issubclass(cls, WorkerError):
        return err
    mixed = _ENV_ERRORS.get(cls)
    if mixed is None:
        try:
            mixed = type(f'WorkerError[{cls.__name__}]', (WorkerError, cls),
                         {'__module__': __name__})
        except TypeError:  # a layout that cannot be mixed in
            return err
        _ENV_ERRORS[cls] = mixed
    out = mixed(err.worker_number, err.site, err.exc_type, err.exc_message,
                err.worker_traceback, err.call)
    return out


def __getattr__(name):
    # SubprocVecEnv needs stable-baselines3: imported when asked for, so
    # that this module works without it.
    if name == 'SubprocVecEnv':
        try:
            from sampler._sb3 import SubprocVecEnv
        except ImportError as err:
            if not (err.name or '').startswith('stable_baselines3'):
                raise
            msg = ('sampler.vector.SubprocVecEnv is a stable-baselines3 '
                   'VecEnv and needs it installed: pip install '
                   '"rollout-sampler[sb3]"')
            raise ImportError(msg) from err
        return SubprocVecEnv
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# PettingZoo envs' agents as a vector env: the same workers and calls.
from sampler._agent_vector import MultiAgentVectorEnv  # noqa: E402

__all__ = ['AsyncVectorEnv', 'MultiAgentVectorEnv']  # and SubprocVecEnv,
# with stable-baselines3
