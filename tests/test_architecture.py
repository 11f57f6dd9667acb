"""docs/architecture.rst stays true: every file it names exists, and its
diagram and message tables are the ones sampler/_protocol.py holds."""

import os
import re

from sampler import _protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, 'docs', 'architecture.rst')


def page():
    with open(PAGE, encoding='utf-8') as f:
        return f.read()


def blocks(text):
    """The literal blocks (after ``::``) and the tables of ``text``, each
    as its lines with the common indent removed."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith('::') or line.startswith('====='):
            j = i + 1
            if line.startswith('====='):
                j = i
                while j + 1 < len(lines) and lines[j + 1].strip():
                    j += 1
                out.append(lines[i:j + 1])
                i = j + 1
                continue
            while j < len(lines) and not lines[j].strip():
                j += 1
            start = j
            while j < len(lines) and (not lines[j].strip() or
                                      lines[j].startswith(' ')):
                j += 1
            body = lines[start:j]
            while body and not body[-1].strip():
                body.pop()
            indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
            out.append([b[indent:] for b in body])
            i = j
            continue
        i += 1
    return out


def test_every_file_the_page_names_exists():
    named = set(re.findall(r'``((?:sampler|workers|tests|scripts|docs)/'
                           r'[\w/]+\.\w+)``', page()))
    assert len(named) > 20  # the page names its modules and tests
    missing = sorted(p for p in named
                     if not os.path.exists(os.path.join(ROOT, p)))
    assert not missing, f'docs/architecture.rst names missing files: ' \
                        f'{missing}'


def test_every_module_of_the_packages_is_on_the_page():
    text = page()
    for package in ('sampler', 'workers'):
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith('.py') and name not in ('__init__.py',
                                                     '__main__.py'):
                assert f'{package}/{name}' in text, \
                    f'{package}/{name} is not on docs/architecture.rst'


def test_the_diagram_and_tables_are_the_protocols_own():
    ours = blocks(_protocol.__doc__)
    theirs = blocks(page())
    # The diagram of a call, the two message tables and the diagram of a
    # vector env's commands, word for word.
    assert len(ours) == 4
    for block in ours:
        assert block in theirs, '\n'.join(block)
