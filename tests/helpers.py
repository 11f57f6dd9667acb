"""Environments and agents written for the tests."""

import contextlib
import os
import signal
import threading
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class DictObsEnv(gym.Env):
    """A Dict observation nesting every stackable space family; the action
    space is the test's choice. Episodes end at random (seeded) or after
    ``max_steps``."""

    def __init__(self, action_space=None, max_steps=8):
        self.observation_space = spaces.Dict({
            'position': spaces.Box(-1.0, 1.0, (2,), np.float32),
            'cell': spaces.Discrete(5),
            'flags': spaces.MultiBinary(3),
            'inventory': spaces.MultiDiscrete([3, 4]),
            'pair': spaces.Tuple((spaces.Discrete(2),
                                  spaces.Box(0.0, 1.0, (1,), np.float32))),
        })
        self.action_space = action_space or spaces.MultiDiscrete([3, 2])
        self.max_steps = max_steps
        self._t = 0

    def _obs(self):
        rng = self.np_random
        return {
            'position': rng.uniform(-1, 1, 2).astype(np.float32),
            'cell': int(rng.integers(5)),
            'flags': rng.integers(0, 2, 3).astype(np.int8),
            'inventory': rng.integers(0, [3, 4]).astype(np.int64),
            'pair': (int(rng.integers(2)),
                     rng.uniform(0, 1, 1).astype(np.float32)),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {'start': self._t}

    def step(self, action):
        if not self.action_space.contains(action):
            msg = f'{action!r} is not in {self.action_space}'
            raise ValueError(msg)
        self._t += 1
        terminated = bool(self.np_random.random() < 0.15)
        truncated = self._t >= self.max_steps and not terminated
        return (self._obs(), float(self.np_random.random()), terminated,
                truncated, {'t': self._t})


class FaultyEnv(gym.Env):
    """Raises from ``reset`` or ``step`` (after ``after`` steps) on demand."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, fail_in='step', after=3, message='boom'):
        self.fail_in = fail_in
        self.after = after
        self.message = message
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.fail_in == 'reset':
            raise RuntimeError(self.message)
        self._t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self._t += 1
        if self.fail_in == 'step' and self._t > self.after:
            raise RuntimeError(self.message)
        return np.full(3, self._t / 100, np.float32), 1.0, self._t >= 10, \
            False, {}


class FailOnceEnv(FaultyEnv):
    """Fails in ``step`` the first time any instance runs, anywhere: a
    marker file (not pickled state) remembers that it did."""

    def __init__(self, marker):
        super().__init__('none')
        self.marker = marker

    def step(self, action):
        if self._t >= 2 and not os.path.exists(self.marker):
            with open(self.marker, 'w'):
                pass
            raise RuntimeError('failing once')
        return super().step(action)


class TriggeredEnv(gym.Env):
    """Seeded random observations, rewards and episode lengths, so that no
    two episodes are alike unless they came from the same seeds; fails on
    demand. While the file ``trigger`` holds ``'raise N'`` or ``'kill N'``,
    the ``N``-th reset from then on (counted by whoever resets next: give
    each worker a file of its own) removes the file and raises, or
    SIGKILLs its own process."""

    observation_space = spaces.Box(-10.0, 10.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, trigger):
        self.trigger = str(trigger)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._pull_trigger()
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        terminated = bool(self.np_random.random() < 0.1)
        truncated = self._t >= 30 and not terminated
        return (self._obs(), float(self.np_random.random()), terminated,
                truncated, {})

    def _obs(self):
        return self.np_random.normal(size=4).astype(np.float32)

    def _pull_trigger(self):
        try:
            with open(self.trigger) as file:
                how, count = file.read().split()
        except FileNotFoundError:
            return
        if int(count) > 1:
            write_atomically(self.trigger, f'{how} {int(count) - 1}')
            return
        os.remove(self.trigger)
        if how == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError('triggered failure')


def write_atomically(path, text):
    """Write ``text`` to ``path`` so that no reader sees it half written."""
    partial = f'{path}.partial'
    with open(partial, 'w') as file:
        file.write(text)
    os.replace(partial, path)


class InPlaceEnv(gym.Env):
    """Returns the same observation array every step, overwritten in place
    (as some simulators do to avoid allocations)."""

    observation_space = spaces.Box(0.0, 100.0, (2,), np.float64)
    action_space = spaces.Discrete(2)

    def __init__(self):
        self._buf = np.zeros(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._buf[:] = 0
        return self._buf, {}

    def step(self, action):
        self._t += 1
        self._buf[:] = self._t
        return self._buf, 1.0, self._t >= 5, False, {}


class TaskEnv(gym.Env):
    """A meta-RL env: the reward is the task's goal value."""

    observation_space = spaces.Box(-10.0, 10.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self):
        self.goal = 0.0

    def set_task(self, goal):
        self.goal = float(goal)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.array([self.goal], np.float32), {}

    def step(self, action):
        return np.array([self.goal], np.float32), self.goal, True, False, {}


class TextEnv(gym.Env):
    """Observations of a Text space, which cannot be stacked."""

    observation_space = spaces.Text(5)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return 'a', {}

    def step(self, action):
        return 'b', 0.0, True, False, {}


class FirstObsAgent:
    """Deterministic agent without parameters: action 0 always."""

    def get_action(self, observation):
        return 0, {}


class CrashEnv(FaultyEnv):
    """Dies without a word in ``step`` (after ``after`` steps): ``exit``
    calls os._exit(3), ``segfault`` reads address 0, ``hang`` never
    returns. ``marker``: only the first instance anywhere does it."""

    def __init__(self, how, after=2, marker=None):
        super().__init__('none')
        self.how = how
        self.after_steps = after
        self.marker = marker

    def step(self, action):
        if self._t >= self.after_steps and self._first_time():
            if self.how == 'exit':
                os._exit(3)
            elif self.how == 'segfault':
                import ctypes
                ctypes.string_at(0)
            elif self.how == 'hang':
                import threading
                threading.Event().wait()
        return super().step(action)

    def _first_time(self):
        if self.marker is None:
            return True
        if os.path.exists(self.marker):
            return False
        with open(self.marker, 'w'):
            pass
        return True


class ParamAgent:
    """Acts 0 and reports its parameters in every agent_info."""

    def __init__(self):
        self.p = -1

    def get_action(self, observation):
        return 0, {'p': self.p}

    def set_params(self, params):
        self.p = params


class OneStepEnv(gym.Env):
    """Every episode is one step long: the cheapest possible episode."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 1.0, True, False, {}


class BusyEnv(OneStepEnv):
    """One-step episodes that burn about 5 ms of CPU each."""

    def step(self, action):
        deadline = time.process_time() + 0.005
        while time.process_time() < deadline:
            pass
        return super().step(action)


class Unpicklable:
    """An agent holding a lock, which no pickler can send to a worker."""

    def __init__(self):
        self.lock = threading.Lock()

    def get_action(self, observation):
        return 0, {}


#: Every field an EpisodeBatch is made of.
BATCH_FIELDS = ('observations', 'actions', 'rewards', 'terminated',
                'truncated', 'last_observations', 'env_infos', 'agent_infos',
                'episode_infos', 'lengths', 'versions', 'worker_numbers',
                'episode_ids', 'starts', 'cut', 'prior_steps', 'prior_returns')


def steps_of(batch):
    """``batch`` with its episodes numbered 0, 1, ...: what running the
    same round again reproduces (a worker gives each episode it starts a
    new id)."""
    from workers import EpisodeBatch
    fields = {name: getattr(batch, name) for name in BATCH_FIELDS}
    fields['episode_ids'] = np.arange(batch.n_episodes)
    return EpisodeBatch(**fields)


def leaves_of(nest):
    """The arrays of a nest of dicts and tuples, in order."""
    if isinstance(nest, dict):
        return [x for v in nest.values() for x in leaves_of(v)]
    if isinstance(nest, tuple):
        return [x for v in nest for x in leaves_of(v)]
    return [nest]


@contextlib.contextmanager
def closing_samplers(sampler_class, **defaults):
    """Yields ``make(agents, envs, **kwargs)``; every sampler it made is
    closed on the way out."""
    made = []

    def make(agents, envs, **kwargs):
        sampler = sampler_class(agents, envs, **{**defaults, **kwargs})
        made.append(sampler)
        return sampler

    try:
        yield make
    finally:
        for sampler in made:
            sampler.close()


def torch_policy(observation_space, action_space, seed=0,
                 report_threads=False):
    """A small torch MLP policy for a float Box observation space, as a
    TorchAgent: categorical for Discrete actions, Gaussian for Box. With
    ``report_threads``, ``agent_infos['threads']`` holds the torch threads
    of its process."""
    import torch
    from workers import TorchAgent

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            n_in = int(np.prod(observation_space.shape))
            self.discrete = isinstance(action_space, spaces.Discrete)
            n_out = int(action_space.n) if self.discrete else \
                int(np.prod(action_space.shape))
            self.net = torch.nn.Sequential(
                torch.nn.Linear(n_in, 16), torch.nn.Tanh(),
                torch.nn.Linear(16, n_out))
            self.log_std = torch.nn.Parameter(torch.zeros(n_out))

        def forward(self, x):
            out = self.net(x)
            if self.discrete:
                dist = torch.distributions.Categorical(logits=out)
            else:
                dist = torch.distributions.Normal(out, self.log_std.exp())
            if not report_threads:
                return dist
            return dist, {'threads': torch.full((len(x),),
                                                torch.get_num_threads())}

    torch.manual_seed(seed)
    return TorchAgent(Policy(), observation_space, action_space, seed=seed)


class InitRequired(OneStepEnv):
    """Building it fails unless the worker's init hook ran before (it sets
    ROLLOUT_SAMPLER_INIT); it reports that value in every info."""

    def __init__(self):
        self.init = os.environ.get('ROLLOUT_SAMPLER_INIT')
        if self.init is None:
            raise RuntimeError('worker_init did not run before the env was '
                               'built')

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {'init': int(self.init)}


def set_init_variable(worker_number):
    """A worker_init: marks this process as initialised by that worker."""
    os.environ['ROLLOUT_SAMPLER_INIT'] = str(worker_number)


def failing_init(worker_number):
    raise OSError(f'no licence for worker {worker_number}')


def torch_nest_policy(observation_space, action_space, seed=0):
    """A TorchAgent whose module flattens any stackable observation (the
    tensors TorchAgent makes of Box, Discrete, MultiDiscrete, MultiBinary
    and Dict / Tuple nests) into one linear layer; categorical logits per
    MultiDiscrete / Discrete action dimension."""
    import torch
    from workers import TorchAgent
    from workers.spaces import flat_dim

    def flatten(x):
        if isinstance(x, dict):
            return torch.cat([flatten(v) for v in x.values()], 1)
        if isinstance(x, tuple):
            return torch.cat([flatten(v) for v in x], 1)
        return x.reshape(len(x), -1).float()

    discrete = isinstance(action_space, spaces.Discrete)
    nvec = [int(action_space.n)] if discrete else \
        [int(k) for k in action_space.nvec]

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(flat_dim(observation_space),
                                       sum(nvec))

        def forward(self, x):
            logits = self.net(flatten(x))
            if discrete:
                return torch.distributions.Categorical(logits=logits)
            # One categorical per dimension, padded to a common width.
            parts = torch.split(logits, nvec, 1)
            width = max(nvec)
            padded = torch.stack([torch.nn.functional.pad(
                p, (0, width - p.shape[1]), value=-1e9) for p in parts], 1)
            return torch.distributions.Categorical(logits=padded)

    torch.manual_seed(seed)
    return TorchAgent(Policy(), observation_space, action_space, seed=seed)


class InitLog:
    """A worker_init that appends ``worker_number pid`` to a file."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self, worker_number):
        with open(self.path, 'a') as log:
            log.write(f'{worker_number} {os.getpid()}\n')


