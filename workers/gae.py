"""Generalised advantage estimation over a batch of segments (numpy).

PPO and A2C loops on ``obtain_steps`` get segments, one per env and call
plus one per episode that ended in it, not CleanRL's time-major
``(T, n_envs)`` arrays. :func:`compute_gae` takes the batch as it comes:
each segment bootstraps from the value of its ``last_observations`` where
its episode goes on (a segment cut at the call's end) or was truncated (a
time limit), and from 0 where it terminated.
"""

from typing import Optional, Tuple

import numpy as np


def compute_gae(batch, values, last_values, gamma: float = 0.99,
                lam: float = 0.95, rewards: Optional[np.ndarray] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """GAE(``gamma``, ``lam``) advantages and value targets for every step
    of ``batch``, segment by segment.

    Args:
        batch: an :class:`~workers.EpisodeBatch` of N steps in E segments.
        values: ``(N,)`` value estimates of each step's observation, e.g.
            ``batch.agent_infos['value']``.
        last_values: ``(E,)`` value estimates of
            ``batch.last_observations``: what a segment that is cut or
            truncated bootstraps from (terminated ones use 0).
        gamma: the discount.
        lam: GAE's lambda (1: Monte Carlo returns minus values; 0:
            one-step TD errors).
        rewards: ``(N,)`` rewards to use instead of ``batch.rewards``
            (scaled ones, say).

    Returns:
        ``(advantages, returns)``, both ``(N,)`` float64, with
        ``returns = advantages + values`` (the value function's targets).

    Raises:
        ValueError: an array that is not one number per step (or per
            segment), naming its shape.

    Example:
        >>> import numpy as np
        >>> from workers import EpisodeBatch, compute_gae
        >>> batch = EpisodeBatch(
        ...     observations=np.zeros((3, 1)), actions=np.zeros(3),
        ...     rewards=np.ones(3), terminated=np.array([0, 0, 1], bool),
        ...     truncated=np.zeros(3, bool),
        ...     last_observations=np.zeros((1, 1)),
        ...     env_infos={}, agent_infos={}, episode_infos={},
        ...     lengths=np.array([3]))
        >>> advantages, returns = compute_gae(batch, np.zeros(3), np.zeros(1),
        ...                                   gamma=0.5, lam=1.0)
        >>> returns.tolist()  # 1 + 0.5 (1 + 0.5 * 1), and so on
        [1.75, 1.5, 1.0]
    """
    n, e = len(batch), batch.n_episodes
    rewards = batch.rewards if rewards is None else rewards
    values = _per(values, (n,), 'values', 'step')
    last_values = _per(last_values, (e,), 'last_values', 'segment')
    rewards = _per(rewards, (n,), 'rewards', 'step')
    starts, lengths = batch.episode_starts, batch.lengths
    ends = starts + lengths - 1
    next_value = np.where(batch.terminated[ends], 0.0, last_values)
    gae = np.zeros(e)
    advantages = np.empty(n)
    # Backwards through the segments' steps, all segments at once: at
    # offset k, every segment longer than k.
    for k in range(int(lengths.max(initial=0)) - 1, -1, -1):
        rows = np.flatnonzero(lengths > k)
        steps = starts[rows] + k
        value = values[steps]
        delta = rewards[steps] + gamma * next_value[rows] - value
        gae[rows] = delta + gamma * lam * gae[rows]
        advantages[steps] = gae[rows]
        next_value[rows] = value
    return advantages, advantages + values


def _per(array, shape, name, unit):
    array = np.asarray(array, dtype=np.float64)
    if array.shape != shape:
        hint = ''
        if array.shape == shape + (1,):
            hint = f' (e.g. {name}[:, 0] for a column of one)'
        msg = (f'{name} must have one number per {unit}, shape {shape}, '
               f'but has shape {array.shape}{hint}')
        raise ValueError(msg)
    return array
