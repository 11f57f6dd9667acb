"""The worker loop's protocol, served by a thread of this process, where
the test holds every command and every timer; and the Collector's rules
of a call, which every backend drives."""

import multiprocessing as mp
import threading

import cloudpickle
import numpy as np
import pytest

from helpers import FirstObsAgent, OneStepEnv
from sampler import _framing, _worker_process
from sampler._streaming import Collector
from sampler._worker_process import Command, Reply, RoundStart, Segments
from workers import EpisodeBatch, WorkerFactory

pytestmark = pytest.mark.timeout(60)


class Loop:
    """A worker loop serving one DefaultWorker over real pipes."""

    def __init__(self, env, agent):
        commands, self._commands = mp.Pipe(duplex=False)
        self._results, results = mp.Pipe(duplex=False)
        self._reader = _framing.MessageReader(self._results.fileno())
        self.loop = _worker_process._Loop(0, commands, results)
        factory = cloudpickle.dumps(WorkerFactory(n_workers=1, seed=0))
        payloads = [('env', cloudpickle.dumps(env)),
                    ('agent', cloudpickle.dumps(agent))]
        assert self.loop.build(factory, _worker_process.ProcessSetup(),
                               payloads)
        self.thread = threading.Thread(target=self.loop.serve, daemon=True)
        self.thread.start()
        assert self.reply(5)[0] is Reply.READY

    def send(self, *message):
        _framing.write_message(self._commands.fileno(),
                               _framing.blobs_out_of_band(message))

    def reply(self, timeout):
        """The next reply, or None if none comes within ``timeout``."""
        if not self._results.poll(timeout):
            return None
        return self._reader.read()

    def close(self):
        self.send(Command.EXIT)
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.loop.close()


@pytest.fixture
def loop(monkeypatch):
    # Only a full chunk (or TAIL) may send a message in these tests.
    monkeypatch.setattr(_worker_process, 'FLUSH_AFTER_S', 3600.0)
    served = Loop(OneStepEnv, FirstObsAgent())
    yield served
    served.close()


def start(loop, round_number, **kwargs):
    loop.send(Command.START, RoundStart(round_number, round_number,
                                        **kwargs), None, None)


def segments(loop, timeout=5):
    reply = loop.reply(timeout)
    assert reply is not None and reply[0] is Reply.EPISODES, reply
    return reply[1]


def test_a_steps_round_sends_every_step_once_and_says_done(loop):
    start(loop, 1, steps=7)
    got = segments(loop)
    assert (got.round, got.version, got.done) == (1, 1, True)
    assert len(got.batch) == 7 and got.env_steps == 7
    assert loop.reply(0.3) is None  # idle: nothing more


def test_stop_hands_over_what_is_held(loop):
    start(loop, 2, chunk=10 ** 9)  # one-step episodes: never a full chunk
    assert loop.reply(0.3) is None
    loop.send(Command.STOP)
    got = segments(loop)
    assert got.round == 2 and got.batch.n_episodes > 50


#: Steps of GateEnv that may run (the test hands them out), and steps
#: it has begun.
STEPS = threading.Semaphore(0)
BEGUN = threading.Semaphore(0)


class GateEnv(OneStepEnv):
    """One-step episodes, each waiting for the test to allow it."""

    def step(self, action):
        BEGUN.release()
        assert STEPS.acquire(timeout=20), 'the test never allowed the step'
        return super().step(action)


@pytest.fixture
def gated_loop(monkeypatch):
    monkeypatch.setattr(_worker_process, 'FLUSH_AFTER_S', 3600.0)
    served = Loop(GateEnv, FirstObsAgent())
    yield served
    STEPS.release(10 ** 6)  # let the loop reach EXIT
    served.close()
    for gate in (STEPS, BEGUN):
        while gate.acquire(blocking=False):
            pass


def test_finish_completes_the_running_episode_and_starts_no_other(
        gated_loop, monkeypatch):
    loop = gated_loop
    start(loop, 1, chunk=10 ** 9)
    STEPS.release(3)  # three episodes, held; the fourth waits for a step
    for _ in range(4):
        assert BEGUN.acquire(timeout=5)
    loop.send(Command.FINISH, 0)  # an earlier round's: changes nothing
    loop.send(Command.FINISH, 1)
    assert loop.reply(0.3) is None
    STEPS.release(1)  # the fourth ends; the loop then reads FINISH
    got = segments(loop)
    assert got.done and got.batch.n_episodes == 4
    assert not BEGUN.acquire(timeout=0.3)  # no fifth episode began


class Batch:
    """Stands in for an EpisodeBatch of one episode of ``n`` steps."""

    def __init__(self, n, episode_id=0):
        self.n = n
        self.n_episodes = 1
        self.episode_ids = np.array([episode_id])

    def __len__(self):
        return self.n


def collector(kind, count, n_workers=2, max_staleness=0):
    stats = {'env_steps': 0, 'discarded_episodes': 0,
             'discarded_transitions': 0, 'worker_restarts': 0}
    return Collector(kind=kind, count=count, round_number=3, version=5,
                     n_workers=n_workers, max_staleness=max_staleness,
                     stats=stats, next_episode_ids=[0, 1 << 40])


