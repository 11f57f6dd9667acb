"""Agent steps per second on PettingZoo envs: PettingZoo's own loop,
SuperSuit's vector envs with processes, and ours, in one run.

Each row steps its envs with random actions (drawn ahead, so that drawing
them costs nothing) for about ``--seconds`` per round; rounds go row after
row, ``--rounds`` times, and each row's median is printed, as agent steps
(transitions) per second and per core (divided by the processes that
step envs, at most the CPUs this process may use):

- PettingZoo loop: one ``ParallelEnv`` in this process, ``env.step`` with
  a dict of actions, reset when its agents are gone (1 core);
- SuperSuit: ``concat_vec_envs_v1(pettingzoo_env_to_vec_env_v1(env),
  --envs, num_cpus=--workers)``, its vector env of agents on processes;
- ours, vector env: ``sampler.vector.MultiAgentVectorEnv`` with the same
  envs on ``--workers`` workers (the actions sent from here, lock-step);
- ours, sampler: ``MultiprocessingSampler.obtain_steps`` with a random
  policy in each of ``--workers`` workers (one env each; the policy acts
  for all its agents in one call), the main path of this library.

    python scripts/bench_multi_agent.py                 # simple_spread
    python scripts/bench_multi_agent.py --env pursuit

Needs ``pip install "rollout-sampler[multiagent]" mpe2 supersuit``.
"""

import argparse
import os
import statistics
import time

import numpy as np

from sampler import MultiprocessingSampler
from sampler.sampler import available_cpus
from sampler.vector import MultiAgentVectorEnv
from workers import MultiAgentWorker


class EnvFn:
    """A picklable constructor of the env ``name``."""

    def __init__(self, name):
        self.name = name

    def __call__(self):
        if self.name == 'spread':
            from mpe2 import simple_spread_v3
            return simple_spread_v3.parallel_env(N=3, max_cycles=25)
        from pettingzoo.sisl import pursuit_v5
        return pursuit_v5.parallel_env(max_cycles=500)


class RandomPolicy:
    """Random Discrete(n) actions, drawn ahead in blocks."""

    def __init__(self, n_actions):
        self.n_actions = n_actions
        self.rng = np.random.default_rng(0)
        self.pool = self.rng.integers(0, n_actions, 1 << 16)
        self.at = 0

    def seed(self, seed):
        self.rng = np.random.default_rng(seed)

    def get_actions(self, observations):
        n = len(observations)
        if self.at + n > len(self.pool):
            self.at = 0
        out = self.pool[self.at:self.at + n]
        self.at += n
        return out, {}

    def get_action(self, observation):
        return self.get_actions([observation])[0][0], {}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--env', choices=('spread', 'pursuit'), default='spread')
    p.add_argument('--envs', type=int, default=8,
                   help='envs of the vector envs')
    p.add_argument('--workers', type=int, default=2,
                   help='processes of SuperSuit and workers of ours')
    p.add_argument('--seconds', type=float, default=3.0,
                   help='length of a round of one row')
    p.add_argument('--rounds', type=int, default=5)
    return p.parse_args(argv)


class PettingZooLoop:
    name = 'PettingZoo loop (1 process)'
    processes = 1

    def __init__(self, args):
        self.env = EnvFn(args.env)()
        self.agents = self.env.possible_agents
        self.env.reset(seed=0)
        self.policy = RandomPolicy(self.env.action_space(self.agents[0]).n)

    def run(self, seconds):
        env, steps, deadline = self.env, 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(100):
                live = env.agents
                actions, _ = self.policy.get_actions(live)
                env.step(dict(zip(live, actions.tolist())))
                steps += len(live)
                if not env.agents:
                    env.reset()
        return steps

    def close(self):
        self.env.close()


class VectorRow:
    """A vector env of agents stepped with random actions."""

    def __init__(self, args):
        self.envs = self.make(args)
        self.envs.reset(seed=0)
        n = self.envs.num_envs
        # SuperSuit's vector envs name their single space action_space.
        space = getattr(self.envs, 'single_action_space',
                        self.envs.action_space)
        self.actions = np.random.default_rng(0).integers(0, space.n,
                                                         (256, n))
        self.processes = args.workers

    def run(self, seconds):
        envs, k = self.envs, 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(20):
                envs.step(self.actions[k % 256])
                k += 1
        # Every slot's agent stepped: none of simple_spread's or
        # pursuit's leave its env before the end.
        return k * envs.num_envs

    def close(self):
        self.envs.close()


class SuperSuitRow(VectorRow):
    def make(self, args):
        import supersuit as ss
        self.name = (f'SuperSuit concat_vec_envs ({args.envs} envs, '
                     f'{args.workers} processes)')
        return ss.concat_vec_envs_v1(
            ss.pettingzoo_env_to_vec_env_v1(EnvFn(args.env)()), args.envs,
            num_cpus=args.workers, base_class='gymnasium')


class OurVectorRow(VectorRow):
    def make(self, args):
        self.name = (f'ours: MultiAgentVectorEnv ({args.envs} envs, '
                     f'{args.workers} workers)')
        return MultiAgentVectorEnv([EnvFn(args.env)] * args.envs,
                                   n_workers=args.workers)


class OurSamplerRow:
    def __init__(self, args):
        self.name = (f'ours: obtain_steps ({args.workers} workers, 1 env '
                     f'and the policy in each)')
        self.processes = args.workers
        env = EnvFn(args.env)
        probe = env()
        n = probe.action_space(probe.possible_agents[0]).n
        probe.close()
        self.sampler = MultiprocessingSampler(
            RandomPolicy(n), env, n_workers=args.workers, seed=0,
            worker_class=MultiAgentWorker, progress=False)
        self.sampler.obtain_steps(10)

    def run(self, seconds):
        steps, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            steps += len(self.sampler.obtain_steps(200))
        return steps

    def close(self):
        self.sampler.close()


def main(argv=None):
    args = parse_args(argv)
    cpus = available_cpus()
    rows = []
    for make in (PettingZooLoop, SuperSuitRow, OurVectorRow, OurSamplerRow):
        try:
            rows.append(make(args))
        except ImportError as err:
            print(f'skipped {make.__name__}: {err}')
    rates = {row.name: [] for row in rows}
    try:
        for r in range(args.rounds):
            for row in rows:
                began = time.perf_counter()
                steps = row.run(args.seconds)
                rates[row.name].append(steps / (time.perf_counter() - began))
            print(f'round {r + 1} of {args.rounds} done', flush=True)
    finally:
        for row in rows:
            row.close()
    print(f'\n{args.env}: agent steps per second, median of {args.rounds} '
          f'rounds of {args.seconds:g} s ({cpus} CPUs, pid {os.getpid()})')
    base = statistics.median(rates[rows[0].name])
    print(f'{"":<58} {"per s":>9} {"per core":>9} {"vs loop":>8}')
    out = {}
    for row in rows:
        rate = statistics.median(rates[row.name])
        per_core = rate / min(row.processes, cpus)
        out[row.name] = (rate, per_core)
        print(f'{row.name:<58} {rate:9,.0f} {per_core:9,.0f} '
              f'{rate / base:7.2f}x')
    return out


if __name__ == '__main__':
    main()
