"""Faults a careful user hits: a caught Ctrl-C, two threads, close() from
another thread, bad data from an env or agent, and errors that must say
what happened. Each test runs on every backend it applies to; the ones
about processes (a killed caller, a fork, exit) are in
test_process_faults.py."""

import pickle
import threading
import time

import gymnasium as gym
import numpy as np
import pytest

from helpers import (BigObsEnv, BoxActionEnv, FlawedAgent, FlawedEnv,
                     InfoSizeEnv, OneStepEnv, ParamAgent, SleepyEnv,
                     check_big_obs)
from sampler import (LocalSampler, SamplerClosedError, SamplerError,
                     WorkerCrashedError, WorkerError)
from workers import RandomAgent, VecWorker

pytestmark = pytest.mark.timeout(120)


# 1. A caught Ctrl-C leaves every pipe usable ------------------------------

def test_a_caught_ctrl_c_never_breaks_the_next_call(make_sampler, ctrl_c):
    # 1 MiB frames: a Ctrl-C lands in the middle of reading one.
    s = make_sampler(RandomAgent(BigObsEnv.action_space),
                     lambda: BigObsEnv(size=1 << 20, length=20),
                     n_workers=2, seed=0)
    interrupted = 0
    for i in range(6):
        ctrl_c(0.05 + 0.04 * i)
        try:
            s.obtain_samples(400)
        except KeyboardInterrupt:
            interrupted += 1
        time.sleep(0.05 + 0.04 * i - 0.04 * (i - 1))  # let a late one land
        batch = s.obtain_samples(40)
        check_big_obs(batch)
        batch.check()
    assert interrupted >= 4


# 2. One call at a time ------------------------------------------------------

