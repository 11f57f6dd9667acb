"""The crash table: every way a worker can fail, on every backend.

One test body; each row says what goes wrong in worker 1 and what the
caller must see. Rows that kill a process cannot run in-process, so
LocalSampler skips them.
"""

import inspect
import re
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import psutil
import pytest

from helpers import (CrashEnv, FaultyEnv, FirstObsAgent, Unpicklable,
                     closing_samplers)
from sampler import (BrokenSamplerError, LocalSampler, RaySampler,
                     SamplerTimeoutError, WorkerCrashedError, WorkerError)


class RaisingAgent:
    def get_action(self, observation):
        raise ArithmeticError('agent blew up')


def worker_processes():
    """Worker processes by number, found by their process titles."""
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = ' '.join(proc.cmdline())
        except psutil.Error:
            continue
        match = re.fullmatch(r'sampler-worker-(\d+)', title.strip())
        if match:
            found[int(match.group(1))] = proc
    return found


def kill_worker_soon(sampler, number, delay):
    def kill():
        psutil.Process(sampler.worker_pids()[number]).send_signal(
            signal.SIGKILL)
    timer = threading.Timer(delay, kill)
    timer.start()
    return timer


#: How a worker's error names the call of the table's cases.
CALL = r' during obtain_exact_episodes\(2\)'

# id: (envs, agents, call kwargs, error, message, traceback text,
#      process backends only, stimulus delay)
CRASHES = {
    'env raises in reset': (
        [FaultyEnv('none'), FaultyEnv('reset')], FirstObsAgent(), {},
        WorkerError, r'^worker 1 failed in env\.reset' + CALL +
        r': RuntimeError: boom$',
        'in reset', False, 0),
    'env raises in step': (
        [FaultyEnv('none'), FaultyEnv('step')], FirstObsAgent(), {},
        WorkerError, r'^worker 1 failed in env\.step' + CALL +
        r': RuntimeError: boom$',
        'in step', False, 0),
    'agent raises': (
        [FaultyEnv('none')] * 2, [FirstObsAgent(), RaisingAgent()], {},
        WorkerError, r'^worker 1 failed in agent\.get_action' + CALL +
        r': ArithmeticError: agent blew up$',
        'in get_action', False, 0),
    'os._exit(3)': (
        [FaultyEnv('none'), CrashEnv('exit')], FirstObsAgent(), {},
        WorkerCrashedError, r'^worker 1 died' + CALL +
        r': exit code 3$', None, True, 0),
    'segfault': (
        [FaultyEnv('none'), CrashEnv('segfault')], FirstObsAgent(), {},
        WorkerCrashedError, r'^worker 1 died' + CALL +
        r': killed by signal 11 \(SIGSEGV\)$', None, True, 0),
    'SIGKILL from outside': (
        [FaultyEnv('none'), CrashEnv('hang')], FirstObsAgent(), {},
        WorkerCrashedError, r'^worker 1 died' + CALL +
        r': killed by signal 9 \(SIGKILL\)$', None, True, 0.3),
    'step never returns': (
        [FaultyEnv('none'), CrashEnv('hang')], FirstObsAgent(),
        {'timeout': 0.5}, SamplerTimeoutError,
        r'^obtain_exact_episodes\(2\) timed out after 0\.5 s: 2 of 4 '
        r'episodes were collected; held up by worker 1 \(0 of 2 episodes; '
        r'inside env\.step \(File ".*helpers\.py", line \d+, in step\); '
        r'nothing sent for \d\.\d s\)$', None, True, 0.5),
}


# Ray tells its callers that an actor's process died, not how: the exit
# code or signal is unknown there, and the error quotes Ray instead.
RAY_CRASH = (r'^worker 1 died' + CALL + r': exit code unknown; Ray '
             r'reports of actor '
             r'process \d+: Worker unexpectedly exits')


@pytest.mark.timeout(60)
@pytest.mark.parametrize('case', list(CRASHES))
def test_crash_table(backend, case):
    envs, agents, kwargs, error, message, tb_text, processes_only, delay = \
        CRASHES[case]
    if processes_only and backend is LocalSampler:
        pytest.skip('kills or blocks the process it runs in')
    if error is WorkerCrashedError and backend is RaySampler:
        message = RAY_CRASH
    s = backend(agents, envs, seed=0, shutdown_timeout=2.0) \
        if backend is not LocalSampler else backend(agents, envs, seed=0)
    try:
        timer = kill_worker_soon(s, 1, delay) \
            if case.startswith('SIGKILL') else None
        started = time.monotonic()
        with pytest.raises(error, match=message) as info:
            s.obtain_exact_episodes(2, **kwargs)
        noticed = time.monotonic() - started - delay
        if timer is not None:
            timer.join()
        assert noticed < 1.0, f'noticed after {noticed:.2f} s'
        err = info.value
        if tb_text is not None:
            assert err.worker_number == 1
            assert tb_text in err.worker_traceback
            assert 'Traceback (most recent call last)' in \
                err.worker_traceback
        if error is WorkerCrashedError:
            assert err.worker_number == 1
            assert (err.exitcode is None) == (backend is RaySampler)
        if error is SamplerTimeoutError:
            assert isinstance(err, TimeoutError)
        else:
            # "raise" mode: broken until closed, the cause chained.
            with pytest.raises(BrokenSamplerError) as broken:
                s.obtain_samples(5)
            assert broken.value.__cause__ is err
    finally:
        started = time.monotonic()
        s.close()
        # close() keeps its bound even with a worker stuck in env.step.
        assert time.monotonic() - started < 3.0


