"""Start-up of a MultiprocessingSampler with a PyTorch agent.

Times building a sampler (until every worker has built its env and agent
and said ready) in a fresh Python process each time, as a training script
starts, with and without ``preload=("torch",)``. Without it every worker
re-imports the main module and with it torch; with it the forkserver
imports torch once and the workers fork from it. Medians of --runs fresh
processes per row::

    pip install torch==2.13.0      # the CPU build
    python scripts/bench_startup.py
    python scripts/bench_startup.py --workers 2,8 --runs 5
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--workers', default='2,8',
                   help='worker counts, a comma list')
    p.add_argument('--runs', type=int, default=3,
                   help='fresh processes per row')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(spec):
    """Runs in the fresh process: build one sampler, print the seconds."""
    n_workers, preload = json.loads(spec)
    started = time.perf_counter()
    import gymnasium as gym
    import torch

    from sampler import MultiprocessingSampler
    from workers import TorchAgent
    imported = time.perf_counter()

    class Policy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

        def forward(self, x):
            return torch.distributions.Categorical(logits=self.net(x))

    env = gym.make('CartPole-v1')
    agent = TorchAgent(Policy(), env.observation_space, env.action_space)
    built = time.perf_counter()
    with MultiprocessingSampler(agent, 'CartPole-v1', n_workers=n_workers,
                                seed=0, preload=tuple(preload)) as s:
        ready = time.perf_counter()
        s.obtain_steps(1)
    print(json.dumps({'import_s': imported - started,
                      'sampler_s': ready - built}))


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(args.child)
        return None
    rows = []
    for n in (int(x) for x in args.workers.split(',')):
        for preload in ([], ['torch']):
            runs = []
            for _ in range(args.runs):
                out = subprocess.run(
                    [sys.executable, __file__, '--child',
                     json.dumps([n, preload])],
                    capture_output=True, text=True, check=True, timeout=600)
                runs.append(json.loads(out.stdout.splitlines()[-1]))
            seconds = [r['sampler_s'] for r in runs]
            rows.append({'workers': n, 'preload': preload,
                         'median_s': statistics.median(seconds),
                         'runs_s': seconds,
                         'caller_import_s': statistics.median(
                             r['import_s'] for r in runs)})
            print(f'{n} workers, preload={tuple(preload)!s:10}  start-up '
                  f'{rows[-1]["median_s"]:.2f} s (median of {args.runs}: '
                  f'{", ".join(f"{s:.2f}" for s in seconds)}); the '
                  f'script imported torch in '
                  f'{rows[-1]["caller_import_s"]:.2f} s', flush=True)
    return rows


if __name__ == '__main__':
    main()
