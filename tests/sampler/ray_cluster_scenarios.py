"""Node losses on a local multi-node Ray cluster (``ray.cluster_utils``,
every node on 127.0.0.1), run by test_ray_cluster.py one scenario per
process: a driver joins one cluster for its life, and the other Ray
tests share a local runtime of their own.

``python ray_cluster_scenarios.py SCENARIO OUT.json`` writes what it saw
to OUT.json for the test to check."""

import json
import sys
import threading
import time
import warnings

import gymnasium as gym
import numpy as np
import ray
from gymnasium import spaces
from ray.cluster_utils import Cluster

from sampler import RaySampler, SamplerError

#: Floats per observation: 32 KiB, so that a batch of a few episodes is
#: too big for Ray to inline in the reply, and lives in the object store
#: of the node that made it.
OBS_SIZE = 8192


class SlowEnv(gym.Env):
    """Episodes of 20 steps of about 1 ms; every number of the
    observation is the step number, so segments can be checked."""

    observation_space = spaces.Box(0, 100, (OBS_SIZE,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(OBS_SIZE, np.float32), {}

    def step(self, action):
        time.sleep(0.001)
        self.t += 1
        return (np.full(OBS_SIZE, self.t, np.float32), 1.0, False,
                self.t >= 20, {})


class Agent:
    def get_action(self, observation):
        return 0, {}

    def set_params(self, params):
        pass


def check(batch, seen):
    """Every segment in order from where it starts, none twice (a segment
    is an episode id and its first step: a stream sends an episode in
    pieces)."""
    keys = []
    for segment in batch.split():
        first = int(segment.prior_steps[0])
        steps = segment.observations[:, 0]
        assert np.array_equal(steps, np.arange(first, first + len(steps)))
        keys.append((int(segment.episode_ids[0]), first))
    assert len(set(keys)) == len(keys), 'a segment twice in one batch'
    assert not seen & set(keys), 'a segment returned by two calls'
    seen.update(keys)


def node_of(sampler, i):
    """The node that runs worker ``i``'s actor."""
    return ray.get(sampler._handles[i].actor.__ray_call__.remote(
        lambda actor: ray.get_runtime_context().get_node_id()))


def cpus_held():
    """CPUs that actors hold, a few seconds at most after they ended."""
    deadline = time.monotonic() + 10
    while True:
        held = ray.cluster_resources().get('CPU', 0) - \
            ray.available_resources().get('CPU', 0)
        if held == 0 or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


def node_running(sampler, i, nodes):
    """Of ``nodes``, the one that runs worker ``i``'s actor."""
    return {n.node_id: n for n in nodes}[node_of(sampler, i)]


def finish(sampler, cluster, out):
    """Close the sampler (timed), see that it let go of every CPU, and end
    the cluster."""
    out['restarts'] = sampler.stats['worker_restarts']
    closing = time.monotonic()
    sampler.close()
    out['close_s'] = time.monotonic() - closing
    out['cpus_held'] = cpus_held()
    ray.shutdown()
    cluster.shutdown()


def start(n_nodes):
    """A head with no CPU (the driver's) and ``n_nodes`` nodes of one CPU."""
    cluster = Cluster(initialize_head=True, head_node_args={'num_cpus': 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(n_nodes)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level='ERROR')
    return cluster, nodes


def node_lost_without_spare_cpu(out):
    """A node dies mid-call and no CPU is free for its worker's
    replacement: calls go on with the live workers, a notice says so
    once, nothing piles up for the replacement, and it joins once a node
    comes back."""
    cluster, nodes = start(3)
    s = RaySampler(Agent(), SlowEnv, n_workers=3, seed=0,
                   on_worker_error='restart', shutdown_timeout=5)
    victim = 1
    node = node_running(s, victim, nodes)
    seen, calls = set(), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        started = time.monotonic()
        phase = 'before'
        while True:
            now = time.monotonic() - started
            if phase == 'before' and len(calls) == 3:
                phase = 'lost'
                threading.Timer(0.1, cluster.remove_node, (node,)).start()
                lost_at = now
            elif phase == 'lost' and now - lost_at > 6:
                phase = 'back'
                cluster.add_node(num_cpus=1)
                back_at = now
            elif phase == 'back' and now - back_at > 8:
                break
            batch = s.obtain_samples(200, timeout=30)
            check(batch, seen)
            queued = sum(1 for h, _ in s._pending.values()
                         if h.number == victim)
            calls.append({'phase': phase, 'n': len(batch),
                          'workers': sorted(set(
                              batch.worker_numbers.tolist())),
                          'live': s.stats['live_workers'],
                          'queued_for_victim': queued})
    out['calls'] = calls
    out['notices'] = [str(w.message) for w in caught
                      if issubclass(w.category, ResourceWarning)]
    finish(s, cluster, out)


def node_lost_with_batches_in_its_store(out):
    """A node dies while batches its worker made wait in its object store
    (a stream runs ahead of the learner): the stream goes on from the
    others and the replacement, and no Ray exception escapes."""
    cluster, nodes = start(3)
    nodes.append(cluster.add_node(num_cpus=1))  # a spare CPU for the
    # replacement, wherever the workers were placed
    s = RaySampler(Agent(), SlowEnv, n_workers=3, seed=0,
                   on_worker_error='restart', shutdown_timeout=5)
    node = node_running(s, 2, nodes)
    seen, errors, sizes = set(), [], []
    stream = s.stream(150, budget=300)
    for k in range(12):
        if k == 3:
            time.sleep(0.5)  # the workers fill their budgets meanwhile
            cluster.remove_node(node)
        try:
            batch = next(stream)
            check(batch, seen)
            sizes.append(len(batch))
        except SamplerError as err:
            errors.append(f'{type(err).__name__}: {err}')
        except Exception as err:  # what must not happen
            errors.append(f'RAW {type(err).__module__}.'
                          f'{type(err).__name__}: {err}')
            break
    stream.close()
    out['sizes'] = sizes
    out['errors'] = errors
    finish(s, cluster, out)


def close_after_loss(out):
    """close() right after a node died, its replacement waiting for a
    CPU: bounded, and nothing is left."""
    cluster, nodes = start(2)
    s = RaySampler(Agent(), SlowEnv, n_workers=2, seed=0,
                   on_worker_error='restart', shutdown_timeout=3)
    s.obtain_samples(100)
    cluster.remove_node(node_running(s, 0, nodes))
    batch = s.obtain_samples(100, timeout=30)
    out['n'] = len(batch)
    out['live'] = s.stats['live_workers']
    finish(s, cluster, out)


SCENARIOS = {f.__name__: f for f in (node_lost_without_spare_cpu,
                                     node_lost_with_batches_in_its_store,
                                     close_after_loss)}

if __name__ == '__main__':
    name, path = sys.argv[1], sys.argv[2]
    result = {}
    try:
        SCENARIOS[name](result)
    except BaseException as err:
        result['failed'] = f'{type(err).__module__}.{type(err).__name__}: ' \
                           f'{err}'
        raise
    finally:
        with open(path, 'w') as file:
            json.dump(result, file)
