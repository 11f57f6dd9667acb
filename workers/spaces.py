"""Which gymnasium spaces an EpisodeBatch can hold, and flattening them.

Observations and actions are stacked into arrays with one row per step, so
only spaces whose samples have one fixed shape qualify: ``Box``,
``Discrete``, ``MultiDiscrete``, ``MultiBinary`` and ``Dict`` / ``Tuple``
nests of those. ``Text``, ``Graph``, ``Sequence`` and ``OneOf`` samples vary
in shape or type, so they are refused with a ``TypeError`` naming them.
"""

import numpy as np
from gymnasium import spaces

STACKABLE = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete,
             spaces.MultiBinary)


def check_stackable(space, what):
    """Raise ``TypeError`` if samples of ``space`` cannot be stacked.

    Args:
        space: a gymnasium space.
        what: how to name it in the message, e.g. ``'observation space'``.
    """
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            check_stackable(sub, f'{what}[{key!r}]')
    elif isinstance(space, spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            check_stackable(sub, f'{what}[{i}]')
    elif not isinstance(space, STACKABLE):
        msg = (f'{what} is {space!r}, whose samples cannot be stacked into '
               f'fixed-shape arrays; EpisodeBatch holds Box, Discrete, '
               f'MultiDiscrete, MultiBinary and Dict/Tuple nests of them. '
               f'Wrap the env (gymnasium.ObservationWrapper or '
               f'ActionWrapper) to map it onto one of those')
        raise TypeError(msg)


def flat_dim(space):
    """Length of the float vector :func:`flattener` makes for ``space``."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Dict):
        return sum(flat_dim(s) for s in space.spaces.values())
    if isinstance(space, spaces.Tuple):
        return sum(flat_dim(s) for s in space.spaces)
    check_stackable(space, 'space')
    raise AssertionError(space)  # unreachable: check_stackable raised


def flattener(space):
    """A function mapping a batch of observations, ``(B, ...)`` leaves, to a
    ``(B, flat_dim)`` float64 matrix: Box and MultiBinary reshaped, Discrete
    and MultiDiscrete one-hot, Dict / Tuple parts side by side."""
    check_stackable(space, 'space')
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        size = flat_dim(space)
        return lambda x: np.asarray(x, dtype=np.float64).reshape(-1, size)
    if isinstance(space, spaces.Discrete):
        eye = np.eye(int(space.n))
        start = int(space.start)
        return lambda x: eye[np.asarray(x).reshape(-1) - start]
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        offsets = np.concatenate(([0], np.cumsum(nvec)[:-1]))
        start = np.asarray(space.start).reshape(-1)
        size = int(nvec.sum())

        def one_hot(x):
            x = np.asarray(x).reshape(len(x) if np.ndim(x) > 1 else 1, -1)
            out = np.zeros((x.shape[0], size))
            np.put_along_axis(out, x - start + offsets, 1.0, axis=1)
            return out
        return one_hot
    if isinstance(space, spaces.Dict):
        parts = [(k, flattener(s)) for k, s in space.spaces.items()]
        return lambda x: np.concatenate([f(x[k]) for k, f in parts], axis=1)
    parts = [flattener(s) for s in space.spaces]  # Tuple
    return lambda x: np.concatenate([f(x[i]) for i, f in enumerate(parts)],
                                    axis=1)
