"""Sphinx configuration of pyro-zoo's documentation site.

Build it (from the repository root, after ``pip install -c constraints.txt -e ".[docs]"``)::

    .venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

The teaching notebooks in ``notebooks/`` (jupytext percent ``.py`` files) are copied into
``docs/notebooks/`` and executed by myst-nb at build time, with a cache (``docs/_build/.jupyter_cache-*``):
a second build re-runs only the notebooks whose code changed. They run on small settings unless
``ZOO_NOTEBOOK_QUICK=0`` is set (see the installation page).
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))

# The notebooks honour ZOO_NOTEBOOK_QUICK=1 (small settings, minutes instead of hours); kernels inherit
# this process's environment. Set ZOO_NOTEBOOK_QUICK=0 to build the site with the full settings.
os.environ.setdefault("ZOO_NOTEBOOK_QUICK", "1")
QUICK = os.environ["ZOO_NOTEBOOK_QUICK"] == "1"
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("COLUMNS", "100")  # argparse's help width on the CLI page, the same on every machine

project = "pyro-zoo"
author = "the pyro-zoo authors"
copyright = "the pyro-zoo authors"
release = version = "0.1.0"

extensions = [
    "myst_nb",  # MyST markdown + executed notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings use Google style (Args:, Returns:)
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/: formulas typeset without a network
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx_design",  # the gallery's cards
    "sphinx_copybutton",
    "zoo_docs",  # _ext/zoo_docs.py: notebooks, thumbnails, the CLI reference, inventories
]

# ---- sources ---------------------------------------------------------------------------------------
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
# jupytext percent files are notebooks; only the copies in notebooks/ are sources (conf.py and _ext are not)
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
default_role = "code"  # `name` in a docstring reads as code, as in the README
exclude_patterns = ["_build", "_ext", "conf.py", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
root_doc = "index"

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "substitution"]
myst_heading_anchors = 3  # README-style links to #section-slugs resolve
myst_dmath_double_inline = True

# ---- notebook execution ----------------------------------------------------------------------------
nb_execution_mode = "cache"
nb_execution_cache_path = str(DOCS / "_build" / (".jupyter_cache-quick" if QUICK else ".jupyter_cache-full"))
nb_execution_timeout = 1200  # seconds per cell
nb_execution_raise_on_error = True  # a cell that raises fails the build
nb_execution_show_tb = True
nb_execution_in_temp = True  # nothing a notebook writes lands in the source tree
nb_merge_streams = True
# A line a notebook writes to stderr is a warning the reader did not ask for, and fails the build under -W.
# A cell that shows a warning on purpose says so in its metadata: mystnb={"output_stderr": "show"}.
nb_output_stderr = "warn"
nb_render_image_options = {"alt": "a figure of the notebook"}

# ---- API reference ---------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# ---- links to Pyro, PyTorch and ArviZ ----------------------------------------------------------------
# The build machines reach no documentation site, so the inventories are written by _ext/zoo_docs.py from
# a list of the objects these pages name (OFFLINE_INVENTORIES there); the links go to the real sites.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(DOCS / "_build" / "inventories" / "python.inv")),
    "pyro": ("https://docs.pyro.ai/en/stable", str(DOCS / "_build" / "inventories" / "pyro.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable", str(DOCS / "_build" / "inventories" / "torch.inv")),
    "arviz": ("https://python.arviz.org/en/stable", str(DOCS / "_build" / "inventories" / "arviz.inv")),
}

# ---- HTML ------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = "pyro-zoo"
html_static_path = ["_static"]
html_css_files = ["zoo.css"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# pages without sub-pages get the full width (their formulas and tables are wide)
html_sidebars = {
    name: [] for name in ("index", "install", "gallery", "bring_your_own_model", "MATH", "cli", "benchmarks")
}
html_favicon = "_static/favicon.png"
html_context = {"default_mode": "light"}  # the figures are drawn on white
html_show_sourcelink = False
# MathJax 3 comes from sphinx-mathjax-offline (no CDN); the browser test checks that formulas are typeset.
