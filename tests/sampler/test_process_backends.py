"""What only a process backend can get wrong: one test per defect of the
reference design (busy waiting, lost commands, stalled streaming, work
after return, orphans and hangs at exit), plus start-up and shutdown.

Tests taking ``proc_sampler`` run on every backend whose workers are
processes (multiprocessing and Ray); ``mp_sampler`` ones on
MultiprocessingSampler alone."""

import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from helpers import (BusyEnv, CrashEnv, FaultyEnv, FirstObsAgent, ListPool,
                     OneStepEnv, ParamAgent, closing_samplers)
from sampler import (MultiprocessingSampler, SamplerTimeoutError, WorkerError,
                     WorkerCrashedError)
from sampler.sampler import available_cpus
from test_failures import worker_processes
from test_sampler_behaviour import SlowEnv, random_for
from workers import EnvPool, EnvPoolWorker, VecWorker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def mp_sampler():
    with closing_samplers(MultiprocessingSampler, seed=0) as make:
        yield make


@pytest.fixture
def proc_sampler(process_backend):
    with closing_samplers(process_backend, seed=0) as make:
        yield make


def worker_processes_of(sampler):
    return [psutil.Process(pid) for pid in sampler.worker_pids()]


def cpu_seconds(processes):
    total = 0.0
    for proc in processes:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


# 1. Busy waiting -----------------------------------------------------------

def test_caller_sleeps_while_workers_sample_a_slow_env(proc_sampler):
    s = proc_sampler(FirstObsAgent(), lambda: SlowEnv(delay=0.01),
                     n_workers=2, max_episode_length=10)
    s.obtain_samples(20)  # warm up
    wall, cpu = time.monotonic(), time.process_time()
    s.obtain_samples(150)  # about 0.75 s of stepping on each worker
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert wall > 0.5
    assert cpu / wall < 0.10, f'caller used {cpu / wall:.1%} of a core'


# 2. Lost control messages --------------------------------------------------

def test_thousands_of_calls_with_updates_lose_no_command(
        proc_sampler, process_backend):
    s = proc_sampler(ParamAgent(), OneStepEnv, n_workers=1)
    # A call costs about 0.5 ms on MultiprocessingSampler, several on Ray.
    calls = 5000 if process_backend is MultiprocessingSampler else 1000
    for k in range(1, calls + 1):
        batch = s.obtain_exact_episodes(1, agent_update=k, timeout=10)
        assert batch.versions.tolist() == [k]
        assert batch.agent_infos['p'].tolist() == [k]
    assert s.version == calls and s.stats['calls'] == calls


# 3. Stalled streaming, and 4. work after return ----------------------------

def test_workers_are_idle_from_the_moment_a_call_returns(proc_sampler):
    # Episodes that cost 5 ms of CPU but only a few hundred bytes: without a
    # Stop, workers would go on for many of them before their pipes fill.
    s = proc_sampler(FirstObsAgent(), BusyEnv, n_workers=2)
    workers = worker_processes_of(s)
    assert len(workers) == 2
    s.obtain_samples(100)
    before = cpu_seconds(workers)
    time.sleep(0.5)  # measuring CPU over an interval, not waiting for it
    used = cpu_seconds(workers) - before
    assert used < 0.05, f'workers used {used:.2f} CPU s after the call'


def test_with_max_staleness_workers_go_on_sampling_after_a_call(
        mp_sampler):
    # (RaySampler's actors run on only for the sample() calls queued.)
    s = mp_sampler(FirstObsAgent(), BusyEnv, n_workers=2, max_staleness=1)
    workers = worker_processes_of(s)
    s.obtain_samples(100)
    before = cpu_seconds(workers)
    time.sleep(0.5)  # measuring CPU over an interval, not waiting for it
    used = cpu_seconds(workers) - before
    # 5 ms episodes of a few hundred bytes: the pipes are far from full.
    assert used > 0.2, f'workers used only {used:.2f} CPU s after the call'
    batch = s.obtain_samples(100)
    assert set(batch.versions.tolist()) == {0}


