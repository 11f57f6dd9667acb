"""Environment updates: callables ``old_env -> new_env`` a worker applies
between episodes.

Users may give an env id, a ``gymnasium.Env``, a zero-argument constructor
or an :class:`EnvUpdate`; :func:`as_env_update` turns any of them into an
``EnvUpdate`` and checks env ids against gymnasium's registry, so that an
unknown id fails where it was written rather than inside a worker.
"""

import importlib

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
            raise TypeError(msg)
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
    msg = (f'{what} must be a gymnasium env id, a gymnasium.Env, a '
           f'zero-argument env constructor or an EnvUpdate, got {env!r}')
    raise TypeError(msg)
