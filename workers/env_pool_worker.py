"""EnvPoolWorker: a pool of C++ envs (envpool) stepped as one batch.

Per step of the pool::

    observations (n_envs, ...) --agent.get_actions--> actions
        --pool.step(actions[, env_id])--> next observations, rewards,
        flags, infos (one dict of arrays), put in env order by env_id
        --> one entry of the worker's step log: the observations, actions,
            agent infos and env infos of every env (references), and
            the rewards
        --> envs whose episode ended (numpy over the flags): their
            segment becomes an EpisodeRecord, sliced out of the log, and
            goes to the buffer

An env's segment in progress is where in the log it starts: every step of
the log from there on is a transition of that env, until the segment ends
(its episode ends, or a call ends and cuts it). So a step costs a fixed
amount of list appends and array operations, however many envs the pool
has, and each episode costs one slice of the log when it ends. The log
drops the steps no segment in progress refers to.

envpool itself resets an env on the step after its episode ended and
ignores that step's action: the worker counts that step as the start of
the env's next episode, not as one of its transitions, and steps that env
once more, so every env takes exactly ``n`` transitions in
``obtain_steps(n)`` as with :class:`~workers.VecWorker`. Envs whose
episode was cut by ``max_episode_length`` or abandoned, and those of a new
pool, are reset by a ``pool.reset(env_id)`` call of their own.
"""

import numbers

import numpy as np

from workers import _nest
from workers._batched import BatchedEnvsWorker, BatchedStep
from workers._episode import BATCHED_WITH_ENV_INFOS, EpisodeRecord
from workers.env_update import EnvPool
from workers.spaces import check_stackable
from workers.worker import bad_step, unpack_reset

#: envpool seeds env ``j`` of a pool with ``seed + j`` as a C++ int.
_SEED_BOUND = 2 ** 31 - 2 ** 20
#: The log is trimmed once it holds this many steps, and again each time it
#: has doubled since.
_TRIM_MIN = 256
_NEVER = float('inf')


class _Segment:
    """An env's segment in progress: its steps are those of the worker's
    log from step ``start`` on (up to the env's stop, see
    ``EnvPoolWorker._stops``); the rest as in
    :class:`~workers._episode.EpisodeRecord`."""

    __slots__ = ('reset_info', 'episode_id', 'prior_steps', 'prior_return',
                 'start')

    def __init__(self, reset_info, episode_id, prior_steps, prior_return,
                 start):
        self.reset_info = reset_info
        self.episode_id = episode_id
        self.prior_steps = prior_steps
        self.prior_return = prior_return
        self.start = start


