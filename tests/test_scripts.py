"""The scripts are examples users run: they must keep working."""

import importlib.util
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_cem_learns(capsys):
    load('train_cem').main(['--generations', '6', '--population', '8',
                            '--workers', '3'])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    means = [float(re.search(r'mean return +([\d.]+)', line).group(1))
             for line in lines]
    assert means[-1] > means[0]


@pytest.mark.timeout(120)
def test_bench_peers_times_or_skips_each_peer(capsys):
    result = load('bench_peers').main(['--samples', '200', '--iterations',
                                       '1', '--envs-per-worker', '1'])
    names = [r['name'] for r in result['rows']]
    assert names[0] == 'MultiprocessingSampler (2 workers)'
    assert 'plain loop (1 process)' in names
    out = capsys.readouterr().out
    for peer, module in (('stable-baselines3', 'stable_baselines3'),
                         ('envpool', 'envpool')):
        timed = any(n.startswith(peer) for n in names)
        skipped = any(note.startswith(peer) for note in result['skipped'])
        assert timed != skipped, peer
        if skipped:
            assert f'skipped: {peer}' in out
    assert all(r['median_transitions_per_s'] > 0 for r in result['rows'])


@pytest.mark.timeout(300)
def test_train_ppo_learns_cartpole(capsys, tmp_path):
    curve = tmp_path / 'ppo.csv'
    mean_return = load('train_ppo').main(['--target-return', '450',
                                          '--csv', str(curve)])
    assert mean_return >= 450
    assert 'reached a mean return' in capsys.readouterr().out
    rows = curve.read_text().splitlines()
    assert rows[0] == 'env_steps,seconds,mean_return'
    steps = [int(row.split(',')[0]) for row in rows[1:]]
    assert steps == sorted(steps) and steps[0] > 0


@pytest.mark.timeout(300)
def test_train_ppo_with_torch_learns_cartpole(capsys, tmp_path):
    pytest.importorskip('torch')
    curve = tmp_path / 'ppo.csv'
    mean_return = load('train_ppo').main(['--torch', '--target-return', '450',
                                          '--csv', str(curve)])
    assert mean_return >= 450
    assert 'reached a mean return' in capsys.readouterr().out
    assert len(curve.read_text().splitlines()) > 2


def test_dqn_transitions_take_next_observations_across_segments():
    from workers import EpisodeBatch
    pytest.importorskip('torch')
    dqn = load('train_dqn')
    # A cut segment of 2 steps, then a terminated one of 1.
    batch = EpisodeBatch(
        observations=np.array([[0.0], [1.0], [5.0]]),
        actions=np.zeros(3, np.int64), rewards=np.ones(3),
        terminated=[False, False, True], truncated=[False, False, False],
        last_observations=np.array([[2.0], [6.0]]), lengths=[2, 1],
        cut=[True, False])
    obs, actions, rewards, next_obs, terminated = dqn.transitions(batch)
    assert next_obs[:, 0].tolist() == [1.0, 2.0, 6.0]
    assert terminated.tolist() == [False, False, True]  # not the cut one


@pytest.mark.timeout(300)
def test_train_dqn_runs_from_a_stream_and_pushes(capsys, tmp_path):
    pytest.importorskip('torch')
    curve = tmp_path / 'dqn.csv'
    load('train_dqn').main(['--total-steps', '3000', '--learning-starts',
                            '500', '--csv', str(curve)])
    rows = curve.read_text().splitlines()
    assert rows[0] == 'env_steps,seconds,mean_return'
    steps = [int(row.split(',')[0]) for row in rows[1:]]
    assert steps == sorted(steps) and steps[-1] >= 3000
    out = capsys.readouterr().out
    done = re.search(r'done: (\d+) env steps, (\d+) gradient steps, '
                     r'parameters pushed up to version (\d+)', out)
    steps, updates, version = map(int, done.groups())
    assert steps >= 3000 and updates > 0
    assert version == updates // 4  # a push every 4 gradient steps


@pytest.mark.timeout(300)
def test_train_ppo_vector_learns_cartpole_on_our_vector_env(capsys):
    pytest.importorskip('torch')
    mean_return = load('train_ppo_vector').main(['--target-return', '450'])
    assert mean_return >= 450
    out = capsys.readouterr().out
    assert 'reached a mean return' in out
    first = float(re.search(r'mean return +([\d.]+)', out).group(1))
    assert first < 200  # it learned: it did not start there


@pytest.mark.timeout(300)
def test_train_ppo_multiagent_runs_on_our_vector_env_of_agents(tmp_path):
    pytest.importorskip('torch')
    pytest.importorskip('mpe2')
    pytest.importorskip('matplotlib')
    curve_file, plot = tmp_path / 'spread.csv', tmp_path / 'spread.png'
    curve = load('train_ppo_multiagent').main([
        '--total-steps', '9600', '--num-envs', '4', '--csv',
        str(curve_file), '--plot', str(plot)])
    # The figure of docs/, with its line of random actions.
    assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # 4 envs x 3 agents x 50 steps per iteration: 16 iterations, every
    # agent's episode of 25 steps ended twice in each.
    assert [c[0] for c in curve] == [600 * (i + 1) for i in range(16)]
    rows = curve_file.read_text().splitlines()
    assert rows[0] == 'agent_steps,seconds,mean_return' and len(rows) == 17
    # simple_spread's rewards are negative distances: a random policy's
    # agents get about -25 an episode.
    assert all(-80 < c[2] < 0 for c in curve)


def test_draw_segments_draws_the_figure_of_the_docs(tmp_path):
    pytest.importorskip('matplotlib')
    out = tmp_path / 'segments.png'
    load('draw_segments').main(str(out))
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert out.stat().st_size > 10_000  # bars and words, not a blank
