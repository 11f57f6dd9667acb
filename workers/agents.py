"""Agents: the duck-typed protocol, and two reference numpy agents.

An agent is any object with ``get_action(observation) -> (action, info)``;
optional methods are ``get_actions`` (batched, used by VecWorker),
``reset(do_resets=None)``, ``get_params()`` / ``set_params(params)`` and
``seed(seed)``. A plain callable ``observation -> action`` is accepted too.
An ``info`` entry ``'env_action'`` is what the env receives instead of the
action, which the batch still records (e.g. a Gaussian sample, and that
sample clipped to the action space's bounds; see ``TorchAgent``).

The reference agents draw their randomness from one ``numpy.random.
Generator`` and make ``get_action(obs)`` consume it exactly as
``get_actions`` does for a batch of one, so a VecWorker with one env and a
DefaultWorker produce identical episodes from the same seed.
"""

import copy

import numpy as np
from gymnasium import spaces

from workers import _nest
from workers.spaces import check_stackable, flat_dim, flattener


def as_agent(agent, what='agent'):
    """Return ``agent`` if it follows the protocol, or wrap a callable.

    Raises:
        TypeError: ``agent`` has no ``get_action`` and is not callable.
    """
    if hasattr(agent, 'get_action'):
        return agent
    if callable(agent):
        return CallableAgent(agent)
    msg = (f'{what} must have get_action(observation) -> (action, info) or '
           f'be a callable observation -> action, got {agent!r}')
    raise TypeError(msg)


def batched(agent):
    """The agent's ``get_actions``, or one made from ``get_action`` calls."""
    get_actions = getattr(agent, 'get_actions', None)
    if get_actions is not None:
        return get_actions
    get_action = agent.get_action

    def get_actions_one_by_one(observations):
        n = len(next(_nest.leaves(observations))[1])
        pairs = [get_action(_nest.index(observations, i)) for i in range(n)]
        actions = _nest.stack([a for a, _ in pairs])
        return actions, _nest.stack_infos([info for _, info in pairs])

    return get_actions_one_by_one


class CallableAgent:
    """Adapts a plain callable ``observation -> action`` to the protocol.

    Args:
        fn: the callable; it must be picklable by cloudpickle to run in
            worker processes (lambdas and closures are).
    """

    def __init__(self, fn):
        self.fn = fn

    def get_action(self, observation):
        return self.fn(observation), {}

    def get_actions(self, observations):
        n = len(next(_nest.leaves(observations))[1])
        actions = [self.fn(_nest.index(observations, i)) for i in range(n)]
        return _nest.stack(actions), {}

    def __repr__(self):
        return f'CallableAgent({self.fn!r})'


class RandomAgent:
    """Uniformly random actions from ``action_space``.

    Discrete and bounded float Box spaces are sampled directly from the
    agent's generator (cheap); every other stackable space through
    ``action_space.sample()``, seeded from the same generator.

    Args:
        action_space: a gymnasium space of a stackable family.
        seed: seed of the generator; workers reseed it through ``seed()``.
    """

    def __init__(self, action_space, *, seed=None):
        check_stackable(action_space, 'action space')
        # Its own copy: space.sample() draws from the space's generator,
        # which agents built on one space object would otherwise share.
        self.action_space = space = copy.deepcopy(action_space)
        if isinstance(space, spaces.Discrete):
            self._kind = 'discrete'
            self._low = int(space.start)
            self._n = int(space.n)
        elif (isinstance(space, spaces.Box) and space.dtype.kind == 'f'
              and space.is_bounded('both')):
            self._kind = 'box'
            self._low = space.low.astype(np.float64)
            self._high = space.high.astype(np.float64)
        else:
            self._kind = 'space'
        self.seed(seed)

    def seed(self, seed):
        self._rng = np.random.default_rng(seed)
        if self._kind == 'space':
            self.action_space.seed(int(self._rng.integers(2**32)))

    def get_action(self, observation):
        if self._kind == 'discrete':
            # floor(u * n) of one double: the stream get_actions draws, at a
            # tenth of the cost of rng.integers(..., size=1).
            return int(self._rng.random() * self._n) + self._low, {}
        if self._kind == 'box':
            return self._uniform(1)[0], {}
        return self.action_space.sample(), {}

    def get_actions(self, observations):
        n = len(next(_nest.leaves(observations))[1])
        if self._kind == 'discrete':
            draws = self._rng.random(n) * self._n
            return draws.astype(np.int64) + self._low, {}
        if self._kind == 'box':
            return self._uniform(n), {}
        return _nest.stack([self.action_space.sample() for _ in range(n)]), {}

    def _uniform(self, n):
        shape = (n,) + self._low.shape
        sample = self._rng.uniform(self._low, self._high, size=shape)
        return sample.astype(self.action_space.dtype, copy=False)

    def reset(self, do_resets=None):
        pass

    def get_params(self):
        return {}

    def set_params(self, params):
        if params:
            msg = (f'RandomAgent has no parameters; set_params takes {{}}, '
                   f'got keys {sorted(params)}')
            raise ValueError(msg)

    def __repr__(self):
        return f'RandomAgent({self.action_space!r})'


