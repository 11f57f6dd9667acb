"""EnvStepWorker: envs stepped for actions the caller sends, for a vector
env whose policy stays in the learner (``sampler.vector``).

A vector env spreads its envs over workers; each worker steps its share
(``EnvFns``: the constructors and the index of the first in the vector
env) exactly as gymnasium's ``SyncVectorEnv`` steps each of its envs, in
each autoreset mode, so that the caller, putting the workers' rows back
in env order, returns what ``SyncVectorEnv`` would::

    next_step  an env whose episode ended at the last step is reset at
               this one (its action ignored; reward 0, flags False, the
               reset's info)
    same_step  an env whose episode ends is reset at once; the step's
               observation and info go out as the final ones
    disabled   the caller resets envs itself (``reset_mask``); stepping an
               env whose episode ended is refused

The worker sends its envs' observations (one array where they stack),
rewards and flags, and either one info dict per env (and in same_step
mode each env's final observation and info or None), or, with
``merge_infos``, its envs' infos merged as gymnasium merges a vector
env's (``_add_info``, over its own envs), which the caller puts together
with :func:`merge_info_blocks`.
"""

import numbers
from typing import NamedTuple, Optional

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import concatenate, create_empty_array

from workers.env_update import EnvUpdate
from workers.worker import (PULSE_BEATS, PULSE_ENV, Worker, bad_step,
                            unpack_reset)


#: Observation spaces whose observations stack into one array (which a
#: worker may write into shared rows: ``share_rows``).
STACKING_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete,
                   spaces.MultiBinary)


class EnvFns(EnvUpdate):
    """The envs of one worker of a vector env: zero-argument constructors,
    the first of them env ``first_index`` of the vector env.

    It builds them anew whatever the worker had (the worker closes its old
    envs)."""

    replaces_env = True

    def __init__(self, env_fns, first_index=0):
        env_fns = list(env_fns)
        if not env_fns:
            raise ValueError('EnvFns needs at least one env constructor')
        for j, fn in enumerate(env_fns):
            if not callable(fn):
                msg = (f'env_fns[{first_index + j}] is {fn!r}; each must be '
                       f'a zero-argument callable returning a '
                       f'gymnasium.Env')
                raise TypeError(msg)
        if not isinstance(first_index, numbers.Integral) or first_index < 0:
            msg = f'first_index must be an int >= 0, got {first_index!r}'
            raise ValueError(msg)
        self.env_fns = env_fns
        self.first_index = int(first_index)

    def __len__(self):
        return len(self.env_fns)

    def __call__(self, old_envs):
        return [fn() for fn in self.env_fns]

    def __repr__(self):
        last = self.first_index + len(self.env_fns) - 1
        return f'EnvFns(envs {self.first_index}..{last})'


def as_autoreset_mode(value):
    """``value`` (an AutoresetMode or its value) as an AutoresetMode, or
    a ValueError that lists them."""
    try:
        return AutoresetMode(value)
    except ValueError:
        modes = ', '.join(repr(m.value) for m in AutoresetMode)
        msg = (f'autoreset_mode must be an AutoresetMode or one of '
               f'{modes}, got {value!r}')
        raise ValueError(msg) from None


class InSharedRows(NamedTuple):
    """Stands in for a worker's observations written into its shared rows
    (:meth:`EnvStepWorker.share_rows`, whose first is ``first_row``): the
    rows of its envs at ``indices`` (None: all of them, in order)."""

    first_row: int
    indices: Optional[list] = None


class NoPolicy:
    """The agent of an EnvStepWorker: the policy stays in the learner,
    which sends actions; one asked for actions says so."""

    def get_action(self, observation):
        msg = ('an EnvStepWorker has no policy: the learner holds it and '
               'sends the actions (step_envs)')
        raise TypeError(msg)


