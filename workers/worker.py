"""Worker: the base class of what runs episodes, in whatever process."""

import numbers
from typing import Any, List, Optional, Tuple

import numpy as np

from workers._episode import EpisodeBuffer
from workers.agents import as_agent
from workers.env_update import as_env_update
from workers.episode_batch import EpisodeBatch
from workers.spaces import action_check, check_stackable

#: Worker ``i`` numbers its episodes ``i * EPISODE_ID_STRIDE + 0, 1, 2,
#: ...``: ids unique over a sampler's workers and life (2**40 episodes a
#: worker) that every backend gives alike.
EPISODE_ID_STRIDE = 2 ** 40


#: The fields of a worker's pulse (see :attr:`Worker.pulse`).
PULSE_BEATS, PULSE_ENV, PULSE_IDLE = 0, 1, 2
PULSE_FIELDS = 3


def new_pulse(buffer=None):
    """A worker's pulse: PULSE_FIELDS int64s, in ``buffer`` (any writable
    buffer of ``8 * PULSE_FIELDS`` bytes, shared memory say) or in memory
    of its own, all 0."""
    if buffer is None:
        buffer = bytearray(8 * PULSE_FIELDS)
    return memoryview(buffer).cast('B').cast('q')


class Worker:
    """Runs episodes with an agent in an environment it owns.

    A worker is built by a :class:`~workers.WorkerFactory` in the process
    that runs it and is given its env and agent through :meth:`update_env`
    and :meth:`update_agent`. A sampler then calls :meth:`start_round` at
    every call and :meth:`rollout` until it has enough episodes.

    Seeding: round ``r`` of worker ``i`` draws its seeds from
    ``numpy.random.SeedSequence(seed, spawn_key=(i, r))``, the ``r``-th
    child of the ``i``-th child of ``SeedSequence(seed)``: independent
    streams for every worker, round, env and agent, and the same episodes
    for the same seed, worker and sequence of calls whatever process the
    worker runs in. A worker that replaces a failed one mid-round, in a
    call that keeps its predecessor's episodes, starts the round with
    ``attempt=k`` and seeds from ``spawn_key=(i, r, k)``, so it never
    repeats them.

    Sampling: :meth:`rollout_into` runs whole episodes (a sampler's
    ``obtain_samples`` and ``obtain_exact_episodes``); :meth:`step_into`
    steps every env a given number of steps and keeps the envs running
    (``obtain_steps``), returning segments: an episode still running at
    the end is cut there and goes on at the next call. A new round
    abandons running episodes unless it is started with
    ``keep_episodes=True``.

    Workers hold live envs and cannot be pickled; pickle their
    ``WorkerFactory`` and build them where they run.

    Args:
        seed: root seed (an int >= 0) shared by all workers of a sampler.
        max_episode_length: cut episodes after this many steps with
            ``truncated=True``; None leaves it to the env's own time limit.
        worker_number: this worker's index, 0 .. n_workers - 1.

    Attributes:
        threads_alternate: (class) True for workers whose env steps in a
            thread of its own while the worker's thread waits, and back
            (:class:`~workers.EnvPoolWorker`): a process backend may pin
            such a worker to one CPU, where the two hand over fastest.
        version: stamped on every episode this worker returns.
        error_site: after a method raised, which call failed, e.g.
            ``'env.step'`` or ``'agent.get_action'``; None otherwise.
        next_episode_id: the id the next episode started gets; a
            replacement for a failed worker is set past its predecessor's.
        env_steps: ``env.step`` calls made so far, returned or not.
        pulse: PULSE_FIELDS int64s (:func:`new_pulse`) that show from
            outside whether the worker is getting on:
            ``pulse[PULSE_BEATS]`` goes up as env and agent calls return
            (at least once per step of each env, and per reset),
            ``pulse[PULSE_ENV]`` is the index, among the worker's envs,
            of the env it stepped or reset last, and ``pulse[PULSE_IDLE]``
            is its host's: 1 while the host waits for a command. A host
            may put it in shared memory; a sampler's ``step_timeout``
            reads it there to tell a hung call from a slow call.
    """

    threads_alternate = False

    def __init__(self, *, seed: int, max_episode_length: Optional[int],
                 worker_number: int) -> None:
        if not isinstance(seed, numbers.Integral) or seed < 0:
            msg = f'seed must be an int >= 0, got {seed!r}'
            raise ValueError(msg)
        if max_episode_length is not None and (
                not isinstance(max_episode_length, numbers.Integral)
                or max_episode_length < 1):
            msg = (f'max_episode_length must be None or an int >= 1, got '
                   f'{max_episode_length!r}')
            raise ValueError(msg)
        if not isinstance(worker_number, numbers.Integral) or \
                worker_number < 0:
            msg = f'worker_number must be an int >= 0, got {worker_number!r}'
            raise ValueError(msg)
        self._seed = int(seed)
        self._max_episode_length = max_episode_length
        self._worker_number = int(worker_number)
        self.version = 0
        self.error_site = None
        self.agent = None
        self.next_episode_id = self._worker_number * EPISODE_ID_STRIDE
        self.env_steps = 0
        self.pulse = new_pulse()
        self._round = None
        self._checked = None  # (action space, its action_check)
        self._steps_left = 0  # of every env, of the steps begun

    @property
    def worker_number(self) -> int:
        return self._worker_number

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def max_episode_length(self) -> Optional[int]:
        return self._max_episode_length

    # Updates -------------------------------------------------------------

    def update_agent(self, agent_update: Any) -> None:
        """Replace the agent, or load parameters into it.

        An object with ``get_action`` (or any callable, while the worker has
        no agent yet) becomes the agent (:meth:`set_agent`); anything else
        is passed to ``agent.set_params`` (:meth:`set_agent_params`). The
        caller must not share the object with other workers: each worker
        needs its own copy.
        """
        if self.agent is None or hasattr(agent_update, 'get_action'):
            self.set_agent(agent_update)
        else:
            self.set_agent_params(agent_update)

    def set_agent(self, agent: Any) -> None:
        """Make ``agent`` (an agent, or a callable ``obs -> action``) the
        worker's agent."""
        self.error_site = 'setting the agent'
        self.agent = as_agent(agent)
        self.error_site = None
        self._on_agent_changed()

    def set_agent_params(self, params: Any) -> None:
        """Load ``params`` into the agent (``agent.set_params``)."""
        self.error_site = 'agent.set_params'
        set_params = getattr(self.agent, 'set_params', None)
        if set_params is None:
            msg = (f'the agent {self.agent!r} has no set_params, so it '
                   f'cannot take parameters; send an agent (an object '
                   f'with get_action) to replace it instead')
            raise TypeError(msg)
        set_params(params)
        self.error_site = None
        self._on_agent_changed()

    @property
    def env_spaces(self) -> Optional[Tuple[Any, Any]]:
        """``(observation_space, action_space)`` of the worker's envs, or
        None before its first env update."""
        raise NotImplementedError

    def update_env(self, env_update: Any) -> None:
        """Apply an env update: an ``EnvUpdate``, ``gymnasium.Env``, env id
        or zero-argument constructor. Closes envs it replaces."""
        raise NotImplementedError

    def _apply_env_update(self, update, old_env):
        """One env update with its checks; returns the new env."""
        self.error_site = 'env update'
        new_env = update(old_env)
        if new_env is not old_env and old_env is not None:
            self.error_site = 'env.close'
            old_env.close()
        self.error_site = 'checking the env spaces'
        check_stackable(new_env.observation_space, 'observation space')
        check_stackable(new_env.action_space, 'action space')
        self.error_site = None
        return new_env

    @staticmethod
    def _as_env_update(env_update):
        return as_env_update(env_update, what='env_update')

    @classmethod
    def env_update_of(cls, env: Any, what: str = 'env') -> Any:
        """What workers of this class make of ``env`` (an env id, env,
        constructor or ``EnvUpdate``): an ``EnvUpdate``; raises naming
        ``what`` if they cannot take it. A sampler calls this in the
        caller."""
        return as_env_update(env, what=what)

    @classmethod
    def check_agent(cls, agent: Any, what: str = 'agent') -> None:
        """Raise TypeError unless workers of this class can take
        ``agent`` as their agent (a sampler calls this in the caller)."""
        as_agent(agent, what=what)

    @staticmethod
    def is_agent(update: Any) -> bool:
        """Whether an agent update replaces the agent (else it is
        parameters for it)."""
        return hasattr(update, 'get_action')

    @staticmethod
    def takes_params(agent: Any) -> bool:
        """Whether ``agent``, once a worker's, can take parameters."""
        return hasattr(agent, 'set_params')

    def new_buffer(self) -> EpisodeBuffer:
        """An empty buffer of what this worker's rounds produce."""
        return EpisodeBuffer()

    @classmethod
    def check_env_update(cls, update: Any, what: str = 'env') -> None:
        """Raise TypeError if workers of this class cannot take
        ``update`` (an ``EnvUpdate``); ``what`` names it in the message.
        A sampler calls this in the caller, before any worker sees it."""
        if getattr(update, 'builds_pool', False):
            msg = (f'{what} is {update!r}, a pool of envs that only an '
                   f'EnvPoolWorker steps, but the worker class is '
                   f'{cls.__name__}: pass worker_class=EnvPoolWorker (and '
                   f'worker_args={{"n_envs": N}})')
            raise TypeError(msg)

    def _on_agent_changed(self):
        """Hook: the agent was replaced or got new parameters."""

    # Rounds and seeding ----------------------------------------------------

    def start_round(self, round_number: int, version: Optional[int] = None,
                    *, attempt: int = 0, keep_episodes: bool = False,
                    reseed_envs: bool = True) -> None:
        """Begin a sampler call: reseed the agent and envs for this round.

        Episodes in progress are abandoned, so every episode of the round
        starts from the round's seeds, unless ``keep_episodes``: then they
        go on (as new segments, under ``version``), and the round's seeds
        apply to the episodes that start after them.

        With ``reseed_envs=False`` only envs never reset yet (new ones,
        and those an env update replaced) take the round's seeds; the
        others go on with their own generators. Seeding an env is a reset
        with ``seed=``, which costs some envs a great deal (ale-py reloads
        the game: about 0.1 s), so only calls that must reproduce a round
        from its seeds alone (``obtain_exact_episodes``, redone in full by
        a replacement worker) reseed them all.

        Args:
            round_number: the sampler's call counter.
            version: if given, stamped on the episodes from now on.
            attempt: 0, or ``k`` for the ``k``-th worker that replaces a
                failed one in this round and must not repeat the episodes
                its predecessor already returned: it gets seeds of its own.
            keep_episodes: let running episodes go on.
            reseed_envs: seed every env's next reset from the round's
                seeds (False: only envs never reset yet).
        """
        if version is not None:
            self.version = int(version)
        self._round = int(round_number)
        seeds = self.round_seeds(self._round, self._n_seeds(), attempt)
        if self.agent is not None and hasattr(self.agent, 'seed'):
            self.error_site = 'agent.seed'
            self.agent.seed(seeds[0])
            self.error_site = None
        if not keep_episodes:
            self.abandon_episodes()
        self._on_new_round(seeds[1:], reseed_envs)

    def round_seeds(self, round_number: int, n: int,
                    attempt: int = 0) -> List[int]:
        """``n`` independent seeds (ints < 2**63) of this worker's round;
        a replacement's ``attempt`` (>= 1) gets other, independent ones."""
        if isinstance(attempt, bool) or not isinstance(
                attempt, numbers.Integral) or attempt < 0:
            msg = f'attempt must be an int >= 0, got {attempt!r}'
            raise ValueError(msg)
        key = (self._worker_number, round_number)
        if attempt:
            key += (int(attempt),)
        seq = np.random.SeedSequence(self._seed, spawn_key=key)
        state = seq.generate_state(n, dtype=np.uint64)
        return [int(s >> np.uint64(1)) for s in state]

    def _n_seeds(self):
        return 2

    def _on_new_round(self, env_seeds, reseed_envs):
        """Hook: reseed the envs with ``env_seeds`` at their next reset
        (with ``reseed_envs`` False, only envs never reset yet)."""
        raise NotImplementedError

    def abandon_episodes(self) -> int:
        """Drop the episodes in progress: every env starts a new one at
        its next step. Returns how many steps were dropped (taken since
        the episodes' last segment was returned)."""
        raise NotImplementedError

    @property
    def in_progress(self) -> int:
        """How many episodes are running (started, not ended)."""
        raise NotImplementedError

    def _action_check(self, batched):
        """The check of the actions this worker is about to send to its
        envs (:func:`workers.spaces.action_check`) for their action
        space: None, or the ValueError to raise."""
        space = self.env_spaces[1]
        if self._checked is None or self._checked[0] is not space:
            check = action_check(space, batched)

            def checked(actions):
                problem = check(actions)
                if problem is None:
                    return None
                return ValueError(
                    f'{problem}; an agent must return actions that the '
                    f"env's action space holds (the env was not stepped "
                    f'with these)')
            self._checked = (space, checked)
        return self._checked[1]

    def _new_episode_id(self):
        episode_id = self.next_episode_id
        self.next_episode_id += 1
        return episode_id

    # Sampling ------------------------------------------------------------

    def rollout(self) -> EpisodeBatch:
        """Run until at least one episode completes; return the completed
        episodes as an :class:`~workers.EpisodeBatch`."""
        buffer = EpisodeBuffer()
        self.rollout_into(buffer)
        self.error_site = 'building the episode batch'
        batch = buffer.to_batch()
        self.error_site = None
        return batch

    def rollout_into(self, buffer: EpisodeBuffer,
                     max_starts: Optional[int] = None) -> int:
        """Run until at least one episode completes and add the completed
        episodes to ``buffer`` (an :class:`~workers.EpisodeBuffer`), which
        builds one batch for many calls: cheaper than a batch per call.

        Args:
            buffer: where completed episodes go.
            max_starts: start at most this many new episodes (None: as
                many as envs come free). With 0 it only completes running
                ones, and returns at once if none runs.

        Returns:
            int: how many episodes it started.
        """
        raise NotImplementedError

    def step_into(self, buffer: EpisodeBuffer, steps_per_env: int) -> None:
        """Step every env exactly ``steps_per_env`` times and add the
        segments to ``buffer``: episodes that ended, and the running ones
        cut at the last step (``cut=True``; they go on at the next call).
        Envs whose episode ends start the next one at once.

        The same as :meth:`begin_steps` and :meth:`continue_steps` until
        it returns True: a caller that must look at other things between
        steps (a sampler's worker, its commands) takes them in pieces."""
        self.begin_steps(steps_per_env)
        self.continue_steps(buffer)

    def begin_steps(self, steps_per_env: int) -> None:
        """Begin a call's steps: every env is to take ``steps_per_env``
        steps, taken by :meth:`continue_steps` in as many pieces as the
        caller likes, and ended early (if at all) by :meth:`end_steps`."""
        self._steps_left = int(steps_per_env)

    def continue_steps(self, buffer: EpisodeBuffer,
                       max_steps: Optional[int] = None) -> bool:
        """Take more of the steps :meth:`begin_steps` began: at most
        ``max_steps`` steps of the envs (None: all that are left), adding
        the episodes that end to ``buffer``. Returns True once every env
        has taken its steps; the running episodes' segments are then cut
        into ``buffer`` (:meth:`end_steps`)."""
        n = self._steps_left if max_steps is None else \
            min(max_steps, self._steps_left)
        if n:
            self._take_steps(buffer, n)
            self._steps_left -= n
        if self._steps_left:
            return False
        self.end_steps(buffer)
        return True

    def _take_steps(self, buffer, n_steps):
        """Step every env ``n_steps`` times (in lock-step: envs whose
        episode ends start the next one at once), the episodes that end
        going to ``buffer``."""
        raise NotImplementedError

    def end_steps(self, buffer: EpisodeBuffer) -> None:
        """End the steps begun where they are: the running episodes'
        segments go to ``buffer``, cut (``cut=True``), and go on as new
        segments at the next steps; steps not taken yet are forgotten."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Close the envs."""
        raise NotImplementedError

    def _check_ready(self, env):
        if env is None or self.agent is None:
            missing = 'env' if env is None else 'agent'
            msg = (f'worker {self._worker_number} has no {missing}; '
                   f'call update_env and update_agent before rollout')
            raise RuntimeError(msg)
        if self._round is None:
            self.start_round(0)

    # Pickling --------------------------------------------------------------

    def __reduce__(self):
        msg = (f'{type(self).__name__} objects hold live envs and cannot be '
               f'pickled; pickle a WorkerFactory and build the worker in '
               f'the process that runs it')
        raise TypeError(msg)

    def __repr__(self):
        return (f'<{type(self).__name__} {self._worker_number} '
                f'version={self.version}>')


