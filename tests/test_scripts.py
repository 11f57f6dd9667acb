"""The scripts are examples users run: they must keep working."""

import importlib.util
import pathlib
import re

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
