"""Sphinx configuration of the torchgeo_xscale documentation.

Build (warnings are errors, as CI does)::

    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

or ``bash docs/build.sh``, which also executes the notebooks.
"""

import importlib
import os
import sys
from pathlib import Path

from docutils.nodes import Element
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('MPLBACKEND', 'Agg')

import torchgeo_xscale  # noqa: E402

project = 'torchgeo_xscale'
author = 'torchgeo_xscale contributors'
copyright = 'torchgeo_xscale contributors (MIT)'
version = release = torchgeo_xscale.__version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'sphinx.ext.mathjax',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'slurm', 'Thumbs.db', '.DS_Store']

# MyST: $...$ maths, ::: fences, and heading anchors for [text](page.md#anchor) links.
myst_enable_extensions = ['dollarmath', 'colon_fence', 'deflist']
myst_heading_anchors = 3

# Google-style docstrings, type hints in the description, members in source order.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = 'description'
autodoc_member_order = 'bysource'
autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_inherit_docstrings = False
autosummary_generate = False
# Heavy optional backends are imported lazily by the package; nothing to mock.
autodoc_mock_imports = ['xformers']

html_theme = 'furo'
html_title = f'torchgeo_xscale {release}'
html_static_path: list[str] = []


def resolve_reexport(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element
) -> Element | None:
    """Link ``torchgeo_xscale.models.CrossScaleMAE`` to where the class is documented.

    Docstrings name objects by their public import path (a subpackage re-export);
    the API pages document them in their defining module.

    Args:
        app: The Sphinx application.
        env: The build environment.
        node: The unresolved reference.
        contnode: Its content node.

    Returns:
        The resolved reference, or None to leave it unresolved.
    """
    target = node.get('reftarget', '')
    if node.get('refdomain') != 'py' or not target.startswith('torchgeo_xscale.'):
        return None
    module_name, _, name = target.rpartition('.')
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    defined_in = getattr(obj, '__module__', None)
    if not defined_in or defined_in == module_name:
        return None
    domain = env.get_domain('py')
    return domain.resolve_xref(
        env,
        node['refdoc'],
        app.builder,
        node['reftype'],
        f'{defined_in}.{name}',
        node,
        contnode,
    )


def setup(app: Sphinx) -> None:
    """Register the re-export resolver.

    Args:
        app: The Sphinx application.
    """
    app.connect('missing-reference', resolve_reexport)
