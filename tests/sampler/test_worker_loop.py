"""The worker loop's protocol, served by a thread of this process, where
the test holds every command and every timer; and the Collector's choice
of when a call's tail begins."""

import multiprocessing as mp
import pickle
import threading

import cloudpickle
import pytest

from helpers import FirstObsAgent, OneStepEnv
from sampler import _worker_process
from sampler._streaming import TAIL_DIVISOR, Collector
from sampler._worker_process import Command, Reply, RoundStart
from workers import WorkerFactory

pytestmark = pytest.mark.timeout(60)


class Loop:
    """A worker loop serving one DefaultWorker over real pipes."""

    def __init__(self, env, agent):
        commands, self._commands = mp.Pipe(duplex=False)
        self._results, results = mp.Pipe(duplex=False)
        self.loop = _worker_process._Loop(0, commands, results)
        factory = cloudpickle.dumps(WorkerFactory(n_workers=1, seed=0))
        payloads = [('env', cloudpickle.dumps(env)),
                    ('agent', cloudpickle.dumps(agent))]
        assert self.loop.build(factory, payloads)
        self.thread = threading.Thread(target=self.loop.serve, daemon=True)
        self.thread.start()
        assert self.reply(5)[0] is Reply.READY

    def send(self, *message):
        self._commands.send_bytes(pickle.dumps(message))

    def reply(self, timeout):
        """The next reply, or None if none comes within ``timeout``."""
        if not self._results.poll(timeout):
            return None
        return _worker_process.loads(self._results.recv_bytes())

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


def start(loop, round_number, chunk):
    loop.send(Command.START, RoundStart(round_number, round_number,
                                        chunk=chunk), None, None)


def test_tail_sends_the_held_episodes_and_smaller_chunks_after(loop):
    start(loop, 1, chunk=10 ** 9)  # one-step episodes: never a full chunk
    assert loop.reply(0.3) is None
    loop.send(Command.TAIL, 1, 50)
    tag, round_number, version, held = loop.reply(5)
    assert (tag, round_number, version) == (Reply.EPISODES, 1, 1)
    assert held.n_episodes >= 50  # all it held, sent at once
    for _ in range(3):  # then a message every 50 transitions
        _, _, _, batch = loop.reply(5)
        assert len(batch) == 50
    loop.send(Command.STOP)


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


def test_tail_sends_held_episodes_before_running_another(gated_loop):
    loop = gated_loop
    start(loop, 1, chunk=10 ** 9)
    STEPS.release(3)  # three episodes, held; the fourth waits for a step
    for _ in range(4):
        assert BEGUN.acquire(timeout=5)
    loop.send(Command.TAIL, 1, 2)
    assert loop.reply(0.3) is None
    STEPS.release(1)  # the fourth ends; the loop then reads TAIL
    _, _, _, held = loop.reply(5)
    assert held.n_episodes == 4  # sent before the fifth episode could end


def test_tail_of_an_earlier_round_changes_nothing(loop):
    start(loop, 2, chunk=10 ** 9)
    loop.send(Command.TAIL, 1, 50)  # late: that round is over
    assert loop.reply(0.5) is None
    loop.send(Command.STOP)
    _, round_number, _, batch = loop.reply(5)  # STOP hands over the rest
    assert round_number == 2 and batch.n_episodes > 50


class FakeSampler:
    def __init__(self, n_workers):
        self.n_workers = n_workers
        self.version = 1
        self._options = {'max_staleness': 0}
        self._stats = {'discarded_episodes': 0}


class Transitions:
    """Stands in for an EpisodeBatch of one episode of ``n`` steps."""

    def __init__(self, n):
        self.n = n
        self.lengths = [n]
        self.n_episodes = 1

    def __len__(self):
        return self.n


def test_the_tail_begins_once_a_chunk_per_worker_is_still_needed():
    collector = Collector(FakeSampler(n_workers=2), 'transitions', 3200, 1)
    chunk = collector.chunk
    assert chunk == 3200 // 32
    need_for_tail = 3200 - 2 * chunk
    collector.add(0, 1, 1, Transitions(need_for_tail - 1))
    assert not collector.enter_tail() and collector.chunk == chunk
    collector.add(1, 1, 1, Transitions(1))
    assert collector.enter_tail()
    assert collector.chunk == chunk // TAIL_DIVISOR
    assert not collector.enter_tail()  # once per call
    assert collector.chunk == chunk // TAIL_DIVISOR


def test_exact_episode_calls_have_no_tail():
    collector = Collector(FakeSampler(n_workers=2), 'episodes', 3, 1)
    assert not collector.enter_tail()
