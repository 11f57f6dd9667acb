import json
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from sampler.cli import main

pytestmark = pytest.mark.timeout(120)

try:
    import envpool  # noqa: F401
    ENVPOOL_ROWS = ['envpool (8 envs)', 'envpool (16 envs)']
except ImportError:  # the bench extra is not installed here
    ENVPOOL_ROWS = []

# Our rows alone unless a test asks for more (see the baseline tests).
TINY = ['bench', '--samples', '300', '--iterations', '2', '--workers', '2',
        '--no-progress', '--no-baseline']


def bench(tmp_path, *args):
    path = tmp_path / 'out.json'
    result = CliRunner().invoke(
        main, TINY + list(args) + ['--json', str(path)])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(path.read_text())


def rate_keys(row):
    return {k for k in row if 'per_s' in k}


@pytest.mark.parametrize('extra', [
    [], ['--backend', 'local'], ['--agent', 'random', '--envs-per-worker',
                                 '3']])
def test_bench_prints_the_rate_and_writes_json(tmp_path, extra):
    out, data = bench(tmp_path, *extra)
    assert 'transitions/s' in out
    assert data['env'] == 'CartPole-v1' and data['workers'] == 2
    [row] = data['rows']
    backend = 'LocalSampler' if 'local' in extra else \
        'MultiprocessingSampler'
    assert row['name'].startswith(f'{backend} (2 workers')
    assert len(row['calls']) == 2
    assert all(c['transitions'] >= 300 for c in row['calls'])
    assert 0 < row['min_transitions_per_s'] <= \
        row['median_transitions_per_s'] <= row['max_transitions_per_s']
    assert row['median_episodes_per_s'] > 0
    # CPU time of other processes is read in clock ticks (10 ms): on a run
    # this short it may read 0 (see the next test for one that cannot).
    assert 0 < row['caller_cpu_percent']
    if backend == 'MultiprocessingSampler':
        assert row['workers_cpu_percent'] >= 0
    else:
        assert row['workers_cpu_percent'] is None
    assert row['startup_s'] > 0 and row['median_mb_per_s'] > 0
    # Every rate says so in its name's suffix.
    assert rate_keys(row) == {
        'median_transitions_per_s', 'min_transitions_per_s',
        'max_transitions_per_s', 'median_episodes_per_s', 'median_mb_per_s'}
    assert all(k.endswith('_per_s') for k in rate_keys(row))
    assert row['ratio_to_best_single_process'] is None  # no --compare


def test_modes_time_obtain_samples_and_obtain_steps_and_show_waste(
        tmp_path):
    out, data = bench(tmp_path, '--mode', 'episodes,steps',
                      '--envs-per-worker', '1,3', '--env', 'Pendulum-v1')
    names = [r['name'] for r in data['rows']]
    assert names == [
        'MultiprocessingSampler (2 workers)',
        'MultiprocessingSampler (2 workers x 3 envs)',
        'MultiprocessingSampler (2 workers, obtain_steps)',
        'MultiprocessingSampler (2 workers x 3 envs, obtain_steps)']
    for row in data['rows']:
        assert all(c['transitions'] >= 300 for c in row['calls'])
        # Nothing stepped is left out: whole-episode calls complete what
        # they start, and steps calls return every step.
        assert row['waste'] == 0.0
    steps = data['rows'][3]['calls'][0]
    assert steps['transitions'] == 6 * 50  # 2 x 3 envs x ceil(300 / 6)
    assert 'waste' in out and '0.0%' in out


def test_stream_mode_pushes_and_reads_a_stream_and_trains(tmp_path):
    out, data = bench(tmp_path, '--mode', 'steps,stream', '--train-ms', '20',
                      '--train-sleep', '--envs-per-worker', '2')
    assert data['train_ms'] == 20 and data['train_sleep'] is True
    steps, stream = data['rows']
    assert stream['name'] == \
        'MultiprocessingSampler (2 workers x 2 envs, stream)'
    for row in (steps, stream):
        assert all(c['transitions'] >= 300 for c in row['calls'])
        # Every call trained 20 ms inside its timed region.
        assert all(c['seconds'] >= 0.02 for c in row['calls'])


