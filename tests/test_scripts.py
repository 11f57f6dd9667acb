"""The scripts are examples users run: they must keep working."""

import importlib.util
import pathlib
import re

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
