"""sampler.vector.SubprocVecEnv behaves as stable-baselines3's vec envs do
(SB3's own test file runs against it too: test_sb3_suite.py): step for
step what SB3's DummyVecEnv returns, SB3's calls on chosen envs, and
errors from the envs that name where they came from."""

import sys

import numpy as np
import pytest

from helpers import FaultyEnv, InfoEnv, assert_same_nest
from sampler import WorkerError

pytest.importorskip('stable_baselines3')
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from sampler.vector import SubprocVecEnv  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def make_vec():
    made = []

    def make(env_fns, **options):
        env = SubprocVecEnv(env_fns, **options)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def test_steps_equal_sb3s_dummy_vec_env(vector_backend, make_vec):
    n = 5
    ours = make_vec([InfoEnv] * n, n_workers=2, backend=vector_backend)
    theirs = DummyVecEnv([InfoEnv] * n)
    for env in (ours, theirs):
        env.seed(7)
        env.set_options({'tag': 3})
    np.testing.assert_array_equal(ours.reset(), theirs.reset())
    assert_same_nest(ours.reset_infos, theirs.reset_infos)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(40):
        actions = rng.integers(0, 3, n)
        obs, rewards, dones, infos = ours.step(actions)
        their_obs, their_rewards, their_dones, their_infos = \
            theirs.step(actions)
        np.testing.assert_array_equal(obs, their_obs)
        np.testing.assert_array_equal(rewards, their_rewards)
        np.testing.assert_array_equal(dones, their_dones)
        assert dones.dtype == np.bool_
        assert_same_nest(infos, their_infos)
        assert_same_nest(ours.reset_infos, theirs.reset_infos)
        ends += int(dones.sum())
    assert ends > 10
    # Seeds and options went to one reset only.
    assert ours._seeds == [None] * n and ours._options == [{}] * n


def test_an_envs_error_raises_its_own_type_naming_the_env(make_vec):
    fine = lambda: FaultyEnv('none')  # noqa: E731
    envs = make_vec([fine, fine, lambda: FaultyEnv(
        'step', after=1, message='bad action')], n_workers=2)
    envs.reset()
    envs.step(np.zeros(3, np.int64))
    with pytest.raises(RuntimeError) as info:
        envs.step(np.zeros(3, np.int64))
    assert isinstance(info.value, WorkerError)
    assert info.value.site == 'env.step of env 2'
    assert 'bad action' in str(info.value)


def test_calls_on_chosen_envs_come_back_in_the_order_asked(make_vec):
    envs = make_vec([lambda: Monitor(InfoEnv()), InfoEnv,
                     lambda: Monitor(InfoEnv()), InfoEnv], n_workers=2)
    for i in range(4):
        envs.set_attr('tag', i * 10, indices=i)
    assert envs.get_attr('tag') == [0, 10, 20, 30]
    assert envs.get_attr('tag', indices=[3, 0, -2]) == [30, 0, 20]
    assert envs.env_method('__getattribute__', 'tag', indices=[1, 3]) == \
        [10, 30]
    assert envs.env_is_wrapped(Monitor) == [True, False, True, False]
    assert envs.has_attr('tag') and not envs.has_attr('no_such_thing')
    with pytest.raises(IndexError, match='env index 4 is out of range'):
        envs.get_attr('tag', indices=[4])
    with pytest.raises(AttributeError):
        envs.get_attr('no_such_thing')


def test_make_vec_env_takes_it_with_our_options():
    envs = make_vec_env('CartPole-v1', n_envs=3, seed=0,
                        vec_env_cls=SubprocVecEnv,
                        vec_env_kwargs={'n_workers': 2})
    try:
        assert envs.num_envs == 3 and len(envs._workers.shares) == 2
        obs = envs.reset()
        assert obs.shape == (3, 4)
        _, _, _, infos = envs.step(np.ones(3, np.int64))
        assert all('episode' not in info for info in infos)
    finally:
        envs.close()
    assert envs.closed
    envs.close()  # a second close does nothing


def test_without_stable_baselines3_it_says_what_to_install(monkeypatch):
    for name in list(sys.modules):
        if name.split('.')[0] == 'stable_baselines3':
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, 'sampler._sb3')
    import sampler.vector
    assert sampler.vector.AsyncVectorEnv  # the module itself works
    with pytest.raises(ImportError,
                       match=r'pip install "rollout-sampler\[sb3\]"'):
        from sampler.vector import SubprocVecEnv  # noqa: F401


def test_a_dead_worker_is_replaced_and_its_envs_come_back_done(
        make_vec, tmp_path):
    from helpers import CrashEnv
    marker = str(tmp_path / 'crashed')
    envs = make_vec([lambda: FaultyEnv('none')] * 2 + [
        lambda: CrashEnv('exit', after=1, marker=marker)] * 2,
        n_workers=2, on_worker_error='restart')
    envs.reset()
    envs.step(np.zeros(4, np.int64))
    obs, rewards, dones, infos = envs.step(np.zeros(4, np.int64))
    assert dones.tolist() == [False, False, True, True]
    assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
    for info in infos[2:]:
        assert info['worker_restarted'] and info['TimeLimit.truncated']
        np.testing.assert_allclose(info['terminal_observation'], [0.01] * 3)
    assert 'worker_restarted' not in infos[0]
    np.testing.assert_allclose(obs[:, 0], [0.02, 0.02, 0.0, 0.0])
    obs, *_ = envs.step(np.zeros(4, np.int64))  # and on it goes
    np.testing.assert_allclose(obs[:, 0], [0.03, 0.03, 0.01, 0.01])
