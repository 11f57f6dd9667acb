"""Environment updates: callables ``old_env -> new_env`` a worker applies
between episodes.

Users may give an env id, a ``gymnasium.Env``, a zero-argument constructor
or an :class:`EnvUpdate`; :func:`as_env_update` turns any of them into an
``EnvUpdate`` and checks env ids against gymnasium's registry, so that an
unknown id fails where it was written rather than inside a worker.
"""

import contextlib
import importlib
import warnings

import gymnasium


class EnvUpdate:
    """Base class: ``update(old_env) -> new_env``.

    ``old_env`` is None when a worker builds its first env. The worker
    closes ``old_env`` when the update returns a different object.

    A sampler keeps the env updates it sent, to rebuild a worker that
    fails; two class attributes let it keep fewer:

    Attributes:
        replaces_env: True if the update builds a new env whatever the old
            one was (as :class:`NewEnvUpdate` does): the updates before it
            are then forgotten.
        overrides: True if the update sets the env's state absolutely
            (e.g. "gravity = 9"), so that it makes earlier updates of its
            own class right before it irrelevant (as :class:`SetTaskUpdate`
            does): only the last of such a run is kept.
    """

    replaces_env = False
    overrides = False
    builds_pool = False  # True: a pool of envs for an EnvPoolWorker

    def __call__(self, old_env):
        raise NotImplementedError


class NewEnvUpdate(EnvUpdate):
    """Replace the env with a new one.

    Args:
        env: a ``gymnasium.Env`` (used as it is: in another process that is
            an unpickled copy), a zero-argument callable returning one, or a
            registered env id. Keyword arguments for ``gymnasium.make``
            follow an id.
    """

    def __init__(self, env, **make_kwargs):
        if isinstance(env, str):
            check_env_id(env)
        elif not (isinstance(env, gymnasium.Env) or callable(env)):
            msg = (f'NewEnvUpdate takes a gymnasium.Env, a zero-argument '
                   f'env constructor or an env id, got {env!r}')
            raise TypeError(msg)
        if make_kwargs and not isinstance(env, str):
            msg = 'NewEnvUpdate: keyword arguments are only for an env id'
            raise TypeError(msg)
        self.env = env
        self.make_kwargs = make_kwargs

    replaces_env = True

    def __call__(self, old_env):
        if isinstance(self.env, str):
            return gymnasium.make(self.env, **self.make_kwargs)
        if isinstance(self.env, gymnasium.Env):
            return self.env
        env = self.env()
        if not isinstance(env, gymnasium.Env):
            msg = (f'the env constructor {self.env!r} returned '
                   f'{type(env).__name__}, not a gymnasium.Env')
            hint = _not_one_env(env)
            raise TypeError(f'{msg}: {hint}' if hint else msg)
        return env

    def __repr__(self):
        return f'NewEnvUpdate({self.env!r})'


class SetTaskUpdate(EnvUpdate):
    """Give the env a new task (meta-RL): ``env.set_task(task)``.

    ``set_task`` is looked up through gymnasium wrappers. When the current
    env's base type is not ``env_type`` (or there is no env yet), a new env
    is built first with ``env_constructor`` (default: ``env_type()``).

    Args:
        env_type: the class of the unwrapped env that has ``set_task``.
        task: passed to ``set_task``.
        env_constructor: zero-argument callable building a (possibly
            wrapped) env of ``env_type``.
    """

    overrides = True

    def __init__(self, env_type, task, env_constructor=None):
        self.env_type = env_type
        self.task = task
        self.env_constructor = env_constructor or env_type

    def __call__(self, old_env):
        env = old_env
        if env is None or not isinstance(env.unwrapped, self.env_type):
            env = self.env_constructor()
        env.get_wrapper_attr('set_task')(self.task)
        return env

    def __repr__(self):
        return (f'SetTaskUpdate({self.env_type.__name__}, '
                f'task={self.task!r})')


