"""PPO with obtain_steps: numpy on CartPole-v1, or torch (--torch) on
discrete and continuous envs such as HalfCheetah-v5.

Every iteration asks the sampler for ``--steps-per-env`` steps of every
env with the current parameters (``obtain_steps``: the envs keep running,
so an episode cut at the end of one batch goes on in the next), computes
GAE advantages segment by segment (``workers.compute_gae``),
bootstrapping from ``last_observations`` where a segment is cut or
truncated and not where it terminated, and takes ``--epochs`` passes of
clipped-surrogate updates with Adam. Writes a CSV of (env steps, wall
time, mean return) and, with ``--plot`` and matplotlib (the ``plot``
extra), a learning curve.

    python scripts/train_ppo.py                         # about 20 s
    python scripts/train_ppo.py --target-return 475 --csv ppo.csv

``--torch`` (``pip install "rollout-sampler[torch]"``) runs the same loop
with a ``torch.nn.Module`` actor-critic as a ``workers.TorchAgent``:
categorical for Discrete actions, a Gaussian for Box ones (the batch
records the raw sample, the env gets it clipped). It normalises
observations with running statistics kept in the module's buffers (so
every ``agent_update`` carries them to the workers) and scales rewards
by the running deviation of the discounted return, as MuJoCo PPO needs::

    python scripts/train_ppo.py --torch --target-return 450
    python scripts/train_ppo.py --torch --env HalfCheetah-v5 \
        --total-steps 500000 --steps-per-env 256 --lr 3e-4 --epochs 10 \
        --minibatches 32 --entropy-coef 0 --csv hc.csv --plot hc.png
"""

import argparse
import os
import sys
import time

import gymnasium as gym
import numpy as np

from sampler import MultiprocessingSampler
from workers import VecWorker, compute_gae

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _curves import save_curve  # noqa: E402


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
    p.add_argument('--torch', action='store_true',
                   help='a torch actor-critic (Discrete or Box actions)')
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


class NumpyLearner:
    """The numpy actor-critic and its Adam updates (Discrete actions)."""

    def __init__(self, observation_space, action_space, args):
        if not isinstance(action_space, gym.spaces.Discrete):
            raise SystemExit(f'the numpy PPO takes Discrete actions; '
                             f'{args.env} has {action_space}: use --torch')
        self.args = args
        self.agent = ActorCritic(observation_space.shape[0],
                                 action_space.n, args.hidden, args.seed)
        self.optimizer = Adam(self.agent.params, args.lr)
        self.rng = np.random.default_rng(args.seed)

    def params(self):
        return self.agent.get_params()

    def update(self, batch, lr_fraction):
        args, agent = self.args, self.agent
        advantages, returns = compute_gae(
            batch, batch.agent_infos['value'],
            agent.values(batch.last_observations), args.gamma,
            args.gae_lambda)
        self.optimizer.lr = args.lr * lr_fraction
        obs = np.asarray(batch.observations, np.float64)
        actions = np.asarray(batch.actions)
        old_logp = batch.agent_infos['logp']
        size = len(batch) // args.minibatches
        for _ in range(args.epochs):
            order = self.rng.permutation(len(batch))
            for k in range(args.minibatches):
                rows = order[k * size:(k + 1) * size]
                adv = advantages[rows]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                grads = agent.loss_gradients(
                    obs[rows], actions[rows], old_logp[rows], adv,
                    returns[rows], args)
                self.optimizer.step(agent.params, grads)


class RunningMoments:
    """Running mean and variance of a stream of arrays (Chan et al.)."""

    def __init__(self, shape=()):
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), \
            1e-4

    def update(self, x):
        mean, var, n = x.mean(0), x.var(0), len(x)
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + var * n +
                    delta ** 2 * self.count * n / total) / total
        self.count = total


