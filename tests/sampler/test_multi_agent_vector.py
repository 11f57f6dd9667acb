"""sampler.vector.MultiAgentVectorEnv: PettingZoo envs' agents as the slots
of one gymnasium vector env, on every backend; step for step what the
PettingZoo envs themselves give, and what SuperSuit's vector envs give."""

import functools
import os

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from helpers import ComingAndGoingEnv, write_atomically
from sampler import WorkerCrashedError, WorkerError
from sampler.vector import MultiAgentVectorEnv

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def make_vector():
    made = []

    def make(env_fns, **options):
        env = MultiAgentVectorEnv(env_fns, **options)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


# What ComingAndGoingEnv's slots 'a', 'b', 'c', 'd' give, step by step
# from a reset (see its docstring): the observations' times, rewards,
# flags and the active mask after each step (NEXT_STEP mode; the 6th step
# is the reset).
TIMES = [[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 0, 3], [4, 0, 0, 4],
         [5, 0, 0, 5], [0, 0, 0, 0]]
REWARDS = [[.1, 1.1, 2.1, 0], [.2, 1.2, 2.2, 3.2], [.3, 1.3, 0, 3.3],
           [.4, 0, 0, 3.4], [.5, 0, 0, 3.5], [0, 0, 0, 0]]
TERMINATED = [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0],
              [1, 0, 0, 1], [0, 0, 0, 0]]
TRUNCATED = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0],
             [0, 0, 0, 0], [0, 0, 0, 0]]
ACTIVE = [[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1],
          [0, 0, 0, 0], [1, 1, 1, 0]]


@pytest.mark.parametrize('mode', [AutoresetMode.NEXT_STEP,
                                  AutoresetMode.SAME_STEP])
def test_agents_that_come_and_go_keep_their_slots(vector_backend, mode,
                                                  make_vector):
    envs = make_vector([ComingAndGoingEnv] * 3, n_workers=2,
                       autoreset_mode=mode, backend=vector_backend)
    assert envs.num_envs == 12 and envs.agent_ids == ['a', 'b', 'c', 'd']
    assert envs.observation_space.shape == (12, 3)
    assert envs.action_space.shape == (12,)
    obs, infos = envs.reset(seed=0)
    assert obs.shape == (12, 3)
    # 'd' comes at step 1: a slot of zeros until then.
    assert infos['active'].tolist() == [True, True, True, False] * 3
    assert (obs[3::4] == 0).all()
    np.testing.assert_array_equal(obs[:, 1], [0, 1, 2, 0] * 3)
    steps = 5 if mode is AutoresetMode.SAME_STEP else 6
    for t in range(steps):
        actions = np.arange(12) % 2
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        times = TIMES[t] if t < 4 or mode is AutoresetMode.NEXT_STEP \
            else TIMES[5]  # same_step: reset at once
        np.testing.assert_array_equal(obs[:, 0], times * 3)
        np.testing.assert_allclose(rewards, REWARDS[t] * 3)
        assert terminated.astype(int).tolist() == TERMINATED[t] * 3
        assert truncated.astype(int).tolist() == TRUNCATED[t] * 3
        active = ACTIVE[5] if t == 4 and mode is AutoresetMode.SAME_STEP \
            else ACTIVE[t]
        assert infos['active'].astype(int).tolist() == active * 3
        if t < 4:  # agents in the env got their own actions back
            echo = np.where(infos['_echo'], infos['echo'], -1)
            live = ACTIVE[5] if t == 0 else ACTIVE[t - 1]  # 5: reset
            expected = np.where(np.array(live * 3, bool), actions, -1)
            assert echo.tolist() == expected.tolist()
    if mode is AutoresetMode.SAME_STEP:
        # The step that ended the episodes: their last observations.
        assert infos['_final_obs'].all()
        np.testing.assert_array_equal(
            np.stack(infos['final_obs'])[:, 0], TIMES[4] * 3)
        assert infos['_start'].tolist() == [True, True, True, False] * 3


def pursuit():
    from pettingzoo.sisl import pursuit_v5
    return pursuit_v5.parallel_env(max_cycles=30)