class BigObsEnv(gym.Env):
    """Observations of ``size`` bytes, every byte of step t's equal to
    ``t % 256``, so a batch shows whether any frame was mixed up."""

    action_space = spaces.Discrete(2)

    def __init__(self, size=1 << 20, length=20):
        self.observation_space = spaces.Box(0, 255, (size,), np.uint8)
        self.length = length
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(self.observation_space.shape, np.uint8), {}

    def step(self, action):
        self.t += 1
        obs = np.full(self.observation_space.shape, self.t % 256, np.uint8)
        return obs, 1.0, self.t >= self.length, False, {}


def check_big_obs(batch):
    """Every observation of a BigObsEnv batch is whole and in its place."""
    obs = batch.observations
    assert (obs.min(axis=1) == obs.max(axis=1)).all()
    step_in_episode = np.concatenate(
        [np.arange(p, p + n) for p, n in zip(batch.prior_steps,
                                             batch.lengths)])
    assert (obs[:, 0] == step_in_episode % 256).all()


class FlawedEnv(gym.Env):
    """A 4-step env returning one kind of bad data, named by ``flaw``:
    'reward_shape', 'reward_none', 'obs_dtype', 'obs_shape',
    'reset_obs_only', 'step_four' (the old gym step), 'obs_shape_changes',
    'str_raises'; None for none."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(3)

    def __init__(self, flaw=None):
        self.flaw = flaw
        self.t = 0

    def _obs(self):
        if self.flaw == 'obs_dtype':
            return np.zeros(2, np.float64)
        if self.flaw == 'obs_shape' or (self.flaw == 'obs_shape_changes'
                                        and self.t == 3):
            return np.zeros(5, np.float32)
        return np.zeros(2, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        if self.flaw == 'reset_obs_only':
            return self._obs()
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        if self.flaw == 'str_raises':
            raise UnprintableError()
        reward = {'reward_shape': np.ones(1), 'reward_none': None}.get(
            self.flaw, 1.0)
        if self.flaw == 'step_four':
            return self._obs(), reward, self.t >= 4, {}
        return self._obs(), reward, self.t >= 4, False, {}


class UnprintableError(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self):
        raise RuntimeError('no words')


class FlawedAgent:
    """Returns one kind of bad action, named by ``flaw``: 'action_shape'
    (shape (3,) for Box(2,)), 'action_range' (7 for Discrete(3)),
    'bare_array' (no agent_info)."""

    def __init__(self, flaw):
        self.flaw = flaw

    def get_action(self, observation):
        if self.flaw == 'action_shape':
            return np.zeros(3, np.float32), {}
        if self.flaw == 'action_range':
            return 7, {}
        return np.float32(0.5)  # 'bare_array'


class BoxActionEnv(FlawedEnv):
    """FlawedEnv with Box(2,) actions."""

    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)


class InfoSizeEnv(FlawedEnv):
    """Sends ``env_infos['x']`` of ``size`` values: workers built with
    different sizes return batches that cannot be joined."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {'x': np.zeros(self.size)}