def _describe(value):
    """A short description of what an env or agent returned."""
    if isinstance(value, np.ndarray):
        return f'an array of shape {value.shape} and dtype {value.dtype}'
    if isinstance(value, np.generic):
        return f'a numpy {value.dtype} scalar {value.item()!r}'
    if isinstance(value, tuple):
        inner = ', '.join(type(v).__name__ for v in value[:6])
        return f'a tuple of {len(value)} ({inner})'
    return f'{type(value).__name__} {value!r:.80}'


def old_gym_fix():
    """How to run an env written for gym before 0.26 (``reset`` returning
    only an observation, ``step`` four values) with the gymnasium that is
    installed: its own wrapper where it has one (before 1.0), else
    shimmy's."""
    import gymnasium
    if hasattr(gymnasium.wrappers, 'EnvCompatibility'):
        return 'wrap it in gymnasium.wrappers.EnvCompatibility'
    return ('wrap it in shimmy.GymV21CompatibilityV0(env=old_env) (pip '
            'install "shimmy[gym-v21]"), as gymnasium 1.x no longer has '
            'its own wrapper')


def unpack_reset(result):
    """``(observation, info)`` from what ``env.reset`` returned, or a
    TypeError saying what it returned instead."""
    if type(result) is tuple and len(result) == 2 and \
            isinstance(result[1], dict):
        return result
    msg = (f'env.reset must return (observation, info), as gymnasium '
           f'envs do since 0.26, but it returned {_describe(result)}; '
           f'return obs, {{}} (and for an env written for gym before '
           f'0.26, update it or {old_gym_fix()})')
    raise TypeError(msg)


def bad_step(result):
    """The TypeError for an ``env.step`` result that is not five
    values."""
    msg = (f'env.step must return (observation, reward, terminated, '
           f'truncated, info), but it returned {_describe(result)}')
    if type(result) is tuple and len(result) == 4:
        msg += (f'; four values are the old gym API (done for terminated '
                f'and truncated): update the env or {old_gym_fix()}')
    return TypeError(msg)


def bad_action(result):
    """The TypeError for a ``get_action`` result that is not ``(action,
    agent_info dict)``."""
    msg = (f'agent.get_action must return (action, agent_info) with '
           f'agent_info a dict, but it returned {_describe(result)}; '
           f'return action, {{}} (or pass a plain function obs -> action '
           f'as the agent)')
    return TypeError(msg)
