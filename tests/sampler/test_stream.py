"""push_update and stream on every backend: shared bodies."""

import os
import signal
import threading
import time

import pytest

from helpers import (CountingEnv, FailOnceEnv, FaultyEnv, ListPool,
                     ParamAgent)
from sampler import SamplerError
from workers import EnvPool, EnvPoolWorker, VecWorker

pytestmark = pytest.mark.timeout(120)


def SlowEnv(delay=0.05):
    """Episodes of 5 steps of ``delay`` seconds each."""
    return CountingEnv(delay, length=5)


def accounted(sampler):
    """Every step taken is delivered, held for the next stream, or
    discarded and counted."""
    st = sampler.stats
    return st['env_steps'] == st['transitions'] + st['held_transitions'] + \
        st['discarded_transitions']


@pytest.mark.parametrize('kind', ['vec', 'pool'])
def test_a_stream_yields_segments_and_pushes_change_the_version(
        make_sampler, kind):
    worker_class, env = (VecWorker, 'CartPole-v1') if kind == 'vec' else \
        (EnvPoolWorker, EnvPool('CartPole-v1', make=ListPool))
    s = make_sampler(ParamAgent(), env, n_workers=2, seed=0,
                     worker_class=worker_class, worker_args={'n_envs': 2})
    seen = []  # (worker, version, p) of every segment, in order
    for k, batch in enumerate(s.stream(40)):
        assert len(batch) >= 40
        for e in range(batch.n_episodes):
            start = batch.episode_starts[e]
            seen.append((int(batch.worker_numbers[e]),
                         int(batch.versions[e]),
                         int(batch.agent_infos['p'][start])))
        if k in (2, 5):
            assert s.push_update(k) == s.version
        # Segments sent before a push may still arrive after it: read on
        # until both workers have sent version 2.
        if {w for w, v, _ in seen if v == 2} == {0, 1} or k == 100:
            break
    assert s.version == 2
    for worker in (0, 1):
        versions = [v for w, v, _ in seen if w == worker]
        assert versions == sorted(versions)  # once applied, never older
        assert versions[-1] == 2
    # A segment's version says which parameters acted in it.
    assert {(v, p) for _, v, p in seen} <= {(0, -1), (1, 2), (2, 5)}
    assert accounted(s) and s.stats['discarded_transitions'] == 0


def test_push_update_returns_at_once_while_workers_step(make_sampler):
    s = make_sampler(ParamAgent(), lambda: SlowEnv(0.3), n_workers=2,
                     seed=0)
    stream = s.stream(2)
    next(stream)
    started = time.monotonic()
    for value in range(10):  # ten pushes during one slow step
        s.push_update(value)
    assert time.monotonic() - started < 0.2
    versions = set()
    for _ in range(4):
        versions |= set(next(stream).versions.tolist())
    stream.close()
    # The newest of the ten was applied, and no backlog of the others: a
    # worker applies the newest it holds at its next step, so one whose
    # step ended while the pushes were still arriving may apply one of
    # them first (at most one each of the two), never a run of them.
    assert 10 in versions
    assert len(versions - {0, 10}) <= 2


def test_leaving_the_loop_pauses_workers_and_steps_go_on_after(
        make_sampler):
    s = make_sampler(ParamAgent(), 'CartPole-v1', n_workers=2, seed=0)
    for batch in s.stream(30):
        break
    running = set(batch.episode_ids[batch.cut].tolist())
    for held_batch in s._held:  # sent after the loop was left
        running |= set(held_batch.episode_ids[held_batch.cut].tolist())
    held = s.stats['held_transitions']
    steps = s.obtain_steps(5)  # the envs kept their state
    # What the stream held is discarded by a call that is not a stream.
    assert s.stats['held_transitions'] == 0
    assert s.stats['discarded_transitions'] == held
    assert len(steps) == 10
    continued = set(steps.episode_ids[~steps.starts].tolist())
    assert continued and continued <= running
    assert accounted(s)
    for batch in s.stream(10):  # and a new stream works
        assert len(batch) >= 10
        break


