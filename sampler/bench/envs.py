"""Environments for ``sampler bench``.

- :class:`StepCost` wraps an env so every step burns a fixed amount of CPU
  in pure Python, standing in for an expensive simulator. The cost is a
  loop of a fixed length, calibrated once in the calling process, not a
  clock spin: processes that share a core then really share it.
- :class:`ImageEnv` (``rollout_sampler/Image84-v0``) returns 84x84x3 uint8
  observations, to measure how fast episode data moves, in MB/s.
- Atari ids (``ALE/Pong-v5``, needs ``ale-py`` and ``opencv-python``, the
  ``bench`` extra) get the standard preprocessing of Atari papers and
  libraries: no frame skip in the env itself, then
  ``AtariPreprocessing(frame_skip=4, screen_size=84, grayscale_obs=True,
  noop_max=30)`` and ``FrameStackObservation(4)``: 4x84x84 uint8 frames.

Importing this module registers the image env with gymnasium, so worker
processes that unpickle :func:`make_env` can make it too.
"""

import functools
import time

import gymnasium
import numpy as np
from gymnasium import spaces

IMAGE_ENV_ID = 'rollout_sampler/Image84-v0'


def calibrate_loops(step_cost_us, *, rounds=5):
    """Loop iterations of :func:`burn` that take ``step_cost_us`` µs here
    (the fastest of ``rounds`` timings, so a busy moment does not count)."""
    if step_cost_us <= 0:
        return 0
    n = 200_000
    best = min(_time_loop(n) for _ in range(rounds))
    return max(1, int(n * step_cost_us * 1e-6 / best))


def _time_loop(n):
    started = time.perf_counter()
    burn(n)
    return time.perf_counter() - started


def burn(loops):
    for _ in range(loops):
        pass


class StepCost(gymnasium.Wrapper):
    """Burns ``loops`` iterations of pure Python in every ``step``.

    Args:
        env: the env to wrap.
        loops: from :func:`calibrate_loops`.
    """

    def __init__(self, env, loops):
        super().__init__(env)
        self.loops = loops

    def step(self, action):
        burn(self.loops)
        return self.env.step(action)


ATARI_EXTRA = ('pip install "rollout-sampler[bench]" (or ale-py and '
               'opencv-python-headless)')


def is_atari(env_id):
    """Whether ``env_id`` names an ale-py Atari env (``ALE/Pong-v5``, also
    written ``ale_py:ALE/Pong-v5``)."""
    return env_id.rpartition(':')[2].startswith('ALE/')


def register_atari():
    """Register ale-py's envs with gymnasium; ``ImportError`` saying what to
    install if ale-py or OpenCV (which the preprocessing resizes with) is
    missing."""
    try:
        import ale_py
        import cv2  # noqa: F401
    except ImportError as err:
        raise ImportError(f'Atari envs need {err.name}: {ATARI_EXTRA}') \
            from err
    gymnasium.register_envs(ale_py)


def make_atari(env_id):
    """An Atari env with the standard preprocessing (see the module
    docstring)."""
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
    register_atari()
    env = gymnasium.make(env_id.rpartition(':')[2], frameskip=1)
    env = AtariPreprocessing(env, frame_skip=4, screen_size=84,
                             grayscale_obs=True, noop_max=30)
    return FrameStackObservation(env, 4)


def make_env(env_id, loops=0):
    """``gymnasium.make(env_id)`` (Atari ids preprocessed as
    :func:`make_atari` does), wrapped in :class:`StepCost` if ``loops`` >
    0."""
    env = make_atari(env_id) if is_atari(env_id) else gymnasium.make(env_id)
    return StepCost(env, loops) if loops else env


def env_constructor(env_id, loops=0):
    """A picklable zero-argument constructor for :func:`make_env`."""
    return functools.partial(make_env, env_id, loops)


class ImageEnv(gymnasium.Env):
    """84x84x3 uint8 frames, two actions, episodes of up to 100 steps (it
    terminates earlier with probability 1/50 per step). Frames are random
    noise drawn from the env's own generator, so they do not compress."""

    observation_space = spaces.Box(0, 255, (84, 84, 3), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._frame(), {}

    def step(self, action):
        terminated = bool(self.np_random.random() < 0.02)
        return self._frame(), 1.0, terminated, False, {}

    def _frame(self):
        return self.np_random.integers(0, 256, (84, 84, 3), dtype=np.uint8)


if IMAGE_ENV_ID not in gymnasium.registry:
    gymnasium.register(IMAGE_ENV_ID, entry_point=ImageEnv,
                       max_episode_steps=100)
