"""Faults about processes: the caller killed, a second Ctrl-C while a
worker is stuck, os.fork() in the caller, too few file descriptors, a
slow start. Each runs a script in a process of its own, so that the
test's process is never the one killed, forked or limited."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(sys.platform != 'linux',
                                 reason='Linux process semantics')]

HEADER = '''
import os, signal, sys, time
import gymnasium as gym
import numpy as np
from sampler import MultiprocessingSampler, SamplerError
from workers import RandomAgent


class SleepEnv(gym.Env):
    """Steps that take STEP_S seconds; episodes that never end."""
    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        time.sleep(float(os.environ.get('STEP_S', '1e6')))
        return np.zeros(1, np.float32), 0.0, False, False, {}


class StuckEnv(SleepEnv):
    """A step blocked in a read that never returns, SIGTERM ignored."""

    def step(self, action):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        r, w = os.pipe()
        os.read(r, 1)


def agent():
    return RandomAgent(gym.spaces.Discrete(2))
'''


def start(tmp_path, body, env=None, **kwargs):
    path = tmp_path / 'script.py'
    path.write_text(HEADER + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})},
                            start_new_session=True, **kwargs)


def alive(pids):
    """The processes of ``pids`` that still run (a zombie has exited)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive(pids)


def kill_all(pids):
    for pid in alive(pids):
        os.kill(pid, signal.SIGKILL)


# 3. Workers end with their caller -------------------------------------------

@pytest.mark.parametrize('step_s', ['1e6', '0.001'],
                         ids=['asleep-in-step', 'mid-episode'])
def test_workers_forkserver_and_tracker_end_within_2s_of_a_killed_caller(
        tmp_path, step_s):
    body = '''
    if __name__ == '__main__':
        s = MultiprocessingSampler(agent(), SleepEnv, n_workers=2, seed=0)
        print('started', flush=True)
        s.obtain_samples(10 ** 9)
    '''
    proc = start(tmp_path, body, env={'STEP_S': step_s})
    try:
        assert proc.stdout.readline().strip() == 'started'
        time.sleep(0.5)  # inside obtain_samples
        tree = [p.pid for p in psutil.Process(proc.pid).children(
            recursive=True)]
        # two workers, the forkserver and the resource tracker
        assert len(tree) == 4, tree
        proc.kill()
        proc.wait()
        left = wait_gone(tree, 2.0)
        assert not left, [psutil.Process(p).cmdline() for p in left]
    finally:
        proc.kill()
        proc.communicate()
        kill_all(tree)


# 4. Exit stays bounded however many Ctrl-Cs arrive ---------------------------

def test_a_second_ctrl_c_in_close_with_a_stuck_worker_cannot_hang_exit(
        tmp_path):
    body = '''
    if __name__ == '__main__':
        signal.signal(signal.SIGINT, signal.default_int_handler)
        s = MultiprocessingSampler(agent(), StuckEnv, n_workers=2, seed=0,
                                   shutdown_timeout=6)
        print(' '.join(map(str, s.worker_pids())), flush=True)
        with s:
            s.obtain_samples(10 ** 6)
    '''
    proc = start(tmp_path, body)
    workers = []
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # interrupts the call
        time.sleep(1.0)  # close() waits for the stuck worker
        os.killpg(proc.pid, signal.SIGINT)  # interrupts close()
        interrupted = time.monotonic()
        out, err = proc.communicate(timeout=15)
        took = time.monotonic() - interrupted
    finally:
        proc.kill()
        kill_all(workers)
    assert took < 3.0, (took, err)
    assert 'KeyboardInterrupt' in err
    assert not wait_gone(workers, 1.0)


# 6. os.fork() in the caller -------------------------------------------------

def test_a_forked_child_never_touches_the_parents_workers(tmp_path):
    body = '''
    if __name__ == '__main__':
        s = MultiprocessingSampler(agent(), 'CartPole-v1', n_workers=2,
                                   seed=0)
        s.obtain_samples(50)
        for exit_by in ('sys.exit', 'return'):
            pid = os.fork()
            if pid == 0:
                try:
                    s.obtain_samples(50)
                    print('child sampled', flush=True)
                except SamplerError as err:
                    print('child:', err, flush=True)
                s.push_update  # looking is harmless
                s.close()  # a no-op in the child
                if exit_by == 'sys.exit':
                    sys.exit(0)
                break  # leave the script like any program: atexit runs
            _, status = os.waitpid(pid, 0)
            print('child exit status', os.waitstatus_to_exitcode(status),
                  flush=True)
            print('parent', len(s.obtain_samples(50)) >= 50, flush=True)
        else:
            s.close()
            print('closed', flush=True)
    '''
    proc = start(tmp_path, body)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = out.splitlines()
    assert lines[-1] == 'closed', (out, err)
    child = [line for line in lines if line.startswith('child:')]
    assert len(child) == 2
    assert all('a fork of it (os.fork(), e.g. a DataLoader worker): its '
               'workers serve the parent alone' in line for line in child)
    assert lines.count('child exit status 0') == 2
    assert lines.count('parent True') == 2
    assert 'Traceback' not in err and 'AssertionError' not in err, err


# 8. Too few file descriptors; start-up time ----------------------------------

def test_too_few_file_descriptors_is_said_before_any_worker_starts(tmp_path):
    body = '''
    import resource
    if __name__ == '__main__':
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        started = time.monotonic()
        try:
            MultiprocessingSampler(agent(), SleepEnv, n_workers=32, seed=0)
        except SamplerError as err:
            print(err, flush=True)
        print(round(time.monotonic() - started, 2), flush=True)
    '''
    proc = start(tmp_path, body)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    message, took = out.splitlines()
    assert 'n_workers=32 needs about' in message
    assert 'its limit is 64 and cannot go above 64; raise it before ' \
           'starting Python (ulimit -n' in message, message
    assert float(took) < 1.0


def test_a_low_soft_limit_on_file_descriptors_is_raised_to_fit(tmp_path):
    body = '''
    import resource
    if __name__ == '__main__':
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))
        with MultiprocessingSampler(agent(), 'CartPole-v1', n_workers=12,
                                    seed=0) as s:
            print(len(s.obtain_samples(100)) >= 100, flush=True)
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 48)
    '''
    proc = start(tmp_path, body)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert out.split() == ['True', 'True'], err


def test_startup_timeout_counts_from_the_start_and_ends_the_workers(
        tmp_path):
    body = '''
    def slow_init(i):
        time.sleep(30)

    if __name__ == '__main__':
        started = time.monotonic()
        try:
            MultiprocessingSampler(agent(), SleepEnv, n_workers=2, seed=0,
                                   worker_init=slow_init, startup_timeout=2)
        except SamplerError as err:
            print(type(err).__name__, flush=True)
        print(round(time.monotonic() - started, 2), flush=True)
    '''
    proc = start(tmp_path, body)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    name, took = out.splitlines()
    assert name == 'SamplerTimeoutError', err
    assert 2.0 <= float(took) < 3.5, took