def test_workers_cpu_is_measured(tmp_path):
    # 600 steps of 2 ms of CPU each: 1.2 s of worker CPU, far above a tick.
    out, data = bench(tmp_path, '--step-cost-us', '2000')
    [row] = data['rows']
    assert row['workers_cpu_percent'] > 10
    assert 'transitions/s' in out


def test_several_backends_are_timed_in_one_run(tmp_path, ray_runtime):
    out, data = bench(tmp_path, '--backend', 'multiprocessing,ray',
                      '--samples', '200')
    assert data['backend'] == 'multiprocessing,ray'
    assert [r['name'] for r in data['rows']] == [
        'MultiprocessingSampler (2 workers)', 'RaySampler (2 workers)']
    for row in data['rows']:
        assert all(c['transitions'] >= 200 for c in row['calls'])
        assert row['workers_cpu_percent'] >= 0  # 0 in ticks, on 200


def test_compare_adds_every_peer_row_with_ratios(tmp_path):
    out, data = bench(tmp_path, '--compare', '--samples', '200',
                      '--iterations', '1')
    names = [r['name'] for r in data['rows']]
    # Ours as the vector envs step: segments, of 1 and of 8 envs a worker.
    assert names == [
        'MultiprocessingSampler (2 workers, obtain_steps)',
        'MultiprocessingSampler (2 workers x 8 envs, obtain_steps)',
        'plain loop (1 process)',
        'gymnasium SyncVectorEnv (1 envs)', 'gymnasium SyncVectorEnv (4 envs)',
        'gymnasium SyncVectorEnv (8 envs)',
        'gymnasium AsyncVectorEnv (2 envs)',
        'gymnasium AsyncVectorEnv (4 envs)'] + ENVPOOL_ROWS + [
        'MultiprocessingSampler (2 workers x 8 envpool envs, '
        'obtain_steps)'] * bool(ENVPOOL_ROWS) + [
        'plain loop x 2 processes (limit)',
        'SyncVectorEnv (8 envs) x 2 processes (limit)']
    assert 'compare: ours run with --mode steps --envs-per-worker 1,8, as ' \
        'the vector envs step' in out
    assert data['note'].startswith('compare: ours run with')
    best = data['best_single_process_row']
    assert best in names[2:6]
    by_name = {r['name']: r for r in data['rows']}
    assert by_name[best]['ratio_to_best_single_process'] == 1.0
    for row in data['rows']:
        assert row['ratio_to_best_single_process'] > 0
        assert all(k.endswith('_per_s') for k in rate_keys(row))
    assert by_name['gymnasium AsyncVectorEnv (2 envs)'][
        'workers_cpu_percent'] is not None
    for name in names:
        assert name in out
    for limit in data['rows'][-2:]:
        assert limit['limit'] and not limit['single_process']
        assert limit['calls'][0]['transitions'] >= 200
        # Read in 10 ms ticks: a run this short may read 0.
        assert limit['workers_cpu_percent'] >= 0
    assert not any(r['limit'] for r in data['rows'][:-2])
    best_limit = max(data['rows'][-2:],
                     key=lambda r: r['median_transitions_per_s'])
    assert f"limit: {best_limit['name'][:-8]} reached " in out
    assert '% of that' in out