def spread():
    from mpe2 import simple_spread_v3
    return simple_spread_v3.parallel_env(max_cycles=30)


REAL_ENVS = [(pursuit, 'pettingzoo.sisl'), (spread, 'mpe2')]


def plain_loop(make_env, n_envs, seed, actions):
    """Each PettingZoo env stepped by hand, reset when its agents are all
    gone (next-step autoreset): per step, the slots' observations,
    rewards and flags."""
    envs = [make_env() for _ in range(n_envs)]
    agents = envs[0].possible_agents
    last = [env.reset(seed=seed + j)[0] for j, env in enumerate(envs)]
    ended = [False] * n_envs
    out = []
    for step_actions in actions:
        rows, rewards, flags = [], [], []
        for j, env in enumerate(envs):
            mine = step_actions[j * len(agents):(j + 1) * len(agents)]
            if ended[j]:
                last[j], ended[j] = env.reset()[0], False
                rows += [last[j][a] for a in agents]
                rewards += [0.0] * len(agents)
                flags += [(False, False)] * len(agents)
                continue
            obs, rs, terms, truncs, _ = env.step(
                {a: mine[p] for p, a in enumerate(agents)
                 if a in env.agents})
            rows += [obs[a] for a in agents]
            rewards += [rs[a] for a in agents]
            flags += [(terms[a], truncs[a]) for a in agents]
            last[j] = obs
            ended[j] = not env.agents
        out.append((np.stack(rows), np.array(rewards), flags))
    for env in envs:
        env.close()
    return out


@pytest.mark.parametrize('make_env, module', REAL_ENVS)
def test_real_pettingzoo_envs_step_as_they_do_by_hand(
        vector_backend, make_env, module, make_vector):
    pytest.importorskip(module)
    envs = make_vector([make_env] * 3, n_workers=2, backend=vector_backend)
    n = envs.num_envs
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 5, n) for _ in range(70)]  # two resets
    expected = plain_loop(make_env, 3, 7, actions)
    obs, infos = envs.reset(seed=7)
    assert infos['active'].all()
    ended = 0
    for step, (rows, rewards, flags) in zip(actions, expected):
        obs, rs, terminated, truncated, infos = envs.step(step)
        np.testing.assert_array_equal(obs, rows)
        np.testing.assert_allclose(rs, rewards)
        assert list(zip(terminated, truncated)) == flags
        ended += truncated.all()
    assert ended == 2  # max_cycles=30, every agent truncated


@pytest.mark.parametrize('make_env, module', REAL_ENVS)
def test_the_same_as_supersuits_vector_envs(make_env, module, make_vector):
    pytest.importorskip(module)
    ss = pytest.importorskip('supersuit')
    theirs = ss.concat_vec_envs_v1(
        ss.pettingzoo_env_to_vec_env_v1(make_env()), 2, num_cpus=0,
        base_class='gymnasium')
    ours = make_vector([make_env] * 2, n_workers=2,
                       autoreset_mode=AutoresetMode.SAME_STEP)
    try:
        assert ours.num_envs == theirs.num_envs
        assert ours.single_observation_space == theirs.observation_space
        assert ours.single_action_space == theirs.action_space
        obs, _ = ours.reset(seed=11)
        their_obs, _ = theirs.reset(seed=11)
        np.testing.assert_allclose(obs, their_obs)
        rng = np.random.default_rng(1)
        for _ in range(65):
            actions = rng.integers(0, 5, ours.num_envs)
            obs, rewards, terminated, truncated, infos = ours.step(actions)
            their_obs, their_rewards, their_term, their_trunc, their_infos \
                = theirs.step(actions)
            np.testing.assert_allclose(obs, their_obs, rtol=1e-6)
            np.testing.assert_allclose(rewards, their_rewards, rtol=1e-6)
            assert terminated.tolist() == their_term.astype(bool).tolist()
            assert truncated.tolist() == their_trunc.astype(bool).tolist()
            for slot, info in enumerate(their_infos):
                if 'terminal_observation' in info:
                    assert infos['_final_obs'][slot]
                    np.testing.assert_allclose(
                        infos['final_obs'][slot],
                        info['terminal_observation'], rtol=1e-6)
    finally:
        theirs.close()