class SleepyEnv(OneStepEnv):
    """Steps that take ``delay`` seconds."""

    def __init__(self, delay=0.02):
        self.delay = delay

    def step(self, action):
        time.sleep(self.delay)
        return np.zeros(1, np.float32), 1.0, False, False, {}


class CountingEnv(gym.Env):
    """Observations count an episode's steps (0 after a reset), so that a
    segment's first observation says how many steps of its episode came
    before it; episodes end after ``length`` steps, and each step takes
    ``delay`` seconds."""

    observation_space = spaces.Box(0.0, np.inf, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, delay=0.0, length=7):
        self.delay = delay
        self.length = length
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        if self.delay:
            time.sleep(self.delay)
        self._t += 1
        return (np.full(1, self._t, np.float32), 1.0,
                self._t >= self.length, False, {})


class ListPool:
    """A pool of gymnasium envs with envpool's synchronous interface, for
    EnvPoolWorker tests that must not need envpool: ``reset(env_id)``,
    ``step(actions, env_id=None)`` with infos as one dict of arrays, and
    envpool's own reset on the step after an episode ended (that step's
    action ignored). Env ``j`` is seeded with ``seed + j`` at its first
    reset. With ``reverse=True`` results come in the reverse order of
    ``env_id``, as envpool's may differ from it.

    ``steps[j]`` counts env ``j``'s steps; ``log[j]`` holds its
    ``(action, observation after)`` per step, resets as ``(None, obs)``.
    A step raises RuntimeError if it is the first to remove the file
    ``trigger`` (once, whichever process's pool steps first).
    """

    def __init__(self, task_id, *, num_envs, seed, reverse=False,
                 trigger=None, **make_kwargs):
        self.envs = [gym.make(task_id, **make_kwargs)
                     for _ in range(num_envs)]
        self.seeds = [seed + j for j in range(num_envs)]
        self.reverse = reverse
        self.trigger = trigger
        self.ended = [False] * num_envs
        self.elapsed = [0] * num_envs
        self.steps = [0] * num_envs
        self.log = [[] for _ in range(num_envs)]
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.closed = False

    def _ids(self, env_id):
        if env_id is None:
            return list(range(len(self.envs)))
        return [int(j) for j in env_id]

    def _out(self, ids, rows):
        if self.reverse:
            ids, rows = ids[::-1], rows[::-1]
        return ids, rows

    def _reset_one(self, j):
        obs, _ = self.envs[j].reset(seed=self.seeds[j])
        self.seeds[j] = None
        self.ended[j] = False
        self.elapsed[j] = 0
        self.log[j].append((None, obs))
        return obs

    def reset(self, env_id=None):
        ids, rows = self._out(*zip(*[(j, self._reset_one(j))
                                     for j in self._ids(env_id)]))
        info = {'env_id': np.array(ids, dtype=np.int32),
                'elapsed_step': np.zeros(len(ids), dtype=np.int32),
                'players': {'env_id': np.array(ids, dtype=np.int32)}}
        return np.stack(rows), info

    def step(self, actions, env_id=None):
        if self.trigger is not None and os.path.exists(self.trigger):
            try:
                os.remove(self.trigger)
            except FileNotFoundError:
                pass  # another pool took it
            else:
                raise RuntimeError('the pool failed on purpose')
        ids = self._ids(env_id)
        rows = []
        for action, j in zip(actions, ids):
            if self.ended[j]:  # envpool's reset step: no transition
                rows.append((self._reset_one(j), 0.0, False, False))
                continue
            obs, reward, term, trunc, _ = self.envs[j].step(action)
            self.steps[j] += 1
            self.elapsed[j] += 1
            self.ended[j] = term or trunc
            self.log[j].append((action, obs))
            rows.append((obs, reward, term, trunc))
        ids, rows = self._out(ids, rows)
        obs, rewards, term, trunc = zip(*rows)
        info = {'env_id': np.array(ids, dtype=np.int32),
                'elapsed_step': np.array([self.elapsed[j] for j in ids],
                                         dtype=np.int32),
                'players': {'env_id': np.array(ids, dtype=np.int32)}}
        return (np.stack(obs), np.array(rewards, dtype=np.float32),
                np.array(term), np.array(trunc), info)

    def close(self):
        self.closed = True
        for env in self.envs:
            env.close()