class _PoolStep(BatchedStep):
    """A call of the pool's step loop: also the step of the log it is at,
    the step it ends before, the envs the pool resets at this step, and
    the first step at which an episode may reach max_episode_length
    (None: to be found again, as segments started or ended)."""

    step = limit = first_stop = first_cap = None
    resetting = ()
    info_keys = kept_keys = None
    every_env = all_envs = id_bytes = None


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

    def __init__(self, *, seed, max_episode_length, worker_number, n_envs=8):
        super().__init__(seed=seed, max_episode_length=max_episode_length,
                         worker_number=worker_number)
        if isinstance(n_envs, bool) or not isinstance(
                n_envs, numbers.Integral) or n_envs < 1:
            msg = f'n_envs must be an int >= 1, got {n_envs!r}'
            raise ValueError(msg)
        self._n_envs = int(n_envs)
        self.recipe = None  # the EnvPool the pool is built from
        self.pool = None
        self._step_all = None  # actions of every env -> the pool's step
        self._spaces = None
        self._build_seed = None  # not None: (re)build with it first
        # Per env: its episode ended on the pool's terms, so the pool
        # resets it at its next step.
        self._pool_resets = [False] * self._n_envs
        # Per env its _Segment in progress, or None: its next step starts
        # an episode. None instead of the list: every env needs a reset.
        self._records = None
        self._observations = None  # (n_envs, ...): what the next step sees
        # Per env, the step of the log at which it stops being stepped in
        # this call (obtain_steps' n steps taken); _NEVER if it does not.
        self._stops = [_NEVER] * self._n_envs
        # The step log: per step, the observations, actions, rewards (a
        # list), env infos and agent infos of every env; entry k is step
        # _log_base + k. A segment's steps are a run of it.
        self._log = ([], [], [], [], [])
        self._log_base = 0
        self._trim_at = _TRIM_MIN

    @property
    def n_envs(self):
        return self._n_envs

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

    def _ready_pool(self):
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
            self._pool_resets = [False] * self._n_envs
            self.error_site = None
        if self._records is None:
            self._records = [None] * self._n_envs
            self._stops = [_NEVER] * self._n_envs
            self._clear_log()

    def _clear_log(self):
        for steps in self._log:
            steps.clear()
        self._log_base = 0
        self._trim_at = _TRIM_MIN

    def _log_end(self):
        """The number of the next step the log takes."""
        return self._log_base + len(self._log[0])

    def _trim_log(self):
        """Drop the log's steps that no segment in progress refers to."""
        starts = [s.start for s in self._records if s is not None]
        first = min(starts) if starts else self._log_end()
        drop = first - self._log_base
        if drop:
            for steps in self._log:
                del steps[:drop]
            self._log_base = first
        self._trim_at = max(_TRIM_MIN, 2 * len(self._log[0]))

    def abandon_episodes(self):
        dropped = super().abandon_episodes()
        self._clear_log()
        return dropped

    def _open_length(self, i):
        segment = self._records[i]
        if segment is None:
            return 0
        return min(self._log_end(), self._stops[i]) - segment.start

    def _record_of(self, i):
        """Env ``i``'s segment in progress as an EpisodeRecord: its run of
        the log (references to the batched steps, with its column)."""
        segment = self._records[i]
        record = EpisodeRecord(
            segment.reset_info, column=i, episode_id=segment.episode_id,
            prior_steps=segment.prior_steps,
            prior_return=segment.prior_return,
            batched=BATCHED_WITH_ENV_INFOS)
        first = segment.start - self._log_base
        last = first + self._open_length(i)
        observations, actions, rewards, env_infos, agent_infos = self._log
        record.observations = observations[first:last]
        record.actions = actions[first:last]
        record.rewards = [step[i] for step in rewards[first:last]]
        record.env_infos = env_infos[first:last]
        record.agent_infos = agent_infos[first:last]
        return record

    def _cut(self, i):
        record = self._record_of(i)
        self._records[i] = _Segment(
            record.reset_info, record.episode_id,
            record.prior_steps + len(record),
            record.prior_return + float(sum(record.rewards)),
            self._log_end())
        return record

    def begin_steps(self, steps_per_env):
        self._ready_pool()
        self._stops[:] = [self._log_end() + int(steps_per_env)] * \
            self._n_envs

    def continue_steps(self, buffer, max_steps=None):
        # A piece is a number of the pool's steps: each env takes at most
        # that many, and one reset by the pool at a step one more later.
        self._advance(buffer, _NEVER if max_steps is None else max_steps,
                      None)
        if self._log_end() < max(self._stops):
            return False
        self.end_steps(buffer)
        return True

    def end_steps(self, buffer):
        super().end_steps(buffer)
        # Every segment starts at the log's end now, and goes on in the
        # next call: no stop until that call sets one.
        self._stops[:] = [_NEVER] * self._n_envs
        self._trim_log()

    def _start(self, envs, obs, info, rows=None, start=None):
        """Segments for new episodes in ``envs`` (indices), whose first
        observations are ``obs`` (rows ``rows`` of it, default all) and
        reset infos ``info``, starting at step ``start`` of the log
        (default: its next one)."""
        infos = _kept(info, len(obs))
        records = self._records
        rows = range(len(envs)) if rows is None else rows
        start = self._log_end() if start is None else start
        for row, i in zip(rows, envs):
            records[i] = _Segment({k: v[row] for k, v in infos.items()},
                                  self._new_episode_id(), 0, 0.0, start)
            self._pool_resets[i] = False

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
        self._start(envs, obs, info)

    # The phases of the step loop (workers._batched) --------------------
    #
    # With ``n_steps=None``, as VecWorker's: step until an episode
    # completes, starting at most ``max_starts`` new ones (envs with no
    # episode and none to start are not stepped). Otherwise up to
    # ``n_steps`` more of the pool's steps of those begin_steps began,
    # every env up to its stop.
    #
    # An env whose episode ended on the pool's terms is reset by the pool
    # at its next step (which is then no transition of it, and costs
    # nothing more); the others (new pools, abandoned and capped episodes)
    # are reset by a call of their own. Envs reset at a step take one step
    # more to make their steps.
    #
    # Counting is by step numbers, not per env and step: an env with a
    # segment is stepped at every step of the log until its stop
    # (``_stops``), which begin_steps sets from the first step of the
    # steps and every reset step of the env pushes one further.

    def _begin(self, buffer, n_steps, max_starts):
        self._ready_pool()
        run = _PoolStep(self, buffer, n_steps, max_starts)
        if n_steps is None:
            self._stops[:] = [_NEVER] * self._n_envs
        run.first_stop = min(self._stops)
        # The step of the log this piece of steps ends before.
        run.limit = _NEVER if n_steps is None else self._log_end() + n_steps
        run.every_env = np.arange(self._n_envs, dtype=np.int32)
        run.id_bytes = run.every_env.tobytes()
        run.all_envs = list(range(self._n_envs))
        return run

    def _more(self, run):
        run.step = self._log_end()
        return run.step < run.limit

    def _start_idle(self, run):
        records, stops, step = self._records, self._stops, run.step
        run.resetting = ()  # envs the pool resets at this step
        if None in records:
            idle = run.allowed_starts(
                [i for i in run.all_envs if records[i] is None and
                 step < stops[i]])
            now = [i for i in idle if not self._pool_resets[i]]
            if now:
                run.where = 'env.reset'
                self._reset_envs(now)
                run.started += len(now)
                run.first_cap = None
                self._reset_agent(run, now)
            if len(now) < len(idle):
                run.resetting = set(idle) - set(now)
                if run.n_steps is not None:
                    for i in run.resetting:  # a step that is no
                        stops[i] += 1        # transition of theirs
                    run.first_stop = min(stops)
        if len(self._log[0]) >= self._trim_at:
            self._trim_log()
        if step < run.first_stop and records.count(None) == \
                len(run.resetting):
            return run.all_envs
        return [i for i in run.all_envs if step < stops[i] and (
            i in run.resetting or records[i] is not None)]

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
        return next_obs, rewards, terminated, truncated, infos

    def _record(self, run, stepped, batch, actions, agent_infos, result):
        next_obs, rewards, _, _, infos = result
        if run.resetting:
            # Their episodes start after this step.
            envs = sorted(run.resetting)
            self._start(envs, next_obs, infos, envs, run.step + 1)
            run.started += len(envs)
            run.first_cap = None
        log_observations, log_actions, log_rewards, log_env_infos, \
            log_agent_infos = self._log
        log_observations.append(batch)
        log_actions.append(actions)
        log_rewards.append(rewards)
        log_env_infos.append(infos)
        log_agent_infos.append(agent_infos)
        self.env_steps += len(stepped) - len(run.resetting)

    def _end(self, run, stepped, result):
        next_obs, _, terminated, truncated, _ = result
        records, resetting = self._records, run.resetting
        max_length = self._max_episode_length
        ends = []
        if True in terminated or True in truncated:
            ends = [i for i in stepped if (terminated[i] or truncated[i])
                    and i not in resetting]
        if max_length is not None:
            if run.first_cap is None:
                # The first step at which an episode may reach max_length.
                run.first_cap = min(
                    (s.start - s.prior_steps + max_length
                     for s in records if s is not None), default=_NEVER)
            if run.step + 1 >= run.first_cap:
                ends += [i for i in stepped if records[i] is not None
                         and i not in resetting and i not in ends
                         and records[i].prior_steps +
                         self._open_length(i) >= max_length]
        for i in ends:
            term = bool(terminated[i])
            if term or truncated[i]:
                trunc = bool(truncated[i])
                self._pool_resets[i] = True
            else:
                trunc = True  # capped at max_length
            run.buffer.add(self._record_of(i), next_obs[i], term, trunc,
                           self.version, self._worker_number)
            records[i] = None
        if ends:
            run.first_cap = None
        self._observations = next_obs
        if resetting:
            self._reset_agent(run, sorted(resetting))
        return len(ends)

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
