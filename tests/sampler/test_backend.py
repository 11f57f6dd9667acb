"""Every backend runs its calls through one skeleton (sampler._backend):
the same failure gives the same error, the same restart and the same
progress on each, whatever moves the messages. Checked by behaviour,
with the three backends side by side."""

import functools

import pytest

from helpers import FailOnceEnv, FaultyEnv, FirstObsAgent, closing_samplers
from sampler import (BrokenSamplerError, LocalSampler, MultiprocessingSampler,
                     RaySampler, WorkerError)
from sampler.errors import RemoteTraceback

pytestmark = pytest.mark.timeout(120)

BACKENDS = {'local': LocalSampler, 'multiprocessing': MultiprocessingSampler,
            'ray': RaySampler}


def from_the_round_on(text):
    """A worker's traceback from the Round's frame on: the frames above it
    are its host's (the worker process's loop, the Ray actor, the
    caller's thread)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if 'in _rollout' in line)
    return lines[first:]


def test_a_failure_reads_the_same_on_every_backend(ray_runtime):
    envs = [functools.partial(FaultyEnv, 'none'),
            functools.partial(FaultyEnv, 'step', after=3, message='boom')]
    errors = {}
    for name, backend in BACKENDS.items():
        with closing_samplers(backend) as make:
            s = make(FirstObsAgent(), envs, seed=0)
            with pytest.raises(WorkerError) as caught:
                s.obtain_exact_episodes(1)
            errors[name] = caught.value
            with pytest.raises(BrokenSamplerError) as broken:
                s.obtain_exact_episodes(1)
            assert broken.value.__cause__ is caught.value
    for name, err in errors.items():
        assert str(err) == ('worker 1 failed in env.step during '
                            'obtain_exact_episodes(1): RuntimeError: boom'), \
            name
        assert (err.worker_number, err.site, err.exc_type, err.exc_message) \
            == (1, 'env.step', 'RuntimeError', 'boom'), name
        # The worker's own traceback, brought home as the cause.
        assert isinstance(err.__cause__, RemoteTraceback), name
        assert err.__cause__.text == err.worker_traceback, name
        assert err.worker_traceback.rstrip().endswith(
            'RuntimeError: boom'), name
    tails = {name: from_the_round_on(err.worker_traceback)
             for name, err in errors.items()}
    assert tails['local'] == tails['multiprocessing'] == tails['ray']
    assert any('in step' in line for line in tails['local'])


def test_a_restart_and_the_progress_bar_are_the_same_on_every_backend(
        ray_runtime, tmp_path, capsys):
    batches = {}
    for name, backend in BACKENDS.items():
        env = functools.partial(FailOnceEnv, str(tmp_path / name))
        with closing_samplers(backend) as make:
            s = make(FirstObsAgent(),
                     [functools.partial(FaultyEnv, 'none'), env], seed=3,
                     on_worker_error='restart', progress=True)
            batches[name] = s.obtain_exact_episodes(2)
            assert s.stats['worker_restarts'] == 1, name
            assert s.stats['discarded_episodes'] == s.stats[
                'discarded_transitions'] == 0, name  # failed before sending
        err = capsys.readouterr().err
        assert 'sampling episodes' in err, name
    # A replacement redoes its part of an exact-episode call from the
    # round's seeds: the same episodes everywhere.
    first = batches['local']
    assert first.n_episodes == 4
    for name, batch in batches.items():
        assert batch.episode_ids.tolist() == first.episode_ids.tolist(), name
        assert batch.worker_numbers.tolist() == [0, 0, 1, 1], name
        assert (batch.observations == first.observations).all(), name
        assert batch.lengths.tolist() == first.lengths.tolist(), name
