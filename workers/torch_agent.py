"""TorchAgent: a ``torch.nn.Module`` policy as an agent (the ``torch``
extra).

The module maps a batch of observations to a
``torch.distributions.Distribution``, or to a ``(distribution, dict of
tensors)`` pair whose entries (value estimates, hidden state, ...) go into
``agent_infos``. Observations reach it as tensors shaped like the space's
samples with a leading batch dimension: floating ``Box`` as ``float32``,
integer ``Box`` (Atari frames) in their own dtype, so the module decides how
to scale them, ``Discrete`` and ``MultiDiscrete`` one-hot ``float32``,
``MultiBinary`` ``float32``, and ``Dict`` / ``Tuple`` nests as dicts /
tuples of those.

Importing this module does not import torch; constructing a
:class:`TorchAgent` does, and says what to install if it is missing.
"""

import numpy as np
from gymnasium import spaces

from workers import _nest
from workers.agents import _as_batch_of_one
from workers.spaces import check_stackable

INSTALL = 'pip install "rollout-sampler[torch]"'


def import_torch():
    """``torch``, or ``ImportError`` saying which pip command brings it."""
    try:
        import torch
    except ImportError as err:
        msg = f'TorchAgent needs PyTorch, which is not installed: {INSTALL}'
        raise ImportError(msg) from err
    return torch


