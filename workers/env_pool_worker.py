"""EnvPoolWorker: a pool of C++ envs (envpool) stepped as one batch.

Per step of the pool::

    observations (n_envs, ...) --agent.get_actions--> actions
        --pool.step(actions[, env_id])--> next observations, rewards,
        flags, infos (one dict of arrays), put in env order by env_id
        --> the worker's step log, and the segments whose episode ended
            (workers._batched, shared with VecWorker)

envpool itself resets an env on the step after its episode ended and
ignores that step's action: the worker counts that step as the start of
the env's next episode, not as one of its transitions, and steps that env
once more, so every env takes exactly ``n`` transitions in
``obtain_steps(n)`` as with :class:`~workers.VecWorker`. Envs whose
episode was cut by ``max_episode_length`` or abandoned, and those of a new
pool, are reset by a ``pool.reset(env_id)`` call of their own.
"""


import numpy as np

from workers import _nest
from workers._batched import BatchedEnvsWorker, BatchedStep
from workers.env_update import EnvPool
from workers.spaces import check_stackable
from workers.worker import bad_step, unpack_reset

#: envpool seeds env ``j`` of a pool with ``seed + j`` as a C++ int.
_SEED_BOUND = 2 ** 31 - 2 ** 20


class _PoolStep(BatchedStep):
    """A call of the pool's step loop, with the ids of every env (as the
    pool takes them, and as bytes to compare its order with) and the info
    keys of its last step and those kept of them."""

    info_keys = kept_keys = None

    def __init__(self, worker, buffer, n_steps, max_starts):
        super().__init__(worker, buffer, n_steps, max_starts)
        self.every_env = np.arange(worker.n_envs, dtype=np.int32)
        self.id_bytes = self.every_env.tobytes()


