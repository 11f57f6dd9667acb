"""Rows of peers that need installs of their own: envpool, and
stable-baselines3's SubprocVecEnv.

A peer that is not installed, or cannot run the env, is skipped with one
line saying why and what to install (:func:`peer_rows` returns those
lines beside the rows).

envpool runs its envs in C++ threads and returns batches of them, the
strongest alternative on one machine. Its rows use the same task as
ours as far as its options allow:

- Atari (``ALE/<Game>-v5``): envpool's ``<Game>-v5`` with the standard
  preprocessing our rows get (4 frames skipped with max-pooling, 84x84
  grayscale, 30 no-ops at most at reset, 4 frames stacked), sticky
  actions 0.25 as ALE v5 has, no fire at reset (AtariPreprocessing does
  not press fire), no life loss as episode end, rewards not clipped. Left
  different: envpool resizes with its own INTER_AREA code, and its
  episodes are capped at 27,000 steps (ALE v5: 108,000 frames, the same).
- MuJoCo and classic control: envpool's env of the same id (its own C++
  port of the gymnasium env).

envpool resets an env on the step after its episode ended (that step's
action is ignored); those steps are not counted as transitions.
"""

import warnings

import numpy as np

from sampler.bench.rows import EpisodeRecorder, Row, Sample, VectorEnvRow

#: envpool's Atari options that make its task the one our rows run.
ATARI_OPTIONS = dict(stack_num=4, frame_skip=4, noop_max=30, gray_scale=True,
                     img_height=84, img_width=84, episodic_life=False,
                     reward_clip=False, use_fire_reset=False,
                     repeat_action_probability=0.25)

#: envs per envpool row (beside as many as each of our envpool rows steps
#: in all); the best of them is its figure.
ENVPOOL_ENVS = (8, 16)

INSTALL = ('pip install "rollout-sampler[bench]" (envpool has wheels for '
           'Linux x86_64 and Python 3.11 and later)')


def envpool_task(env_id):
    """``(envpool id, options)`` for one of our env ids, or ``(None,
    why)`` if envpool has no such env."""
    try:
        import envpool
    except ImportError:
        return None, f'envpool is not installed: {INSTALL}'
    known = set(envpool.list_all_envs())
    if env_id.startswith('ALE/'):
        name = env_id[len('ALE/'):]
        if name in known:
            return name, dict(ATARI_OPTIONS)
        return None, f'envpool has no Atari env {name}'
    if env_id in known:
        return env_id, {}
    return None, f'envpool has no env {env_id}'


def peer_rows(env_id, make_agent, seed, step_cost_us=0,
              env_counts=ENVPOOL_ENVS):
    """envpool rows for ``env_id``, one per count of envs in
    ``env_counts`` (with ``make_agent()`` giving each its agent), and the
    lines saying what was skipped."""
    if step_cost_us:
        return [], ['envpool skipped: its C++ envs cannot burn '
                    '--step-cost-us']
    task, options = envpool_task(env_id)
    if task is None:
        return [], [f'envpool skipped: {options}']
    return [EnvpoolRow(task, n, make_agent(), seed, options)
            for n in sorted(set(env_counts))], []


def sb3_rows(env_counts, make_agent, env_fn, seed):
    """SB3 SubprocVecEnv rows, one per count of envs, and the lines
    saying what was skipped."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return [], ['SB3 SubprocVecEnv skipped: stable-baselines3 is not '
                    'installed: pip install "rollout-sampler[sb3]"']
    return [VectorEnvRow('sb3', n, make_agent(), env_fn, seed)
            for n in env_counts], []


class EnvpoolRow(Row):
    """envpool's synchronous vector env (C++ threads, one per CPU), the
    agent batched in the calling process."""

    single_process = False

    def __init__(self, task, n_envs, agent, seed, options):
        self.task, self.n_envs, self.agent, self.seed = \
            task, n_envs, agent, seed
        self.options = options
        self.name = f'envpool ({n_envs} envs)'
        self.short_name = self.name

    def setup(self):
        import envpool
        import psutil
        with warnings.catch_warnings():
            # envpool's float32 Boxes have float64 bounds, which gymnasium
            # warns of: nothing a reader of the table can act on.
            warnings.filterwarnings('ignore', '.*Box .* precision lowered')
            self.envs = envpool.make(
                self.task, env_type='gymnasium', num_envs=self.n_envs,
                batch_size=self.n_envs, seed=self.seed,
                num_threads=len(psutil.Process().cpu_affinity()),
                **self.options)
            self.envs.observation_space, self.envs.action_space
        self.obs, _ = self.envs.reset()
        self.resetting = np.zeros(self.n_envs, dtype=bool)
        self.steps = []
        self.recorder = EpisodeRecorder(self.n_envs)

    def call(self, n, params):
        if params is not None:
            self.agent.set_params(params)
        envs, get_actions, keep = self.envs, self.agent.get_actions, \
            self.steps.append
        obs, transitions, episodes = self.obs, 0, 0
        while transitions < n:
            actions, _ = get_actions(obs)
            next_obs, rewards, terms, truncs, _ = envs.step(actions)
            real = ~self.resetting
            keep((obs, actions, rewards, terms, truncs, next_obs, real))
            self.resetting = terms | truncs
            transitions += int(real.sum())
            episodes += int((self.resetting & real).sum())
            obs = next_obs
        self.obs = obs
        return Sample(transitions, episodes)

    def check(self):
        for obs, actions, rewards, terms, truncs, next_obs, real in \
                self.steps:
            for i in np.flatnonzero(real):
                self.recorder.record(i, obs[i], actions[i], rewards[i],
                                     terms[i], truncs[i], next_obs[i])
        self.steps = []
        self.recorder.completed_batch()

    def close(self):
        self.envs.close()