class OddSpacesEnv(ComingAndGoingEnv):
    def observation_space(self, agent):
        return super().observation_space(agent) if agent != 'c' else \
            ComingAndGoingEnv(obs_size=4).observation_space(agent)


class AecEnv(ComingAndGoingEnv):
    def agent_iter(self):
        return iter(self.agents)

    def last(self):
        return None


def test_what_is_refused_says_why(make_vector):
    with pytest.raises(WorkerError, match=(
            r"agent 'c' has the observation_space Box.*\(4,\).*pad_obs")):
        MultiAgentVectorEnv([OddSpacesEnv], backend='local')
    with pytest.raises(WorkerError, match='aec_to_parallel'):
        MultiAgentVectorEnv([AecEnv], backend='local')
    with pytest.raises(ValueError, match='DISABLED'):
        MultiAgentVectorEnv([ComingAndGoingEnv],
                            autoreset_mode=AutoresetMode.DISABLED)
    envs = make_vector([ComingAndGoingEnv] * 2, n_workers=2)
    envs.reset()
    with pytest.raises(ValueError, match=r'actions for 3 slots \(2 envs '
                                         r'of 4 agents\); .* num_envs=8'):
        envs.step(np.zeros(3, int))
    with pytest.raises(ValueError, match='one seed per PettingZoo env'):
        envs.reset(seed=[1, 2, 3])
    with pytest.raises(NotImplementedError, match='use step'):
        envs.send(np.zeros(8, int))
    # Calls answer per PettingZoo env.
    assert envs.get_attr('possible_agents') == (['a', 'b', 'c', 'd'],) * 2
    envs.step(np.zeros(8, int))  # still works after the refusals


class CrashingEnv(ComingAndGoingEnv):
    """Exits its process at its 3rd step while ``marker`` exists (the
    first to get there removes it)."""

    def __init__(self, marker):
        super().__init__()
        self.marker, self.steps = marker, 0

    def step(self, actions):
        self.steps += 1
        if self.steps == 3:
            try:
                os.remove(self.marker)
            except FileNotFoundError:
                pass
            else:
                os._exit(3)
        return super().step(actions)


@pytest.mark.parametrize('backend', ['multiprocessing', 'ray'])
def test_a_dead_worker_is_replaced_and_its_slots_come_back_truncated(
        backend, make_vector, tmp_path, request):
    if backend == 'ray':
        request.getfixturevalue('ray_runtime')
    marker = str(tmp_path / 'crash')
    write_atomically(marker, 'x')
    env = functools.partial(CrashingEnv, marker)
    envs = make_vector([ComingAndGoingEnv, env], n_workers=2,
                       on_worker_error='restart', backend=backend)
    envs.reset(seed=0)
    zeros = np.zeros(8, int)
    for _ in range(2):
        assert 'worker_restarted' not in envs.step(zeros)[4]
    obs, rewards, terminated, truncated, infos = envs.step(zeros)
    # Env 0's third step ('b' leaves), and env 1's slots truncated.
    assert truncated.astype(int).tolist() == TRUNCATED[2] + [1] * 4
    assert infos['worker_restarted'].tolist() == [False] * 4 + [True] * 4
    np.testing.assert_allclose(rewards, REWARDS[2] + [0] * 4)
    # Env 1 is reset: its agents at t=0, 'd' not come yet.
    np.testing.assert_array_equal(obs[:, 0], TIMES[2] + [0, 0, 0, 0])
    assert infos['active'].tolist() == [True, False, False, True,
                                        True, True, True, False]
    assert envs._workers.sampler.stats['worker_restarts'] == 1
    envs.step(zeros)


def test_a_dead_worker_raises_without_restart(make_vector, tmp_path):
    marker = str(tmp_path / 'crash')
    write_atomically(marker, 'x')
    envs = make_vector([functools.partial(CrashingEnv, marker)],
                       n_workers=1)
    envs.reset()
    envs.step(np.zeros(4, int))
    envs.step(np.zeros(4, int))
    with pytest.raises(WorkerCrashedError):
        envs.step(np.zeros(4, int))
