"""The README's example is code users copy: it must run as written."""

import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def code_blocks():
    text = (ROOT / 'README.rst').read_text()
    blocks = re.findall(r'\.\. code-block:: python\n\n((?:    .*\n|\n)+)',
                        text)
    return [re.sub(r'^    ', '', b, flags=re.M) for b in blocks]


def run_main(block, name):
    """Code block ``block`` of the README run as module ``name`` (its
    ``if __name__ == "__main__"`` guard keeps it from running main), then
    its ``main()``, whose result is returned."""
    namespace = {'__name__': name}
    exec(compile(code_blocks()[block], 'README.rst', 'exec'), namespace)
    return namespace['main']()


def test_readme_training_loop_runs_and_improves(capsys):
    blocks = code_blocks()
    assert len(blocks) == 4
    namespace = {'__name__': 'readme_example'}
    exec(compile(blocks[0], 'README.rst', 'exec'), namespace)
    assert capsys.readouterr().out == ''  # guarded: nothing ran on import
    best_return = namespace['main']()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 15 and lines[-1].startswith('version 15:')
    first = float(re.search(r'mean return ([\d.]+)', lines[0]).group(1))
    assert best_return > first


def test_readme_commands_are_the_ci_commands():
    text = (ROOT / 'README.rst').read_text()
    ci = (ROOT / '.ci' / 'run').read_text().strip().splitlines()[-1]
    assert f'    {ci}\n' in text
    assert '.venv/bin/sampler bench' in text


def test_readme_renders_without_warnings():
    import docutils.core
    # Parsing is enough: a warning (a broken table, an unclosed literal)
    # halts it with an exception.
    docutils.core.publish_doctree(
        (ROOT / 'README.rst').read_text(),
        settings_overrides={'report_level': 2, 'halt_level': 2})


def test_readme_torch_example_samples_with_the_state_dict():
    pytest.importorskip('torch')
    batch = run_main(1, 'readme_torch_example')
    assert len(batch) == 2 * 4 * 64
    assert batch.versions.tolist() == [3] * batch.n_episodes
    assert {'log_prob', 'value'} <= set(batch.agent_infos)


def test_readme_envpool_example_steps_every_env_exactly():
    pytest.importorskip('envpool')
    batch = run_main(3, 'readme_envpool_example')
    assert len(batch) == 2 * 8 * 128
    assert batch.versions.tolist() == [3] * batch.n_episodes
    counts = [np.bincount(batch.env_infos['env_id'][
        np.repeat(batch.worker_numbers, batch.lengths) == w]).tolist()
        for w in (0, 1)]
    assert counts == [[128] * 8] * 2


def test_readme_vector_env_of_agents_steps_every_slot():
    pytest.importorskip('mpe2')
    shape, active = run_main(2, 'readme_multi_agent_example')
    assert shape == (12, 18)  # 4 envs x 3 agents, simple_spread's 18
    assert active.tolist() == [True] * 12