class EnvPoolWorker(BatchedEnvsWorker):
    """Steps a pool of ``n_envs`` envs built from an
    :class:`~workers.EnvPool` (envpool's C++ envs) with one batched
    ``get_actions`` call per step.

    It samples as :class:`~workers.VecWorker` does (whole episodes, the
    ones started first kept; or segments of exactly ``n`` steps per env),
    with the pool in place of a list of gymnasium envs: the envs' stepping
    costs C++ time alone, and a sampler with several such workers
    overlaps one worker's agent with another's envs.

    Seeding: a pool's envs are seeded when it is built, so the worker
    builds it at its first round with that round's seed (env ``j`` gets
    ``seed + j``), and builds it anew where other workers reseed their
    envs (``obtain_exact_episodes``, and a replacement for a failed
    worker) unless an episode is running. Otherwise its envs go on with
    their own generators, so the same seed and calls give the same
    batches.

    Observations must be arrays (one per env); the envs' infos are kept
    as ``env_infos`` (envpool's arrays per env, but its ``players`` entry),
    and the reset infos as ``episode_infos``.

    Args:
        seed: root seed shared by the sampler's workers.
        max_episode_length: step cap, or None for the envs' own limit.
        worker_number: this worker's index.
        n_envs: the envs of the pool.

    Example:
        >>> from workers import EnvPool, EnvPoolWorker, RandomAgent
        >>> from sampler import MultiprocessingSampler
        >>> pool = EnvPool('Pong-v5', stack_num=4, frame_skip=4)
        >>> obs_space, action_space = pool.spaces()
        >>> with MultiprocessingSampler(
        ...         RandomAgent(action_space), pool, n_workers=2,
        ...         worker_class=EnvPoolWorker,
        ...         worker_args={'n_envs': 8}) as s:  # doctest: +SKIP
        ...     batch = s.obtain_steps(128)        # 2 * 8 * 128 steps
    """

    #: envpool steps the pool in a thread of its own while this one waits.
    threads_alternate = True
    #: envpool reports a step's infos as one dict of arrays.
    _env_infos_batched = True

    def __init__(self, *, seed, max_episode_length, worker_number, n_envs=8):
        super().__init__(seed=seed, max_episode_length=max_episode_length,
                         worker_number=worker_number, n_envs=n_envs)
        self.recipe = None  # the EnvPool the pool is built from
        self.pool = None
        self._step_all = None  # actions of every env -> the pool's step
        self._spaces = None
        self._build_seed = None  # not None: (re)build with it first

    @property
    def env_spaces(self):
        """``(observation_space, action_space)`` of one env of the pool."""
        return self._spaces

    @classmethod
    def check_env_update(cls, update, what='env'):
        if not isinstance(update, EnvPool):
            msg = (f'{what}: {cls.__name__} steps a pool of envs built '
                   f'from an EnvPool (e.g. EnvPool("Pong-v5")), got '
                   f'{update!r}; step gymnasium envs with VecWorker')
            raise TypeError(msg)

    def update_env(self, env_update):
        update = self._as_env_update(env_update)
        self.check_env_update(update, 'env_update')
        self.error_site = 'env update'
        spaces = update.spaces()
        self.error_site = 'checking the env spaces'
        check_stackable(spaces[0], 'observation space')
        check_stackable(spaces[1], 'action space')
        self._close_pool()
        self.recipe, self._spaces = update, tuple(spaces)
        self.error_site = None

    def _close_pool(self):
        pool, self.pool = self.pool, None
        self.abandon_episodes()
        if pool is not None:
            self.error_site = 'env.close'
            pool.close()
            self.error_site = None

    def _on_new_round(self, env_seeds, reseed_envs):
        if self.pool is None or (reseed_envs and not self.in_progress):
            self._build_seed = env_seeds[0] % _SEED_BOUND
        else:
            self._build_seed = None

    # What the step loop (workers._batched) leaves to the worker --------
    #
    # An env whose episode ended on the pool's terms is reset by the pool
    # at its next step (which is then no transition of it, and costs
    # nothing more): _resets_itself. The others (new pools, abandoned and
    # capped episodes) are reset by a call of their own.

    def _ready_envs(self):
        self._check_ready(self.recipe)
        if self.pool is None or self._build_seed is not None:
            seed = self._build_seed
            if seed is None:  # a pool closed by shutdown, used again
                seed = self.round_seeds(self._round, 2)[1] % _SEED_BOUND
            self._close_pool()
            # error_site stays set if a call raises: it says which one did.
            self.error_site = 'building the env pool'
            self.pool = self.recipe.build(self._n_envs, seed)
            self._step_all = _direct_step(self.pool) or self.pool.step
            self._build_seed = None
            self._resets_itself = [False] * self._n_envs
            self.error_site = None

    def _call_state(self, buffer, n_steps, max_starts):
        return _PoolStep(self, buffer, n_steps, max_starts)

    def _reset_envs(self, envs):
        """Reset ``envs`` (indices) now and start their episodes: their
        rows of the observations become their first ones."""
        ids = np.asarray(envs, dtype=np.int32)
        obs, info = unpack_reset(self.pool.reset(ids))
        _check_array(obs, len(envs))
        obs, info = _in_order(ids, obs, info)
        old = self._observations
        if len(envs) == self._n_envs:
            self._observations = obs
        else:
            if old is None or old.shape[1:] != obs.shape[1:] or \
                    old.dtype != obs.dtype:
                old = np.zeros((self._n_envs,) + obs.shape[1:],
                               dtype=obs.dtype)
            self._observations = _full(old, ids, obs)
        self._start_segments(envs, _rows(info, len(envs)))

    def _observe(self, run, stepped):
        return self._observations

    def _step(self, run, stepped, sent):
        """The pool's step, its results in env order, every env's row."""
        n = self._n_envs
        if stepped is run.all_envs:
            ids = run.every_env
            result = self._step_all(sent)
        else:
            ids = np.asarray(stepped, dtype=np.int32)
            result = self.pool.step(_nest.index(sent, ids), ids)
        try:
            next_obs, rewards, terminated, truncated, infos = result
        except (TypeError, ValueError):
            raise bad_step(result) from None
        if type(next_obs) is not np.ndarray or \
                len(next_obs) != len(stepped) or \
                next_obs is self._observations:
            next_obs = _checked_copy(next_obs, len(stepped))
        order = infos.get('env_id') if type(infos) is dict else None
        if not (stepped is run.all_envs and type(order) is np.ndarray
                and order.tobytes() == run.id_bytes):
            (next_obs, rewards, terminated, truncated), infos = \
                _in_order(ids, (next_obs, rewards, terminated, truncated),
                          infos)
        if infos.keys() != run.info_keys:
            run.info_keys = infos.keys()
            run.kept_keys = list(_kept(infos, len(stepped)))
        infos = {k: infos[k] for k in run.kept_keys}
        terminated = np.asarray(terminated).tolist()
        truncated = np.asarray(truncated).tolist()
        rewards = np.asarray(rewards).tolist()
        if stepped is not run.all_envs:
            next_obs = _full(self._observations, ids, next_obs)
            infos = {k: _full(None, ids, v, n) for k, v in infos.items()}
            rewards, terminated, truncated = (
                _spread(stepped, values, n, zero)
                for values, zero in ((rewards, 0.0), (terminated, False),
                                     (truncated, False)))
        if run.resetting:
            # The pool reset these at this step: their episodes start
            # after it.
            envs = sorted(run.resetting)
            self._start_segments(
                envs, _rows(infos, n, envs), run.step + 1)
            run.started += len(envs)
            run.first_cap = None
        self.env_steps += len(stepped) - len(run.resetting)
        return next_obs, rewards, terminated, truncated, infos

    def _ended_by_env(self, i):
        self._resets_itself[i] = True

    def shutdown(self):
        self._close_pool()


#: The actions envpool's pools take, in the order its C++ side takes them.
_ACTION_KEYS = ['env_id', 'players.env_id', 'action']
#: What a step of envpool's pools returns, among others.
_STATE_KEYS = {'obs', 'reward', 'done', 'trunc', 'elapsed_step',
               'info:env_id'}


