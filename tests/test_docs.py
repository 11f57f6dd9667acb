"""The documentation site: it builds with warnings as errors, every public
name has a page in its API reference, and every example in it runs."""

import importlib
import importlib.util
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / 'docs'


def code_blocks(page):
    """The ``.. code-block:: python`` blocks of ``docs/<page>``."""
    text = (DOCS / page).read_text()
    blocks = re.findall(r'\.\. code-block:: python\n\n((?:    .*\n|\n)+)',
                        text)
    return [re.sub(r'^    ', '', b, flags=re.M) for b in blocks]


def run_block(page, index, name):
    """Example ``index`` of ``page`` run as module ``name`` (its ``if
    __name__ == "__main__"`` guard keeps it from running ``main``), then
    its ``main()``, whose result is returned."""
    namespace = {'__name__': name}
    exec(compile(code_blocks(page)[index], f'docs/{page}', 'exec'),
         namespace)
    return namespace['main']()


def public_names():
    """``(module, name)`` of every name in ``__all__`` of the packages."""
    out = []
    for module in ('sampler', 'workers', 'sampler.vector'):
        names = importlib.import_module(module).__all__
        if module == 'sampler.vector':
            names = list(names) + ['SubprocVecEnv']  # needs SB3
        out += [(module, name) for name in names]
    return out


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    pytest.importorskip('sphinx')
    pytest.importorskip('furo')
    out = tmp_path_factory.mktemp('site')
    run = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-b', 'html',
         '-q', '-d', str(out / '.doctrees'), str(DOCS), str(out)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


@pytest.mark.timeout(320)
def test_the_site_builds_without_warnings(site):
    pages = {p.stem for p in site.glob('*.html')}
    assert {'index', 'getting_started', 'calls', 'pytorch', 'streams',
            'vector_envs', 'multi_agent', 'envpool', 'ray', 'failures',
            'performance', 'api', 'reference', 'architecture'} <= pages
    # Every figure a page shows was copied into the site.
    for page in DOCS.glob('*.rst'):
        for image in re.findall(r'^\.\. image:: (\S+)', page.read_text(),
                                re.M):
            assert (site / '_images' / image).exists(), (page.name, image)


@pytest.mark.timeout(320)
def test_the_front_page_is_the_readme_with_links_to_the_pages(site):
    front = (site / 'index.html').read_text()
    for section in ('Quick start', 'A training loop', 'Documentation'):
        assert f'{section}<a class="headerlink"' in front
    links = set(re.findall(r'href="([^"#?]+)"', front))
    readme = (ROOT / 'README.rst').read_text()
    for page in re.findall(r'<docs/(\w+)\.rst>`_', readme):
        assert f'{page}.html' in links
    assert not [link for link in links if link.endswith('.rst')]
    assert 'src="_images/ppo_multiagent_spread.png"' in front


@pytest.mark.timeout(320)
def test_no_link_or_image_in_the_site_is_broken(site):
    broken = []
    for page in site.rglob('*.html'):
        text = page.read_text()
        for link in re.findall(r'(?:href|src)="([^"]+)"', text):
            if re.match(r'[a-z]+:|#', link):
                continue  # another site, or a place on this page
            path = link.split('#')[0].split('?')[0]
            if not (page.parent / path).resolve().exists():
                broken.append(f'{page.relative_to(site)}: {link}')
    assert not broken, broken[:20]


def test_a_readme_link_the_site_cannot_follow_is_an_error():
    pytest.importorskip('sphinx')
    spec = importlib.util.spec_from_file_location('docs_conf',
                                                  DOCS / 'conf.py')
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    text = conf.readme_for_site(
        'See `the guide\n<docs/calls.rst>`_.\n\n.. image:: docs/a.png\n')
    assert text == 'See :doc:`the guide <calls>`.\n\n.. image:: a.png\n'
    with pytest.raises(ValueError, match='docs/calls.md'):
        conf.readme_for_site('See `the guide <docs/calls.md>`_.')


@pytest.mark.timeout(320)
def test_every_public_name_has_a_page_in_the_api_reference(site):
    pytest.importorskip('stable_baselines3')
    missing = []
    for module, name in public_names():
        obj = getattr(importlib.import_module(module), name)
        # A name one package takes from the other has the other's page.
        home = 'workers' if module == 'sampler' and \
            obj.__module__.startswith('workers') else module
        page = site / 'generated' / f'{home}.{name}.html'
        if not page.exists() or name not in page.read_text():
            missing.append(f'{module}.{name}')
    assert not missing, f'no page in docs/reference.rst for {missing}'