class TorchAgent:
    """An agent whose policy is a ``torch.nn.Module``.

    ``get_actions`` runs the module on a batch of observations without
    gradients and samples the distribution it returns. ``agent_infos``
    hold ``log_prob`` (float32; summed over the action's dimensions when
    the distribution's is per dimension, as for a ``Normal`` with a vector
    of means) and every entry of the module's dict, as numpy arrays. An
    entry of shape ``(batch, 1)``, such as a value head ``self.v(obs)``
    of ``nn.Linear(k, 1)``, is kept as ``(batch,)``: one number per step,
    like ``rewards``, so that ``batch.agent_infos['value']`` has shape
    ``(N,)`` and GAE arithmetic with ``batch.rewards`` cannot broadcast to
    ``(N, N)``; entries of any other shape are kept as they are.

    The distribution must give one action of the action space's shape per
    observation; a sample of another shape is refused with both shapes
    (a ``Normal`` over 3 numbers for a ``Box`` of 6, say).

    Box actions: the raw sample is what the batch records as the action
    (``log_prob`` is that sample's), and what the env receives is the
    sample clipped to the action space's bounds, kept in
    ``agent_infos['env_action']`` (workers send an ``env_action`` info,
    when an agent gives one, to the env instead of the action). Training
    code should compute log-probabilities of ``batch.actions``, never of
    the clipped ones.

    Randomness comes from a ``torch.Generator`` of the agent's own, seeded
    by :meth:`seed` (workers call it with their round's seed), so calls
    that are reproducible with numpy agents (``obtain_exact_episodes``,
    ``obtain_steps``) are with this one too, on every backend. Categorical,
    Bernoulli, Normal, ``Independent`` and ``TransformedDistribution``
    (e.g. tanh-squashed Gaussians) draw from that generator directly; any
    other distribution samples with torch's default generator temporarily
    set to the agent's state, then restored.

    Parameters are the module's ``state_dict``: :meth:`get_params` returns
    CPU tensors, :meth:`set_params` takes a state dict with tensors on any
    device (a learner on CUDA) or numpy arrays, and loads it into the
    module on its device.

    Args:
        module: the policy; ``module(observations)`` returns a distribution
            or ``(distribution, dict)``. The agent runs it in eval mode.
        observation_space, action_space: the env's spaces (stackable
            families; see :mod:`workers.spaces`).
        seed: seeds the generator; workers reseed it each round.
    """

    def __init__(self, module, observation_space, action_space, *,
                 seed=None):
        torch = import_torch()
        if not isinstance(module, torch.nn.Module):
            msg = (f'TorchAgent takes a torch.nn.Module, got '
                   f'{type(module).__name__}')
            raise TypeError(msg)
        check_stackable(observation_space, 'observation space')
        check_stackable(action_space, 'action space')
        self.module = module.eval()
        self.observation_space = observation_space
        self.action_space = action_space
        self._to_tensors = _converter(observation_space, torch)
        self._clip = None
        if isinstance(action_space, spaces.Box):
            self._clip = (action_space.low, action_space.high)
        self._discrete_start = int(action_space.start) \
            if isinstance(action_space, spaces.Discrete) else 0
        self._generator = None
        self.seed(seed)

    @property
    def device(self):
        """Where the module's parameters are (CPU without any)."""
        torch = import_torch()
        for tensor in self.module.parameters():
            return tensor.device
        return torch.device('cpu')

    def seed(self, seed):
        torch = import_torch()
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed) % 2**63)

    def reset(self, do_resets=None):
        pass

    def get_params(self):
        """The module's state dict, as CPU tensors (copies)."""
        return {k: v.detach().to('cpu', copy=True)
                for k, v in self.module.state_dict().items()}

    def set_params(self, params):
        """Load a state dict (tensors on any device, or numpy arrays).

        Raises:
            ValueError: a key is missing or unknown, or a shape differs.
        """
        torch = import_torch()
        if not isinstance(params, dict):
            msg = (f'TorchAgent.set_params takes a state dict, got '
                   f'{type(params).__name__}')
            raise ValueError(msg)
        own = self.module.state_dict()
        if params.keys() != own.keys():
            missing = sorted(own.keys() - params.keys())
            unknown = sorted(params.keys() - own.keys())
            msg = (f'TorchAgent.set_params: the state dict does not fit the '
                   f'module (missing {missing}, unknown {unknown})')
            raise ValueError(msg)
        with torch.no_grad():
            for key, value in params.items():
                target = own[key]
                value = torch.as_tensor(value)
                if value.device.type == 'meta':
                    msg = (f'TorchAgent.set_params: {key} is a meta tensor, '
                           f'which holds no values; pass the learner\'s '
                           f'materialised state dict')
                    raise ValueError(msg)
                if value.shape != target.shape:
                    msg = (f'TorchAgent.set_params: {key} has shape '
                           f'{tuple(value.shape)}, expected '
                           f'{tuple(target.shape)}')
                    raise ValueError(msg)
                target.copy_(value)

    def get_actions(self, observations):
        torch = import_torch()
        with torch.no_grad():
            inputs = self._to_tensors(observations, self.device)
            out = self.module(inputs)
            dist, extra = out if isinstance(out, tuple) else (out, {})
            if not isinstance(dist, torch.distributions.Distribution):
                msg = (f'the module must return a torch.distributions.'
                       f'Distribution or (distribution, dict), got '
                       f'{type(dist).__name__}')
                raise TypeError(msg)
            sample = _sample(dist, self._generator, torch)
            self._check_sample(sample, observations)
            log_prob = dist.log_prob(sample)
            n = len(sample)
            if log_prob.dim() > 1:
                log_prob = log_prob.reshape(n, -1).sum(1)
        actions = sample.cpu().numpy()
        log_prob = log_prob.cpu().numpy().astype(np.float32, copy=False)
        infos = {'log_prob': log_prob}
        for key, value in extra.items():
            infos[key] = _nest.map_nest(
                lambda t: _per_row(t.detach().cpu().numpy(), n), value)
        if self._clip is not None:
            actions = actions.astype(self.action_space.dtype, copy=False)
            infos['env_action'] = np.clip(actions, *self._clip)
        elif self._discrete_start:
            actions = actions + self._discrete_start
        return actions, infos

    def _check_sample(self, sample, observations):
        """Refuse a sample that is not one action of the space's shape per
        observation, before clipping or an env meets it."""
        expected = self.action_space.shape
        if expected is None:
            return
        _, first = next(_nest.leaves(observations))
        n = len(first)
        got = tuple(sample.shape)
        if got == (n,) + tuple(expected):
            return
        if got[:1] == (n,):
            what = f'actions of shape {got[1:]}'
        else:
            what = f'a batch of shape {got} for {n} observations'
        msg = (f"the module's distribution samples {what}, but the action "
               f'space is {self.action_space}, whose actions have shape '
               f'{tuple(expected)}: make it a distribution over one such '
               f'action per observation (batch_shape + event_shape == '
               f'{(n,) + tuple(expected)})')
        raise ValueError(msg)

    def get_action(self, observation):
        actions, infos = self.get_actions(_as_batch_of_one(observation))
        infos = _nest.map_nest(lambda v: v[0], infos)
        if isinstance(self.action_space, spaces.Discrete):
            return int(actions[0]), infos
        return actions[0], infos

    def __getstate__(self):
        # torch.Generator does not pickle: carry its state instead; the
        # converter (closures) is rebuilt from the space.
        state = self.__dict__.copy()
        del state['_to_tensors']
        generator = state.pop('_generator')
        state['_generator_state'] = None if generator is None else \
            generator.get_state()
        return state

    def __setstate__(self, state):
        generator_state = state.pop('_generator_state')
        self.__dict__.update(state)
        self._to_tensors = _converter(self.observation_space, import_torch())
        self._generator = None
        self.seed(0)
        if generator_state is not None:
            self._generator.set_state(generator_state)

    def __repr__(self):
        return (f'TorchAgent({type(self.module).__name__}, '
                f'{self.observation_space!r}, {self.action_space!r})')


