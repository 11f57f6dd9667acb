"""Our sampler against peers that need extra installs, in one run.

Extends ``sampler bench --compare`` (plain loop, gymnasium Sync/Async
VectorEnv, envpool) with stable-baselines3's SubprocVecEnv, all timed
call by call in turn on the same task, each row's episodes checked. Peers
that are not installed are skipped with a note:

    pip install torch==2.13.0 stable-baselines3   # CPU torch first
    pip install "rollout-sampler[bench]"                 # envpool

    python scripts/bench_peers.py                          # CartPole-v1, MLP
    python scripts/bench_peers.py --step-cost-us 200 --samples 4000

envpool runs its own C++ envs (see sampler.bench.peers), so it cannot take
--step-cost-us (it is skipped then) and its steps cost less than
gymnasium's Python ones.
"""

import argparse
import json
import sys

import psutil

from sampler import bench
from sampler.bench import EpisodeRecorder, Row, Sample


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--env', default='CartPole-v1', help='gymnasium env id')
    p.add_argument('--agent', choices=['mlp', 'random'], default='mlp')
    p.add_argument('--workers', type=int, default=2,
                   help='workers of our sampler')
    p.add_argument('--envs-per-worker', default='1,8,16',
                   help='our configurations: envs per worker, comma list')
    p.add_argument('--samples', type=int, default=20000,
                   help='transitions per call')
    p.add_argument('--iterations', type=int, default=5, help='calls per row')
    p.add_argument('--step-cost-us', type=float, default=0,
                   help='CPU every env step burns (see sampler bench)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None, help='write every figure here')
    return p.parse_args(argv)


class SubprocVecEnvRow(Row):
    """stable-baselines3's SubprocVecEnv: a process per env, the agent
    batched in the caller. Its autoreset returns the reset observation
    with the final step's reward, so every step is a real transition."""

    def __init__(self, n_envs, agent, env_fn, seed):
        self.n_envs, self.agent, self.env_fn, self.seed = \
            n_envs, agent, env_fn, seed
        self.name = f'stable-baselines3 SubprocVecEnv ({n_envs} envs)'

    def setup(self):
        from stable_baselines3.common.vec_env import SubprocVecEnv
        self.envs = SubprocVecEnv([self.env_fn] * self.n_envs,
                                  start_method='forkserver')
        self.envs.seed(self.seed)
        self.obs = self.envs.reset()
        self.steps = []
        self.recorder = EpisodeRecorder(self.n_envs)

    def call(self, n, params):
        self.agent.set_params(params)
        envs, get_actions, keep = self.envs, self.agent.get_actions, \
            self.steps.append
        obs, transitions, episodes = self.obs, 0, 0
        while transitions < n:
            actions, _ = get_actions(obs)
            next_obs, rewards, dones, infos = envs.step(actions)
            keep((obs, actions, rewards, dones, next_obs, infos))
            episodes += int(dones.sum())
            transitions += self.n_envs
            obs = next_obs
        self.obs = obs
        return Sample(transitions, episodes)

    def worker_pids(self):
        return [p.pid for p in self.envs.processes]

    def check(self):
        for obs, actions, rewards, dones, next_obs, infos in self.steps:
            for i in range(self.n_envs):
                info = infos[i]
                truncated = bool(dones[i] and
                                 info.get('TimeLimit.truncated', False))
                last = info['terminal_observation'] if dones[i] \
                    else next_obs[i]
                self.recorder.record(i, obs[i], actions[i], rewards[i],
                                     dones[i] and not truncated, truncated,
                                     last)
        self.steps = []
        self.recorder.completed_batch()

    def close(self):
        self.envs.close()


def installed(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv=None):
    args = parse_args(argv)
    envs_per_worker = tuple(int(k) for k in args.envs_per_worker.split(','))
    notes = []  # envpool's rows come with compare=True, or a note
    rows, agent, _ = bench.build_rows(
        env=args.env, backend='multiprocessing', workers=args.workers,
        envs_per_worker=envs_per_worker, agent=args.agent, seed=args.seed,
        max_episode_length=None, step_cost_us=args.step_cost_us,
        compare=True, progress=False, skipped=notes)
    env_fn = rows[0].env_fn
    if installed('stable_baselines3'):
        rows += [SubprocVecEnvRow(n, bench.make_agent(args.agent, env_fn,
                                                      args.seed),
                                  env_fn, args.seed) for n in (2, 4)]
    else:
        notes.append('stable-baselines3 not installed: pip install '
                     'torch==2.13.0 stable-baselines3')
    results, best = bench.time_rows(
        rows, agent.get_params(), samples=args.samples,
        iterations=args.iterations,
        echo=lambda line: print(line, file=sys.stderr))
    result = {'env': args.env, 'agent': args.agent,
              'samples': args.samples, 'iterations': args.iterations,
              'step_cost_us': args.step_cost_us,
              'cpus': len(psutil.Process().cpu_affinity()),
              'best_single_process_row': best, 'rows': results,
              'skipped': notes}
    print(bench.format_table(result))  # with a line per row skipped
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