def test_unpicklable_agent_is_refused_before_any_process_starts(backend):
    before = set(p.pid for p in psutil.Process().children(recursive=True))
    with pytest.raises(TypeError, match=r'^agents\[1\] cannot be pickled by '
                                        r'cloudpickle, and it must be to '
                                        r'reach the workers: TypeError: '
                                        r"cannot pickle '_thread.lock'"):
        backend([FirstObsAgent(), Unpicklable()], 'CartPole-v1', seed=0)
    after = set(p.pid for p in psutil.Process().children(recursive=True))
    assert not [p for p in after - before
                if 'sampler-worker' in ' '.join(psutil.Process(p).cmdline())]


# Tracebacks name the file and line of code pickled by value -----------------

def line_of(function, text):
    """``(file, line number)`` of the first line of ``function`` holding
    ``text``."""
    lines, first = inspect.getsourcelines(function)
    [offset] = [i for i, line in enumerate(lines) if text in line][:1]
    return inspect.getsourcefile(function), first + offset


def test_traceback_of_code_pickled_by_value_names_its_file_and_line(
        backend):
    # The premise: the test helpers travel by value (see conftest), as a
    # user's __main__ script does.
    assert 'helpers' in cloudpickle.list_registry_pickle_by_value()
    path, line = line_of(FaultyEnv.step, 'raise RuntimeError(self.message)')
    with closing_samplers(backend) as make:
        s = make(FirstObsAgent(), [FaultyEnv('none'), FaultyEnv('step')],
                 seed=0)
        with pytest.raises(WorkerError) as info:
            s.obtain_exact_episodes(1)
    tb = info.value.worker_traceback
    assert '<dynamic-code>' not in tb
    assert f'File "{path}", line {line}, in step\n' \
           f'    raise RuntimeError(self.message)\n' in tb


SCRIPT = '''
import sys

import gymnasium as gym
import numpy as np

from sampler import WorkerError
import sampler


class ScriptEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        raise ValueError('raised in the script')


if __name__ == '__main__':
    backend = getattr(sampler, sys.argv[1])
    with backend(lambda obs: 0, ScriptEnv, n_workers=1, seed=0) as s:
        try:
            s.obtain_samples(10)
        except WorkerError as err:
            print(err.worker_traceback)
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize('name', ['LocalSampler', 'MultiprocessingSampler',
                                  'RaySampler'])
def test_traceback_of_an_env_in_a_main_script_names_the_script(
        tmp_path, name):
    if name == 'RaySampler':
        pytest.importorskip('ray', reason='Ray is not installed (pip '
                                          'install "rollout-sampler[ray]")')
    script = tmp_path / 'train.py'
    script.write_text(SCRIPT)
    line = SCRIPT.splitlines().index(
        "        raise ValueError('raised in the script')") + 1
    done = subprocess.run([sys.executable, str(script), name],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    assert f'File "{script}", line {line}, in step\n' \
           f"    raise ValueError('raised in the script')\n" in done.stdout
    assert '<dynamic-code>' not in done.stdout


# A call that timed out says, in the same words whatever the call, what it
# collected, which workers held it up, and in which call they were.
TIMED_OUT = {
    'obtain_samples': (
        lambda s: s.obtain_samples(10 ** 6, timeout=0.5),
        r'obtain_samples\(1000000\)', r'\d+ of 1000000 transitions',
        r'\d+ transitions'),
    'obtain_exact_episodes': (
        lambda s: s.obtain_exact_episodes(3, timeout=0.5),
        r'obtain_exact_episodes\(3\)', r'3 of 6 episodes',
        r'0 of 3 episodes'),
    'obtain_steps': (
        lambda s: s.obtain_steps(50, timeout=0.5), r'obtain_steps\(50\)',
        r'50 of 100 transitions', r'0 of 50 transitions'),
    'stream': (
        lambda s: next(s.stream(10 ** 6, timeout=0.5)), r'stream\(1000000\)',
        r'\d+ of 1000000 transitions', r'\d+ transitions'),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize('call', sorted(TIMED_OUT))
def test_a_timeout_names_the_workers_that_held_it_up_and_where(
        process_backend, call):
    run, name, collected, part = TIMED_OUT[call]
    envs = [FaultyEnv('none'), CrashEnv('hang', after=0)]
    with process_backend(FirstObsAgent(), envs, seed=0,
                         shutdown_timeout=2.0) as s:
        with pytest.raises(SamplerTimeoutError, match=(
                rf'^{name} timed out after 0\.5 s: {collected} were '
                rf'collected; held up by (worker 0 \(.*\) and )?worker 1 '
                rf'\({part}; inside env\.step \(File ".*helpers\.py", line '
                rf'\d+, in step\); nothing sent for 0\.\d s\)$')):
            run(s)