class EnvStepWorker(Worker):
    """Steps its envs for actions it is sent (see the module's docstring).

    Args:
        seed, max_episode_length, worker_number: as every worker's; the
            envs are seeded by :meth:`reset_envs` as the caller says, and
            their episodes end where the envs end them.
        autoreset_mode: a ``gymnasium.vector.AutoresetMode`` or its value.
        merge_infos: return the infos of its envs merged as gymnasium's
            vector envs merge them (one dict of arrays with ``_key``
            masks, over this worker's envs: :func:`merge_info_blocks` puts
            the workers' together), with rewards and flags as arrays; else
            one info dict per env, as the envs return them.

    Attributes:
        envs: its envs, in the vector env's order.
        first_index: the vector env's index of ``envs[0]``.
        error_env: after a method raised, the vector env's index of the
            env whose call raised (None if none did).
    """

    def __init__(self, *, seed, max_episode_length, worker_number,
                 autoreset_mode=AutoresetMode.NEXT_STEP, merge_infos=False):
        super().__init__(seed=seed, max_episode_length=max_episode_length,
                         worker_number=worker_number)
        self.autoreset_mode = as_autoreset_mode(autoreset_mode)
        self.merge_infos = bool(merge_infos)
        self.envs = []
        self.first_index = 0
        self.error_env = None
        self._ended = []  # per env: its episode ended at its last step
        self._stacks = False
        self._observations = []  # per env: its last observation
        self._shared = None  # rows in shared memory (see share_rows)

    @property
    def n_envs(self):
        return len(self.envs)

    @property
    def env_spaces(self):
        # The envs of a vector env may differ in their observation spaces
        # (gymnasium's observation_mode="different"): the vector env reads
        # each env's spaces (call_envs) and checks them itself.
        return None, None

    @classmethod
    def check_env_update(cls, update, what='env'):
        if not isinstance(update, EnvFns):
            msg = (f'{what}: {cls.__name__} builds its envs from EnvFns '
                   f'(the env constructors of its share of a vector env), '
                   f'got {update!r}')
            raise TypeError(msg)

    def update_env(self, env_update):
        self.check_env_update(env_update, 'env_update')
        self.shutdown()
        self.first_index = env_update.first_index
        envs = []
        try:
            for j, fn in enumerate(env_update.env_fns):
                index = env_update.first_index + j
                self._at('building the env', index)
                envs.append(fn())
                self._check_built(envs[-1], index)
        except BaseException:
            for env in envs:
                close = getattr(env, 'close', None)
                if callable(close):  # what was built, even if refused
                    close()
            raise
        self.envs = envs
        self._on_built()
        self._done()

    def _check_built(self, env, index):
        """Raise if ``env``, built by ``env_fns[index]``, is not an env
        this worker steps."""
        if not isinstance(env, gymnasium.Env):
            msg = f'env_fns[{index}] returned {env!r}, not a gymnasium.Env'
            raise TypeError(msg)

    def _on_built(self):
        """The new envs are in :attr:`envs`: the state kept per env."""
        envs = self.envs
        self._stacks = type(envs[0].observation_space) in STACKING_SPACES
        self._ended = [False] * len(envs)
        self._observations = [None] * len(envs)

    def _at(self, site, index):
        # The site names the env: a sampler's error says "in env.step of
        # env 5".
        self.error_site, self.error_env = f'{site} of env {index}', index
        # A call begins: the one before it returned (see Worker.pulse).
        pulse = self.pulse
        pulse[PULSE_BEATS] += 1
        pulse[PULSE_ENV] = index - self.first_index

    def _done(self):
        self.error_site = self.error_env = None
        self.pulse[PULSE_BEATS] += 1

    # The calls -----------------------------------------------------------

    def reset_envs(self, seeds=None, options=None, mask=None):
        """Reset the envs (those ``mask`` holds True for, default all)
        with ``seeds`` (one per env, or None) and ``options`` (one dict
        for all, or a list of one per env).

        Returns ``(observations, infos)``: per env its observation (the
        reset's, or for an env not reset the one it had; one array of
        them where they stack, see :meth:`_stacked`) and its reset info
        (None for an env not reset)."""
        n = len(self.envs)
        seeds = [None] * n if seeds is None else list(seeds)
        mask = [True] * n if mask is None else [bool(m) for m in mask]
        if len(seeds) != n or len(mask) != n:
            msg = (f'reset_envs got {len(seeds)} seeds and a mask of '
                   f'{len(mask)} for {n} envs')
            raise ValueError(msg)
        if isinstance(options, list):
            if len(options) != n:
                msg = (f'reset_envs got {len(options)} options for {n} '
                       f'envs')
                raise ValueError(msg)
        else:
            options = [options] * n
        observations = list(self._observations)
        infos = [None] * n
        for j, (env, seed, reset) in enumerate(zip(self.envs, seeds, mask)):
            if reset:
                self._at('env.reset', self.first_index + j)
                observations[j], infos[j] = unpack_reset(
                    env.reset(seed=seed, options=options[j]))
                self._ended[j] = False
        self._observations = observations
        self._done()
        if self.merge_infos:
            infos = batch_infos(InfoMerger(n), infos)
        return self._stacked(observations), infos

    def step_envs(self, actions, indices=None):
        """Step every env (those at ``indices`` of this worker's, in that
        order; default all) with its action (one per env, in the same
        order), as the autoreset mode says.

        Returns ``(observations, rewards, terminated, truncated, infos,
        finals)``, one entry per env stepped (the observations one array
        where they stack); ``finals[p]`` is ``(final_obs, final_info)``
        where a same_step reset followed that env's episode's end, else
        None."""
        chosen = range(len(self.envs)) if indices is None else \
            self._indices(indices)
        n = len(chosen)
        if len(actions) != n:
            msg = f'step_envs got {len(actions)} actions for {n} envs'
            raise ValueError(msg)
        mode = self.autoreset_mode
        observations, infos = [None] * n, [None] * n
        rewards, finals = [0.0] * n, [None] * n
        terminated, truncated = [False] * n, [False] * n
        ended, last = self._ended, self._observations
        for p, (j, action) in enumerate(zip(chosen, actions)):
            env, index = self.envs[j], self.first_index + j
            if ended[j] and mode is AutoresetMode.NEXT_STEP:
                self._at('env.reset', index)
                observations[p], infos[p] = unpack_reset(env.reset())
                last[j], ended[j] = observations[p], False
                continue
            if ended[j] and mode is AutoresetMode.DISABLED:
                self._at('env.step', index)  # the caller's mistake
                msg = (f'env {index} ended its episode at the last step, '
                       f'and autoreset_mode is DISABLED: reset it first, '
                       f'with reset(options={{"reset_mask": mask}}) where '
                       f'mask[{index}] is True')
                raise ValueError(msg)
            self._at('env.step', index)
            result = env.step(action)
            self.env_steps += 1
            try:
                obs, reward, term, trunc, info = result
            except (TypeError, ValueError):
                raise bad_step(result) from None
            rewards[p], terminated[p], truncated[p] = reward, term, trunc
            if (term or trunc) and mode is AutoresetMode.SAME_STEP:
                finals[p] = (obs, info)
                self._at('env.reset', index)
                obs, info = unpack_reset(env.reset())
            else:
                ended[j] = bool(term or trunc)
            observations[p], infos[p], last[j] = obs, info, obs
        self._done()
        observations = self._stacked(observations, indices)
        if self.merge_infos:
            # Arrays pickle many times faster than lists of numpy scalars,
            # and merging here spares the caller the per-env work.
            return (observations, np.asarray(rewards, np.float64),
                    np.asarray(terminated, np.bool_),
                    np.asarray(truncated, np.bool_),
                    batch_infos(InfoMerger(n), infos, finals), None)
        return observations, rewards, terminated, truncated, infos, finals

    def share_rows(self, shared):
        """From now on write the envs' observations into ``shared.rows``
        (one row per env, in shared memory the caller reads:
        ``sampler._arena.MappedRows``) and return :class:`InSharedRows` in
        their place."""
        if not self._stacks or len(shared.rows) != len(self.envs):
            msg = (f'share_rows: {len(shared.rows)} rows for '
                   f'{len(self.envs)} envs whose observations '
                   f'{"stack" if self._stacks else "do not stack"}')
            raise ValueError(msg)
        if self._shared is not None:
            self._shared.close()
        self._shared = shared

    def _stacked(self, observations, indices=None):
        """``observations`` (of the envs at ``indices``, default all) as
        one array, where the observation space is an array space (one
        pickled array is sent faster than a list of them), or written into
        their shared rows (:class:`InSharedRows`); else, or if they do not
        stack, the list."""
        if not self._stacks:
            return observations
        try:
            if self._shared is None:
                return np.stack(observations)
            # Cast as gymnasium's concatenate casts into its batch array.
            rows = self._shared.rows
            if indices is None:
                np.stack(observations, out=rows)
            else:
                for j, obs in zip(indices, observations):
                    np.copyto(rows[j], obs, casting='same_kind')
            return InSharedRows(self._shared.first_row, indices)
        except (ValueError, TypeError):
            return observations  # the caller batches them as it can

    #: What :meth:`call_envs` does with an env's attribute ``name``
    #: (looked up through its wrappers).
    CALLS = ('call', 'method', 'get', 'has', 'is_wrapped')

    def call_envs(self, name, args=(), kwargs=None, how='call',
                  indices=None):
        """Per env (those at ``indices`` of this worker's, in that order;
        default all), its attribute ``name``, looked up through its
        wrappers, as ``how`` says:

        - ``'call'``: called with ``args`` and ``kwargs`` if callable,
          else its value (gymnasium's ``call``);
        - ``'method'``: called with ``args`` and ``kwargs``;
        - ``'get'``: its value;
        - ``'has'``: whether the env has it;
        - ``'is_wrapped'``: whether a wrapper of class ``args[0]`` is
          among the env's wrappers (``name`` unused).
        """
        if how not in self.CALLS:
            msg = f'how must be one of {self.CALLS}, got {how!r}'
            raise ValueError(msg)
        kwargs = kwargs or {}
        results = []
        for j in self._indices(indices):
            env = self.envs[j]
            self._at(f'env.{name}', self.first_index + j)
            if how == 'is_wrapped':
                results.append(_is_wrapped(env, args[0]))
                continue
            if how == 'has':
                try:
                    self._env_attr(env, name)
                except AttributeError:
                    results.append(False)
                else:
                    results.append(True)
                continue
            value = self._env_attr(env, name)
            if how == 'method' or (how == 'call' and callable(value)):
                value = value(*args, **kwargs)
            results.append(value)
        self._done()
        return results

    @staticmethod
    def _env_attr(env, name):
        """``env``'s attribute ``name``, looked up through its wrappers."""
        return env.get_wrapper_attr(name)

    def set_env_attrs(self, name, values, outer=False, indices=None):
        """Set attribute ``name`` of each env (those at ``indices``, in
        that order; default all) to its value in ``values``: through the
        wrappers (gymnasium's ``set_wrapper_attr``), or on the outermost
        wrapper itself if ``outer``."""
        indices = self._indices(indices)
        if len(values) != len(indices):
            msg = (f'set_env_attrs got {len(values)} values for '
                   f'{len(indices)} envs')
            raise ValueError(msg)
        for j, value in zip(indices, values):
            env = self.envs[j]
            self._at(f'setting env.{name}', self.first_index + j)
            if outer:
                setattr(env, name, value)
            else:
                env.set_wrapper_attr(name, value)
        self._done()

    def _indices(self, indices):
        n = len(self.envs)
        if indices is None:
            return range(n)
        indices = list(indices)
        for j in indices:
            if not isinstance(j, numbers.Integral) or not 0 <= j < n:
                msg = (f'env indices of this worker must be ints from 0 to '
                       f'{n - 1}, got {j!r}')
                raise IndexError(msg)
        return indices

    # What a sampler's rounds would ask: this worker only steps for actions
    # it is sent.

    def rollout_into(self, buffer, max_starts=None):
        msg = ('an EnvStepWorker steps envs for actions it is sent '
               '(step_envs); it samples no episodes of its own')
        raise TypeError(msg)

    def begin_steps(self, steps_per_env):
        self.rollout_into(None)

    def shutdown(self):
        envs, self.envs = self.envs, []
        for j, env in enumerate(envs):
            self._at('env.close', self.first_index + j)
            env.close()
        self._ended = []
        self._observations = []
        self._done()