def test_every_example_in_the_docs_is_run_by_a_test():
    # The examples and the tests below that run them: a new example needs
    # a test (or an entry here, if it has no main()).
    tested = {'getting_started.rst': 1, 'pytorch.rst': 1, 'streams.rst': 1,
              'vector_envs.rst': 2, 'multi_agent.rst': 2, 'envpool.rst': 1,
              'ray.rst': 1}
    found = {page.name: len(code_blocks(page.name))
             for page in DOCS.glob('*.rst') if code_blocks(page.name)}
    assert found == tested


def test_no_python_hides_in_a_literal_block():
    # ``::`` blocks are commands, printed tables and diagrams, which no
    # test runs: Python there would rot unseen.
    python = re.compile(r'^ *(import \w|from [\w.]+ import |def \w+\(|'
                        r'\w+ = \w+\()', re.M)
    hidden = []
    for page in DOCS.glob('*.rst'):
        for block in re.findall(r'::\n\n((?:    .*\n|\n)+)',
                                page.read_text()):
            hidden += [(page.name, line) for line in python.findall(block)]
    assert not hidden, f'make these code-block:: python examples: {hidden}'


def test_getting_started_training_loop_improves(capsys):
    best_return = run_block('getting_started.rst', 0, 'docs_first_loop')
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 15 and lines[-1].startswith('version 15:')
    first = float(re.search(r'mean return ([\d.]+)', lines[0]).group(1))
    assert best_return > first


def test_torch_example_samples_with_the_state_dict():
    pytest.importorskip('torch')
    batch = run_block('pytorch.rst', 0, 'docs_torch_example')
    assert len(batch) == 2 * 4 * 64
    assert batch.versions.tolist() == [3] * batch.n_episodes
    assert {'log_prob', 'value'} <= set(batch.agent_infos)


def test_envpool_example_steps_every_env_exactly():
    pytest.importorskip('envpool')
    batch = run_block('envpool.rst', 0, 'docs_envpool_example')
    assert len(batch) == 2 * 8 * 128
    assert batch.versions.tolist() == [3] * batch.n_episodes
    counts = [np.bincount(batch.env_infos['env_id'][
        np.repeat(batch.worker_numbers, batch.lengths) == w]).tolist()
        for w in (0, 1)]
    assert counts == [[128] * 8] * 2


def test_vector_env_of_agents_steps_every_slot():
    pytest.importorskip('mpe2')
    shape, active = run_block('multi_agent.rst', 1, 'docs_multi_agent')
    assert shape == (12, 18)  # 4 envs x 3 agents, simple_spread's 18
    assert active.tolist() == [True] * 12


def test_stream_example_reads_while_workers_step():
    batches = run_block('streams.rst', 0, 'docs_stream_example')
    assert len(batches) == 10 and all(len(b) >= 256 for b in batches)
    # The pushes reached the workers: later batches have newer versions.
    assert batches[-1].versions.max() > batches[0].versions.max()


def test_cleanrl_switch_example_steps_our_vector_env():
    assert run_block('vector_envs.rst', 0, 'docs_cleanrl') == (8, 4)


def test_sb3_example_learns_on_our_subproc_vec_env():
    pytest.importorskip('stable_baselines3')
    assert run_block('vector_envs.rst', 1, 'docs_sb3') >= 1024


def test_two_mapped_policies_example_updates_one():
    pytest.importorskip('pettingzoo')
    hunters = run_block('multi_agent.rst', 0, 'docs_mapped_policies')
    assert set(hunters.agent_ids.tolist()) == {'pursuer_0', 'pursuer_1'}
    assert hunters.versions.tolist() == [1] * len(hunters.lengths)
    assert (hunters.lengths == 50).all()


@pytest.mark.timeout(120)
def test_ray_example_samples_on_a_local_runtime(capsys):
    pytest.importorskip('ray')
    batch = run_block('ray.rst', 0, 'docs_ray_example')
    assert len(batch) >= 4000
    assert set(batch.worker_numbers.tolist()) == {0, 1}
    assert capsys.readouterr().out.endswith('episodes from 2 workers\n')
