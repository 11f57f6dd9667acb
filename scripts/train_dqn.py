"""DQN on CartPole-v1 from a stream: workers never wait for the learner.

The sampler's workers step their envs continuously (``stream``); the
learner reads a batch of segments whenever it wants, adds its
transitions to a replay buffer, takes gradient steps, and pushes the
Q-network's parameters with ``push_update`` every ``--push-every``
steps, without stopping anyone. The policy the workers run is a
``workers.TorchAgent``: epsilon-greedy over the Q-values, epsilon kept
in a buffer of the module so that every push carries the schedule too.
Writes a CSV of (env steps, seconds, mean return) and, with ``--plot``
(the ``plot`` extra), a learning curve.

    pip install "rollout-sampler[torch]"
    python scripts/train_dqn.py                    # about 2 minutes here
    python scripts/train_dqn.py --csv dqn.csv --plot dqn.png
"""

import argparse
import os
import sys
import time

import gymnasium as gym
import numpy as np

from sampler import MultiprocessingSampler
from workers import TorchAgent, VecWorker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _curves import save_curve  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--env', default='CartPole-v1',
                   help='gymnasium env id (Discrete actions)')
    p.add_argument('--total-steps', type=int, default=100_000)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--envs-per-worker', type=int, default=2)
    p.add_argument('--read', type=int, default=64,
                   help='transitions per batch read from the stream')
    p.add_argument('--buffer-size', type=int, default=20_000)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--lr', type=float, default=5e-4)
    p.add_argument('--gamma', type=float, default=0.99)
    p.add_argument('--learning-starts', type=int, default=2_000)
    p.add_argument('--train-every', type=int, default=2,
                   help='env steps per gradient step')
    p.add_argument('--target-every', type=int, default=1_000,
                   help='env steps between target-network copies')
    p.add_argument('--push-every', type=int, default=4,
                   help='gradient steps between parameter pushes')
    p.add_argument('--start-epsilon', type=float, default=1.0)
    p.add_argument('--end-epsilon', type=float, default=0.05)
    p.add_argument('--exploration', type=float, default=0.3,
                   help='share of the steps over which epsilon decays')
    p.add_argument('--hidden', type=int, default=128)
    p.add_argument('--target-return', type=float, default=None,
                   help='stop once the mean return of the last 20 episodes '
                        'reaches this')
    p.add_argument('--csv', default=None)
    p.add_argument('--plot', default=None)
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def QNetwork(n_obs, n_actions, hidden):
    """The Q-network; its forward is the epsilon-greedy policy the workers
    run (a categorical distribution), with the Q-values beside it."""
    import torch
    nn = torch.nn

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Sequential(nn.Linear(n_obs, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, n_actions))
            self.register_buffer('epsilon', torch.tensor(1.0))

        def forward(self, obs):
            q = self.q(obs)
            greedy = torch.nn.functional.one_hot(q.argmax(1), n_actions)
            probs = self.epsilon / n_actions + (1 - self.epsilon) * greedy
            return torch.distributions.Categorical(probs=probs), {'q': q}

    return Module()


def transitions(batch):
    """``(obs, actions, rewards, next_obs, terminated)`` of every step of
    a batch of segments: the next observation of a segment's last step is
    its ``last_observations`` row, and only the last step of a segment
    that terminated is terminal (a cut or truncated one is not)."""
    obs = np.asarray(batch.observations, np.float32)
    next_obs = np.empty_like(obs)
    next_obs[:-1] = obs[1:]
    ends = batch.episode_starts + batch.lengths - 1
    next_obs[ends] = np.asarray(batch.last_observations, np.float32)
    terminated = np.zeros(len(batch), bool)
    terminated[ends] = batch.terminated[ends]
    return obs, np.asarray(batch.actions), \
        np.asarray(batch.rewards, np.float32), next_obs, terminated