def test_streaming_workers_pause_on_a_full_pipe_and_resume(proc_sampler):
    # max_staleness=1 keeps workers sampling between calls: their pipes
    # fill, and they must then wait without spinning, and resume at once.
    s = proc_sampler(random_for('CartPole-v1'), 'CartPole-v1', n_workers=2,
                     max_staleness=1)
    s.obtain_samples(1000)
    workers = worker_processes_of(s)
    # Wait for the pipes to fill (how long depends on the machine's load):
    # then the workers use no CPU, for as long as nobody reads.
    quiet, deadline = 0, time.monotonic() + 60
    while quiet < 2:
        before = cpu_seconds(workers)
        time.sleep(0.5)
        used = cpu_seconds(workers) - before
        quiet = quiet + 1 if used < 0.05 else 0
        assert time.monotonic() < deadline, \
            f'workers never paused: {used:.2f} CPU s in the last 0.5 s'
    batch = s.obtain_samples(30000, timeout=30)
    assert len(batch) >= 30000
    assert set(batch.versions.tolist()) == {0}


def test_stale_episodes_are_discarded_and_counted(proc_sampler):
    agent = random_for('CartPole-v1')
    s = proc_sampler(agent, 'CartPole-v1', n_workers=2, max_staleness=1)
    s.obtain_samples(1000)
    time.sleep(0.3)  # let version-0 episodes pile up, waiting to be read
    # Tiny calls, so that version-0 episodes are still waiting after them.
    s.obtain_samples(1, agent_update={})  # version 1: 0 still accepted
    s.obtain_samples(1, agent_update={})  # version 2: 0 is now too old
    batch = s.obtain_samples(3000, agent_update={})
    assert set(batch.versions.tolist()) <= {2, 3}
    assert s.stats['discarded_episodes'] > 0


# 5. Silent worker death: restart -------------------------------------------

def test_restart_after_a_crash_goes_on_with_the_current_agent(proc_sampler,
                                                              tmp_path):
    marker = str(tmp_path / 'crashed')
    agent = ParamAgent()
    s = proc_sampler(agent, [FaultyEnv('none'),
                             lambda: CrashEnv('exit', marker=marker)],
                     on_worker_error='restart', max_restarts=1)
    batch = s.obtain_exact_episodes(2, agent_update=7, timeout=20)
    assert s.stats['worker_restarts'] == 1
    assert batch.worker_numbers.tolist() == [0, 0, 1, 1]
    assert set(batch.agent_infos['p'].tolist()) == {7}
    assert set(batch.versions.tolist()) == {1}


def test_restarts_are_bounded(proc_sampler):
    s = proc_sampler(FirstObsAgent(), [FaultyEnv('none'), CrashEnv('exit')],
                     on_worker_error='restart', max_restarts=2)
    with pytest.raises(WorkerCrashedError, match=r'^worker 1 died during '
                       r'obtain_exact_episodes\(1\): '):
        s.obtain_exact_episodes(1, timeout=20)
    assert s.stats['worker_restarts'] == 2


# 6. Hangs at exit and orphans ----------------------------------------------

SCRIPT_HEADER = '''
import os, sys, time
import gymnasium as gym
from sampler import MultiprocessingSampler
from workers import RandomAgent


class SlowEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        time.sleep(0.05)
        return self.observation_space.sample(), 0.0, False, False, {}


def agent():
    return RandomAgent(gym.spaces.Discrete(2))
'''