def _direct_step(pool):
    """For a pool of envpool's whose calls are the ones known here: a
    function ``actions -> (observations, rewards, terminated, truncated,
    infos)`` for a step of every env, which returns what ``pool.step``
    does (infos without ``players``) through the pool's own C++ send and
    receive, skipping envpool's Python wrapper around them (about 20 us a
    step, most of a step of cheap envs). None for any other pool (e.g.
    several players, observations that are a dict, or an envpool release
    whose calls differ): ``pool.step`` serves it.

    Actions of the pool's shape are cast to its dtype, as ``pool.step``
    casts them; others go through ``pool.step``, which refuses them."""
    try:
        send, receive = pool._send, pool._recv
        state_keys = list(pool._state_keys)
        action_keys = list(pool._spec._action_keys)
        dtype, shape = pool._spec._action_spec[-1][:2]
        players = pool.config.get('max_num_players', 1)
        env_ids = np.array(pool.all_env_ids, dtype=np.int32)
        shape = (len(env_ids),) + tuple(shape[1:])
        dtype = np.dtype(dtype)
    except Exception:
        return None
    if action_keys != _ACTION_KEYS or players != 1 or \
            not _STATE_KEYS.issubset(state_keys) or \
            len(set(state_keys)) != len(state_keys) or \
            any(k.startswith('obs:') for k in state_keys):
        return None
    at = {k: j for j, k in enumerate(state_keys)}
    obs, reward, done, trunc = (at[k] for k in ('obs', 'reward', 'done',
                                                'trunc'))
    # envpool's infos, in its order: its 'info:' entries (those inside
    # 'players' left out, as EnvPoolWorker leaves them), then elapsed_step.
    infos = [(k[len('info:'):], j) for k, j in at.items()
             if k.startswith('info:') and '.' not in k]
    infos.append(('elapsed_step', at['elapsed_step']))
    public_step = pool.step

    def step(actions):
        if type(actions) is not np.ndarray or actions.shape != shape:
            return public_step(actions)
        if actions.dtype != dtype or not actions.flags.c_contiguous:
            actions = actions.astype(dtype, order='C')  # as pool.step does
        send([env_ids, env_ids, actions])
        state = receive()
        ended, cut = state[done], state[trunc]
        return (state[obs], state[reward], ended & ~cut, cut,
                {name: state[j] for name, j in infos})

    return step


def _in_order(ids, arrays, infos):
    """The pool's results put in the order of ``ids`` (by their
    ``env_id`` info), as envpool's order can differ from it."""
    if not isinstance(infos, dict):
        msg = (f'the env pool returned infos of type '
               f'{type(infos).__name__}; it must return one dict of '
               f'arrays for the envs, as envpool does')
        raise TypeError(msg)
    env_id = infos.get('env_id')
    if env_id is None or (isinstance(env_id, np.ndarray) and
                          env_id.dtype == ids.dtype and
                          env_id.tobytes() == ids.tobytes()):
        return arrays, infos
    env_id = np.asarray(env_id)
    if sorted(env_id.tolist()) != sorted(ids.tolist()):
        msg = (f'the env pool returned the envs {env_id.tolist()} for a '
               f'call on {ids.tolist()}')
        raise ValueError(msg)
    # Row k of the result is env env_id[k]; ids are in ascending order.
    order = np.argsort(env_id, kind='stable')
    if isinstance(arrays, tuple):
        arrays = tuple(np.asarray(a)[order] for a in arrays)
    else:
        arrays = arrays[order]
    infos = {k: v[order] if isinstance(v, np.ndarray) and
             len(v) == len(order) else v for k, v in infos.items()}
    return arrays, infos


def _kept(infos, rows):
    """The infos kept per env: arrays with a row per env (envpool's
    ``players`` entry and anything not per env are left out)."""
    return {k: v for k, v in infos.items()
            if k != 'players' and isinstance(v, np.ndarray) and v.ndim
            and len(v) == rows}


def _rows(infos, n, envs=None):
    """Each of ``envs`` (default: the first ``n`` rows)'s infos as a dict:
    its row of every info kept per env (:func:`_kept`)."""
    infos = _kept(infos, n)
    return [{k: v[i] for k, v in infos.items()}
            for i in (range(n) if envs is None else envs)]


def _spread(envs, values, n, zero):
    """A list of every env's value: ``values`` (a list) at ``envs``,
    ``zero`` elsewhere."""
    out = [zero] * n
    for i, value in zip(envs, values):
        out[i] = value
    return out


def _full(old, ids, rows, n=None):
    """An array of every env's row: ``rows`` at ``ids``, the rest from
    ``old`` (zeros without it)."""
    if old is None:
        out = np.zeros((n,) + rows.shape[1:], dtype=rows.dtype)
    else:
        out = old.copy()
    out[ids] = rows
    return out


def _checked_copy(obs, rows):
    """A copy of the observations the pool returned (it gave the array of
    the step before again: it writes its output in place), or a
    TypeError if they are not an array with a row per env."""
    _check_array(obs, rows)
    return obs.copy()


def _check_array(obs, rows):
    if not isinstance(obs, np.ndarray) or obs.shape[:1] != (rows,):
        what = (f'an array of shape {obs.shape}'
                if isinstance(obs, np.ndarray) else type(obs).__name__)
        msg = (f'the env pool returned observations as {what} for {rows} '
               f'envs; EnvPoolWorker needs one array with a row per env')
        raise TypeError(msg)