def check_env_id(env_id):
    """Raise ``ValueError`` if gymnasium cannot make ``env_id``.

    ``'module:EnvName-v0'`` imports ``module`` first, as ``gymnasium.make``
    does, so that the module can register its envs.
    """
    module, sep, name = env_id.rpartition(':')
    if sep:
        try:
            importlib.import_module(module)
        except ImportError as err:
            msg = (f'env id {env_id!r}: cannot import module {module!r} '
                   f'({err}); install it or fix the id')
            raise ValueError(msg) from err
        env_id = name
    try:
        gymnasium.spec(env_id)
    except gymnasium.error.Error as err:
        msg = (f'unknown env id {env_id!r}: {err} Register it (or import '
               f"its package first, or write 'module:{env_id}') before "
               f'passing it')
        raise ValueError(msg) from err


def as_env_update(env, what='env'):
    """Turn what users may pass as an env into an :class:`EnvUpdate`.

    Args:
        env: an ``EnvUpdate``, env id, ``gymnasium.Env`` or zero-argument
            constructor.
        what: how to name the argument in error messages.

    Raises:
        ValueError: unknown env id.
        TypeError: anything else.
    """
    if isinstance(env, EnvUpdate):
        return env
    if isinstance(env, str):
        try:
            check_env_id(env)
        except ValueError as err:
            raise ValueError(f'{what}: {err}') from err.__cause__
        return NewEnvUpdate(env)
    if isinstance(env, gymnasium.Env) or callable(env):
        return NewEnvUpdate(env)
    hint = _not_one_env(env)
    if hint:
        raise TypeError(f'{what} is {_short_repr(env)}: {hint}')
    msg = (f'{what} must be a gymnasium env id, a gymnasium.Env, a '
           f'zero-argument env constructor or an EnvUpdate, got {env!r}')
    raise TypeError(msg)


def _short_repr(obj):
    text = repr(obj)
    return text if len(text) <= 80 else f'a {type(obj).__name__}'


def _not_one_env(env):
    """What to do instead, for a vector env or a multi-agent env given
    where one env belongs; None for anything else."""
    classes = type(env).__mro__
    if isinstance(env, gymnasium.vector.VectorEnv) or any(
            c.__module__.startswith('stable_baselines3') and
            c.__name__ == 'VecEnv' for c in classes):
        n = getattr(env, 'num_envs', 'N')
        return (f'a vector env of {n} envs, but the workers step envs '
                f'themselves: pass one env (an env id, or a zero-argument '
                f'constructor of a single env) and worker_class=VecWorker, '
                f'worker_args={{"n_envs": {n}}} for {n} envs per worker')
    if any(c.__module__.split('.')[0] == 'pettingzoo' for c in classes):
        return ('a PettingZoo multi-agent env, which a sampler steps in '
                'multi-agent workers when it can tell: pass the env, its '
                'class, policy_mapping= or worker_class=workers.'
                'MultiAgentWorker with a constructor of it')
    return None


