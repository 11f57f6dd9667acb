"""What only RaySampler does: the Ray runtime it uses, starts or leaves
alone, its own options, and one object-store put per update. Its share of
the common contract runs in the backend-parametrised tests."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from helpers import FirstObsAgent, OneStepEnv, ParamAgent, closing_samplers
from sampler import RaySampler, SamplerTimeoutError, WorkerCrashedError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ray_sampler(ray_runtime):
    with closing_samplers(RaySampler, seed=0) as make:
        yield make


def test_without_ray_construction_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, 'ray', None)  # import ray now fails
    with pytest.raises(ImportError, match=r'^RaySampler needs Ray, which is '
                                          r'not installed: pip install '
                                          r'"rollout-sampler\[ray\]"$'):
        RaySampler(FirstObsAgent(), 'CartPole-v1', n_workers=1)


@pytest.mark.parametrize('option, value, error, message', [
    ('address', 6379, ValueError,
     r"^address must be None \(start a local runtime\), 'auto' or "
     r"'host:port', got 6379$"),
    ('num_cpus', -1, ValueError, r'^num_cpus must be a number >= 0, got -1$'),
    ('actor_options', ['gpu'], TypeError,
     r"^actor_options must be a dict of Ray actor options, got \['gpu'\]$"),
    ('actor_options', {'num_cpus': 2}, ValueError,
     r'^actor_options may not set num_cpus: pass num_cpus as its own '
     r'option'),
    ('max_staleness', -1, ValueError,
     r'^max_staleness must be an int >= 0, got -1$'),
])
def test_bad_options_are_refused(ray_runtime, option, value, error, message):
    with pytest.raises(error, match=message):
        RaySampler(FirstObsAgent(), 'CartPole-v1', n_workers=1,
                   **{option: value})


def test_an_update_is_put_in_the_object_store_once_per_call(ray_sampler,
                                                            ray_runtime,
                                                            monkeypatch):
    s = ray_sampler(ParamAgent(), OneStepEnv, n_workers=3)
    puts = []
    real_put = ray_runtime.put

    def counting_put(value, *args, **kwargs):
        puts.append(value)
        return real_put(value, *args, **kwargs)
    monkeypatch.setattr(ray_runtime, 'put', counting_put)
    batch = s.obtain_exact_episodes(2, agent_update=5)
    assert len(puts) == 1
    assert batch.agent_infos['p'].tolist() == [5] * 6
    puts.clear()
    batch = s.obtain_exact_episodes(1, agent_update=[1, 2, 1])
    assert len(puts) == 2  # workers 0 and 2 were given one object
    assert batch.agent_infos['p'].tolist() == [1, 2, 1]


class EnvVarEnv(OneStepEnv):
    """Reports an environment variable of its process in the reset info."""

    def reset(self, *, seed=None, options=None):
        import os
        obs, _ = super().reset(seed=seed)
        return obs, {'flag': float(os.environ.get('SAMPLER_TEST_FLAG', -1))}


def test_actor_options_reach_ray(ray_sampler):
    s = ray_sampler(FirstObsAgent(), EnvVarEnv, n_workers=2, actor_options={
        'runtime_env': {'env_vars': {'SAMPLER_TEST_FLAG': '7'}}})
    batch = s.obtain_exact_episodes(1)
    np.testing.assert_array_equal(batch.episode_infos['flag'], [7.0, 7.0])


def test_workers_the_cluster_cannot_place_time_out_with_the_reason(
        ray_sampler, ray_runtime):
    total = ray_runtime.cluster_resources()['CPU']
    with pytest.raises(SamplerTimeoutError, match=(
            r'^worker\(s\) 0, 1 did not start within startup_timeout=1 s; '
            r'each asks Ray for num_cpus=100 and the cluster has [\d.]+ of '
            rf'{total:g} CPUs free; lower num_cpus or n_workers, or add '
            r'nodes$')):
        ray_sampler(FirstObsAgent(), 'CartPole-v1', n_workers=2,
                    num_cpus=100, startup_timeout=1)


class LosingRay:
    """Ray, whose ``get`` loses the next reply it is asked for once armed,
    as Ray does when the node that held it died."""

    def __init__(self, ray):
        self.ray = ray
        self.armed = False

    def __getattr__(self, name):
        return getattr(self.ray, name)

    def get(self, ref, *args, **kwargs):
        if self.armed:
            self.armed = False
            raise self.ray.exceptions.ObjectReconstructionFailedError(
                ref.hex())
        return self.ray.get(ref, *args, **kwargs)


@pytest.mark.parametrize('mode', ['raise', 'restart'])
def test_a_lost_reply_fails_the_worker_and_is_never_a_raw_ray_error(
        ray_sampler, ray_runtime, mode):
    s = ray_sampler(ParamAgent(), OneStepEnv, n_workers=2,
                    on_worker_error=mode)
    s.obtain_exact_episodes(2)
    s._ray = LosingRay(ray_runtime)
    s._ray.armed = True
    if mode == 'raise':
        with pytest.raises(WorkerCrashedError, match=(
                r'died during obtain_exact_episodes\(2\): exit code '
                r'unknown; Ray lost its reply '
                r'\(ObjectReconstructionFailedError: ')):
            s.obtain_exact_episodes(2)
    else:
        # The worker is replaced and redoes its part of the call.
        batch = s.obtain_exact_episodes(2)
        assert batch.n_episodes == 4
        assert s.stats['worker_restarts'] == 1


RUNTIME_SCRIPT = '''
import ray
from sampler import RaySampler
from workers import RandomAgent
import gymnasium as gym

from sampler.sampler import available_cpus

def make(**kwargs):
    agent = RandomAgent(gym.make('CartPole-v1').action_space)
    return RaySampler(agent, 'CartPole-v1', seed=0, **kwargs)

if __name__ == '__main__':
    assert not ray.is_initialized()
    a = make(n_workers=1)
    cpus = ray.cluster_resources()['CPU']
    b = make(n_workers=1)
    a.close()
    assert ray.is_initialized(), 'ended while b still used it'
    assert b.obtain_exact_episodes(1).n_episodes == 1
    b.close()
    print('own runtime: CPUs as expected:', cpus == available_cpus(),
          'ended:', not ray.is_initialized())
    ray.init(address='local', num_cpus=3, include_dashboard=False,
             logging_level='WARNING')
    with make() as c:
        c.obtain_exact_episodes(1)
    print('user runtime left running:', ray.is_initialized())
    ray.shutdown()
'''


@pytest.mark.timeout(180)
def test_starts_a_runtime_only_when_none_runs_and_ends_only_its_own(
        tmp_path):
    """... also where a cluster that was killed left Ray's file naming the
    cluster to join (``ray_current_cluster``) pointing at nothing, which
    Ray reads when given no address."""
    pytest.importorskip('ray', reason='Ray is not installed (pip install '
                                      '"rollout-sampler[ray]")')
    path = tmp_path / 'runtime.py'
    path.write_text(textwrap.dedent(RUNTIME_SCRIPT))
    # Ray's temp folder of its own (a short path: Ray's sockets live there),
    # so that no other Ray on this machine sees the stale file.
    temp = tempfile.mkdtemp(prefix='rs-', dir='/tmp')
    os.makedirs(os.path.join(temp, 'ray'))
    with open(os.path.join(temp, 'ray', 'ray_current_cluster'), 'w') as f:
        f.write('127.0.0.1:9')  # the discard port: no cluster there
    env = {k: v for k, v in os.environ.items() if k != 'RAY_ADDRESS'}
    env['RAY_TMPDIR'] = temp
    try:
        done = subprocess.run([sys.executable, str(path)],
                              capture_output=True, text=True, timeout=150,
                              env=env)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'own runtime: CPUs as expected: True ended: True' in done.stdout
    assert 'user runtime left running: True' in done.stdout