class InfoMerger:
    """What gymnasium's ``VectorEnv._add_info`` needs of its vector env:
    ``num_envs``, and the method itself (it calls itself for nested
    dicts)."""

    _add_info = gymnasium.vector.VectorEnv._add_info

    def __init__(self, num_envs):
        self.num_envs = num_envs


def merge_info_blocks(num_envs, blocks):
    """The infos of a vector env of ``num_envs`` envs from its workers'
    merged ones: ``blocks`` holds ``(first env, number of envs, infos
    merged over them)`` in env order. The result is what gymnasium's
    ``_add_info`` gives for every env's info in env order: a key's array
    takes the type of its first env's value (the first block's that has
    it), later values cast into it, envs without the key keep zero (None
    in object arrays) and False in its ``_key`` mask."""
    out = {}
    for first, n, block in blocks:
        _merge_block(out, block, first, n, num_envs)
    return out


def _merge_block(out, block, first, n, num_envs):
    for key, value in block.items():
        if key.startswith('_') and key[1:] in block:
            continue  # the mask of key[1:], merged with it
        mask_key = f'_{key}'
        mask = block[mask_key]
        if type(value) is dict:
            array = _merge_block(out.get(key, {}), value, first, n, num_envs)
        else:
            array = out.get(key)
            if array is None:
                if value.dtype == object:
                    array = np.full((num_envs, *value.shape[1:]), None,
                                    dtype=object)
                else:
                    array = np.zeros((num_envs, *value.shape[1:]),
                                     dtype=value.dtype)
            array[first:first + n][mask] = value[mask]
        merged = out.get(mask_key)
        if merged is None:
            merged = np.zeros(num_envs, dtype=np.bool_)
        merged[first:first + n] |= mask
        out[key], out[mask_key] = array, merged
    return out


def _is_wrapped(env, wrapper_class):
    while isinstance(env, gymnasium.Wrapper):
        if isinstance(env, wrapper_class):
            return True
        env = env.env
    return False


def batch_rows(vector_env, observations, out=None):
    """The per-env ``observations`` (in env order) as one batch of
    ``vector_env``'s, as gymnasium's vector envs concatenate them (into
    ``out`` if given)."""
    space = vector_env.single_observation_space
    if out is None:
        out = create_empty_array(space, len(observations))
    return concatenate(space, observations, out)


def batch_infos(vector_env, infos, finals=None):
    """The per-env ``infos`` (None: the env has none this time) and
    ``finals`` (see :meth:`EnvStepWorker.step_envs`) as one dict, merged
    by ``vector_env``'s own ``_add_info`` (gymnasium's arrays with
    ``_key`` masks) in env order, a final observation and info before the
    env's info, as ``SyncVectorEnv`` merges them."""
    out = {}
    for i, info in enumerate(infos):
        if finals is not None and finals[i] is not None:
            final_obs, final_info = finals[i]
            out = vector_env._add_info(
                out, {'final_obs': final_obs, 'final_info': final_info}, i)
        if info is not None:
            out = vector_env._add_info(out, info, i)
    return out