def test_samples_calls_finish_once_enough_is_held_and_keep_the_surplus():
    c = collector('samples', 100)
    assert c.round_start(0) == RoundStart(3, 5, chunk=100 // 32,
                                          first_episode_id=0)
    c.add(0, Segments(3, 5, Batch(60), False, 60))
    assert not c.finish_due()
    c.add(1, Segments(3, 5, Batch(50), False, 50))
    assert c.finish_due() and not c.finish_due()  # once
    assert not c.done  # until every worker has said done
    c.add(0, Segments(3, 5, Batch(30), True, 30))
    c.add(1, Segments(3, 5, None, True, 0))
    assert c.done
    assert sum(len(b) for b in c.batches()) == 140  # the surplus too
    assert c.stats['env_steps'] == 140


def test_segments_of_another_version_or_round_are_discarded_and_counted():
    c = collector('samples', 100)
    assert c.add(0, Segments(2, 4, Batch(10), True, 10)) == 0
    assert 0 not in c.done_workers  # an earlier round's done
    e = collector('episodes', 2)
    assert e.add(1, Segments(2, 5, Batch(7), False, 7)) == 0
    assert c.stats['discarded_transitions'] == 10
    assert e.stats['discarded_episodes'] == 1


def test_a_restart_keeps_samples_but_redoes_exact_episodes_and_steps():
    c = collector('samples', 100)
    c.add(1, Segments(3, 5, Batch(10, episode_id=(1 << 40) + 4), False, 10))
    assert c.restarted(1)
    start = c.round_start(1)
    # New seeds, and episode ids past the ones it returned.
    assert start.attempt == 1 and start.first_episode_id == (1 << 40) + 5
    assert len(c.batches()) == 1
    for kind in ('episodes', 'steps'):
        r = collector(kind, 2)
        r.add(1, Segments(3, 5, Batch(10), True, 10))
        assert r.done_workers == {1}
        assert r.restarted(1)
        assert r.round_start(1).attempt == 0  # the round's own seeds
        assert r.batches() == [] and r.done_workers == set()
        assert r.stats['discarded_transitions'] == 10


def test_a_restart_after_finish_leaves_the_worker_nothing_to_do():
    c = collector('samples', 10)
    c.add(0, Segments(3, 5, Batch(20), False, 20))
    assert c.finish_due()
    assert not c.restarted(1)
    assert 1 in c.done_workers


def test_exact_episodes_come_worker_by_worker_in_the_order_they_started():
    def episode(episode_id, worker):
        return EpisodeBatch(observations=[[0.0]], actions=[0],
                            rewards=[1.0], terminated=[True],
                            truncated=[False], last_observations=[[0.0]],
                            lengths=[1], episode_ids=[episode_id],
                            worker_numbers=[worker])
    c = collector('episodes', 2)
    c.add(1, Segments(3, 5, episode(11, 1), False, 1))
    c.add(0, Segments(3, 5, episode(5, 0), False, 1))
    c.add(1, Segments(3, 5, episode(10, 1), True, 1))
    c.add(0, Segments(3, 5, episode(4, 0), True, 1))
    assert c.done
    batch = EpisodeBatch.concatenate(*c.batches())
    assert batch.episode_ids.tolist() == [4, 5, 10, 11]


def stream_replies(loop, quiet=0.3):
    """Every reply until none comes for ``quiet`` seconds."""
    out = []
    while True:
        reply = loop.reply(quiet)
        if reply is None:
            return out
        assert reply[0] is Reply.EPISODES, reply
        out.append(reply[1])


def test_a_stream_round_pauses_at_its_budget_until_credited(loop):
    start(loop, 1, steps=5, chunk=10, stream=True, budget=40)
    first = stream_replies(loop)
    sent = sum(len(s.batch) for s in first)
    # It stops once 40 transitions are unread (whole messages of 10).
    assert sent == 40 and not any(s.done for s in first)
    loop.send(Command.CREDIT, 20)
    more = stream_replies(loop)
    assert sum(len(s.batch) for s in more) == 20
    loop.send(Command.STOP)
    last = segments(loop)
    assert last.done
    everything = first + more + [last]
    stepped = sum(s.env_steps for s in everything)
    assert stepped == sum(len(s.batch) for s in everything
                          if s.batch is not None)  # nothing lost


def test_updates_apply_at_the_next_step_and_only_the_newest(loop):
    start(loop, 1, steps=5, chunk=10, stream=True, budget=30)
    before = stream_replies(loop)
    agent = cloudpickle.dumps(FirstObsAgent())
    for version in range(2, 12):  # ten pushes while the worker waits
        loop.send(Command.UPDATE, version, None, agent)
    loop.send(Command.CREDIT, 10 ** 6)
    after = stream_replies(loop)
    loop.send(Command.STOP)
    after.append(segments(loop))
    assert {int(v) for s in before for v in s.batch.versions} == {1}
    versions = {int(v) for s in after if s.batch is not None
                for v in s.batch.versions}
    assert versions == {11}  # the ten came before any step: the newest
    for s in before + after:  # a message holds one version
        if s.batch is not None:
            assert set(s.batch.versions.tolist()) == {s.version}


def test_an_update_waits_for_the_end_of_a_round_that_is_not_a_stream(
        gated_loop):
    loop = gated_loop
    start(loop, 1, chunk=10 ** 9)
    STEPS.release(2)
    for _ in range(3):
        assert BEGUN.acquire(timeout=5)
    loop.send(Command.UPDATE, 5, None, None)
    loop.send(Command.FINISH, 1)
    STEPS.release(1)
    got = segments(loop)
    # The episodes of the round kept its version; the update came after.
    assert got.done and got.version == 1
    assert set(got.batch.versions.tolist()) == {1}
    assert loop.loop.worker.version == 5  # applied as the round ended
    start(loop, 2, steps=2)
    STEPS.release(2)
    assert set(segments(loop).batch.versions.tolist()) == {2}
