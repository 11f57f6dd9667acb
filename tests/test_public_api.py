import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('package', ['workers', 'sampler'])
def test_every_public_name_imports(package):
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_design_names_available_today():
    from sampler import (BrokenSamplerError, EpisodeBatch, LocalSampler,
                         MultiprocessingSampler, RaySampler, Sampler,
                         SamplerClosedError, SamplerError,
                         SamplerTimeoutError, WorkerCrashedError, WorkerError,
                         WorkerFactory)
    from workers import EpisodeBatch as WorkersEpisodeBatch
    assert EpisodeBatch is WorkersEpisodeBatch
    for backend in (LocalSampler, MultiprocessingSampler, RaySampler):
        assert issubclass(backend, Sampler)
    assert issubclass(SamplerTimeoutError, TimeoutError)
    for err in (BrokenSamplerError, SamplerClosedError, WorkerError,
                WorkerCrashedError, SamplerTimeoutError):
        assert issubclass(err, SamplerError)
    assert WorkerFactory


def test_workers_never_imports_sampler():
    offenders = []
    for path in (ROOT / 'workers').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or '']
            else:
                continue
            offenders += [f'{path.name}: {n}' for n in names
                          if n == 'sampler' or n.startswith('sampler.')]
    assert not offenders


@pytest.mark.timeout(60)
def test_importing_sampler_does_not_import_ray():
    code = 'import sampler, sys; print("ray" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'


@pytest.mark.timeout(60)
def test_python_dash_m_sampler_runs_the_cli():
    out = subprocess.run([sys.executable, '-m', 'sampler', '--help'],
                         capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert 'bench' in out.stdout


def test_packages_ship_their_type_hints():
    import importlib.resources
    import typing

    import sampler
    import workers
    for package in ('sampler', 'workers'):
        assert importlib.resources.files(package).joinpath(
            'py.typed').is_file()
    hints = typing.get_type_hints(sampler.Sampler.obtain_steps)
    assert hints['return'] is workers.EpisodeBatch
    assert hints['steps_per_env'] is int