class MLPAgent:
    """A tanh multilayer perceptron policy in numpy.

    Observations of any stackable space are flattened (Discrete one-hot).
    A ``Discrete`` action space gets a categorical distribution over the
    network's logits (sampled by Gumbel-max), a float ``Box`` a Gaussian with
    state-independent log standard deviation, clipped to the bounds.

    ``agent_info`` holds ``logits`` (categorical) or ``mean`` and
    ``log_std`` (Gaussian) for every step.

    Args:
        observation_space: a gymnasium space of a stackable family.
        action_space: ``Discrete`` or float ``Box``.
        hidden_sizes: widths of the hidden layers.
        init_std: initial standard deviation of the Gaussian.
        seed: seeds the initial weights and the sampling generator.
    """

    def __init__(self, observation_space, action_space, hidden_sizes=(64, 64),
                 *, init_std=1.0, seed=None):
        check_stackable(observation_space, 'observation space')
        self.observation_space = observation_space
        self.action_space = action_space
        if isinstance(action_space, spaces.Discrete):
            self._discrete = True
            out_dim = int(action_space.n)
            self._start = int(action_space.start)
        elif isinstance(action_space, spaces.Box) and \
                action_space.dtype.kind == 'f':
            self._discrete = False
            out_dim = int(np.prod(action_space.shape))
            self._low = action_space.low.reshape(-1).astype(np.float64)
            self._high = action_space.high.reshape(-1).astype(np.float64)
        else:
            msg = (f'MLPAgent supports Discrete and float Box action spaces, '
                   f'got {action_space!r}; use RandomAgent or an agent of '
                   f'your own for it')
            raise TypeError(msg)
        self._flatten = flattener(observation_space)
        sizes = [flat_dim(observation_space), *hidden_sizes, out_dim]
        rng = np.random.default_rng(seed)
        params = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            gain = 0.01 if i == len(sizes) - 2 else 1.0
            params[f'W{i}'] = rng.normal(0.0, gain / np.sqrt(fan_in),
                                         size=(fan_in, fan_out))
            params[f'b{i}'] = np.zeros(fan_out)
        if not self._discrete:
            params['log_std'] = np.full(out_dim, np.log(init_std))
        self._n_layers = len(sizes) - 1
        self._params = params
        self._layers = None
        self._bind()
        self.seed(None if seed is None else rng.integers(2**63))

    def _bind(self):
        p = self._params
        self._layers = [(p[f'W{i}'], p[f'b{i}'])
                        for i in range(self._n_layers)]

    def seed(self, seed):
        self._rng = np.random.default_rng(seed)

    def reset(self, do_resets=None):
        pass

    def get_params(self):
        """A dict of copies of the weight arrays."""
        return {k: v.copy() for k, v in self._params.items()}

    def set_params(self, params):
        """Load weights from a dict like :meth:`get_params` returns.

        Raises:
            ValueError: a key is missing or unknown, or a shape differs.
        """
        if not isinstance(params, dict) or params.keys() != \
                self._params.keys():
            got = sorted(params) if isinstance(params, dict) else \
                type(params).__name__
            msg = (f'MLPAgent.set_params takes a dict with keys '
                   f'{sorted(self._params)}, got {got}')
            raise ValueError(msg)
        new = {}
        for k, v in params.items():
            v = np.array(v, dtype=np.float64)
            if v.shape != self._params[k].shape:
                msg = (f'MLPAgent.set_params: {k} has shape {v.shape}, '
                       f'expected {self._params[k].shape}')
                raise ValueError(msg)
            new[k] = v
        self._params = new
        self._bind()

    def _forward(self, x):
        # In-place bias and tanh: at these sizes numpy's per-call overhead,
        # not arithmetic, is the cost, so fewer temporaries matter.
        *hidden, (w_out, b_out) = self._layers
        for w, b in hidden:
            x = np.dot(x, w)
            x += b
            np.tanh(x, out=x)
        out = np.dot(x, w_out)
        out += b_out
        return out

    def get_actions(self, observations):
        out = self._forward(self._flatten(observations))
        if self._discrete:
            noise = self._rng.gumbel(size=out.shape)
            noise += out
            actions = noise.argmax(1)
            if self._start:
                actions += self._start
            return actions, {'logits': out}
        log_std = self._params['log_std']
        noise = self._rng.standard_normal(out.shape)
        actions = np.clip(out + np.exp(log_std) * noise, self._low,
                          self._high)
        shape = (len(out),) + self.action_space.shape
        actions = actions.reshape(shape).astype(self.action_space.dtype,
                                                copy=False)
        return actions, {'mean': out,
                         'log_std': np.broadcast_to(log_std, out.shape)}

    def get_action(self, observation):
        actions, info = self.get_actions(_as_batch_of_one(observation))
        info = {k: v[0] for k, v in info.items()}
        if self._discrete:
            return int(actions[0]), info
        return actions[0], info

    def __repr__(self):
        hidden = tuple(w.shape[1] for w, _ in self._layers[:-1])
        return (f'MLPAgent({self.observation_space!r}, {self.action_space!r}, '
                f'hidden_sizes={hidden})')


def _as_batch_of_one(observation):
    if isinstance(observation, dict):
        return {k: _as_batch_of_one(v) for k, v in observation.items()}
    if isinstance(observation, tuple):
        return tuple(_as_batch_of_one(v) for v in observation)
    return np.asarray(observation)[None]