@contextlib.contextmanager
def _quiet_boxes():
    """envpool gives its float32 Boxes float64 bounds, and gymnasium warns
    that it casts them, which tells a user nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', '.*Box .* precision lowered')
        yield


class EnvPool(EnvUpdate):
    """An envpool task for :class:`~workers.EnvPoolWorker`: each worker
    builds a pool of its ``n_envs`` envs (envpool's C++ envs, stepped in
    one thread of its own by default), seeded from the worker's seeds.

    A pool is not one env, so no other worker takes it; and its envs are
    seeded when it is built (env ``j`` with ``seed + j``), so the worker
    rebuilds it where other workers would reseed their envs.

    Args:
        task_id: an envpool task id, e.g. ``'Pong-v5'`` or
            ``'HalfCheetah-v5'`` (``envpool.list_all_envs()``).
        make: what builds the pool, called as ``make(task_id,
            num_envs=n, seed=s, **options)``; None means
            ``envpool.make_gymnasium`` with ``batch_size=n`` and
            ``num_threads=1``. Another ``make`` must return an object with
            envpool's synchronous interface: ``reset(env_id)``,
            ``step(actions, env_id=None)`` (results in the order of
            ``env_id``, infos as one dict of arrays),
            ``single_observation_space``, ``single_action_space`` and
            ``close()``.
        **options: envpool's options for the task (e.g. ``frame_skip=4``),
            checked against its spec here.

    Raises:
        ImportError: envpool is not installed (and ``make`` is None).
        ValueError: an unknown task, an option envpool's spec does not
            take, or ``num_envs``, ``seed`` or ``batch_size`` among the
            options (the worker sets those).
    """

    replaces_env = True
    builds_pool = True

    def __init__(self, task_id, *, make=None, **options):
        if not isinstance(task_id, str):
            msg = f'EnvPool takes an envpool task id (a str), got {task_id!r}'
            raise TypeError(msg)
        if make is not None and not callable(make):
            msg = f'EnvPool: make must be callable, got {make!r}'
            raise TypeError(msg)
        taken = sorted({'num_envs', 'seed', 'batch_size'} & set(options))
        if taken:
            msg = (f'EnvPool: {", ".join(taken)} cannot be given: the '
                   f'worker steps its n_envs envs (worker_args={{"n_envs": '
                   f'N}}) together and seeds them from the sampler\'s seed')
            raise ValueError(msg)
        self.task_id = task_id
        self.make = make
        self.options = options
        if make is None:
            self._spec()  # an unknown task or option fails here

    def _spec(self):
        try:
            import envpool
        except ImportError as err:
            msg = (f'EnvPool({self.task_id!r}) needs envpool: pip install '
                   f'envpool (wheels for Linux x86_64 and Python 3.11+), '
                   f'or use VecWorker with gymnasium envs')
            raise ImportError(msg) from err
        known = envpool.list_all_envs()
        if self.task_id not in known:
            name = self.task_id.rpartition('/')[2]
            hint = (f"envpool names it {name!r}" if name in known else
                    "e.g. 'Pong-v5', 'HalfCheetah-v5', 'CartPole-v1'; see "
                    "envpool.list_all_envs()")
            msg = f'EnvPool: envpool has no task {self.task_id!r} ({hint})'
            raise ValueError(msg)
        spec_options = {k: v for k, v in self.options.items()
                        if k not in ('num_threads', 'thread_affinity_offset')}
        try:
            with _quiet_boxes():
                return envpool.make_spec(self.task_id, **spec_options)
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            msg = (f'EnvPool({self.task_id!r}): envpool does not take the '
                   f'options {self.options!r}: {err}')
            raise ValueError(msg) from None

    def spaces(self):
        """``(observation_space, action_space)`` of one env of the pool,
        without building one (with ``make`` given: a pool of one env is
        built and closed)."""
        if self.make is None:
            spec = self._spec()
            with _quiet_boxes():
                return (spec.gymnasium_observation_space,
                        spec.gymnasium_action_space)
        pool = self.build(1, 0)
        try:
            return pool.single_observation_space, pool.single_action_space
        finally:
            pool.close()

    def build(self, num_envs, seed):
        """A pool of ``num_envs`` envs, env ``j`` seeded with ``seed +
        j``."""
        if self.make is not None:
            return self.make(self.task_id, num_envs=num_envs, seed=seed,
                             **self.options)
        import envpool
        options = dict(num_threads=1)
        options.update(self.options)
        with _quiet_boxes():
            pool = envpool.make_gymnasium(self.task_id, num_envs=num_envs,
                                          batch_size=num_envs, seed=seed,
                                          **options)
            # Built on first use, and cached: here, with the warning off.
            pool.observation_space, pool.action_space
        return pool

    def __call__(self, old_env):
        msg = (f'{self!r} builds a pool of envs, which only an '
               f'EnvPoolWorker steps: pass worker_class=EnvPoolWorker (and '
               f'worker_args={{"n_envs": N}}) to the sampler')
        raise TypeError(msg)

    def __repr__(self):
        options = ''.join(f', {k}={v!r}' for k, v in self.options.items())
        return f'EnvPool({self.task_id!r}{options})'
