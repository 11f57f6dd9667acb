"""PPO on CartPole-v1 with obtain_steps, numpy only.

Every iteration asks the sampler for ``--steps-per-env`` steps of every
env with the current parameters (``obtain_steps``: the envs keep running,
so an episode cut at the end of one batch goes on in the next), computes
GAE advantages segment by segment, bootstrapping from
``last_observations`` where a segment is cut or truncated and not where
it terminated, and takes ``--epochs`` passes of clipped-surrogate updates
with Adam. Writes a CSV of (env steps, wall time, mean return) and, with
``--plot`` and matplotlib (the ``plot`` extra), a learning curve.

    python scripts/train_ppo.py                         # about 20 s
    python scripts/train_ppo.py --target-return 475 --csv ppo.csv
"""

import argparse
import csv
import time

import gymnasium as gym
import numpy as np

from sampler import MultiprocessingSampler
from workers import VecWorker


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--env', default='CartPole-v1', help='gymnasium env id '
                   '(Discrete actions, Box observations)')
    p.add_argument('--total-steps', type=int, default=300_000,
                   help='env steps to train for at most')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--envs-per-worker', type=int, default=4)
    p.add_argument('--steps-per-env', type=int, default=128,
                   help='steps of every env per batch')
    p.add_argument('--lr', type=float, default=2.5e-3,
                   help='Adam step size, annealed to 0')
    p.add_argument('--gamma', type=float, default=0.99)
    p.add_argument('--gae-lambda', type=float, default=0.95)
    p.add_argument('--epochs', type=int, default=4,
                   help='passes over each batch')
    p.add_argument('--minibatches', type=int, default=4)
    p.add_argument('--clip', type=float, default=0.2)
    p.add_argument('--entropy-coef', type=float, default=0.01)
    p.add_argument('--value-coef', type=float, default=0.5)
    p.add_argument('--hidden', type=int, default=64)
    p.add_argument('--target-return', type=float, default=None,
                   help='stop once the mean return of the last 20 episodes '
                        'reaches this')
    p.add_argument('--csv', default=None, help='write the learning curve '
                   '(env steps, seconds, mean return) to this file')
    p.add_argument('--plot', default=None, help='draw the learning curve to '
                   'this PNG (needs matplotlib)')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


class ActorCritic:
    """Two tanh MLPs: a categorical policy and a value function. The
    sampler's workers call ``get_actions``; the learner does the rest.

    Parameters are a dict of arrays (``get_params`` / ``set_params``), so
    a worker gets new ones with every ``agent_update``."""

    def __init__(self, n_obs, n_actions, hidden, seed):
        rng = np.random.default_rng(seed)

        def layer(n_in, n_out, scale):
            w = rng.standard_normal((n_in, n_out)) * scale / np.sqrt(n_in)
            return w, np.zeros(n_out)

        self.params = {}
        for net, n_out, last in (('pi', n_actions, 0.01), ('v', 1, 1.0)):
            sizes = [n_obs, hidden, hidden, n_out]
            for i in range(3):
                w, b = layer(sizes[i], sizes[i + 1],
                             last if i == 2 else np.sqrt(2))
                self.params[f'{net}_w{i}'] = w
                self.params[f'{net}_b{i}'] = b
        self.rng = np.random.default_rng(seed)

    # What the workers call ---------------------------------------------

    def get_params(self):
        return {k: v.copy() for k, v in self.params.items()}

    def set_params(self, params):
        self.params = {k: np.asarray(v, dtype=np.float64)
                       for k, v in params.items()}

    def seed(self, seed):
        self.rng = np.random.default_rng(seed)

    def get_actions(self, observations):
        obs = np.asarray(observations, dtype=np.float64)
        logits, _ = self._forward('pi', obs)
        values, _ = self._forward('v', obs)
        logp_all = log_softmax(logits)
        # Gumbel-max: one categorical draw per row.
        actions = np.argmax(
            logp_all - np.log(-np.log(self.rng.random(logp_all.shape))),
            axis=1)
        logp = logp_all[np.arange(len(actions)), actions]
        return actions, {'logp': logp, 'value': values[:, 0]}

    def get_action(self, observation):
        actions, infos = self.get_actions(observation[None])
        return int(actions[0]), {k: v[0] for k, v in infos.items()}

    # What the learner calls ----------------------------------------------

    def _forward(self, net, x):
        """Output and the activations backprop needs."""
        p = self.params
        h0 = np.tanh(x @ p[f'{net}_w0'] + p[f'{net}_b0'])
        h1 = np.tanh(h0 @ p[f'{net}_w1'] + p[f'{net}_b1'])
        return h1 @ p[f'{net}_w2'] + p[f'{net}_b2'], (x, h0, h1)

    def values(self, observations):
        return self._forward('v', np.asarray(observations, np.float64))[0][
            :, 0]

    def _backward(self, net, cache, d_out, grads):
        x, h0, h1 = cache
        p = self.params
        grads[f'{net}_w2'] = h1.T @ d_out
        grads[f'{net}_b2'] = d_out.sum(0)
        d1 = (d_out @ p[f'{net}_w2'].T) * (1 - h1 ** 2)
        grads[f'{net}_w1'] = h0.T @ d1
        grads[f'{net}_b1'] = d1.sum(0)
        d0 = (d1 @ p[f'{net}_w1'].T) * (1 - h0 ** 2)
        grads[f'{net}_w0'] = x.T @ d0
        grads[f'{net}_b0'] = d0.sum(0)

    def loss_gradients(self, obs, actions, old_logp, advantages, returns,
                       args):
        """Gradients of the PPO loss (clipped surrogate, value error,
        entropy bonus) for one minibatch."""
        n = len(actions)
        rows = np.arange(n)
        logits, pi_cache = self._forward('pi', obs)
        logp_all = log_softmax(logits)
        probs = np.exp(logp_all)
        ratio = np.exp(logp_all[rows, actions] - old_logp)
        clipped = np.clip(ratio, 1 - args.clip, 1 + args.clip)
        # The gradient flows through the unclipped term where it is the
        # smaller one; elsewhere the clipped term is flat.
        active = ratio * advantages <= clipped * advantages
        d_logp = -(advantages * ratio * active) / n
        one_hot = np.zeros_like(probs)
        one_hot[rows, actions] = 1.0
        d_logits = d_logp[:, None] * (one_hot - probs)
        entropy = -(probs * logp_all).sum(1)
        d_logits -= args.entropy_coef * (
            -probs * (logp_all + entropy[:, None])) / n
        values, v_cache = self._forward('v', obs)
        d_values = args.value_coef * (values[:, 0] - returns)[:, None] / n
        grads = {}
        self._backward('pi', pi_cache, d_logits, grads)
        self._backward('v', v_cache, d_values, grads)
        return grads


