import numpy as np
import pytest
from gymnasium import spaces

from helpers import leaves_of
from workers import CallableAgent, MLPAgent, RandomAgent

OBS_SPACES = {
    'Box': spaces.Box(-1, 1, (4,), np.float32),
    'Discrete': spaces.Discrete(16),
    'MultiDiscrete': spaces.MultiDiscrete([3, 2]),
    'MultiBinary': spaces.MultiBinary(5),
    'Tuple': spaces.Tuple((spaces.Discrete(32), spaces.Discrete(11))),
    'Dict': spaces.Dict({'a': spaces.Box(0, 1, (2, 2)),
                         'b': spaces.Discrete(3)}),
}
ACTION_SPACES = {
    'Discrete': spaces.Discrete(3, start=1),
    'Box': spaces.Box(-2, 2, (2,), np.float32),
}


def batch_of(space, n, seed=0):
    space.seed(seed)
    items = [space.sample() for _ in range(n)]
    return _stack(items)


def _stack(items):
    if isinstance(items[0], dict):
        return {k: _stack([x[k] for x in items]) for k in items[0]}
    if isinstance(items[0], tuple):
        return tuple(_stack([x[i] for x in items])
                     for i in range(len(items[0])))
    return np.asarray(items)


@pytest.mark.parametrize('obs_name', sorted(OBS_SPACES))
@pytest.mark.parametrize('act_name', sorted(ACTION_SPACES))
def test_mlp_agent_acts_in_the_space_for_every_observation_family(obs_name,
                                                                  act_name):
    obs_space, act_space = OBS_SPACES[obs_name], ACTION_SPACES[act_name]
    agent = MLPAgent(obs_space, act_space, hidden_sizes=(8,), seed=0)
    obs = batch_of(obs_space, 6)
    actions, info = agent.get_actions(obs)
    assert len(actions) == 6
    assert all(act_space.contains(a) for a in
               (actions if act_name == 'Box' else actions.tolist()))
    single, single_info = agent.get_action(obs_space.sample())
    assert act_space.contains(single)
    if act_name == 'Discrete':
        assert info['logits'].shape == (6, 3)
        assert isinstance(single, int)
    else:
        assert info['mean'].shape == (6, 2) and info['log_std'].shape == (6, 2)
        assert single_info['mean'].shape == (2,)


def test_mlp_get_action_draws_like_a_batch_of_one():
    space = spaces.Box(-1, 1, (4,), np.float32)
    for act_space in ACTION_SPACES.values():
        a = MLPAgent(space, act_space, seed=3)
        b = MLPAgent(space, act_space, seed=3)
        a.seed(11)
        b.seed(11)
        obs = batch_of(space, 5)
        singles = [a.get_action(o)[0] for o in obs]
        batched = [b.get_actions(o[None])[0][0] for o in obs]
        np.testing.assert_array_equal(np.asarray(singles),
                                      np.asarray(batched))


def test_mlp_params_round_trip_and_change_actions():
    space = spaces.Box(-1, 1, (4,), np.float32)
    a = MLPAgent(space, spaces.Discrete(2), seed=0)
    b = MLPAgent(space, spaces.Discrete(2), seed=1)
    obs = batch_of(space, 50)
    assert not np.allclose(a.get_actions(obs)[1]['logits'],
                           b.get_actions(obs)[1]['logits'])
    b.set_params(a.get_params())
    np.testing.assert_array_equal(a.get_actions(obs)[1]['logits'],
                                  b.get_actions(obs)[1]['logits'])
    params = a.get_params()
    params['W0'] += 1.0  # get_params hands out copies
    assert not np.array_equal(params['W0'], a.get_params()['W0'])


def test_mlp_set_params_rejects_wrong_keys_and_shapes():
    a = MLPAgent(spaces.Box(-1, 1, (4,)), spaces.Discrete(2),
                 hidden_sizes=(8,))
    with pytest.raises(ValueError, match=r"^MLPAgent.set_params takes a dict "
                                         r"with keys \['W0', 'W1', 'b0', "
                                         r"'b1'\], got \['W0'\]$"):
        a.set_params({'W0': np.zeros((4, 8))})
    params = a.get_params()
    params['W1'] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r'^MLPAgent.set_params: W1 has shape '
                                         r'\(3, 3\), expected \(8, 2\)$'):
        a.set_params(params)


def test_mlp_refuses_unsupported_action_spaces():
    with pytest.raises(TypeError, match='^MLPAgent supports Discrete and '
                                        'float Box action spaces, got '
                                        'MultiBinary'):
        MLPAgent(spaces.Box(-1, 1, (2,)), spaces.MultiBinary(3))


def test_categorical_sampling_follows_the_logits():
    space = spaces.Box(-1, 1, (1,), np.float32)
    agent = MLPAgent(space, spaces.Discrete(2), hidden_sizes=(), seed=0)
    params = agent.get_params()
    params['W0'][:] = 0.0
    params['b0'][:] = [0.0, np.log(3.0)]  # p = [0.25, 0.75]
    agent.set_params(params)
    actions, _ = agent.get_actions(np.zeros((20000, 1), np.float32))
    assert abs(actions.mean() - 0.75) < 0.02


def test_gaussian_actions_are_clipped_and_spread_by_log_std():
    space = spaces.Box(-1, 1, (1,), np.float32)
    act = spaces.Box(-0.5, 0.5, (1,), np.float32)
    agent = MLPAgent(space, act, hidden_sizes=(), init_std=0.1, seed=0)
    actions, info = agent.get_actions(np.zeros((5000, 1), np.float32))
    assert actions.dtype == np.float32
    assert 0.08 < actions.std() < 0.12
    np.testing.assert_allclose(info['log_std'], np.log(0.1))
    wide = MLPAgent(space, act, hidden_sizes=(), init_std=10.0, seed=0)
    actions, _ = wide.get_actions(np.zeros((5000, 1), np.float32))
    assert actions.min() == -0.5 and actions.max() == 0.5


@pytest.mark.parametrize('act_space', [
    spaces.Discrete(3, start=-1), spaces.Box(-2, 2, (3,)),
    spaces.Box(-np.inf, np.inf, (2,)), spaces.MultiDiscrete([2, 5]),
    spaces.MultiBinary(3),
    spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (1,)))),
], ids=lambda s: type(s).__name__)
def test_random_agent_samples_the_space_reproducibly(act_space):
    a, b = RandomAgent(act_space, seed=4), RandomAgent(act_space, seed=4)
    one = [a.get_action(None)[0] for _ in range(20)]
    assert all(act_space.contains(x) for x in one)
    many, _ = b.get_actions(np.zeros((20, 1)))
    assert _stack(one) is not None
    for x, y in zip(leaves_of(_stack(one)), leaves_of(many)):
        np.testing.assert_array_equal(x, y)
    a.seed(9)
    again = [a.get_action(None)[0] for _ in range(20)]
    assert any(not np.array_equal(np.asarray(leaves_of(x)[0]),
                                  np.asarray(leaves_of(y)[0]))
               for x, y in zip(one, again))


def test_random_agent_params_are_empty():
    agent = RandomAgent(spaces.Discrete(2))
    assert agent.get_params() == {}
    agent.set_params({})
    with pytest.raises(ValueError, match=r"^RandomAgent has no parameters"):
        agent.set_params({'w': 1})


def test_callable_agent_wraps_a_function():
    agent = CallableAgent(lambda obs: int(obs.sum() > 0))
    assert agent.get_action(np.ones(2)) == (1, {})
    actions, info = agent.get_actions(np.array([[1.0], [-1.0]]))
    assert actions.tolist() == [1, 0] and info == {}