def test_the_default_run_shows_the_plain_loop_and_the_limit(tmp_path):
    path = tmp_path / 'out.json'
    result = CliRunner().invoke(main, ['bench', '--samples', '300',
                                       '--iterations', '2', '--workers', '2',
                                       '--no-progress', '--json', str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert [r['name'] for r in data['rows']] == [
        'MultiprocessingSampler (2 workers)', 'plain loop (1 process)',
        'plain loop x 2 processes (limit)']
    ours, plain, limit = data['rows']
    assert limit['share_of_limit'] == 1.0
    assert ours['share_of_limit'] == pytest.approx(
        ours['median_transitions_per_s'] / limit['median_transitions_per_s'])
    [header] = [line for line in result.output.splitlines()
                if line.startswith('row ')]
    assert 'of limit' in header and 'ratio' in header
    assert 'limit: plain loop x 2 processes reached' in result.output


def test_help_explains_every_column(tmp_path):
    out, _ = bench(tmp_path, '--samples', '50', '--iterations', '1')
    [header] = [line for line in out.splitlines() if line.startswith('row ')]
    columns = [c for c in re.split(r'\s{2,}', header.strip()) if c]
    assert columns[0] == 'row' and len(columns) == 11
    help_text = CliRunner().invoke(main, ['bench', '--help']).output
    for column in columns[1:]:
        assert f'  {column}  ' in help_text, column


@pytest.mark.parametrize('given, ours, note', [
    (['--mode', 'episodes', '--envs-per-worker', '2'],
     ['MultiprocessingSampler (2 workers x 2 envs)'], None),
    (['--mode', 'episodes'],
     ['MultiprocessingSampler (2 workers)',
      'MultiprocessingSampler (2 workers x 8 envs)'],
     'compare: ours run with --envs-per-worker 1,8, as the vector envs '
     'step')])
def test_compare_keeps_the_mode_and_envs_it_is_given(tmp_path, given, ours,
                                                     note):
    out, data = bench(tmp_path, '--compare', '--compare-with', 'vector',
                      '--samples', '200', '--iterations', '1', *given)
    assert [r['name'] for r in data['rows'] if 'startup_s' in r] == ours
    if note is None:
        assert 'note' not in data and 'compare: ours run' not in out
    else:
        assert note in out


@pytest.mark.parametrize('env, needs', [
    ('CartPole-v1', None), ('Hopper-v5', 'mujoco'),
    ('ALE/Breakout-v5', 'ale_py')])
def test_compare_on_real_envs_has_envpool_rows_or_says_why_not(
        tmp_path, env, needs):
    if needs:
        pytest.importorskip(needs)
    out, data = bench(tmp_path, '--env', env, '--compare', '--agent',
                      'random', '--mode', 'steps', '--samples', '64',
                      '--iterations', '1', '--compare-with', 'envpool',
                      '--envs-per-worker', '1')
    names = [r['name'] for r in data['rows']]
    assert names[1] == 'plain loop (1 process)'
    assert names[-1] == 'plain loop x 2 processes (limit)'
    assert not any('VectorEnv' in name for name in names)
    if ENVPOOL_ROWS:
        assert names[2:-1] == ENVPOOL_ROWS
        for row in data['rows'][2:-1]:
            # Reset steps of envpool are not counted: every one is real.
            assert row['calls'][0]['transitions'] >= 64
            assert row['median_transitions_per_s'] > 0
        assert not data['skipped']
    else:
        assert 'skipped: envpool skipped: envpool is not installed: pip ' \
               'install "rollout-sampler[bench]"' in out
    assert names[0] == 'MultiprocessingSampler (2 workers, obtain_steps)'
    assert data['rows'][0]['waste'] == 0.0


@pytest.mark.skipif(not ENVPOOL_ROWS, reason='envpool is not installed')
@pytest.mark.parametrize('env', ['CartPole-v1', 'ALE/Pong-v5'])
def test_compare_times_ours_over_envpool_envs_beside_envpool(tmp_path, env):
    _, data = bench(tmp_path, '--env', env, '--compare', '--agent',
                    'random', '--mode', 'steps', '--samples', '64',
                    '--iterations', '1', '--compare-with', 'envpool',
                    '--envs-per-worker', '1,12')
    rows = {r['name']: r for r in data['rows']}
    ours = rows['MultiprocessingSampler (2 workers x 12 envpool envs, '
                'obtain_steps)']
    assert ours['calls'][0]['transitions'] >= 64
    assert ours['waste'] == 0.0 and ours['discarded_episodes'] == 0
    # envpool also runs as many envs as that row does in all.
    assert {'envpool (8 envs)', 'envpool (16 envs)',
            'envpool (24 envs)'} <= set(rows)


def test_sweep_workers_and_step_cost(tmp_path):
    _, data = bench(tmp_path, '--sweep-workers', '1,2', '--step-cost-us',
                    '50', '--samples', '100', '--envs-per-worker', '1,4')
    assert [r['name'] for r in data['rows']] == [
        'MultiprocessingSampler (1 workers)',
        'MultiprocessingSampler (1 workers x 4 envs)',
        'MultiprocessingSampler (2 workers)',
        'MultiprocessingSampler (2 workers x 4 envs)']
    assert data['step_cost_us'] == 50 and data['step_cost_loops'] > 0


def test_image_env_reports_megabytes_per_second(tmp_path):
    out, data = bench(tmp_path, '--env', 'rollout_sampler/Image84-v0',
                      '--samples', '100', '--agent', 'random')
    [row] = data['rows']
    # 84*84*3 bytes of observation per transition, at least.
    per_transition = row['median_mb_per_s'] * 1e6 / \
        row['median_transitions_per_s']
    assert per_transition > 84 * 84 * 3
    assert 'MB/s of episode data' in out


def test_atari_ids_get_the_standard_preprocessing(tmp_path):
    pytest.importorskip('ale_py')
    pytest.importorskip('cv2')
    from sampler.bench import envs as bench_envs
    env = bench_envs.make_env('ALE/Pong-v5')
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        # frame_skip=4 of AtariPreprocessing, not the env's own frameskip.
        assert env.unwrapped.spec.kwargs['frameskip'] == 1
    finally:
        env.close()
    out, data = bench(tmp_path, '--env', 'ALE/Pong-v5', '--agent', 'random',
                      '--mode', 'steps', '--samples', '64',
                      '--iterations', '1')
    [row] = data['rows']
    assert row['calls'][0]['transitions'] == 64
    assert row['waste'] == 0.0
    # A 4x84x84 uint8 observation per transition, at least.
    assert row['median_mb_per_s'] * 1e6 / row['median_transitions_per_s'] \
        > 4 * 84 * 84


def test_atari_without_ale_py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'ale_py', None)  # import fails
    result = CliRunner().invoke(main, ['bench', '--env', 'ALE/Pong-v5'])
    assert result.exit_code == 2
    assert 'Atari envs need ale_py: pip install "rollout-sampler[bench]"' \
        in result.output


def test_plot_needs_the_sweep_and_matplotlib(tmp_path):
    result = CliRunner().invoke(main, TINY + ['--plot', 'x.png'])
    assert result.exit_code == 2
    assert '--plot needs --sweep-workers' in result.output
    path = tmp_path / 'sweep.png'
    result = CliRunner().invoke(main, TINY + ['--sweep-workers', '1,2',
                                              '--samples', '100', '--plot',
                                              str(path)])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result.exit_code == 2
        assert 'pip install "rollout-sampler[plot]"' in result.output
    else:
        assert result.exit_code == 0, result.output
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('args,message', [
    (['--workers', '0'], "Invalid value for '--workers'"),
    (['--agent', 'clever'], "Invalid value for '--agent'"),
    (['--backend', 'cloud'], "Invalid value for '--backend'"),
    (['--backend', 'ray,cloud'], "'--backend': 'cloud' is not one of local, "
                                 "multiprocessing, ray"),
    (['--mode', 'steps,epochs'], "'--mode': 'epochs' is not one of "
                                 "episodes, steps, stream"),
    (['--env', 'CartPol-v1'], "Did you mean: `CartPole`?"),
    (['--samples', 'many'], "Invalid value for '--samples'"),
    (['--step-cost-us', '-1'], "Invalid value for '--step-cost-us'"),
    (['--sweep-workers', '1,x'], "expected counts >= 1 like 1,2,4, got "
                                 "'1,x'"),
    (['--sweep-workers', '0'], "expected counts >= 1 like 1,2,4"),
    (['--envs-per-worker', '0'], "expected counts >= 1 like 1,2,4"),
])
def test_bad_options_are_usage_errors(args, message):
    result = CliRunner().invoke(main, ['bench'] + args)
    assert result.exit_code == 2
    assert message in result.output


def make_cartpole():
    import gymnasium
    return gymnasium.make('CartPole-v1')


def broken_env():
    raise OSError('no simulator licence')


@pytest.mark.parametrize('kind', ['plain', 'sync'])
def test_parallel_loops_share_the_calls_transitions(kind):
    from sampler.bench.rows import (LOOP_STEPS, ParallelLoopsRow,
                                    PlainLoopRow, VectorEnvRow)
    from workers import RandomAgent
    agent = RandomAgent(make_cartpole().action_space, seed=0)
    single = PlainLoopRow(agent, make_cartpole, 0) if kind == 'plain' \
        else VectorEnvRow('sync', 4, agent, make_cartpole, 0)
    row = ParallelLoopsRow(2, single)
    try:
        row.setup()
        for _ in range(2):
            done = row.call(1000, None)
            # Between them, not each: at most one look late per process.
            assert 1000 <= done.transitions < 1000 + 2 * LOOP_STEPS
            assert done.episodes > 0
            row.check()
        assert len(row.worker_pids()) == 2
    finally:
        row.close()
    assert row.worker_pids() == []


def test_parallel_loops_report_a_failing_env():
    from sampler.bench.rows import ParallelLoopsRow, PlainLoopRow
    from workers import RandomAgent
    agent = RandomAgent(make_cartpole().action_space, seed=0)
    row = ParallelLoopsRow(2, PlainLoopRow(agent, broken_env, 0))
    try:
        row.setup()
        with pytest.raises(RuntimeError, match='(?s)a plain loop process '
                           'failed.*OSError: no simulator licence'):
            row.call(100, None)
    finally:
        row.close()


def test_vector_mode_times_our_vector_env_beside_the_others(tmp_path):
    pytest.importorskip('stable_baselines3')
    out, data = bench(tmp_path, '--mode', 'vector', '--compare',
                      '--compare-with', 'vector', '--agent', 'random',
                      '--samples', '200', '--iterations', '1')
    names = [r['name'] for r in data['rows']]
    # 4 envs a worker unless told: 8 envs on 2 workers, against the
    # others' 8 envs.
    assert names == [
        'our AsyncVectorEnv (8 envs, 2 workers)',
        'our AsyncVectorEnv send/recv (8 envs, 2 workers)',
        'plain loop (1 process)',
        'gymnasium SyncVectorEnv (8 envs)',
        'gymnasium AsyncVectorEnv (8 envs)', 'SB3 SubprocVecEnv (8 envs)',
        'plain loop x 2 processes (limit)',
        'SyncVectorEnv (8 envs) x 2 processes (limit)']
    ours = data['rows'][0]
    assert ours['calls'][0]['transitions'] >= 200
    assert ours['calls'][0]['transitions'] % 8 == 0
    assert ours['workers_cpu_percent'] is not None
    assert ours['vector_startup_s'] > 0
    # send/recv: one worker's 4 envs a batch
    assert data['rows'][1]['calls'][0]['transitions'] % 4 == 0
    assert data['rows'][1]['calls'][0]['transitions'] >= 200
    assert 'start-up (construction and first reset): our AsyncVectorEnv ' \
        '(8 envs, 2 workers) ' in out
    assert 'compare: ours run with' not in out
