"""Sphinx configuration of the recbole-ckd documentation.

Build: python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]  # this checkout's recbole_ckd; the docs' own extension

import recbole_ckd  # noqa: E402

project = "recbole-ckd"
author = "recbole-ckd contributors"
copyright = "2026, recbole-ckd contributors"
release = version = recbole_ckd.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "generated_pages",  # docs/_ext: the model zoo and the results pages, from the code and results/
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"

html_theme = "furo"
html_title = f"recbole-ckd {release}"