class InfoEnv(gym.Env):
    """Episodes of random length, and infos that come and go: a count on
    odd steps, a score at the end, the seed's draw at reset."""

    observation_space = spaces.Box(-10, 10, (3,), np.float32)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._length = int(self.np_random.integers(2, 9))
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        info = {'draw': float(obs[0])}
        if options:
            info['options'] = options.get('tag', 0)
        return obs, info

    def step(self, action):
        self._t += 1
        obs = np.full(3, self._t + 0.1 * int(action), np.float32)
        done = self._t >= self._length
        terminated = done and self._length % 2 == 0
        truncated = done and not terminated
        info = {'t': self._t} if self._t % 2 else {}
        if done:
            info['score'] = float(self._length)
        return obs, float(action) - 1.0, terminated, truncated, info


def assert_same_nest(ours, theirs):
    """Dicts with the same keys, arrays of the same dtype, shape and values
    (object arrays compared element by element), lists and tuples item by
    item, other values equal and of one type, all the way down."""
    if isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same_nest(a, b)
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert_same_nest(ours[key], theirs[key])
    elif isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        if theirs.dtype == object:
            for a, b in zip(ours, theirs):
                assert_same_nest(a, b)
        else:
            np.testing.assert_array_equal(ours, theirs)
    else:
        assert type(ours) is type(theirs) and ours == theirs


