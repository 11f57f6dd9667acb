"""The README's example is code users copy: it must run as written."""

import pathlib
import re


ROOT = pathlib.Path(__file__).resolve().parent.parent


def code_blocks():
    text = (ROOT / 'README.rst').read_text()
    blocks = re.findall(r'\.\. code-block:: python\n\n((?:    .*\n|\n)+)',
                        text)
    return [re.sub(r'^    ', '', b, flags=re.M) for b in blocks]


def test_readme_training_loop_runs_and_improves(capsys):
    blocks = code_blocks()
    assert len(blocks) == 1  # the front door's one example
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


def test_readme_links_and_figures_point_at_files_of_the_repository():
    # On GitHub a relative link opens the file it names.
    text = (ROOT / 'README.rst').read_text()
    targets = re.findall(r'<([^>:]+)>`_', text)
    targets += re.findall(r'^\.\. image:: (\S+)', text, re.M)
    assert 'docs/multi_agent.rst' in targets
    assert 'docs/ppo_multiagent_spread.png' in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing
