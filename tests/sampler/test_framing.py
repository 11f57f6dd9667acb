import os
import threading

import numpy as np
import pytest

from sampler import _framing
from sampler._protocol import Push, Update, UpdateKind
from workers import DefaultWorker, EpisodeBatch, RandomAgent

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def send_in_thread(fd, messages):
    """Write ``messages`` from a thread (a message may exceed the pipe)."""
    thread = threading.Thread(
        target=lambda: [_framing.write_message(fd, m) for m in messages])
    thread.start()
    return thread


def test_arrays_of_every_kind_survive_and_large_ones_come_aligned(pipe):
    r, w = pipe
    rng = np.random.default_rng(0)
    message = {
        'frames': rng.integers(0, 256, (50, 4, 84, 84), dtype=np.uint8),
        'odd': rng.integers(0, 256, 4099, dtype=np.uint8),  # pads after it
        'floats': rng.standard_normal((3000, 3)),
        'small': np.arange(5, dtype=np.int16),
        'strided': np.arange(20000.0)[::2],  # not contiguous: in the pickle
        'text': 'segments',
    }
    thread = send_in_thread(w, [message, ('next', 1)])
    reader = _framing.MessageReader(r)
    got = reader.read()
    assert reader.read() == ('next', 1)
    thread.join()
    assert got.keys() == message.keys()
    for key, value in message.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value)
            assert got[key].dtype == value.dtype
        else:
            assert got[key] == value
    for key in ('frames', 'odd', 'floats'):
        assert got[key].ctypes.data % 16 == 0  # aligned for any dtype
        assert got[key].flags.writeable


def test_large_arrays_travel_out_of_the_pickle():
    frames = np.zeros((10, 84, 84), np.uint8)
    pieces = _framing.encode({'obs': frames, 'r': np.zeros(3)})
    sizes = sorted(memoryview(p).nbytes for p in pieces)
    # The frames are a piece of their own, not inside the pickle, and the
    # small array stays in the pickle.
    assert frames.nbytes in sizes
    assert sum(sizes) < frames.nbytes + 1024


def test_an_episode_batch_round_trips(pipe):
    r, w = pipe
    worker = DefaultWorker(seed=0, max_episode_length=None, worker_number=0)
    worker.update_env('CartPole-v1')
    worker.update_agent(RandomAgent(worker.env.action_space))
    batch = EpisodeBatch.concatenate(*[worker.rollout() for _ in range(40)])
    worker.shutdown()
    assert batch.observations.nbytes > _framing.MIN_OUT_OF_BAND
    thread = send_in_thread(w, [batch])
    got = _framing.MessageReader(r).read()
    thread.join()
    assert got == batch


class Interrupting:
    """Reads in pieces of at most 1,000 bytes and raises KeyboardInterrupt
    before every ``every``-th one, as a Ctrl-C arriving mid-read would."""

    def __init__(self, every):
        self.every, self.calls = every, 0

    def __call__(self, fd, view):
        self.calls += 1
        if self.calls % self.every == 0:
            raise KeyboardInterrupt
        data = os.read(fd, min(len(view), 1000))
        view[:len(data)] = data
        return len(data)


def test_an_interrupted_read_goes_on_where_it_stopped(pipe, monkeypatch):
    r, w = pipe
    messages = [{'obs': np.full((30, 1000), i, np.uint8), 'i': i}
                for i in range(3)]
    thread = send_in_thread(w, messages)
    monkeypatch.setattr(_framing, '_readinto', Interrupting(every=7))
    reader = _framing.MessageReader(r)
    got, interrupts = [], 0
    while len(got) < 3:
        try:
            got.append(reader.read())
        except KeyboardInterrupt:
            interrupts += 1
    thread.join()
    assert interrupts > 5
    assert [m['i'] for m in got] == [0, 1, 2]
    for i, m in enumerate(got):
        assert (m['obs'] == i).all()
    assert not reader.mid_message


def test_a_closed_pipe_is_end_of_file(pipe):
    r, w = pipe
    pieces = _framing.encode({'x': np.zeros(10000)})
    data = b''.join(bytes(memoryview(p).cast('B')) for p in pieces)
    os.write(w, data[:len(data) // 2])  # a writer that died mid-message
    os.close(w)
    reader = _framing.MessageReader(r)
    with pytest.raises(EOFError):
        reader.read()


def test_pickled_updates_in_commands_travel_out_of_band(pipe):
    r, w = pipe
    blob = bytes(range(256)) * 400  # a pickled state dict, say
    message = Push(7, env=Update(UpdateKind.ENV, b'small'),
                   agent=Update(UpdateKind.AGENT, blob))
    pieces = _framing.encode(_framing.blobs_out_of_band(message))
    sizes = [memoryview(p).nbytes for p in pieces]
    assert len(blob) in sizes and sum(sizes) < len(blob) + 1024
    thread = send_in_thread(w, [_framing.blobs_out_of_band(message)])
    got = _framing.MessageReader(r).read()
    thread.join()
    assert type(got) is Push and got.version == 7
    assert got.env == Update(UpdateKind.ENV, b'small')
    assert got.agent.kind is UpdateKind.AGENT
    assert bytes(got.agent.blob) == blob  # a view, which pickle.loads takes
