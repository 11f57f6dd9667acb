"""Measuring sampling throughput: what ``sampler bench`` runs.

Each iteration is one ``obtain_samples`` call carrying fresh agent
parameters (a new version, as in training); the figure people look for is
transitions per second, reported as the median over the iterations with
the min and max beside it.
"""

import json
import statistics
import time

import gymnasium

from sampler.local_sampler import LocalSampler
from sampler.multiprocessing_sampler import MultiprocessingSampler
from workers import DefaultWorker, MLPAgent, RandomAgent, VecWorker

BACKENDS = {'local': LocalSampler, 'multiprocessing': MultiprocessingSampler}


def make_agent(kind, env_id, seed):
    env = gymnasium.make(env_id)
    try:
        if kind == 'random':
            return RandomAgent(env.action_space, seed=seed)
        return MLPAgent(env.observation_space, env.action_space, seed=seed)
    finally:
        env.close()


def run(*, env='CartPole-v1', backend='multiprocessing', workers=1,
        envs_per_worker=1, agent='mlp', samples=20000, iterations=5,
        max_episode_length=None, seed=0, progress=None):
    """Time ``iterations`` calls of ``obtain_samples(samples)``.

    Returns:
        dict of the configuration and the figures; rates end in ``_per_s``.
    """
    the_agent = make_agent(agent, env, seed)
    worker_class, worker_args = DefaultWorker, None
    if envs_per_worker > 1:
        worker_class, worker_args = VecWorker, {'n_envs': envs_per_worker}
    options = {}
    if backend != 'local':
        options['progress'] = progress
    started = time.perf_counter()
    sampler = BACKENDS[backend](
        the_agent, env, n_workers=workers, seed=seed,
        max_episode_length=max_episode_length, worker_class=worker_class,
        worker_args=worker_args, **options)
    startup_s = time.perf_counter() - started
    rates, episode_rates, per_call = [], [], []
    with sampler:
        for _ in range(iterations):
            t0 = time.perf_counter()
            batch = sampler.obtain_samples(
                samples, agent_update=the_agent.get_params())
            elapsed = time.perf_counter() - t0
            rates.append(len(batch) / elapsed)
            episode_rates.append(batch.n_episodes / elapsed)
            per_call.append({'transitions': len(batch),
                             'episodes': batch.n_episodes,
                             'seconds': elapsed})
        stats = sampler.stats
    return {
        'env': env, 'backend': backend, 'workers': workers,
        'envs_per_worker': envs_per_worker, 'agent': agent,
        'samples': samples, 'iterations': iterations,
        'max_episode_length': max_episode_length, 'seed': seed,
        'median_transitions_per_s': statistics.median(rates),
        'min_transitions_per_s': min(rates),
        'max_transitions_per_s': max(rates),
        'median_episodes_per_s': statistics.median(episode_rates),
        'startup_s': startup_s,
        'discarded_episodes': stats['discarded_episodes'],
        'calls': per_call,
    }


def format_table(result):
    rows = [
        ('transitions/s (median)', f"{result['median_transitions_per_s']:,.0f}"),
        ('transitions/s (min..max)',
         f"{result['min_transitions_per_s']:,.0f} .. "
         f"{result['max_transitions_per_s']:,.0f}"),
        ('episodes/s (median)', f"{result['median_episodes_per_s']:,.1f}"),
        ('discarded episodes', str(result['discarded_episodes'])),
        ('start-up (s)', f"{result['startup_s']:.3f}"),
    ]
    width = max(len(name) for name, _ in rows)
    head = (f"{result['env']} | backend {result['backend']} | "
            f"{result['workers']} worker(s) x {result['envs_per_worker']} "
            f"env(s) | {result['agent']} agent | {result['iterations']} calls "
            f"of {result['samples']} transitions")
    return '\n'.join([head] + [f'  {name:<{width}}  {value}'
                               for name, value in rows])


def write_json(result, path):
    with open(path, 'w') as f:
        json.dump(result, f, indent=2)
        f.write('\n')
