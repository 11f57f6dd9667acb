"""The worker loop and its Round, served by a thread of this process,
where the test holds every command and every timer (the caller's side of
a call is tested in test_call.py)."""

import multiprocessing as mp
import threading

import cloudpickle
import pytest

from helpers import FirstObsAgent, OneStepEnv
from sampler import _framing, _round, _worker_process
from sampler._process_setup import ProcessSetup
from sampler._protocol import (Credit, Exit, Finish, Push, Ready,
                               RoundKind, RoundStart, Segments, Start, Stop,
                               Update, UpdateKind)
from workers import WorkerFactory

pytestmark = pytest.mark.timeout(60)


class Loop:
    """A worker loop serving one DefaultWorker over real pipes."""

    def __init__(self, env, agent):
        commands, self._commands = mp.Pipe(duplex=False)
        self._results, results = mp.Pipe(duplex=False)
        self._reader = _framing.MessageReader(self._results.fileno())
        self.loop = _worker_process._Loop(0, commands, results)
        factory = cloudpickle.dumps(WorkerFactory(n_workers=1, seed=0))
        updates = [Update(UpdateKind.ENV, cloudpickle.dumps(env)),
                   Update(UpdateKind.AGENT, cloudpickle.dumps(agent))]
        assert self.loop.build(factory, ProcessSetup(), updates)
        self.thread = threading.Thread(target=self.loop.serve, daemon=True)
        self.thread.start()
        assert type(self.reply(5)) is Ready

    def send(self, message):
        _framing.write_message(self._commands.fileno(),
                               _framing.blobs_out_of_band(message))

    def reply(self, timeout):
        """The next reply, or None if none comes within ``timeout``."""
        if not self._results.poll(timeout):
            return None
        return self._reader.read()

    def close(self):
        self.send(Exit())
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.loop.close()


@pytest.fixture
def loop(monkeypatch):
    # Only a full chunk (or TAIL) may send a message in these tests.
    monkeypatch.setattr(_round, 'FLUSH_AFTER_S', 3600.0)
    served = Loop(OneStepEnv, FirstObsAgent())
    yield served
    served.close()


def start(loop, round_number, kind, **kwargs):
    loop.send(Start(RoundStart(kind, round_number, round_number, **kwargs)))


def segments(loop, timeout=5):
    reply = loop.reply(timeout)
    assert type(reply) is Segments, reply
    return reply


def test_a_steps_round_sends_every_step_once_and_says_done(loop):
    start(loop, 1, RoundKind.STEPS, steps_per_env=7)
    got = segments(loop)
    assert (got.round, got.version, got.done) == (1, 1, True)
    assert len(got.batch) == 7 and got.env_steps == 7
    assert loop.reply(0.3) is None  # idle: nothing more


def test_stop_hands_over_what_is_held(loop):
    # One-step episodes: never a full chunk.
    start(loop, 2, RoundKind.SAMPLES, chunk=10 ** 9)
    assert loop.reply(0.3) is None
    loop.send(Stop())
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
    monkeypatch.setattr(_round, 'FLUSH_AFTER_S', 3600.0)
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
    start(loop, 1, RoundKind.SAMPLES, chunk=10 ** 9)
    STEPS.release(3)  # three episodes, held; the fourth waits
    for _ in range(4):
        assert BEGUN.acquire(timeout=5)
    loop.send(Finish(0))  # an earlier round's: changes nothing
    loop.send(Finish(1))
    assert loop.reply(0.3) is None
    STEPS.release(1)  # the fourth ends; the loop then reads Finish
    got = segments(loop)
    assert got.done and got.batch.n_episodes == 4
    assert not BEGUN.acquire(timeout=0.3)  # no fifth episode began


def stream_replies(loop, quiet=0.3):
    """Every reply until none comes for ``quiet`` seconds."""
    out = []
    while True:
        reply = loop.reply(quiet)
        if reply is None:
            return out
        assert type(reply) is Segments, reply
        out.append(reply)


def test_a_stream_round_pauses_at_its_budget_until_credited(loop):
    start(loop, 1, RoundKind.STREAM, steps_per_env=5, chunk=10,
          budget=40)
    first = stream_replies(loop)
    sent = sum(len(s.batch) for s in first)
    # It stops once 40 transitions are unread (whole messages of 10).
    assert sent == 40 and not any(s.done for s in first)
    loop.send(Credit(20))
    more = stream_replies(loop)
    assert sum(len(s.batch) for s in more) == 20
    loop.send(Stop())
    last = segments(loop)
    assert last.done
    everything = first + more + [last]
    stepped = sum(s.env_steps for s in everything)
    assert stepped == sum(len(s.batch) for s in everything
                          if s.batch is not None)  # nothing lost


def test_updates_apply_at_the_next_step_and_only_the_newest(loop):
    start(loop, 1, RoundKind.STREAM, steps_per_env=5, chunk=10,
          budget=30)
    before = stream_replies(loop)
    agent = Update(UpdateKind.AGENT, cloudpickle.dumps(FirstObsAgent()))
    for version in range(2, 12):  # ten pushes while the worker waits
        loop.send(Push(version, None, agent))
    loop.send(Credit(10 ** 6))
    after = stream_replies(loop)
    loop.send(Stop())
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
    start(loop, 1, RoundKind.SAMPLES, chunk=10 ** 9)
    STEPS.release(2)
    for _ in range(3):
        assert BEGUN.acquire(timeout=5)
    loop.send(Push(5))
    loop.send(Finish(1))
    STEPS.release(1)
    got = segments(loop)
    # The episodes of the round kept its version; the update came after.
    assert got.done and got.version == 1
    assert set(got.batch.versions.tolist()) == {1}
    assert loop.loop.worker.version == 5  # applied as the round ended
    start(loop, 2, RoundKind.STEPS, steps_per_env=2)
    STEPS.release(2)
    assert set(segments(loop).batch.versions.tolist()) == {2}
