"""TorchAgent through the samplers, and the worker start-up options that
torch users need: worker_threads, worker_init and preload."""

import os

import gymnasium as gym
import numpy as np
import psutil
import pytest

from helpers import (DictObsEnv, FailOnceEnv, FaultyEnv, InitLog,
                     InitRequired, closing_samplers, failing_init,
                     set_init_variable, steps_of, torch_nest_policy,
                     torch_policy)
from sampler import (LocalSampler, MultiprocessingSampler, RaySampler,
                     WorkerError)

torch = pytest.importorskip('torch')

pytestmark = pytest.mark.timeout(120)


def cartpole_agent(seed=0):
    env = gym.make('CartPole-v1')
    return torch_policy(env.observation_space, env.action_space, seed,
                        report_threads=True)


def pendulum_agent(seed=0):
    env = gym.make('Pendulum-v1')
    return torch_policy(env.observation_space, env.action_space, seed)


def run_calls(sampler, params):
    """Exact episodes and steps, with a parameter update between."""
    first = sampler.obtain_exact_episodes(2)
    steps = [sampler.obtain_steps(15, agent_update=params),
             sampler.obtain_steps(15)]
    return [first] + steps


def test_torch_batches_are_identical_on_every_backend(ray_runtime):
    agent = pendulum_agent()
    params = {k: v + 0.1 for k, v in agent.get_params().items()}
    results = {}
    for backend in (LocalSampler, MultiprocessingSampler, RaySampler):
        with backend(agent, 'Pendulum-v1', n_workers=2, seed=3,
                     max_episode_length=20) as s:
            results[backend.__name__] = run_calls(s, params)
    local = results.pop('LocalSampler')
    for name, batches in results.items():
        for mine, theirs in zip(batches, local):
            assert steps_of(mine) == steps_of(theirs), name
    first, steps, _ = local
    # Gaussian actions: the raw sample is recorded, the env got it clipped.
    np.testing.assert_array_equal(steps.agent_infos['env_action'],
                                  np.clip(steps.actions, -2, 2))
    assert (np.abs(steps.actions) > 2).any()  # so the clip mattered
    assert steps.versions.tolist() == [1] * steps.n_episodes


def dict_env():
    return DictObsEnv(max_steps=6)


@pytest.mark.parametrize('env', ['FrozenLake-v1', 'Pendulum-v1', dict_env],
                         ids=['Discrete', 'Box', 'Dict'])
def test_torch_agents_sample_every_observation_family(make_sampler, env):
    made = env() if callable(env) else gym.make(env)
    if isinstance(made.action_space, gym.spaces.Box):
        agent = torch_policy(made.observation_space, made.action_space)
    else:
        agent = torch_nest_policy(made.observation_space, made.action_space)
    s = make_sampler(agent, env, n_workers=2, seed=1, max_episode_length=30)
    episodes = s.obtain_exact_episodes(2)
    steps = s.obtain_steps(10, agent_update=agent.get_params())
    assert episodes.n_episodes == 4 and len(steps) == 20
    for batch in (episodes, steps):
        assert batch.agent_infos['log_prob'].shape == (len(batch),)
        assert (batch.agent_infos['log_prob'] <= 0).all() or \
            isinstance(made.action_space, gym.spaces.Box)
        assert all(made.action_space.contains(
            a if isinstance(made.action_space, gym.spaces.Box) else
            (int(a) if np.ndim(a) == 0 else np.asarray(a)))
                   for a in batch.agent_infos.get('env_action',
                                                  batch.actions))


def test_the_start_hook_runs_once_per_worker_and_per_replacement(
        backend, tmp_path):
    log = tmp_path / 'init.log'
    # Only worker 1's env fails, once.
    envs = [FaultyEnv('none'), FailOnceEnv(str(tmp_path / 'failed'))]
    with backend(lambda obs: 0, envs, seed=0, worker_init=InitLog(log),
                 on_worker_error='restart') as s:
        s.obtain_exact_episodes(2)
        assert s.stats['worker_restarts'] == 1
    workers = sorted(int(line.split()[0])
                     for line in log.read_text().splitlines())
    # Worker 0 once, worker 1 and its replacement.
    assert workers == [0, 1, 1]