class Adam:
    def __init__(self, params, lr):
        self.lr = lr
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads, max_norm=0.5):
        norm = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
        scale = min(1.0, max_norm / (norm + 1e-8))
        self.t += 1
        for k, g in grads.items():
            g = g * scale
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g ** 2
            m_hat = self.m[k] / (1 - 0.9 ** self.t)
            v_hat = self.v[k] / (1 - 0.999 ** self.t)
            params[k] -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-5)


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def advantages_and_returns(batch, agent, gamma, lam):
    """GAE over every segment of ``batch``. A segment that is cut (the
    episode goes on in the next batch) or truncated bootstraps from the
    value of its last observation; a terminated one from 0."""
    values = batch.agent_infos['value']
    bootstrap = agent.values(batch.last_observations)
    bootstrap[batch.terminated[batch.episode_starts + batch.lengths - 1]] \
        = 0.0
    advantages = np.zeros(len(batch))
    for e, (start, length) in enumerate(zip(batch.episode_starts,
                                            batch.lengths)):
        next_value, gae = bootstrap[e], 0.0
        for t in range(start + length - 1, start - 1, -1):
            delta = batch.rewards[t] + gamma * next_value - values[t]
            gae = delta + gamma * lam * gae
            advantages[t] = gae
            next_value = values[t]
    return advantages, advantages + values


def main(argv=None):
    args = parse_args(argv)
    env = gym.make(args.env)
    agent = ActorCritic(env.observation_space.shape[0],
                        env.action_space.n, args.hidden, args.seed)
    optimizer = Adam(agent.params, args.lr)
    rng = np.random.default_rng(args.seed)
    iterations = max(1, args.total_steps // (
        args.workers * args.envs_per_worker * args.steps_per_env))
    finished, curve, started = [], [], time.perf_counter()
    mean_return = float('nan')
    with MultiprocessingSampler(
            agent, args.env, n_workers=args.workers, seed=args.seed,
            worker_class=VecWorker,
            worker_args={'n_envs': args.envs_per_worker}) as sampler:
        for iteration in range(iterations):
            batch = sampler.obtain_steps(args.steps_per_env,
                                         agent_update=agent.get_params())
            finished.extend(batch.episode_stats()['returns'].tolist())
            if finished:
                mean_return = float(np.mean(finished[-20:]))
            curve.append((sampler.stats['env_steps'],
                          time.perf_counter() - started, mean_return))
            print(f'iteration {iteration + 1:4d}  env steps '
                  f'{sampler.stats["env_steps"]:7d}  episodes '
                  f'{len(finished):5d}  mean return {mean_return:6.1f}',
                  flush=True)
            if args.target_return is not None and \
                    mean_return >= args.target_return:
                print(f'reached a mean return of {mean_return:.1f} after '
                      f'{sampler.stats["env_steps"]} env steps')
                break
            advantages, returns = advantages_and_returns(
                batch, agent, args.gamma, args.gae_lambda)
            optimizer.lr = args.lr * (1 - iteration / iterations)
            obs = np.asarray(batch.observations, np.float64)
            actions = np.asarray(batch.actions)
            old_logp = batch.agent_infos['logp']
            size = len(batch) // args.minibatches
            for _ in range(args.epochs):
                order = rng.permutation(len(batch))
                for k in range(args.minibatches):
                    rows = order[k * size:(k + 1) * size]
                    adv = advantages[rows]
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    grads = agent.loss_gradients(
                        obs[rows], actions[rows], old_logp[rows], adv,
                        returns[rows], args)
                    optimizer.step(agent.params, grads)
    if args.csv:
        with open(args.csv, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['env_steps', 'seconds', 'mean_return'])
            writer.writerows(curve)
        print(f'wrote {args.csv}')
    if args.plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([c[0] for c in curve], [c[2] for c in curve])
        ax.set_xlabel('env steps')
        ax.set_ylabel('mean return (last 20 episodes)')
        ax.set_title(f'PPO on {args.env}, {args.workers} workers x '
                     f'{args.envs_per_worker} envs')
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f'wrote {args.plot}')
    return mean_return


if __name__ == '__main__':
    main()
