"""Cross-entropy method on a gymnasium env, sampling with rollout-sampler.

Every generation draws a population of MLP weight vectors from a diagonal
Gaussian, evaluates them ``n_workers`` at a time (a per-worker
``agent_update`` list hands each worker its own candidate, so one call
scores ``n_workers`` candidates), and refits the Gaussian to the elite.

    python scripts/train_cem.py                  # CartPole-v1, about 1 s
    python scripts/train_cem.py --generations 30 --hidden 16
"""

import argparse
import time

import gymnasium as gym
import numpy as np

from sampler import LocalSampler
from workers import MLPAgent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--env', default='CartPole-v1', help='gymnasium env id')
    p.add_argument('--generations', type=int, default=15,
                   help='rounds of sample, score, refit')
    p.add_argument('--population', type=int, default=16,
                   help='candidates per generation')
    p.add_argument('--elite-frac', type=float, default=0.25,
                   help='share of candidates the Gaussian is refit to')
    p.add_argument('--episodes', type=int, default=2,
                   help='episodes per candidate')
    p.add_argument('--workers', type=int, default=4,
                   help='candidates scored per sampler call')
    p.add_argument('--hidden', type=int, default=8, help='hidden layer width')
    p.add_argument('--init-std', type=float, default=1.0,
                   help='initial standard deviation of the weights')
    p.add_argument('--max-episode-length', type=int, default=500)
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def flatten(params, keys):
    return np.concatenate([params[k].ravel() for k in keys])


def unflatten(vector, template, keys):
    out, i = {}, 0
    for k in keys:
        size = template[k].size
        out[k] = vector[i:i + size].reshape(template[k].shape)
        i += size
    return out


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    env = gym.make(args.env)
    agent = MLPAgent(env.observation_space, env.action_space,
                     hidden_sizes=(args.hidden,), seed=args.seed)
    template = agent.get_params()
    keys = sorted(template)
    mean = flatten(template, keys)
    std = np.full_like(mean, args.init_std)
    n_elite = max(1, int(args.population * args.elite_frac))

    with LocalSampler(agent, args.env, n_workers=args.workers,
                      seed=args.seed,
                      max_episode_length=args.max_episode_length) as sampler:
        for generation in range(args.generations):
            started = time.perf_counter()
            candidates = mean + std * rng.standard_normal(
                (args.population, mean.size))
            scores, transitions = [], 0
            for first in range(0, args.population, args.workers):
                chunk = candidates[first:first + args.workers]
                # Pad the last chunk: every worker needs an update.
                chunk = np.concatenate(
                    [chunk, np.repeat(chunk[-1:], args.workers - len(chunk),
                                      axis=0)])
                batch = sampler.obtain_exact_episodes(
                    args.episodes,
                    agent_update=[unflatten(c, template, keys)
                                  for c in chunk])
                transitions += len(batch)
                returns = batch.episode_returns.reshape(args.workers,
                                                        args.episodes)
                scores.extend(returns.mean(axis=1)[:args.population - first])
            scores = np.asarray(scores)
            elite = candidates[np.argsort(scores)[-n_elite:]]
            mean, std = elite.mean(axis=0), elite.std(axis=0) + 1e-3
            elapsed = time.perf_counter() - started
            print(f'generation {generation:3d}  mean return '
                  f'{scores.mean():7.1f}  best {scores.max():7.1f}  '
                  f'{transitions / elapsed:9,.0f} transitions/s')
    return mean, scores


if __name__ == '__main__':
    main()
