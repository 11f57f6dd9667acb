"""The Collector: the caller's rules of a call, which every backend
drives (sampler._call)."""

import numpy as np

from sampler._call import Collector
from sampler._protocol import RoundKind, RoundStart, Segments
from workers import EpisodeBatch

SAMPLES, EPISODES, STEPS = RoundKind.SAMPLES, RoundKind.EPISODES, \
    RoundKind.STEPS


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
    c = collector(SAMPLES, 100)
    assert c.round_start(0) == RoundStart(SAMPLES, 3, 5, chunk=100 // 32,
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
    c = collector(SAMPLES, 100)
    assert c.add(0, Segments(2, 4, Batch(10), True, 10)) == 0
    assert 0 not in c.done_workers  # an earlier round's done
    e = collector(EPISODES, 2)
    assert e.add(1, Segments(2, 5, Batch(7), False, 7)) == 0
    assert c.stats['discarded_transitions'] == 10
    assert e.stats['discarded_episodes'] == 1


def test_a_restart_keeps_samples_but_redoes_exact_episodes_and_steps():
    c = collector(SAMPLES, 100)
    c.add(1, Segments(3, 5, Batch(10, episode_id=(1 << 40) + 4), False, 10))
    assert c.restarted(1)
    start = c.round_start(1)
    # New seeds, and episode ids past the ones it returned.
    assert start.attempt == 1 and start.first_episode_id == (1 << 40) + 5
    assert len(c.batches()) == 1
    for kind in (EPISODES, STEPS):
        r = collector(kind, 2)
        r.add(1, Segments(3, 5, Batch(10), True, 10))
        assert r.done_workers == {1}
        assert r.restarted(1)
        assert r.round_start(1).attempt == 0  # the round's own seeds
        assert r.batches() == [] and r.done_workers == set()
        assert r.stats['discarded_transitions'] == 10


def test_a_restart_after_finish_leaves_the_worker_nothing_to_do():
    c = collector(SAMPLES, 10)
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
    c = collector(EPISODES, 2)
    c.add(1, Segments(3, 5, episode(11, 1), False, 1))
    c.add(0, Segments(3, 5, episode(5, 0), False, 1))
    c.add(1, Segments(3, 5, episode(10, 1), True, 1))
    c.add(0, Segments(3, 5, episode(4, 0), True, 1))
    assert c.done
    batch = EpisodeBatch.concatenate(*c.batches())
    assert batch.episode_ids.tolist() == [4, 5, 10, 11]
