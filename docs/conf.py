"""Sphinx configuration of rollout-sampler's documentation site.

Build it with the ``docs`` extra installed::

    python -m sphinx -W -b html docs docs/_build/html
"""

import os
import sys

# The packages from this checkout, whether or not they are installed.
sys.path.insert(0, os.path.abspath('..'))

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
