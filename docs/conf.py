"""Sphinx configuration of rollout-sampler's documentation site.

Build it with the ``docs`` extra installed::

    python -m sphinx -W -b html docs docs/_build/html
"""

import os
import sys

# The packages from this checkout, whether or not they are installed (the
# checkout found from this file, not from the directory Sphinx runs in).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

project = 'rollout-sampler'
author = 'the rollout-sampler developers'
copyright = '2026, ' + author

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
]

autosummary_generate = True
autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Generated API pages, build output, and data the pages do not show.
exclude_patterns = ['_build', '**.csv']

html_theme = 'furo'
html_title = 'rollout-sampler'
html_static_path = []

nitpicky = False

# Plain ``::`` blocks are commands and printed tables, not Python: no
# highlighting that would colour their figures.
highlight_language = 'text'


# -- The front page is README.rst ----------------------------------------
#
# README.rst is the front door on GitHub, where its links point at the
# files ``docs/<page>.rst``.  The site shows the same text as its front
# page (``.. readme::`` in index.rst), with those links turned into links
# to the pages and its figures' paths made relative to ``docs/``, so the
# README is written once and its links work in both places.

import re  # noqa: E402

from docutils.parsers.rst import Directive  # noqa: E402
from docutils.statemachine import StringList  # noqa: E402

README = os.path.join(ROOT, 'README.rst')


def readme_for_site(text):
    """README.rst's text with its links to ``docs/<page>.rst`` as
    ``:doc:`` references (which Sphinx checks) and its images' paths
    relative to ``docs/``.  A link into ``docs/`` left in any other form
    is an error, since it would be broken in the site."""
    text = re.sub(r'`([^`<]+?)\s*<docs/([\w/]+)\.rst>`_',
                  r':doc:`\1 <\2>`', text)
    text = re.sub(r'^(\.\. (?:image|figure):: )docs/', r'\1', text,
                  flags=re.M)
    left = re.findall(r'<docs/[^>]*>`_|^\.\. \w+:: docs/\S+', text, re.M)
    if left:
        raise ValueError(f'README.rst links into docs/ in a form the site '
                         f'cannot follow: {left}; link to a page as '
                         f'`Text <docs/page.rst>`_')
    return text


class ReadmeDirective(Directive):
    """``.. readme::``: README.rst, as :func:`readme_for_site` makes it."""

    def run(self):
        self.state.document.settings.env.note_dependency(README)
        with open(README, encoding='utf-8') as f:
            text = readme_for_site(f.read())
        lines = StringList(text.splitlines(), source=README)
        self.state_machine.insert_input(lines, README)
        return []


def setup(app):
    app.add_directive('readme', ReadmeDirective)
    return {'parallel_read_safe': True}