def run_script(tmp_path, body, *args, **kwargs):
    path = tmp_path / 'script.py'
    path.write_text(SCRIPT_HEADER + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def descendants(pid):
    return psutil.Process(pid).children(recursive=True)


def still_running(processes, timeout):
    """The processes that have not exited within ``timeout``. Orphans are
    not our children, so this polls; a zombie (exited, not yet reaped by
    init) counts as exited."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in processes:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.mark.parametrize('state', ['idle', 'streaming'])
def test_workers_exit_when_the_parent_is_killed(tmp_path, state):
    body = '''
    if __name__ == '__main__':
        s = MultiprocessingSampler(agent(), SlowEnv, n_workers=2, seed=0,
                                   max_episode_length=20)
        s.obtain_samples(10)
        print('ready', flush=True)
        if sys.argv[-1] == 'streaming':
            s.obtain_samples(10 ** 9)
        time.sleep(600)
    '''
    proc = run_script(tmp_path, body, state)
    everything = []
    try:
        assert proc.stdout.readline().strip() == 'ready'
        if state == 'streaming':
            time.sleep(0.3)  # let the workers get into their episodes
        everything = descendants(proc.pid)
        workers = [p for p in everything
                   if 'sampler-worker' in ' '.join(p.cmdline())]
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Idle workers notice at once; streaming ones after their episode
        # (at most 20 steps of 50 ms here).
        bound = 2.0 if state == 'idle' else 4.0
        alive = still_running(everything, timeout=bound)
        assert not alive, f'left behind: {alive}'
    finally:
        for leftover in everything:  # so a failure cannot leak or hang
            try:
                leftover.kill()
            except psutil.Error:
                pass
        proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.parametrize('method', ['forkserver', 'spawn'])
def test_a_script_without_the_main_guard_gets_one_clear_error(tmp_path,
                                                              method):
    body = f'''
    s = MultiprocessingSampler(agent(), SlowEnv, n_workers=2, seed=0,
                               start_method={method!r})
    s.obtain_samples(10)
    '''
    proc = run_script(tmp_path, body)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    # The caller's traceback alone: none from the workers.
    assert err.count('Traceback (most recent call last)') == 1, err
    expected = re.escape(
        f'could not start: the main module {tmp_path / "script.py"} builds '
        f'a sampler when it is imported, and worker processes started with '
        f"start_method='{method}' import it again. Put the code that "
        f'samples under if __name__ == "__main__": at the end of the script')
    assert re.fullmatch(r'sampler\.errors\.SamplerError: worker [01] '
                        + expected, err.strip().splitlines()[-1]), err


def test_a_sampler_never_closed_does_not_block_exit(tmp_path):
    body = '''
    if __name__ == '__main__':
        s = MultiprocessingSampler(agent(), 'CartPole-v1', n_workers=2, seed=0)
        s.obtain_samples(1000)
        print('leaving without close()', flush=True)
    '''
    proc = run_script(tmp_path, body)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert 'leaving without close()' in out
    assert 'leaked' not in err and 'Traceback' not in err, err


def test_ctrl_c_raises_one_keyboard_interrupt_and_closes_cleanly(tmp_path):
    body = '''
    if __name__ == '__main__':
        # As in a terminal, whatever this test was started from: a shell
        # starts background jobs with SIGINT ignored, and Python then keeps
        # it ignored.
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        s = MultiprocessingSampler(agent(), SlowEnv, n_workers=2, seed=0)
        print('sampling', flush=True)
        try:
            s.obtain_samples(10 ** 9)
        except KeyboardInterrupt:
            print('interrupted once', flush=True)
        s.close()
        print('closed', flush=True)
    '''
    proc = run_script(tmp_path, body, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == 'sampling'
        time.sleep(0.5)  # inside obtain_samples, workers mid-episode
        # A terminal's Ctrl-C signals the whole process group.
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ['interrupted once', 'closed']
    assert 'KeyboardInterrupt' not in err and 'Traceback' not in err, err


def blocked_signals(thread):
    """The signals ``thread`` blocks, read from Linux's /proc."""
    path = f'/proc/self/task/{thread.native_id}/status'
    with open(path) as status:
        [mask] = [line.split()[1] for line in status
                  if line.startswith('SigBlk:')]
    bits = int(mask, 16)
    return {sig for sig in signal.Signals if bits >> (sig - 1) & 1}


# Start-up, titles, options, shutdown ---------------------------------------

def test_workers_have_process_titles(mp_sampler):
    mp_sampler(FirstObsAgent(), 'CartPole-v1', n_workers=2)
    assert sorted(worker_processes()) == [0, 1]


def test_more_workers_than_cpus_warns(mp_sampler):
    n = available_cpus() + 1
    with pytest.warns(ResourceWarning, match=rf'^n_workers={n} is more than '
                                             rf'the {n - 1} CPUs'):
        mp_sampler(FirstObsAgent(), OneStepEnv, n_workers=n)


def test_startup_timeout_names_the_worker(tmp_path):
    def never_built():
        import threading
        threading.Event().wait()
    started = time.monotonic()
    with pytest.raises(SamplerTimeoutError, match=(
            r'^worker\(s\) 1 did not start within startup_timeout=0\.5 s; '
            r'raise it on a busy machine, or for an env \(or a main module, '
            r'which every worker imports again\) that is slow to load$')):
        MultiprocessingSampler(FirstObsAgent(), ['CartPole-v1', never_built],
                               seed=0, startup_timeout=0.5,
                               shutdown_timeout=1.0)
    assert time.monotonic() - started < 3.0


def test_close_returns_within_its_timeout_with_a_stuck_worker(proc_sampler):
    s = proc_sampler(FirstObsAgent(), [FaultyEnv('none'), CrashEnv('hang')],
                     shutdown_timeout=1.0)
    with pytest.raises(SamplerTimeoutError):
        s.obtain_exact_episodes(1, timeout=0.3)
    # Usable after a timeout: worker 0 still answers.
    started = time.monotonic()
    s.close()
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize('option,value,message', [
    ('start_method', 'telepathy', r"^start_method must be one of .*, got "
                                  r"'telepathy'$"),
    ('shutdown_timeout', 0, r'^shutdown_timeout must be a number of seconds '
                            r'> 0, got 0$'),
    ('max_staleness', -1, r'^max_staleness must be an int >= 0, got -1$'),
    ('progress', 'yes', r"^progress must be None, True or False, got 'yes'$"),
])
def test_bad_options(option, value, message):
    with pytest.raises(ValueError, match=message):
        MultiprocessingSampler(FirstObsAgent(), OneStepEnv, n_workers=1,
                               seed=0, **{option: value})


@pytest.mark.parametrize('method', ['spawn', 'forkserver'])
def test_start_methods_give_the_same_episodes(method):
    agent = random_for('CartPole-v1')
    with MultiprocessingSampler(agent, 'CartPole-v1', n_workers=2, seed=5,
                                start_method=method) as s:
        batch = s.obtain_exact_episodes(2)
    from sampler import LocalSampler
    with LocalSampler(agent, 'CartPole-v1', n_workers=2, seed=5) as local:
        assert batch == local.obtain_exact_episodes(2)


@pytest.mark.parametrize('progress', [True, False])
def test_progress_bar_on_stderr_when_asked(mp_sampler, capsys, progress):
    s = mp_sampler(FirstObsAgent(), OneStepEnv, n_workers=1,
                   progress=progress)
    s.obtain_samples(50)
    s.obtain_exact_episodes(3)
    s.obtain_steps(4)
    err = capsys.readouterr().err
    assert ('sampling transitions' in err) is progress
    assert ('sampling episodes' in err) is progress
    assert ('sampling env steps' in err) is progress


def test_an_unknown_command_is_reported_by_name(mp_sampler):
    s = mp_sampler(FirstObsAgent(), OneStepEnv, n_workers=1)
    # The protocol, not the public API.
    s._handles[0].commands.put('teleport')
    with pytest.raises(WorkerError, match="^worker 0 failed.*ValueError: "
                                          "worker 0 got unknown command "
                                          "'teleport'$"):
        s.obtain_samples(10, timeout=10)


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='pipe sizes are a Linux feature')
def test_result_pipes_are_widened_where_the_system_allows(mp_sampler,
                                                          monkeypatch):
    import fcntl
    from sampler import _pipes
    with open('/proc/sys/fs/pipe-max-size') as f:
        allowed = int(f.read())
    s = mp_sampler(FirstObsAgent(), OneStepEnv, n_workers=1)
    size = fcntl.fcntl(s._handles[0].results.fileno(), fcntl.F_GETPIPE_SZ)
    if allowed >= _pipes.PIPE_BYTES:
        assert size == _pipes.PIPE_BYTES
    # Beyond the system's limit, the pipe keeps its size and all works.
    monkeypatch.setattr(_pipes, 'PIPE_BYTES', allowed * 1024)
    reader, writer = mp.Pipe(duplex=False)
    with reader, writer:
        before = fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ)
        _pipes.widen_pipe(reader)
        assert fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ) == before


