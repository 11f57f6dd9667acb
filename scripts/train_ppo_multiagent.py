"""Parameter-sharing PPO on a cooperative PettingZoo env: one policy acts
for every agent, the envs' agents step in our workers as the slots of one
vector env (``sampler.vector.MultiAgentVectorEnv``), CleanRL style.

The loop is ``train_ppo_vector.py``'s (its actor-critic, GAE and clipped
updates) on agents instead of envs: ``--num-envs`` copies of the env
(MPE's ``simple_spread``: ``--agents`` agents cover as many landmarks
and share the reward for it) make ``num_envs * agents`` slots. Rows of
agents not in their env (``infos["active"]`` False: none in
simple_spread, whose agents stay to the end) are left out of the
updates. ``--vector supersuit`` runs the same loop on SuperSuit's
``concat_vec_envs_v1``, to compare.

    python scripts/train_ppo_multiagent.py           # about 2.5 minutes here
    python scripts/train_ppo_multiagent.py --csv c.csv --plot c.png

Needs ``pip install "rollout-sampler[multiagent,torch]" mpe2``.
"""

import argparse
import collections
import csv
import os
import sys
import time

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_ppo_vector import ActorCritic, gae, update  # noqa: E402


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
    p.add_argument('--num-steps', type=int, default=50,
                   help='steps of every env per iteration')
    p.add_argument('--total-steps', type=int, default=1_200_000,
                   help='agent steps (transitions) in all')
    p.add_argument('--lr', type=float, default=1e-3,
                   help='Adam step size, annealed to 0')
    p.add_argument('--gamma', type=float, default=0.99)
    p.add_argument('--gae-lambda', type=float, default=0.95)
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--minibatches', type=int, default=4)
    p.add_argument('--clip', type=float, default=0.2)
    p.add_argument('--entropy-coef', type=float, default=0.01)
    p.add_argument('--value-coef', type=float, default=0.5)
    p.add_argument('--max-grad-norm', type=float, default=0.5)
    p.add_argument('--hidden', type=int, default=64)
    p.add_argument('--seed', type=int, default=1)
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
        return train(args, envs)
    finally:
        envs.close()


def train(args, envs):
    n_slots, n_steps = envs.num_envs, args.num_steps
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    model = ActorCritic(obs_dim, envs.single_action_space.n, args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-5)
    batch_size = n_slots * n_steps
    iterations = max(1, args.total_steps // batch_size)
    observations = torch.zeros((n_steps, n_slots, obs_dim))
    actions = torch.zeros((n_steps, n_slots), dtype=torch.long)
    log_probs = torch.zeros((n_steps, n_slots))
    rewards = torch.zeros((n_steps, n_slots))
    dones = torch.zeros((n_steps, n_slots))
    values = torch.zeros((n_steps, n_slots))
    acting = torch.ones((n_steps, n_slots), dtype=torch.bool)
    returns_seen = collections.deque(maxlen=100 * args.agents)
    episode_return = np.zeros(n_slots)
    obs, infos = envs.reset(seed=args.seed)
    active = _active(infos, n_slots)
    obs = torch.as_tensor(obs, dtype=torch.float32)
    start, mean_return, curve = time.perf_counter(), float('nan'), []
    for iteration in range(iterations):
        for group in optimizer.param_groups:
            group['lr'] = args.lr * (1 - iteration / iterations)
        for t in range(n_steps):
            with torch.no_grad():
                action, log_prob, _, value = model.act(obs)
            observations[t], actions[t] = obs, action
            log_probs[t], values[t] = log_prob, value
            acting[t] = torch.as_tensor(active)
            obs, reward, terminated, truncated, infos = envs.step(
                action.numpy())
            episode_return += reward
            reward = torch.as_tensor(reward, dtype=torch.float32)
            cut = np.flatnonzero(truncated & ~terminated)
            if len(cut):  # bootstrap what the time limit cut off
                final = np.stack([_final_obs(infos, i) for i in cut])
                with torch.no_grad():
                    reward[cut] += args.gamma * model.value(
                        torch.as_tensor(final, dtype=torch.float32))
            rewards[t] = reward
            done = terminated | truncated
            dones[t] = torch.as_tensor(done, dtype=torch.float32)
            for i in np.flatnonzero(done):
                returns_seen.append(episode_return[i])
                episode_return[i] = 0.0
            active = _active(infos, n_slots)
            obs = torch.as_tensor(obs, dtype=torch.float32)
        with torch.no_grad():
            advantages = gae(args, rewards, values, dones, model.value(obs))
        keep = acting.reshape(-1)
        update(args, model, optimizer,
               observations.reshape(-1, obs_dim)[keep],
               actions.reshape(-1)[keep], log_probs.reshape(-1)[keep],
               advantages.reshape(-1)[keep],
               (advantages + values).reshape(-1)[keep])
        if returns_seen:
            mean_return = float(np.mean(returns_seen))
        steps = (iteration + 1) * batch_size
        seconds = time.perf_counter() - start
        curve.append((steps, round(seconds, 2), round(mean_return, 3)))
        print(f'{steps:>9} agent steps  {seconds:6.1f} s  mean return '
              f'{mean_return:7.2f}', flush=True)
    write_curve(args, curve)
    return curve


def _active(infos, n_slots):
    """Per slot, whether its agent acts on the observation: SuperSuit's
    vector envs have no mask (their agents are all there)."""
    if isinstance(infos, dict) and 'active' in infos:
        return np.asarray(infos['active'], dtype=bool)
    return np.ones(n_slots, dtype=bool)


def _final_obs(infos, i):
    if isinstance(infos, dict):
        return infos['final_obs'][i]
    return infos[i]['terminal_observation']  # SuperSuit's, as SB3's


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
    if args.csv:
        with open(args.csv, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['agent_steps', 'seconds', 'mean_return'])
            writer.writerows(curve)
        print(f'wrote {args.csv}')
    if args.plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([c[0] for c in curve], [c[2] for c in curve])
        ax.set_xlabel('agent steps')
        ax.set_ylabel('mean return of an agent (last 100 episodes)')
        random = random_return(args)
        ax.axhline(random, color='gray', linestyle='--',
                   label=f'random actions ({random:.1f})')
        ax.legend(loc='lower right')
        ax.set_title(f'parameter-sharing PPO on simple_spread '
                     f'({args.agents} agents), {args.num_envs} envs, '
                     f'{args.workers} workers', fontsize=10)
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f'wrote {args.plot}')


if __name__ == '__main__':
    main()
