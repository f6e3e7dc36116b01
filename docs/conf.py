"""Sphinx configuration of the s2dask documentation site.

Build (warnings are errors, as in CI)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
# autodoc imports s2dask modules: keep native start-up chatter out of the build log
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import s2dask  # noqa: E402

project = "s2dask"
author = "s2dask contributors"
copyright = "s2dask contributors"
release = s2dask.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinxarg.ext",
    "sphinxcontrib.mermaid",
    "s2dask_benchmarks",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

myst_enable_extensions = ["attrs_block", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_fence_as_directive = ["mermaid"]

# API reference: signatures from the code, descriptions from the numpydoc docstrings.
# The stub pages are made afresh on every build, so a name taken off reference/api.md
# leaves no stale page behind (which -W would refuse as outside every toctree).
shutil.rmtree(HERE / "reference" / "generated", ignore_errors=True)
autosummary_generate = True
autodoc_typehints = "none"  # numpydoc lists the parameters; hints stay in the signature line
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

html_theme = "pydata_sphinx_theme"
html_title = f"s2dask {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_static_path: list[str] = []
html_show_sourcelink = False

# no network at build time: mermaid diagrams are rendered by the browser
mermaid_version = "11.4.1"