@pytest.mark.skipif(not hasattr(os, 'sched_getaffinity') or
                    len(os.sched_getaffinity(0)) < 2,
                    reason='needs CPU affinity and 2 CPUs')
@pytest.mark.parametrize('option, pool, pinned', [
    ('auto', True, True), ('auto', False, False), (False, True, False),
    (True, False, True)])
def test_pin_workers_pins_pool_workers_to_a_cpu_each(mp_sampler, option,
                                                     pool, pinned):
    if pool:
        env, kind = EnvPool('CartPole-v1', make=ListPool), EnvPoolWorker
    else:
        env, kind = 'CartPole-v1', VecWorker
    s = mp_sampler(random_for('CartPole-v1'), env, n_workers=2,
                   worker_class=kind, worker_args={'n_envs': 2},
                   pin_workers=option)
    s.obtain_steps(3)
    cpus = sorted(os.sched_getaffinity(0))
    masks = [sorted(psutil.Process(pid).cpu_affinity())
             for pid in s.worker_pids()]
    if pinned:
        assert masks == [[cpus[0]], [cpus[1]]]
    else:
        assert masks == [cpus, cpus]


def test_pin_workers_takes_auto_or_a_bool(mp_sampler):
    with pytest.raises(ValueError, match="pin_workers must be 'auto', True "
                       "or False, got 'yes'"):
        mp_sampler(random_for('CartPole-v1'), 'CartPole-v1', n_workers=1,
                   pin_workers='yes')