class TorchLearner:
    """A torch actor-critic as a TorchAgent, trained with torch's Adam."""

    def __init__(self, observation_space, action_space, args):
        import torch

        from workers import TorchAgent
        self.torch, self.args = torch, args
        torch.manual_seed(args.seed)
        self.model = TorchActorCritic(observation_space, action_space,
                                      args.hidden)
        self.agent = TorchAgent(self.model, observation_space, action_space,
                                seed=args.seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(),
                                          lr=args.lr, eps=1e-5)
        self.obs_moments = RunningMoments(observation_space.shape)
        self.return_moments = RunningMoments()
        self.running_returns = {}  # episode id -> discounted return so far
        self.generator = torch.Generator().manual_seed(args.seed)

    def params(self):
        return self.agent.get_params()

    def values(self, observations):
        torch = self.torch
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(observations), dtype=torch.float32)
            return self.model.value(x).numpy().astype(np.float64)

    def scaled_rewards(self, batch):
        """Rewards over the running deviation of the discounted return,
        carried across segments of one episode (as gymnasium's
        NormalizeReward does per env)."""
        gamma, returns = self.args.gamma, np.empty(len(batch))
        for e, (start, length) in enumerate(zip(batch.episode_starts,
                                                batch.lengths)):
            episode = int(batch.episode_ids[e])
            ret = self.running_returns.pop(episode, 0.0)
            for t in range(start, start + length):
                ret = ret * gamma + batch.rewards[t]
                returns[t] = ret
            if batch.cut[e]:
                self.running_returns[episode] = ret
        self.return_moments.update(returns)
        return batch.rewards / np.sqrt(self.return_moments.var + 1e-8)

    def update(self, batch, lr_fraction):
        torch, args, model = self.torch, self.args, self.model
        advantages, returns = compute_gae(
            batch, batch.agent_infos['value'],
            self.values(batch.last_observations), args.gamma,
            args.gae_lambda, rewards=self.scaled_rewards(batch))
        for group in self.optimizer.param_groups:
            group['lr'] = args.lr * lr_fraction
        obs = torch.as_tensor(np.asarray(batch.observations),
                              dtype=torch.float32)
        actions = torch.as_tensor(np.asarray(batch.actions))
        old_logp = torch.as_tensor(batch.agent_infos['log_prob'])
        advantages = torch.as_tensor(advantages, dtype=torch.float32)
        returns = torch.as_tensor(returns, dtype=torch.float32)
        size = len(batch) // args.minibatches
        for _ in range(args.epochs):
            order = torch.randperm(len(batch), generator=self.generator)
            for k in range(args.minibatches):
                rows = order[k * size:(k + 1) * size]
                dist, extra = model(obs[rows])
                logp = dist.log_prob(actions[rows])
                entropy = dist.entropy()
                if logp.dim() > 1:  # a Gaussian: one term per dimension
                    logp, entropy = logp.sum(1), entropy.sum(1)
                adv = advantages[rows]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                ratio = (logp - old_logp[rows]).exp()
                policy_loss = -torch.min(
                    ratio * adv,
                    ratio.clamp(1 - args.clip, 1 + args.clip) * adv).mean()
                value_loss = 0.5 * ((extra['value'] - returns[rows]) ** 2
                                    ).mean()
                loss = policy_loss + args.value_coef * value_loss - \
                    args.entropy_coef * entropy.mean()
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                self.optimizer.step()
        # New statistics only after the update, which must see the
        # observations as the workers' policy saw them.
        self.obs_moments.update(np.asarray(batch.observations, np.float64))
        model.set_normalisation(self.obs_moments)


def TorchActorCritic(observation_space, action_space, hidden):
    """The torch module (built in a function so that the script imports
    torch only with --torch)."""
    import torch
    nn = torch.nn

    def mlp(n_out, gain):
        last = nn.Linear(hidden, n_out)
        nn.init.orthogonal_(last.weight, gain)
        nn.init.zeros_(last.bias)
        layers = [nn.Linear(n_obs, hidden), nn.Tanh(),
                  nn.Linear(hidden, hidden), nn.Tanh()]
        for layer in layers[::2]:
            nn.init.orthogonal_(layer.weight, np.sqrt(2))
            nn.init.zeros_(layer.bias)
        return nn.Sequential(*layers, last)

    n_obs = int(np.prod(observation_space.shape))
    discrete = isinstance(action_space, gym.spaces.Discrete)
    n_out = int(action_space.n) if discrete else \
        int(np.prod(action_space.shape))

    class ActorCriticModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.actor, self.critic = mlp(n_out, 0.01), mlp(1, 1.0)
            if not discrete:
                self.log_std = nn.Parameter(torch.zeros(n_out))
            # In the state dict, so every agent_update carries them.
            self.register_buffer('obs_mean', torch.zeros(n_obs))
            self.register_buffer('obs_std', torch.ones(n_obs))

        def set_normalisation(self, moments):
            with torch.no_grad():
                self.obs_mean.copy_(torch.as_tensor(moments.mean))
                self.obs_std.copy_(torch.as_tensor(
                    np.sqrt(moments.var + 1e-8)))

        def normalise(self, x):
            x = x.reshape(len(x), -1).float()
            return ((x - self.obs_mean) / self.obs_std).clamp(-10, 10)

        def value(self, x):
            return self.critic(self.normalise(x))[:, 0]

        def forward(self, x):
            x = self.normalise(x)
            out = self.actor(x)
            if discrete:
                dist = torch.distributions.Categorical(logits=out)
            else:
                dist = torch.distributions.Normal(
                    out, self.log_std.exp().expand_as(out))
            return dist, {'value': self.critic(x)[:, 0]}

    return ActorCriticModule()


def main(argv=None):
    args = parse_args(argv)
    env = gym.make(args.env)
    if args.torch:
        learner = TorchLearner(env.observation_space, env.action_space,
                               args)
    else:
        learner = NumpyLearner(env.observation_space, env.action_space,
                               args)
    agent = learner.agent
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
                                         agent_update=learner.params())
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
            learner.update(batch, 1 - iteration / iterations)
    save_curve(curve, args.csv, args.plot, 'env steps',
               'mean return (last 20 episodes)',
               f'PPO ({"torch" if args.torch else "numpy"}) on {args.env}, '
               f'{args.workers} workers x {args.envs_per_worker} envs')
    return mean_return


if __name__ == '__main__':
    main()
