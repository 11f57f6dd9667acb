import gymnasium as gym
import numpy as np
import pytest

from sampler import LocalSampler
from workers import MLPAgent, VecWorker, compute_gae


def reference_gae(batch, values, last_values, gamma, lam):
    """GAE as a plain loop over each segment's steps, last to first."""
    advantages = np.zeros(len(batch))
    for e in range(batch.n_episodes):
        start, length = batch.episode_starts[e], batch.lengths[e]
        last = start + length - 1
        next_value = 0.0 if batch.terminated[last] else last_values[e]
        gae = 0.0
        for t in range(last, start - 1, -1):
            delta = batch.rewards[t] + gamma * next_value - values[t]
            gae = delta + gamma * lam * gae
            advantages[t] = gae
            next_value = values[t]
    return advantages


@pytest.fixture(scope='module')
def steps_batch():
    """Segments of every kind: cut at a call's end, terminated, truncated
    by max_episode_length, and continued from an earlier call."""
    env = gym.make('CartPole-v1')
    agent = MLPAgent(env.observation_space, env.action_space, seed=0)
    with LocalSampler(agent, 'CartPole-v1', n_workers=2, seed=1,
                      max_episode_length=30, worker_class=VecWorker,
                      worker_args={'n_envs': 3}) as s:
        s.obtain_steps(7)
        batch = s.obtain_steps(50)
    assert batch.cut.any() and batch.terminated.any() and \
        batch.truncated.any() and not batch.starts.all()
    return batch


@pytest.mark.parametrize('gamma,lam', [(0.99, 0.95), (0.9, 0.0), (0.5, 1.0)])
def test_gae_equals_a_plain_loop_over_each_segment(steps_batch, gamma, lam):
    rng = np.random.default_rng(0)
    values = rng.standard_normal(len(steps_batch))
    last_values = rng.standard_normal(steps_batch.n_episodes)
    advantages, returns = compute_gae(steps_batch, values, last_values,
                                      gamma, lam)
    expected = reference_gae(steps_batch, values, last_values, gamma, lam)
    np.testing.assert_allclose(advantages, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(returns, expected + values)


def test_lambda_one_and_zero_values_give_discounted_returns(steps_batch):
    b = steps_batch
    last_values = np.full(b.n_episodes, 10.0)
    _, returns = compute_gae(b, np.zeros(len(b)), last_values, 0.9, 1.0)
    for e in range(b.n_episodes):
        start, length = b.episode_starts[e], b.lengths[e]
        last = start + length - 1
        bootstrap = 0.0 if b.terminated[last] else 10.0
        expected = sum(0.9 ** k * b.rewards[start + k]
                       for k in range(length)) + 0.9 ** length * bootstrap
        assert returns[start] == pytest.approx(expected)


def test_other_rewards_replace_the_batchs(steps_batch):
    b = steps_batch
    values, last = np.zeros(len(b)), np.zeros(b.n_episodes)
    doubled, _ = compute_gae(b, values, last, rewards=2 * b.rewards)
    plain, _ = compute_gae(b, values, last)
    np.testing.assert_allclose(doubled, 2 * plain)


def test_values_of_a_column_are_refused_with_the_fix(steps_batch):
    n = len(steps_batch)
    with pytest.raises(ValueError, match=(
            rf'^values must have one number per step, shape \({n},\), but '
            rf'has shape \({n}, 1\) \(e\.g\. values\[:, 0\] for a column '
            rf'of one\)$')):
        compute_gae(steps_batch, np.zeros((n, 1)),
                    np.zeros(steps_batch.n_episodes))
    with pytest.raises(ValueError, match=r'^last_values must have one number '
                                         r'per segment'):
        compute_gae(steps_batch, np.zeros(n), np.zeros(n))


def test_cut_segments_bootstrap_and_terminated_ones_do_not():
    from workers import EpisodeBatch
    batch = EpisodeBatch(
        observations=np.zeros((3, 1)), actions=np.zeros(3, np.int64),
        rewards=np.ones(3), terminated=[False, False, True],
        truncated=[False, False, False],
        last_observations=np.zeros((2, 1)), lengths=[2, 1],
        cut=[True, False])
    advantages, returns = compute_gae(batch, np.zeros(3), [10.0, 10.0],
                                      gamma=0.5, lam=1.0)
    # Cut: 1 + 0.5 * 10 at the last step, then 1 + 0.5 * 6 before it;
    # terminated: the reward alone.
    assert advantages.tolist() == [4.0, 6.0, 1.0]
    assert returns.tolist() == advantages.tolist()  # values are 0