@pytest.mark.skipif(not os.path.exists('/proc/self/task'),
                    reason='reads thread signal masks from Linux /proc')
def test_commands_go_straight_into_the_pipe_until_it_is_full():
    """Commands are written at once while the pipe has room for them, and
    queued for the sender thread once it has not: put never blocks on a
    worker that does not read, nothing is lost or reordered, and the
    thread leaves signals to the main thread."""
    from sampler import _framing
    from sampler._pipes import Commands
    from sampler._protocol import Credit
    reader, writer = mp.Pipe(duplex=False)
    commands = Commands(writer)
    started = time.monotonic()
    for k in range(20000):  # far more than a 64 KiB pipe holds
        commands.put(Credit(k))
    assert time.monotonic() - started < 10
    assert commands._thread is not None  # the pipe filled: queued
    # A process's signal may go to any thread that does not block it;
    # Python runs the handler in the main thread, but one asleep in
    # select() would not wake for a signal the sender thread took.
    assert {signal.SIGINT, signal.SIGTERM, signal.SIGALRM} <= \
        blocked_signals(commands._thread)
    assert signal.SIGINT not in blocked_signals(threading.main_thread())
    got = _framing.MessageReader(reader.fileno())
    assert [got.read().transitions for _ in range(20000)] == \
        list(range(20000))
    commands.close()
    reader.close()
