"""PPO in the style of CleanRL's single-file ppo.py, on a vector env: the
policy is a torch module in this process, the envs step in our workers.

The one line that differs from a loop on gymnasium's own vector envs is
the constructor (``--vector`` picks it, to compare them)::

    envs = sampler.vector.AsyncVectorEnv(env_fns, ...)      # ours
    envs = gymnasium.vector.AsyncVectorEnv(env_fns, ...)    # gymnasium's

Every iteration steps the ``--num-envs`` envs ``--num-steps`` times with
the current policy, computes GAE advantages (an episode that was
truncated, not terminated, is bootstrapped from the value of its final
observation, which same_step autoreset hands back in
``infos["final_obs"]``), and takes ``--epochs`` passes of
clipped-surrogate updates with Adam over ``--minibatches`` minibatches.

    python scripts/train_ppo_vector.py                      # about 30 s
    python scripts/train_ppo_vector.py --vector gymnasium   # the same loop
"""

import argparse
import collections
import time

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--env', default='CartPole-v1',
                   help='gymnasium env id (Discrete actions)')
    p.add_argument('--vector', choices=('ours', 'gymnasium', 'sync'),
                   default='ours', help='whose vector env steps the envs')
    p.add_argument('--num-envs', type=int, default=8)
    p.add_argument('--workers', type=int, default=2,
                   help='worker processes of our vector env')
    add_ppo_arguments(p, num_steps=64, total_steps=300_000, lr=2.5e-3,
                      unit='env steps')
    p.add_argument('--target-return', type=float, default=None,
                   help='stop once the mean return of the last 20 episodes '
                        'reaches it')
    return p.parse_args(argv)


def add_ppo_arguments(p, num_steps, total_steps, lr, unit):
    """The options of :func:`train`'s PPO, with a script's defaults."""
    p.add_argument('--num-steps', type=int, default=num_steps,
                   help='steps of every env per iteration')
    p.add_argument('--total-steps', type=int, default=total_steps,
                   help=f'{unit} in all')
    p.add_argument('--lr', type=float, default=lr,
                   help='Adam step size, annealed to 0')
    p.add_argument('--gamma', type=float, default=0.99)
    p.add_argument('--gae-lambda', type=float, default=0.95)
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--minibatches', type=int, default=4)
    p.add_argument('--clip', type=float, default=0.2)
    p.add_argument('--entropy-coef', type=float, default=0.01)
    p.add_argument('--value-coef', type=float, default=0.5)
    p.add_argument('--max-grad-norm', type=float, default=0.5)
    p.add_argument('--hidden', type=int, default=64,
                   help='units of each hidden layer')
    p.add_argument('--seed', type=int, default=1)


def make_envs(args):
    fns = [lambda: gym.make(args.env)] * args.num_envs
    mode = AutoresetMode.SAME_STEP
    if args.vector == 'ours':
        from sampler.vector import AsyncVectorEnv
        return AsyncVectorEnv(fns, autoreset_mode=mode,
                              n_workers=args.workers)
    if args.vector == 'gymnasium':
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)


class ActorCritic(nn.Module):
    def __init__(self, n_inputs, n_actions, hidden=64):
        super().__init__()

        def layer(n_in, n_out, std=np.sqrt(2)):
            out = nn.Linear(n_in, n_out)
            nn.init.orthogonal_(out.weight, std)
            nn.init.zeros_(out.bias)
            return out

        self.critic = nn.Sequential(
            layer(n_inputs, hidden), nn.Tanh(), layer(hidden, hidden),
            nn.Tanh(), layer(hidden, 1, 1.0))
        self.actor = nn.Sequential(
            layer(n_inputs, hidden), nn.Tanh(), layer(hidden, hidden),
            nn.Tanh(), layer(hidden, n_actions, 0.01))

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def act(self, obs, action=None):
        dist = torch.distributions.Categorical(logits=self.actor(obs))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(obs)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    envs = make_envs(args)
    try:
        return train(args, envs)[-1][2]
    finally:
        envs.close()


def train(args, envs, unit='env steps', window=20):
    """PPO on ``envs`` for ``args.total_steps`` steps of all its envs;
    the curve: per iteration ``(steps, seconds, mean return of the last
    ``window`` episodes)``. Rows whose env is not acting
    (``infos["active"]`` False, in a vector env of agents) are left out
    of the updates."""
    n_envs, n_steps = envs.num_envs, args.num_steps
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    model = ActorCritic(obs_dim, envs.single_action_space.n,
                        args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-5)
    batch_size = n_envs * n_steps
    iterations = max(1, args.total_steps // batch_size)
    observations = torch.zeros((n_steps, n_envs, obs_dim))
    actions = torch.zeros((n_steps, n_envs), dtype=torch.long)
    log_probs = torch.zeros((n_steps, n_envs))
    rewards = torch.zeros((n_steps, n_envs))
    dones = torch.zeros((n_steps, n_envs))
    values = torch.zeros((n_steps, n_envs))
    acting = torch.ones((n_steps, n_envs), dtype=torch.bool)
    returns_seen = collections.deque(maxlen=window)
    episode_return = np.zeros(n_envs)
    obs, infos = envs.reset(seed=args.seed)
    active = _active(infos, n_envs)
    obs = torch.as_tensor(obs, dtype=torch.float32)
    start, mean_return, curve = time.perf_counter(), float('nan'), []
    target = getattr(args, 'target_return', None)
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
            active = _active(infos, n_envs)
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
        curve.append((steps, round(seconds, 2), mean_return))
        print(f'{steps:>9} {unit}  {seconds:6.1f} s  mean return '
              f'{mean_return:7.2f}', flush=True)
        if target is not None and len(returns_seen) == window \
                and mean_return >= target:
            print(f'reached a mean return of {mean_return:.1f} in {steps} '
                  f'{unit}')
            break
    return curve


def _active(infos, n_envs):
    """Per env, whether it acts on its observation: a vector env of
    agents says so in ``infos["active"]``; in others every env does."""
    if isinstance(infos, dict) and 'active' in infos:
        return np.asarray(infos['active'], dtype=bool)
    return np.ones(n_envs, dtype=bool)


def _final_obs(infos, i):
    if isinstance(infos, dict):
        return infos['final_obs'][i]
    return infos[i]['terminal_observation']  # SuperSuit's, as SB3's


def gae(args, rewards, values, dones, last_value):
    """Advantages; ``dones[t]`` ends the episode after step ``t`` (the
    next observation starts a new one)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(len(rewards))):
        live = 1.0 - dones[t]
        delta = rewards[t] + args.gamma * next_value * live - values[t]
        running = delta + args.gamma * args.gae_lambda * live * running
        advantages[t] = running
        next_value = values[t]
    return advantages


def update(args, model, optimizer, obs, actions, old_log_probs, advantages,
           returns):
    n = len(obs)
    size = n // args.minibatches
    for _ in range(args.epochs):
        order = torch.randperm(n)
        for first in range(0, n, size):
            idx = order[first:first + size]
            _, log_prob, entropy, value = model.act(obs[idx], actions[idx])
            ratio = (log_prob - old_log_probs[idx]).exp()
            adv = advantages[idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            policy_loss = torch.max(
                -adv * ratio,
                -adv * ratio.clamp(1 - args.clip, 1 + args.clip)).mean()
            value_loss = 0.5 * ((value - returns[idx]) ** 2).mean()
            loss = (policy_loss + args.value_coef * value_loss
                    - args.entropy_coef * entropy.mean())
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()


if __name__ == '__main__':
    main()
