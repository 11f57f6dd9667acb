"""Parameter-sharing PPO on a cooperative PettingZoo env: one policy acts
for every agent, the envs' agents step in our workers as the slots of one
vector env (``sampler.vector.MultiAgentVectorEnv``), CleanRL style.

The loop is ``train_ppo_vector.py``'s (``train``: its actor-critic, GAE
and clipped updates) on agents instead of envs: ``--num-envs`` copies of
the env (MPE's ``simple_spread``: ``--agents`` agents cover as many
landmarks and share the reward for it) make ``num_envs * agents`` slots.
Rows of agents not in their env (``infos["active"]`` False: none in
simple_spread, whose agents stay to the end) are left out of the
updates. ``--vector supersuit`` runs the same loop on SuperSuit's
``concat_vec_envs_v1``, to compare.

    python scripts/train_ppo_multiagent.py           # about 2.5 minutes here
    python scripts/train_ppo_multiagent.py --csv c.csv --plot c.png

Needs ``pip install "rollout-sampler[multiagent,torch]" mpe2``.
"""

import argparse
import os
import sys

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _curves import save_curve  # noqa: E402
from train_ppo_vector import add_ppo_arguments, train  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--vector', choices=('ours', 'supersuit'),
                   default='ours', help='whose vector env steps the agents')
    p.add_argument('--agents', type=int, default=3,
                   help="simple_spread's agents (and landmarks)")
    p.add_argument('--max-cycles', type=int, default=25,
                   help='env steps of an episode')
    p.add_argument('--num-envs', type=int, default=16)
    p.add_argument('--workers', type=int, default=2,
                   help='worker processes of the vector env')
    add_ppo_arguments(p, num_steps=50, total_steps=1_200_000, lr=1e-3,
                      unit='agent steps (transitions)')
    p.add_argument('--csv', default=None, help='write the learning curve '
                   '(agent steps, seconds, mean return) here')
    p.add_argument('--plot', default=None, help='draw it into this PNG '
                   '(needs matplotlib)')
    return p.parse_args(argv)


class SpreadFn:
    """Builds one simple_spread env (a picklable constructor)."""

    def __init__(self, agents, max_cycles):
        self.agents, self.max_cycles = agents, max_cycles

    def __call__(self):
        from mpe2 import simple_spread_v3
        return simple_spread_v3.parallel_env(
            N=self.agents, max_cycles=self.max_cycles,
            continuous_actions=False)


def make_envs(args):
    make_env = SpreadFn(args.agents, args.max_cycles)
    if args.vector == 'ours':
        from sampler.vector import MultiAgentVectorEnv
        return MultiAgentVectorEnv(
            [make_env] * args.num_envs, n_workers=args.workers,
            autoreset_mode=AutoresetMode.SAME_STEP)
    import supersuit as ss
    envs = ss.concat_vec_envs_v1(
        ss.pettingzoo_env_to_vec_env_v1(make_env()), args.num_envs,
        num_cpus=args.workers, base_class='gymnasium')
    envs.single_observation_space = envs.observation_space
    envs.single_action_space = envs.action_space
    return envs


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    envs = make_envs(args)
    try:
        curve = train(args, envs, unit='agent steps',
                      window=100 * args.agents)
    finally:
        envs.close()
    write_curve(args, curve)
    return curve


def random_return(args, episodes=100):
    """The mean return of an agent acting at random, in this process."""
    env = SpreadFn(args.agents, args.max_cycles)()
    rng = np.random.default_rng(args.seed)
    total = 0.0
    for episode in range(episodes):
        env.reset(seed=args.seed + episode)
        while env.agents:
            _, rewards, _, _, _ = env.step(
                {a: int(rng.integers(env.action_space(a).n))
                 for a in env.agents})
            total += sum(rewards.values())
    env.close()
    return total / (episodes * args.agents)


def write_curve(args, curve):
    save_curve(curve, args.csv, args.plot, 'agent steps',
               'mean return of an agent (last 100 episodes)',
               f'parameter-sharing PPO on simple_spread ({args.agents} '
               f'agents), {args.num_envs} envs, {args.workers} workers',
               baseline=lambda: ('random actions', random_return(args)))


if __name__ == '__main__':
    main()
