import json

import pytest
from click.testing import CliRunner

from sampler.cli import main

TINY = ['bench', '--samples', '300', '--iterations', '2', '--workers', '2']


@pytest.mark.parametrize('extra', [
    [], ['--backend', 'local'],
    ['--agent', 'random', '--envs-per-worker', '3', '--no-progress']])
def test_bench_prints_the_rate_and_writes_json(tmp_path, extra):
    path = tmp_path / 'out.json'
    result = CliRunner().invoke(main, TINY + extra + ['--json', str(path)])
    assert result.exit_code == 0, result.output
    assert 'transitions/s (median)' in result.output
    data = json.loads(path.read_text())
    assert data['env'] == 'CartPole-v1' and data['workers'] == 2
    assert data['backend'] == ('local' if 'local' in extra
                               else 'multiprocessing')
    assert len(data['calls']) == 2
    assert all(c['transitions'] >= 300 for c in data['calls'])
    assert 0 < data['min_transitions_per_s'] <= \
        data['median_transitions_per_s'] <= data['max_transitions_per_s']
    assert data['median_episodes_per_s'] > 0
    # Every rate says so in its name's suffix.
    assert {k for k in data if k.endswith('_per_s')} == {
        'median_transitions_per_s', 'min_transitions_per_s',
        'max_transitions_per_s', 'median_episodes_per_s'}
    assert not [k for k in data if 'per_s' in k and not k.endswith('per_s')]


@pytest.mark.parametrize('args,message', [
    (['--workers', '0'], "Invalid value for '--workers'"),
    (['--agent', 'clever'], "Invalid value for '--agent'"),
    (['--backend', 'cloud'], "Invalid value for '--backend'"),
    (['--env', 'CartPol-v1'], "Did you mean: `CartPole`?"),
    (['--samples', 'many'], "Invalid value for '--samples'"),
])
def test_bad_options_are_usage_errors(args, message):
    result = CliRunner().invoke(main, ['bench'] + args)
    assert result.exit_code == 2
    assert message in result.output