def test_the_budget_bounds_what_workers_run_ahead(process_backend):
    with process_backend(ParamAgent(), 'CartPole-v1', n_workers=2,
                         seed=0) as s:
        stream = s.stream(20, budget=50)
        next(stream)
        time.sleep(0.5)  # thousands of CartPole steps, if unbounded
        stream.close()
        # Read: 20+; in flight at most the budget (and a message) each.
        assert s.stats['env_steps'] <= s.stats['transitions'] + 2 * 70
        assert accounted(s)


def test_stale_segments_are_discarded_and_counted(process_backend):
    with process_backend(ParamAgent(), 'CartPole-v1', n_workers=2,
                         seed=0) as s:
        stream = s.stream(20, max_staleness=0, budget=100)
        next(stream)
        time.sleep(0.3)  # the workers fill their budgets with version 0
        s.push_update(7)
        for _ in range(3):
            batch = next(stream)
            assert set(batch.versions.tolist()) == {1}
            assert set(batch.agent_infos['p'].tolist()) == {7}
        stream.close()
        assert s.stats['discarded_transitions'] > 0
        assert accounted(s)


def test_a_worker_failing_mid_stream_is_replaced_and_nothing_repeats(
        make_sampler, tmp_path):
    envs = [FaultyEnv('none'), FailOnceEnv(str(tmp_path / 'failed'))]
    s = make_sampler(ParamAgent(), envs, seed=0, on_worker_error='restart')
    pieces = []
    for k, batch in enumerate(s.stream(20)):
        pieces += [(int(i), int(p)) for i, p in zip(batch.episode_ids,
                                                    batch.prior_steps)]
        if k == 10:
            break
    assert s.stats['worker_restarts'] == 1
    assert len(pieces) == len(set(pieces))  # no segment twice
    assert accounted(s)  # and what was sent is all accounted for


def test_a_worker_error_raises_from_next(make_sampler):
    s = make_sampler(ParamAgent(), lambda: FaultyEnv('step', after=3),
                     n_workers=1, seed=0)
    with pytest.raises(Exception, match='boom') as info:
        for _ in s.stream(2):
            pass
    assert type(info.value).__name__ == 'WorkerError'


def test_one_call_at_a_time_and_bad_arguments(make_sampler):
    s = make_sampler(ParamAgent(), 'CartPole-v1', n_workers=1, seed=0)
    with pytest.raises(ValueError, match='push_update needs an '
                                         'agent_update or an env_update'):
        s.push_update()
    with pytest.raises(ValueError, match='num_samples must be an int >= 1'):
        s.stream(0)
    with pytest.raises(ValueError, match='max_staleness must be None or an '
                                         'int >= 0'):
        s.stream(5, max_staleness=-1)
    stream, other = s.stream(5), s.stream(7)
    next(stream)
    with pytest.raises(SamplerError, match=r'obtain_steps\(3\) while a '
                                           r'stream of this sampler is open'):
        s.obtain_steps(3)
    with pytest.raises(SamplerError, match=r'stream\(7\) while a stream'):
        next(other)
    stream.close()
    assert len(s.obtain_steps(3)) == 3


def test_ctrl_c_in_next_stops_the_stream_and_the_next_call_works(
        process_backend):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with process_backend(ParamAgent(), lambda: SlowEnv(0.02),
                             n_workers=2, seed=0) as s:
            stream = s.stream(10 ** 6)  # never complete: next() waits
            timer = threading.Timer(0.5, os.kill,
                                    (os.getpid(), signal.SIGINT))
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                next(stream)
            timer.join()
            batch = s.obtain_steps(3)
            assert len(batch) == 6 and s.stats['discarded_transitions'] > 0
    finally:
        signal.signal(signal.SIGINT, previous)