def _per_row(info, n):
    """An info of ``n`` rows; one of shape ``(n, 1)`` (what a head such as
    ``nn.Linear(k, 1)`` returns) as ``(n,)``: one number per step, as
    rewards are, so that ``rewards + gamma * values`` is per step instead
    of broadcasting to ``(n, n)``."""
    if info.shape == (n, 1):
        return info[:, 0]
    return info


def _converter(space, torch):
    """A function: batch of observations of ``space`` (numpy nest) ->
    tensors on a device, as the module docstring says."""
    if isinstance(space, spaces.Dict):
        parts = {k: _converter(s, torch) for k, s in space.spaces.items()}
        return lambda x, device: {k: f(x[k], device)
                                  for k, f in parts.items()}
    if isinstance(space, spaces.Tuple):
        parts = [_converter(s, torch) for s in space.spaces]
        return lambda x, device: tuple(f(x[i], device)
                                       for i, f in enumerate(parts))
    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)

        def one_hot(x, device):
            index = torch.as_tensor(np.asarray(x).reshape(-1) - start,
                                    device=device)
            return torch.nn.functional.one_hot(index, n).float()
        return one_hot
    if isinstance(space, spaces.MultiDiscrete):
        nvec = [int(k) for k in np.asarray(space.nvec).reshape(-1)]
        start = np.asarray(space.start).reshape(-1)

        def multi_one_hot(x, device):
            x = np.asarray(x).reshape(len(x), -1) - start
            index = torch.as_tensor(x, device=device)
            return torch.cat([torch.nn.functional.one_hot(index[:, j], k)
                              for j, k in enumerate(nvec)], 1).float()
        return multi_one_hot
    floating = isinstance(space, spaces.MultiBinary) or \
        np.dtype(space.dtype).kind == 'f'

    def tensor(x, device):
        x = torch.as_tensor(np.asarray(x), device=device)
        return x.float() if floating else x
    return tensor


def _sample(dist, generator, torch):
    """A sample of ``dist`` drawn from ``generator``."""
    D = torch.distributions
    shape = dist.batch_shape
    if isinstance(dist, D.Independent):
        return _sample(dist.base_dist, generator, torch)
    if isinstance(dist, D.TransformedDistribution):
        x = _sample(dist.base_dist, generator, torch)
        for transform in dist.transforms:
            x = transform(x)
        return x
    if isinstance(dist, D.Normal):
        noise = torch.randn(shape, generator=generator, dtype=dist.loc.dtype,
                            device=dist.loc.device)
        return dist.loc + dist.scale * noise
    if isinstance(dist, D.Categorical):
        probs = dist.probs.reshape(-1, dist.probs.shape[-1])
        draws = torch.multinomial(probs, 1, generator=generator)
        return draws.reshape(shape)
    if isinstance(dist, D.Bernoulli):
        return torch.bernoulli(dist.probs, generator=generator)
    # Anything else samples from torch's default generator, given the
    # agent's state for the draw and restored after it.
    saved = torch.get_rng_state()
    try:
        torch.set_rng_state(generator.get_state())
        sample = dist.sample()
        generator.set_state(torch.get_rng_state())
    finally:
        torch.set_rng_state(saved)
    return sample
