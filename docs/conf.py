"""Sphinx configuration for pyro_vi's API reference (autodoc + napoleon, Google-style docstrings).

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (``tests/test_docs.py`` does the same
with warnings as errors).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))  # cli_reference: the generated command-line reference

project = "pyro_vi"
author = "pyro_vi developers"
copyright = "pyro_vi developers"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "cli_reference"]

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" of a NamedTuple as :ivar: fields, so they do not clash with the fields autodoc lists.
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
# Type hints name torch/pyro classes that this build does not cross-reference (no intersphinx:
# the build must work offline); they are rendered as plain text, not as broken links.
nitpicky = False

html_theme = "alabaster"
exclude_patterns = ["_build"]
