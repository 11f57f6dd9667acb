"""Which gymnasium spaces an EpisodeBatch can hold, and flattening them.

Observations and actions are stacked into arrays with one row per step, so
only spaces whose samples have one fixed shape qualify: ``Box``,
``Discrete``, ``MultiDiscrete``, ``MultiBinary`` and ``Dict`` / ``Tuple``
nests of those. ``Text``, ``Graph``, ``Sequence`` and ``OneOf`` samples vary
in shape or type, so they are refused with a ``TypeError`` naming them.
"""

import numpy as np
from gymnasium import spaces

from workers import _nest

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


def misfit(batch, observation_space, action_space):
    """What in ``batch`` does not fit the env's spaces, as ``(site,
    message)``, or None.

    Cheap enough for every message a worker sends: shapes and dtypes once
    per array, and the range of discrete actions (one ``min``/``max``).
    Observations must have the space's shape and dtype (a float64 array
    for a float32 space is refused: it would double the bytes moved and
    reach the model as another type than declared); actions the space's
    shape and kind of number (float or integer), and discrete ones a value
    the space holds. Box actions outside the bounds are the agent's to
    clip, so they pass.
    """
    rewards = batch.rewards
    if rewards.ndim != 1:
        msg = (f'rewards must be numbers (one float per step), but the env '
               f'returned arrays of shape {rewards.shape[1:]}; return '
               f'float(reward)')
        return 'env.step', msg
    if np.isnan(rewards).any():
        step = int(np.flatnonzero(np.isnan(rewards))[0])
        msg = (f'a reward is NaN (or None) at step {step} of the message: '
               f'rewards must be numbers')
        return 'env.step', msg
    for field, nest in (('observations', batch.observations),
                        ('last_observations', batch.last_observations)):
        msg = _obs_misfit(nest, observation_space, field)
        if msg:
            return 'env.step', msg + (
                '. The env returns observations that are not of its own '
                'observation_space; fix the env or the space it declares')
    msg = _action_misfit(batch.actions, action_space, 'actions')
    if msg:
        return 'agent.get_action', msg
    return None


def action_check(space, batched):
    """A function that checks the actions a worker is about to send to
    its envs (one action; with ``batched``, a batch with one row per env)
    against the action ``space``: it returns None if they fit, else a
    message saying which does not and why (as :func:`misfit` words it),
    so that an agent's bad action is refused before an env sees it.

    Every step pays for it, so the common cases are quick: a Discrete
    action is an integer within the range (a min and a max over a batch),
    a Box action an array of the space's shape and kind of number. Other
    spaces, and whatever fails the quick test, get the full check.
    """
    quick = _quick_test(space, batched)

    def check(actions):
        try:
            if quick(actions):
                return None
            if not batched:
                actions = _nest.stack([actions])
            return _action_misfit(_nest.as_arrays(actions), space,
                                  'actions')
        except Exception:  # not arrays at all: the env and the batch say
            return None
    return check


def _quick_test(space, batched):
    """A test that passes most actions that fit ``space`` (and never one
    that does not) at the cost of a few comparisons."""
    if isinstance(space, spaces.Discrete):
        low, high = int(space.start), int(space.start + space.n - 1)
        if batched:
            def discrete_rows(a):
                if type(a) is not np.ndarray or a.ndim != 1 or \
                        a.dtype.kind not in 'iu':
                    return False
                values = a.tolist()  # min / max of ints beat numpy's here
                return low <= min(values) and max(values) <= high
            return discrete_rows
        return lambda a: isinstance(a, (int, np.integer)) and \
            low <= a <= high
    if isinstance(space, spaces.Box):
        shape = tuple(space.shape)
        kinds = 'f' if space.dtype.kind == 'f' else 'biuf'
        if batched:
            return lambda a: type(a) is np.ndarray and \
                a.shape[1:] == shape and a.dtype.kind in kinds
        return lambda a: type(a) is np.ndarray and a.shape == shape and \
            a.dtype.kind in kinds
    return lambda a: False


def _leaf_pairs(nest, space, what):
    """``(what, leaf, subspace)`` for each leaf of ``space``; a nest that
    does not have the space's keys gives ``(what, None, message)``."""
    if isinstance(space, spaces.Dict):
        if not isinstance(nest, dict) or set(nest) != set(space.spaces):
            got = sorted(nest) if isinstance(nest, dict) else \
                type(nest).__name__
            yield what, None, (f'{what} have keys {got}, but the space is '
                               f'a Dict of {sorted(space.spaces)}')
            return
        for key, sub in space.spaces.items():
            yield from _leaf_pairs(nest[key], sub, f'{what}[{key!r}]')
    elif isinstance(space, spaces.Tuple):
        if not isinstance(nest, tuple) or len(nest) != len(space.spaces):
            yield what, None, (f'{what} are not a tuple of '
                               f'{len(space.spaces)}, as the space is')
            return
        for i, sub in enumerate(space.spaces):
            yield from _leaf_pairs(nest[i], sub, f'{what}[{i}]')
    else:
        yield what, nest, space


def _fitting_leaves(nest, space, field, space_name):
    """``(what, leaf, subspace)`` of leaves of the right shape; the
    message of the first one that is not (or a key mismatch) as
    ``(what, None, message)``, after which it stops."""
    for what, leaf, sub in _leaf_pairs(nest, space, field):
        if leaf is None:
            yield what, None, sub
            return
        shape = tuple(sub.shape) if sub.shape is not None else None
        if leaf.shape[1:] != shape:
            yield what, None, (f'{what} have shape {leaf.shape[1:]} per '
                               f'step, but the {space_name} {sub} has shape '
                               f'{shape}')
            return
        yield what, leaf, sub


def _obs_misfit(nest, space, field):
    for what, leaf, sub in _fitting_leaves(nest, space, field, 'space'):
        if leaf is None:
            return sub
        if isinstance(sub, spaces.Box):
            if leaf.dtype != sub.dtype:
                return (f'{what} are {leaf.dtype}, but the space {sub} is '
                        f'{sub.dtype}; cast them in the env (e.g. '
                        f'obs.astype(np.{sub.dtype})) or declare the space '
                        f'with dtype=np.{leaf.dtype}')
        elif leaf.dtype.kind not in 'iub':
            return (f'{what} are {leaf.dtype}, but the space {sub} holds '
                    f'integers')
    return None


def _action_misfit(nest, space, field):
    for what, leaf, sub in _fitting_leaves(nest, space, field,
                                           'action space'):
        if leaf is None:
            return sub
        if isinstance(sub, spaces.Box):
            if sub.dtype.kind == 'f' and leaf.dtype.kind != 'f':
                return (f'{what} are {leaf.dtype}, but the action space '
                        f'{sub} holds floats')
            continue
        if leaf.dtype.kind not in 'iub':
            return (f'{what} are {leaf.dtype}, but the action space {sub} '
                    f'holds integers')
        if not len(leaf):
            continue
        if isinstance(sub, spaces.Discrete):
            low, high = int(sub.start), int(sub.start + sub.n - 1)
        elif isinstance(sub, spaces.MultiDiscrete):
            low = np.asarray(sub.start)
            high = low + np.asarray(sub.nvec) - 1
        else:  # MultiBinary
            low, high = 0, 1
        bad = (leaf < low) | (leaf > high)
        if bad.any():
            step = int(np.flatnonzero(bad.reshape(len(leaf), -1).any(1))[0])
            return (f'{what}[{step}] is {leaf[step].tolist()}, which the '
                    f'action space {sub} does not hold')
    return None