class ComingAndGoingEnv:
    """A ParallelEnv of our own (PettingZoo's API, duck-typed): agents
    'a', 'b' and 'c' start; 'd' comes at step 1; 'c' terminates at step
    2; 'b' leaves at step 3 without a flag; 'a' and 'd' terminate at step
    5. An observation is ``[t, agent number, noise]`` (noise from the
    reset's seed), a reward ``agent number + t / 10``, an action is
    echoed in the info."""

    possible_agents = ['a', 'b', 'c', 'd']
    metadata = {}

    def __init__(self, obs_size=3):
        self.obs_size = obs_size
        self.agents = []
        self.rng = np.random.default_rng()
        self.closed = False

    def observation_space(self, agent):
        return spaces.Box(-100, 100, (self.obs_size,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def _obs(self, agent):
        obs = np.zeros(self.obs_size, np.float32)
        obs[:3] = [self.t, self.possible_agents.index(agent),
                   self.rng.random()]
        return obs

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        self.agents = ['a', 'b', 'c']
        return {a: self._obs(a) for a in self.agents}, \
            {a: {'start': 1} for a in self.agents}

    def step(self, actions):
        assert set(actions) == set(self.agents), (actions, self.agents)
        self.t += 1
        acted = list(self.agents)
        obs = {a: self._obs(a) for a in acted}
        rewards = {a: self.possible_agents.index(a) + self.t / 10
                   for a in acted}
        terms = {a: False for a in acted}
        truncs = {a: False for a in acted}
        infos = {a: {'echo': int(actions[a])} for a in acted}
        if self.t == 1:
            self.agents.append('d')
            obs['d'] = self._obs('d')
            infos['d'] = {}
        if self.t == 2:
            terms['c'] = True
            self.agents.remove('c')
        if self.t == 3:
            self.agents.remove('b')  # gone without a flag
        if self.t == 5:
            terms = {a: True for a in acted}
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def close(self):
        self.closed = True


class CountingAgent:
    """Acts ``observation[1] % 2``; records each batch it was asked for."""

    def __init__(self, offset=0):
        self.calls = []
        self.offset = offset

    def get_actions(self, observations):
        self.calls.append(observations[:, 1].tolist())
        actions = (observations[:, 1].astype(int) + self.offset) % 2
        return actions, {'offset': np.full(len(actions), self.offset)}

    def get_action(self, observation):
        raise AssertionError('batched agents are asked for batches')

    def set_params(self, params):
        self.offset = params