def test_a_call_from_a_second_thread_is_refused(make_sampler):
    s = make_sampler(ParamAgent(), lambda: SleepyEnv(0.005), n_workers=2,
                     seed=0, max_episode_length=5)
    wrong, refused, errors = [], [], []

    def calls(base):
        for i in range(15):
            params = base + i
            try:
                batch = s.obtain_samples(20, agent_update=params)
            except SamplerError as err:
                assert 'one call at a time' in str(err), err
                refused.append(params)
                continue
            except Exception as err:  # anything else is a failure
                errors.append(err)
                continue
            if set(batch.agent_infos['p'].tolist()) != {params}:
                wrong.append(params)

    threads = [threading.Thread(target=calls, args=(base,))
               for base in (1000, 2000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not wrong
    assert refused  # they did overlap
    # The sampler still works, with the last parameters sent.
    assert len(s.obtain_samples(10, agent_update=5)) >= 10


def test_the_refusal_names_both_calls_and_threads(make_sampler):
    s = make_sampler(ParamAgent(), lambda: SleepyEnv(0.02), n_workers=1,
                     seed=0)
    done = threading.Event()
    result = []

    def long_call():
        try:
            result.append(s.obtain_steps(40))
        finally:
            done.set()

    thread = threading.Thread(target=long_call, name='collector')
    thread.start()
    deadline = time.monotonic() + 10
    while s._running is None and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(SamplerError, match=r"obtain_samples\(5\) was called "
                       r"from thread 'MainThread' while obtain_steps\(40\) "
                       r"runs in thread 'collector'"):
        s.obtain_samples(5)
    with pytest.raises(SamplerError, match='one call at a time'):
        s.push_update(agent_update=3)
    thread.join()
    assert len(result[0]) == 40
    assert s.version == 0  # the refused push changed nothing


# 5. close() from another thread ---------------------------------------------

def test_close_from_another_thread_raises_closed_error_in_the_call(
        make_sampler):
    s = make_sampler(RandomAgent(OneStepEnv.action_space),
                     lambda: SleepyEnv(0.01), n_workers=2, seed=0,
                     max_episode_length=10)
    s.obtain_samples(10)
    closer = threading.Timer(0.3, s.close)
    closer.start()
    started = time.monotonic()
    with pytest.raises(SamplerClosedError,
                       match=r'the sampler was closed during '
                             r'obtain_samples\(10000000\) \(close\(\) was '
                             r'called from another thread\)'):
        s.obtain_samples(10 ** 7)
    closer.join()
    assert time.monotonic() - started < 10
    assert s.closed
    with pytest.raises(SamplerClosedError, match='this sampler is closed'):
        s.obtain_samples(10)


# 7. Bad data is refused where it enters -------------------------------------

def CartPole():
    return gym.make('CartPole-v1')


BAD_DATA = {
    # case: (worker 0's good env, worker 1's env, worker 1's agent or None
    #        for random actions, site, message)
    'reward of shape (1,)': (
        FlawedEnv, lambda: FlawedEnv('reward_shape'), None, 'env.step',
        r'rewards must be numbers \(one float per step\), but the env '
        r'returned arrays of shape \(1,\)'),
    'reward None': (
        FlawedEnv, lambda: FlawedEnv('reward_none'), None, 'env.step',
        r'a reward is NaN \(or None\) at step 0'),
    'float64 observations, float32 space': (
        FlawedEnv, lambda: FlawedEnv('obs_dtype'), None, 'env.step',
        r'observations are float64, but the space Box\(-1\.0, 1\.0, '
        r'\(2,\), float32\) is float32; cast them in the env'),
    'observations (5,) for a (2,) space': (
        FlawedEnv, lambda: FlawedEnv('obs_shape'), None, 'env.step',
        r'observations have shape \(5,\) per step, but the space '
        r'Box\(-1\.0, 1\.0, \(2,\), float32\) has shape \(2,\)'),
    'actions (3,) for Box(2,)': (
        BoxActionEnv, BoxActionEnv, FlawedAgent('action_shape'),
        'agent.get_action',
        r'actions have shape \(3,\) per step, but the action space '
        r'Box\(-1\.0, 1\.0, \(2,\), float32\) has shape \(2,\)'),
    'action 7 for Discrete(3)': (
        FlawedEnv, FlawedEnv, FlawedAgent('action_range'),
        'agent.get_action',
        r'actions\[0\] is 7, which the action space Discrete\(3\) does '
        r'not hold; an agent must return actions that the env\'s action '
        r'space holds \(the env was not stepped with these\)'),
    # CartPole asserts its actions: ours is the message, not gymnasium's.
    'action 5 for CartPole': (
        CartPole, CartPole, lambda obs: 5, 'agent.get_action',
        r'actions\[0\] is 5, which the action space Discrete\(2\) does '
        r'not hold'),
}


@pytest.mark.parametrize('kind', ['default', 'vec'])
@pytest.mark.parametrize('case', sorted(BAD_DATA))
def test_bad_data_is_refused_naming_worker_call_and_fault(make_sampler,
                                                          case, kind):
    good, bad, agent, site, message = BAD_DATA[case]
    extra = {}
    if kind == 'vec':
        extra = {'worker_class': VecWorker, 'worker_args': {'n_envs': 2}}
        if site == 'agent.get_action':
            site = 'agent.get_actions'  # a VecWorker's batched call
    agents = [RandomAgent(good().action_space),
              agent or RandomAgent(good().action_space)]
    s = make_sampler(agents, [good, bad], n_workers=2, seed=0, **extra)
    # Exact episodes: worker 1 must send some, however fast worker 0 is.
    with pytest.raises(WorkerError, match=rf'^worker 1 failed in {site} '
                       rf'during obtain_exact_episodes\(2\): ValueError: '
                       rf'{message}') as info:
        s.obtain_exact_episodes(2)
    assert info.value.worker_number == 1 and info.value.site == site
    assert info.value.call == 'obtain_exact_episodes(2)'


def test_good_data_passes_the_checks_on_every_space_family(make_sampler):
    from helpers import DictObsEnv
    env = DictObsEnv()
    s = make_sampler(RandomAgent(env.action_space), DictObsEnv, n_workers=2,
                     seed=0)
    batch = s.obtain_samples(50)
    batch.check()


# 8. Errors that say what happened -------------------------------------------

MESSAGES = {
    'reset returns only an observation': (
        lambda: FlawedEnv('reset_obs_only'), None, WorkerError,
        r'^worker 1 failed in env\.reset during '
        r'obtain_exact_episodes\(2\): '
        r'TypeError: env\.reset must return \(observation, info\), as '
        r'gymnasium envs do since 0\.26, but it returned an array of shape '
        r'\(2,\) and dtype float32; return obs, \{\} \(and for an env '
        r'written for gym before 0\.26, update it or wrap it in '
        r'shimmy\.GymV21CompatibilityV0\(env=old_env\) \(pip install '
        r'"shimmy\[gym-v21\]"\), as gymnasium 1\.x no longer has its own '
        r'wrapper\)$'),
    'step returns the old four values': (
        lambda: FlawedEnv('step_four'), None, WorkerError,
        r'^worker 1 failed in env\.step during '
        r'obtain_exact_episodes\(2\): '
        r'TypeError: env\.step must return \(observation, reward, '
        r'terminated, truncated, info\), but it returned a tuple of 4 '
        r'\(ndarray, float, bool, dict\); four values are the old gym API '
        r'\(done for terminated and truncated\): update the env or wrap '
        r'it in shimmy\.GymV21CompatibilityV0'),
    'observation shape changes mid-episode': (
        lambda: FlawedEnv('obs_shape_changes'), None, WorkerError,
        r'^worker 1 failed in env\.step during '
        r'obtain_exact_episodes\(2\): ValueError: the observation at step '
        r'3 of episode \d+ has shape \(5,\), f, but earlier ones have shape '
        r'\(2,\), f'),
    'get_action returns a bare value': (
        FlawedEnv, FlawedAgent('bare_array'), WorkerError,
        r'^worker 1 failed in agent\.get_action during '
        r'obtain_exact_episodes\(2\): TypeError: agent\.get_action must '
        r'return \(action, agent_info\) with agent_info a dict, but it '
        r'returned a numpy float32 scalar 0\.5; return action, \{\}'),
    "an exception's __str__ raises": (
        lambda: FlawedEnv('str_raises'), None, WorkerError,
        r'^worker 1 failed in env\.step during '
        r'obtain_exact_episodes\(2\): '
        r'UnprintableError: <str\(\) of this UnprintableError raised '
        r'RuntimeError: no words>'),
}


@pytest.mark.parametrize('case', sorted(MESSAGES))
def test_errors_say_what_happened(make_sampler, case):
    env, agent, error, message = MESSAGES[case]
    agents = [RandomAgent(FlawedEnv.action_space),
              agent or RandomAgent(FlawedEnv.action_space)]
    s = make_sampler(agents, [FlawedEnv, env], n_workers=2, seed=0)
    # Exact episodes: worker 1 must send some, however fast worker 0 is.
    with pytest.raises(error, match=message):
        s.obtain_exact_episodes(2)


def test_workers_whose_batches_differ_are_named(make_sampler):
    s = make_sampler(RandomAgent(FlawedEnv.action_space),
                     [lambda: InfoSizeEnv(2), lambda: InfoSizeEnv(3)],
                     n_workers=2, seed=0)
    with pytest.raises(SamplerError, match=r"^worker 1's episodes do not "
                       r"fit worker 0's, so they cannot make one batch: "
                       r"env_infos\['x'\] has shape \(2,\) per step in "
                       r"worker 0's and \(3,\) in worker 1's"):
        s.obtain_exact_episodes(1)


def test_a_sampler_cannot_be_pickled(make_sampler):
    s = make_sampler(RandomAgent(OneStepEnv.action_space), OneStepEnv,
                     n_workers=1, seed=0)
    with pytest.raises(TypeError, match=r'cannot be pickled: it owns its '
                                        r'workers .* send what it is made of'):
        pickle.dumps(s)


def test_a_list_of_updates_with_none_is_refused_in_the_caller(make_sampler):
    s = make_sampler(ParamAgent(), OneStepEnv, n_workers=2, seed=0)
    with pytest.raises(ValueError, match=r'agent_update\[1\] is None: a list '
                                         r'of agent_update needs one for '
                                         r'every worker'):
        s.obtain_samples(4, agent_update=[7, None])
    with pytest.raises(ValueError, match=r'env_update\[0\] is None'):
        s.push_update(env_update=[None, OneStepEnv])
    assert s.version == 0
    # Exact episodes: both workers' parameters are in the batch.
    batch = s.obtain_exact_episodes(2, agent_update=[7, 8])
    assert batch.agent_infos['p'].tolist() == [7, 7, 8, 8]


def test_worker_errors_pickle_with_their_call():
    err = WorkerError(1, 'env.step', 'ValueError', 'bad', 'tb',
                      call='obtain_steps(3)')
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == ('worker 1 failed in env.step during '
                                      'obtain_steps(3): ValueError: bad')
    crash = pickle.loads(pickle.dumps(WorkerCrashedError(0, -9, call='x()')))
    assert str(crash) == 'worker 0 died during x(): killed by signal 9 ' \
                         '(SIGKILL)'


def test_rewards_stay_plain_floats(make_sampler):
    s = make_sampler(RandomAgent(FlawedEnv.action_space), FlawedEnv,
                     n_workers=1, seed=0)
    batch = s.obtain_samples(8)
    assert batch.rewards.shape == (len(batch),)
    assert np.isfinite(batch.rewards).all()


def test_local_sampler_checks_data_the_same_way():
    # The checks live in the worker's round, shared by every backend.
    with LocalSampler(RandomAgent(FlawedEnv.action_space),
                      lambda: FlawedEnv('obs_dtype'), n_workers=1,
                      seed=0) as s:
        with pytest.raises(WorkerError, match='observations are float64'):
            s.obtain_steps(2)


def test_close_from_another_thread_ends_a_waiting_stream(make_sampler):
    s = make_sampler(ParamAgent(), lambda: SleepyEnv(0.01), n_workers=2,
                     seed=0)
    stream = s.stream(10 ** 6)  # never complete: next() waits
    closer = threading.Timer(0.3, s.close)
    closer.start()
    started = time.monotonic()
    with pytest.raises(SamplerClosedError, match=r'the sampler was closed '
                                                 r'during stream\(1000000\)'):
        next(stream)
    closer.join()
    assert time.monotonic() - started < 10
    stream.close()  # nothing left to stop
    assert s.closed
