import pickle
import subprocess
import sys

import cloudpickle
import numpy as np
import pytest
from gymnasium import spaces

from workers import TorchAgent
from workers.torch_agent import INSTALL

torch = pytest.importorskip('torch')
nn = torch.nn
D = torch.distributions

BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)


class Categorical(nn.Module):
    """Logits from a linear layer, and a value estimate beside them."""

    def __init__(self, n_in, n_actions):
        super().__init__()
        self.pi = nn.Linear(n_in, n_actions)
        self.v = nn.Linear(n_in, 1)

    def forward(self, x):
        return D.Categorical(logits=self.pi(x)), {'value': self.v(x)[:, 0]}


class Gaussian(nn.Module):
    def __init__(self, n_in, n_out, std=1.0):
        super().__init__()
        self.mean = nn.Linear(n_in, n_out)
        self.log_std = nn.Parameter(torch.full((n_out,), float(np.log(std))))

    def forward(self, x):
        return D.Normal(self.mean(x), self.log_std.exp())


class DictInput(nn.Module):
    """Reads a Dict observation of a Box frame and a Discrete index."""

    def forward(self, x):
        frame, index = x['frame'], x['index']
        assert frame.dtype == torch.uint8 and frame.shape[1:] == (3, 3)
        assert index.dtype == torch.float32 and index.shape[1:] == (4,)
        logits = frame.float().reshape(len(frame), -1)[:, :2] + \
            index[:, :2]
        return D.Categorical(logits=logits)


def test_categorical_actions_log_probs_and_extra_infos():
    torch.manual_seed(0)
    agent = TorchAgent(Categorical(4, 3), spaces.Box(-1, 1, (4,), np.float32),
                       spaces.Discrete(3, start=1), seed=0)
    obs = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    actions, infos = agent.get_actions(obs)
    assert actions.shape == (5,) and set(actions) <= {1, 2, 3}
    assert sorted(infos) == ['log_prob', 'value']
    assert infos['log_prob'].dtype == np.float32
    assert infos['value'].shape == (5,)
    # The log-probabilities are those of the actions drawn (start 1).
    with torch.no_grad():
        dist, _ = agent.module(torch.as_tensor(obs))
        expected = dist.log_prob(torch.as_tensor(actions - 1)).numpy()
    np.testing.assert_allclose(infos['log_prob'], expected, rtol=1e-6)
    action, info = agent.get_action(obs[0])
    assert isinstance(action, int) and np.ndim(info['log_prob']) == 0


def test_box_actions_record_the_raw_sample_and_send_it_clipped():
    agent = TorchAgent(Gaussian(3, 2, std=5.0), spaces.Box(-1, 1, (3,)),
                       BOX, seed=1)
    obs = np.zeros((64, 3), np.float32)
    actions, infos = agent.get_actions(obs)
    assert actions.dtype == np.float32
    assert np.abs(actions).max() > 1  # std 5: many outside the bounds
    np.testing.assert_array_equal(infos['env_action'],
                                  np.clip(actions, -1, 1))
    # log_prob is the raw sample's, summed over the action's dimensions.
    with torch.no_grad():
        dist = agent.module(torch.as_tensor(obs))
        expected = dist.log_prob(torch.as_tensor(actions)).sum(1).numpy()
    np.testing.assert_allclose(infos['log_prob'], expected, rtol=1e-5)


@pytest.mark.parametrize('make_dist', [
    lambda m: D.Normal(m, torch.ones_like(m)),
    lambda m: D.Independent(D.Normal(m, torch.ones_like(m)), 1),
    lambda m: D.TransformedDistribution(D.Normal(m, torch.ones_like(m)),
                                        [D.transforms.TanhTransform()]),
    lambda m: D.Laplace(m, torch.ones_like(m)),  # the default generator
], ids=['Normal', 'Independent', 'Tanh', 'Laplace'])
def test_same_seed_same_actions_whatever_torch_global_state(make_dist):
    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(3, 2)

        def forward(self, x):
            return make_dist(self.w(x))

    module = Module()
    obs = np.ones((4, 3), np.float32)
    first = TorchAgent(module, spaces.Box(-1, 1, (3,)), BOX, seed=7)
    second = TorchAgent(module, spaces.Box(-1, 1, (3,)), BOX, seed=7)
    torch.manual_seed(123)
    a1 = [first.get_actions(obs)[0] for _ in range(3)]
    torch.manual_seed(456)  # the agent's draws must not depend on this
    global_before = torch.get_rng_state()
    a2 = [second.get_actions(obs)[0] for _ in range(3)]
    assert torch.equal(global_before, torch.get_rng_state())  # restored
    for x, y in zip(a1, a2):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a1[0], a1[1])  # the generator moves on
    first.seed(7)
    np.testing.assert_array_equal(first.get_actions(obs)[0], a1[0])


def test_params_are_the_state_dict_and_take_numpy_or_any_device():
    agent = TorchAgent(Categorical(4, 3), spaces.Box(-1, 1, (4,)),
                       spaces.Discrete(3), seed=0)
    params = agent.get_params()
    assert set(params) == {'pi.weight', 'pi.bias', 'v.weight', 'v.bias'}
    assert all(t.device.type == 'cpu' for t in params.values())
    params['pi.weight'] += 1  # a copy: the module is untouched
    assert not torch.equal(params['pi.weight'],
                           agent.module.pi.weight.detach())
    agent.set_params({k: v.numpy() for k, v in params.items()})
    assert torch.equal(params['pi.weight'], agent.module.pi.weight.detach())
    with pytest.raises(ValueError, match=r"missing \['v.bias'\]"):
        agent.set_params({k: v for k, v in params.items() if k != 'v.bias'})
    bad = dict(params, **{'pi.bias': torch.zeros(7)})
    with pytest.raises(ValueError, match=r'pi.bias has shape \(7,\), '
                                         r'expected \(3,\)'):
        agent.set_params(bad)