def test_workers_run_torch_with_the_threads_asked(process_backend):
    agent = cartpole_agent()
    # One thread by default, whatever the caller's torch uses.
    for options, expected in (({}, 1), ({'worker_threads': 2}, 2)):
        with process_backend(agent, 'CartPole-v1', n_workers=2, seed=0,
                             **options) as s:
            got = set(s.obtain_steps(3).agent_infos['threads'].tolist())
        assert got == {expected}


def test_worker_init_runs_before_the_env_is_built(make_sampler, monkeypatch):
    monkeypatch.delenv('ROLLOUT_SAMPLER_INIT', raising=False)
    s = make_sampler(lambda obs: 0, InitRequired, n_workers=2, seed=0,
                     worker_init=set_init_variable)
    batch = s.obtain_exact_episodes(1)
    # Each env saw the value its own worker's init set before building it
    # (in-process too: LocalSampler runs init(i) just before worker i).
    assert batch.env_infos['init'].tolist() == [0, 1]


def test_a_failing_worker_init_names_the_hook(backend):
    with pytest.raises(WorkerError) as info:
        backend(lambda obs: 0, 'CartPole-v1', n_workers=1, seed=0,
                worker_init=failing_init).close()
    err = info.value
    assert err.worker_number == 0 and err.site == 'worker_init'
    assert 'no licence for worker 0' in str(err)


@pytest.mark.parametrize('options,error,message', [
    ({'worker_threads': 0}, ValueError, 'worker_threads must be an int >= 1'),
    ({'worker_threads': 1.5}, ValueError, 'worker_threads must be an int'),
    ({'worker_init': 'setup'}, TypeError, 'worker_init must be a callable'),
])
def test_bad_start_up_options_are_refused(backend, options, error, message):
    with pytest.raises(error, match=message):
        backend(lambda obs: 0, 'CartPole-v1', n_workers=1, **options)


@pytest.mark.parametrize('preload,error,message', [
    (('torhc',), ValueError, "preload names 'torhc', which cannot be "
                             "imported here"),
    ('torch', TypeError, 'preload must be a list of module names'),
    (('__main__',), ValueError, 'preload may not name __main__'),
])
def test_bad_preloads_are_refused(preload, error, message):
    with pytest.raises(error, match=message):
        MultiprocessingSampler(lambda obs: 0, 'CartPole-v1', n_workers=1,
                               preload=preload)


def forkserver_maps():
    """The shared libraries the forkserver of this process has loaded."""
    [server] = [p for p in psutil.Process().children()
                if 'forkserver' in ' '.join(p.cmdline())]
    with open(f'/proc/{server.pid}/maps') as maps:
        return maps.read()


@pytest.mark.skipif(not os.path.exists('/proc/self/maps'),
                    reason='reads /proc/PID/maps (Linux)')
def test_preload_imports_torch_in_the_forkserver_once():
    with closing_samplers(MultiprocessingSampler) as make:
        # A sampler without torch may start (or find) a forkserver without
        # it; the next one, asking for torch while no sampler is open,
        # gets a forkserver that has it.
        make(lambda obs: 0, 'CartPole-v1', n_workers=1, preload=()).close()
        s = make(cartpole_agent(), 'CartPole-v1', n_workers=2, seed=0,
                 preload=('torch',))
        assert 'libtorch' in forkserver_maps()
        assert len(s.obtain_steps(5)) == 10


class CountedParams(dict):
    """Parameters that count how often they are pickled (in the caller)."""

    pickled = 0

    def __reduce__(self):
        CountedParams.pickled += 1
        return (dict, (dict(self),))


def test_an_update_is_pickled_once_per_call_for_all_workers(make_sampler):
    agent = cartpole_agent()
    s = make_sampler(agent, 'CartPole-v1', n_workers=4, seed=0)
    params = agent.get_params()
    CountedParams.pickled = 0
    for call in range(3):
        s.obtain_steps(2, agent_update=CountedParams(params))
    assert CountedParams.pickled == 3