class Replay:
    """A ring buffer of transitions."""

    def __init__(self, size, n_obs, seed):
        self.obs = np.zeros((size, n_obs), np.float32)
        self.next_obs = np.zeros((size, n_obs), np.float32)
        self.actions = np.zeros(size, np.int64)
        self.rewards = np.zeros(size, np.float32)
        self.terminated = np.zeros(size, np.float32)
        self.size, self.n, self.at = size, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, actions, rewards, next_obs, terminated):
        for k in range(len(actions)):
            i = self.at
            self.obs[i], self.next_obs[i] = obs[k], next_obs[k]
            self.actions[i], self.rewards[i] = actions[k], rewards[k]
            self.terminated[i] = terminated[k]
            self.at = (i + 1) % self.size
            self.n = min(self.n + 1, self.size)

    def sample(self, n):
        rows = self.rng.integers(0, self.n, n)
        return (self.obs[rows], self.actions[rows], self.rewards[rows],
                self.next_obs[rows], self.terminated[rows])


def main(argv=None):
    import torch
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    env = gym.make(args.env)
    n_obs = int(np.prod(env.observation_space.shape))
    n_actions = int(env.action_space.n)
    q_net = QNetwork(n_obs, n_actions, args.hidden)
    target = QNetwork(n_obs, n_actions, args.hidden)
    target.load_state_dict(q_net.state_dict())
    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.lr)
    agent = TorchAgent(q_net, env.observation_space, env.action_space,
                       seed=args.seed)
    replay = Replay(args.buffer_size, n_obs, args.seed)
    finished, curve = [], []
    mean_return = float('nan')
    steps = updates = next_target = 0
    started = time.perf_counter()
    with MultiprocessingSampler(
            agent, args.env, n_workers=args.workers, seed=args.seed,
            worker_class=VecWorker,
            worker_args={'n_envs': args.envs_per_worker}) as sampler:
        for batch in sampler.stream(args.read):
            replay.add(*transitions(batch))
            steps += len(batch)
            finished.extend(batch.episode_stats()['returns'].tolist())
            if finished:
                mean_return = float(np.mean(finished[-20:]))
            curve.append((steps, time.perf_counter() - started, mean_return))
            fraction = min(1.0, steps / (args.exploration * args.total_steps))
            with torch.no_grad():
                q_net.epsilon.fill_(args.start_epsilon + fraction * (
                    args.end_epsilon - args.start_epsilon))
            if steps >= args.learning_starts:
                for _ in range(max(1, len(batch) // args.train_every)):
                    obs, actions, rewards, next_obs, done = (
                        torch.as_tensor(x) for x in replay.sample(
                            args.batch_size))
                    with torch.no_grad():
                        best = target.q(next_obs).max(1).values
                        goal = rewards + args.gamma * best * (1 - done)
                    q = q_net.q(obs).gather(1, actions[:, None])[:, 0]
                    loss = torch.nn.functional.mse_loss(q, goal)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    updates += 1
                    if updates % args.push_every == 0:
                        sampler.push_update(agent.get_params())
                if steps >= next_target:
                    target.load_state_dict(q_net.state_dict())
                    next_target = steps + args.target_every
            if len(curve) % 50 == 0:
                print(f'env steps {steps:7d}  episodes {len(finished):5d}  '
                      f'mean return {mean_return:6.1f}  epsilon '
                      f'{float(q_net.epsilon):.2f}  version '
                      f'{sampler.version}', flush=True)
            if args.target_return is not None and \
                    mean_return >= args.target_return:
                print(f'reached a mean return of {mean_return:.1f} after '
                      f'{steps} env steps')
                break
            if steps >= args.total_steps:
                break
        print(f'done: {steps} env steps, {updates} gradient steps, '
              f'parameters pushed up to version {sampler.version}, mean '
              f'return {mean_return:.1f}')
    save_curve(curve, args.csv, args.plot, 'env steps',
               'mean return (last 20 episodes)',
               f'DQN from a stream on {args.env}, {args.workers} workers x '
               f'{args.envs_per_worker} envs')
    return mean_return


if __name__ == '__main__':
    main()