def test_observation_families_reach_the_module_as_documented():
    obs_space = spaces.Dict({'frame': spaces.Box(0, 255, (3, 3), np.uint8),
                             'index': spaces.Discrete(4)})
    agent = TorchAgent(DictInput(), obs_space, spaces.Discrete(2), seed=0)
    obs_space.seed(0)
    batch = {'frame': np.stack([obs_space.sample()['frame']
                                for _ in range(3)]),
             'index': np.array([0, 3, 1])}
    actions, infos = agent.get_actions(batch)
    assert actions.shape == (3,) and infos['log_prob'].shape == (3,)


def test_pickles_with_its_generator_state():
    agent = TorchAgent(Gaussian(3, 2), spaces.Box(-1, 1, (3,)), BOX, seed=3)
    obs = np.ones((2, 3), np.float32)
    agent.get_actions(obs)
    copy = cloudpickle.loads(cloudpickle.dumps(agent))
    np.testing.assert_array_equal(copy.get_actions(obs)[0],
                                  agent.get_actions(obs)[0])
    pickle.loads(pickle.dumps(agent))  # a module-level class: plain pickle


def test_bad_modules_and_outputs_say_what_is_wrong():
    with pytest.raises(TypeError, match='takes a torch.nn.Module, got '
                                        'function'):
        TorchAgent(lambda x: x, BOX, BOX)

    class Raw(nn.Module):
        def forward(self, x):
            return x

    agent = TorchAgent(Raw(), BOX, BOX)
    with pytest.raises(TypeError, match='must return a torch.distributions'
                                        '.Distribution or'):
        agent.get_actions(np.zeros((1, 2), np.float32))


def test_without_torch_import_works_and_construction_says_what_to_install():
    code = (
        'import sys; sys.modules["torch"] = None\n'
        'import workers\n'
        'try:\n'
        '    workers.TorchAgent(None, None, None)\n'
        'except ImportError as err:\n'
        '    print(err)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert INSTALL in out.stdout and 'TorchAgent needs PyTorch' in out.stdout


def test_set_params_takes_another_dtype_and_device_type():
    # A learner's state dict in float64 (or on CUDA) loads into the
    # agent's float32 CPU module; the module keeps its dtype and device.
    agent = TorchAgent(Categorical(4, 3), spaces.Box(-1, 1, (4,)),
                       spaces.Discrete(3), seed=0)
    learner = Categorical(4, 3).double()
    agent.set_params(learner.state_dict())
    for name, tensor in agent.module.state_dict().items():
        assert tensor.dtype == torch.float32 and tensor.device.type == 'cpu'
        torch.testing.assert_close(tensor.double(),
                                   learner.state_dict()[name])
    meta = {k: torch.empty(v.shape, device='meta')
            for k, v in learner.state_dict().items()}
    with pytest.raises(ValueError, match='is a meta tensor, which holds no '
                                         'values'):
        agent.set_params(meta)


def test_a_sample_of_another_shape_than_the_actions_is_refused():
    agent = TorchAgent(Gaussian(4, 3), spaces.Box(-1, 1, (4,), np.float32),
                       spaces.Box(-1.0, 1.0, (6,), np.float32), seed=0)
    with pytest.raises(ValueError, match=(
            r"^the module's distribution samples actions of shape \(3,\), "
            r'but the action space is Box\(-1\.0, 1\.0, \(6,\), float32\), '
            r'whose actions have shape \(6,\): make it a distribution over '
            r'one such action per observation \(batch_shape \+ event_shape '
            r'== \(5, 6\)\)$')):
        agent.get_actions(np.zeros((5, 4), np.float32))


class ValueHead(nn.Module):
    """A value head returned as ``nn.Linear(k, 1)`` gives it, (B, 1),
    beside an entry of two numbers per observation."""

    def __init__(self):
        super().__init__()
        self.pi = nn.Linear(4, 2)
        self.v = nn.Linear(4, 1)

    def forward(self, x):
        return D.Categorical(logits=self.pi(x)), {
            'value': self.v(x), 'pair': torch.zeros(len(x), 2)}


def test_a_value_head_of_one_column_is_one_number_per_step():
    agent = TorchAgent(ValueHead(), spaces.Box(-1, 1, (4,), np.float32),
                       spaces.Discrete(2), seed=0)
    obs = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    _, infos = agent.get_actions(obs)
    assert infos['value'].shape == (5,) and infos['pair'].shape == (5, 2)
    with torch.no_grad():
        expected = agent.module.v(torch.as_tensor(obs))[:, 0].numpy()
    np.testing.assert_allclose(infos['value'], expected)
    # So GAE-style arithmetic with rewards stays per step.
    rewards = np.ones(5, np.float32)
    assert (rewards + 0.99 * infos['value']).shape == (5,)
    _, info = agent.get_action(obs[0])
    assert np.shape(info['value']) == ()
