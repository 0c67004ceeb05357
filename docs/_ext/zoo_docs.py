"""Sphinx extension for pyro-zoo's site: the notebooks, their thumbnails, the CLI reference, inventories.

* The teaching notebooks live in ``notebooks/`` at the repository root (jupytext percent ``.py`` files,
  which the test suite executes). At ``builder-inited`` they are copied into ``docs/notebooks/`` (only when
  changed, so an unchanged notebook is neither re-read nor re-executed) and myst-nb executes the copies.
* Each notebook's first figure becomes its thumbnail in the gallery (``gallery.md``), written when the
  notebook is read; the gallery is read after the notebooks.
* ``.. zoo-cli::`` renders ``zoo --help`` and the help of every subcommand, straight from the argparse
  parsers of :func:`zoo.cli.build_parser`, so the CLI reference cannot drift from the code.
* The docstrings of ``inference`` and ``zoo`` are written to be read with ``help()``: formulas as indented
  plain-text blocks, ``|x|`` for absolute values, ``*data`` for varargs. :func:`plain_text_docstrings`
  renders those as written (the blocks as literal blocks, ``|`` and a lone ``*`` escaped) instead of
  letting reStructuredText read them as block quotes, substitutions and emphasis.
* The build machines reach no documentation site, so the intersphinx inventories for Python, Pyro,
  PyTorch and ArviZ are written here from the list of objects these pages link to (OFFLINE_INVENTORIES),
  with each site's real page layout; the links in the built pages go to the real sites.
"""

import argparse
import filecmp
import re
import shutil
import zlib
from pathlib import Path

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
NOTEBOOKS_SRC = ROOT / "notebooks"
NOTEBOOKS_DST = DOCS / "notebooks"  # generated copies (git-ignored)
THUMBNAILS = NOTEBOOKS_DST / "thumbnails"
GALLERY = "gallery"


# ---- notebooks ---------------------------------------------------------------------------------------
def sync_notebooks(app):
    """Copy notebooks/NN_*.py to docs/notebooks/, keeping the copy (and its mtime) when nothing changed."""
    NOTEBOOKS_DST.mkdir(exist_ok=True)
    sources = sorted(NOTEBOOKS_SRC.glob("[0-9][0-9]_*.py"))
    names = {p.name for p in sources}
    for stale in NOTEBOOKS_DST.glob("*.py"):
        if stale.name not in names:
            stale.unlink()
    for src in sources:
        dst = NOTEBOOKS_DST / src.name
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            shutil.copy2(src, dst)
    (NOTEBOOKS_DST / ".gitignore").write_text("*\n")


def is_notebook(docname):
    return docname.startswith("notebooks/") and docname.split("/", 1)[1][:2].isdigit()


def thumbnail_path(docname):
    return THUMBNAILS / (docname.split("/", 1)[1] + ".png")


def read_gallery_last(app, env, docnames):
    """Read the gallery after the notebooks, whose first figures are its thumbnails."""
    if GALLERY in docnames:
        docnames.remove(GALLERY)
        docnames.append(GALLERY)


def outdated_without_thumbnail(app, env, added, changed, removed):
    """Re-read a notebook whose thumbnail is missing (the cache keeps it from being re-executed)."""
    return [
        d
        for d in env.found_docs
        if is_notebook(d) and not thumbnail_path(d).exists() and d not in added and d not in changed
    ]


def write_thumbnail(app, doctree):
    docname = app.env.docname
    if not is_notebook(docname):
        return
    for image in doctree.findall(nodes.image):
        candidates = [image.get("uri", "")] + list(image.get("candidates", {}).values())
        for uri in candidates:
            path = Path(uri)
            if not path.is_absolute():
                path = Path(app.srcdir) / uri
            if path.suffix.lower() == ".png" and path.exists():
                from PIL import Image

                THUMBNAILS.mkdir(parents=True, exist_ok=True)
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    im.thumbnail((480, 320))
                    canvas = Image.new("RGB", (480, 320), "white")  # every card the same size
                    canvas.paste(im, ((480 - im.width) // 2, (320 - im.height) // 2))
                    canvas.save(thumbnail_path(docname))
                return
    logger.warning(f"{docname}: no figure for its gallery thumbnail", location=docname)


# ---- docstrings written for help() ------------------------------------------------------------------
_INLINE = re.compile(r"(``.+?``|`[^`]+`_?|:[\w:.-]+:`[^`]+`)")  # literals, roles, links: kept as is
_EMPHASIS = re.compile(r"(?<![\w*\\])(\*\*|\*)(?=[^\s*])(.+?)(?<=[^\s*\\])\1(?![\w*])")
_MARKUP_START = re.compile(r"^\s*(:[^:\s][^:]*:\s|[-*+] |\d+[.)] )")  # ":param x: ", "- ", "1. "
_VERBATIM = re.compile(r"^\s*(\.\. |[|+]|>>>)")  # directives, tables, doctests
_RST_CONSTRUCT = re.compile(r"^\s*(\.\. |:[\w\\ *]+:|[-*+] |\d+[.)] |\w[.)] |[|+]|>>>)")


def _indent(line):
    return len(line) - len(line.lstrip())


def _escape_prose(text):
    """Escape ``|`` and every ``*`` that does not open or close an emphasis in one line of prose."""
    out = []
    for i, part in enumerate(_INLINE.split(text)):
        if i % 2:  # a literal, a role, a link: leave it
            out.append(part)
            continue
        pieces, last = [], 0
        for m in _EMPHASIS.finditer(part):
            pieces.append(part[last : m.start()].replace("*", r"\*"))
            pieces.append(m.group(0))
            last = m.end()
        pieces.append(part[last:].replace("*", r"\*"))
        out.append("".join(pieces).replace("|", r"\|"))
    return "".join(out)


def plain_text_docstrings(app, what, name, obj, options, lines):
    """Render the plain-text conventions of the project's docstrings as written (after napoleon).

    An indented block after a paragraph (a formula, a table of names) becomes a literal block, as it reads
    in ``help()``; in prose, ``|`` (absolute values: the project uses no substitutions) and a ``*`` that
    does not pair up into an emphasis (``*data``, ``a * b``) are escaped.
    """
    result, i, n = [], 0, len(lines)
    in_literal_parent = None  # indentation of the paragraph that opened a literal block
    while i < n:
        line = lines[i]
        if line.strip() and in_literal_parent is not None and _indent(line) <= in_literal_parent:
            in_literal_parent = None
        if not line.strip() or in_literal_parent is not None:
            result.append(line)
            i += 1
            continue
        prev = next((line for line in reversed(result) if line.strip()), None)
        opens_block = (
            result
            and not result[-1].strip()
            and prev is not None
            and _indent(line) > _indent(prev)
            and not _RST_CONSTRUCT.match(prev)
        )
        if prev is not None and prev.rstrip().endswith("::") and _indent(line) > _indent(prev):
            in_literal_parent = _indent(prev)  # already a literal block
        elif opens_block:
            result[-1:] = ["", " " * _indent(prev) + "::", ""]
            in_literal_parent = _indent(prev)
        if in_literal_parent is None:
            marker = _MARKUP_START.match(line)  # a field name, a bullet: escape only what follows
            if marker:
                line = marker.group(0) + _escape_prose(line[marker.end() :])
            elif not _VERBATIM.match(line):
                line = _escape_prose(line)
        result.append(line)
        i += 1
    lines[:] = result


# ---- the CLI reference -------------------------------------------------------------------------------
def walk_parsers(parser, prefix):
    """Yield (command line, parser) for the parser and every subcommand below it, depth first."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_parsers(sub, f"{prefix} {name}")


class ZooCli(SphinxDirective):
    """``.. zoo-cli::`` — one section per command, each with the parser's own ``--help`` text."""

    has_content = False

    def run(self):
        from zoo.cli import build_parser

        self.env.note_dependency(str(ROOT / "zoo" / "cli.py"))
        sections = []
        for command, parser in walk_parsers(build_parser(), "zoo"):
            has_sub = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
            if has_sub and command != "zoo":
                continue  # `zoo fit`, `zoo compare`, ...: only lists its models, shown on their own
            section = nodes.section(ids=[nodes.make_id("cli-" + command)])
            section += nodes.title(text=command)
            text = parser.format_help().rstrip()
            block = nodes.literal_block(text, text, language="text")
            section += block
            self.state.document.note_implicit_target(section)
            sections.append(section)
        return sections


# ---- offline intersphinx inventories -----------------------------------------------------------------
# project -> [(name, role, uri relative to the site's root)]; "$" in a uri stands for the name.
PY = "py:class"
OFFLINE_INVENTORIES = {
    "python": [
        ("pathlib.Path", PY, "library/pathlib.html#$"),
        ("argparse.ArgumentParser", PY, "library/argparse.html#$"),
        ("UserWarning", "py:exception", "library/exceptions.html#$"),
        ("ValueError", "py:exception", "library/exceptions.html#$"),
        ("RuntimeError", "py:exception", "library/exceptions.html#$"),
        ("Exception", "py:exception", "library/exceptions.html#$"),
        ("warnings.warn", "py:function", "library/warnings.html#$"),
        ("warnings.simplefilter", "py:function", "library/warnings.html#$"),
        ("dict", PY, "library/stdtypes.html#$"),
        ("list", PY, "library/stdtypes.html#$"),
        ("float", PY, "library/functions.html#$"),
        ("int", PY, "library/functions.html#$"),
        ("str", PY, "library/stdtypes.html#$"),
    ],
    "pyro": [
        ("pyro.sample", "py:function", "primitives.html#$"),
        ("pyro.param", "py:function", "primitives.html#$"),
        ("pyro.plate", PY, "primitives.html#$"),
        ("pyro.infer.svi.SVI", PY, "inference_algos.html#$"),
        ("pyro.infer.SVI", PY, "inference_algos.html#pyro.infer.svi.SVI"),
        ("pyro.infer.Trace_ELBO", PY, "inference_algos.html#pyro.infer.trace_elbo.Trace_ELBO"),
        ("pyro.infer.TraceEnum_ELBO", PY, "inference_algos.html#pyro.infer.traceenum_elbo.TraceEnum_ELBO"),
        (
            "pyro.infer.TraceMeanField_ELBO",
            PY,
            "inference_algos.html#pyro.infer.trace_mean_field_elbo.TraceMeanField_ELBO",
        ),
        ("pyro.infer.TraceGraph_ELBO", PY, "inference_algos.html#pyro.infer.tracegraph_elbo.TraceGraph_ELBO"),
        ("pyro.infer.config_enumerate", "py:function", "inference_algos.html#pyro.infer.enum.config_enumerate"),
        ("pyro.infer.mcmc.NUTS", PY, "mcmc.html#$"),
        ("pyro.infer.mcmc.MCMC", PY, "mcmc.html#pyro.infer.mcmc.api.MCMC"),
        ("pyro.infer.autoguide.AutoNormal", PY, "infer.autoguide.html#$"),
        ("pyro.infer.autoguide.AutoDelta", PY, "infer.autoguide.html#$"),
        ("pyro.infer.autoguide.AutoMultivariateNormal", PY, "infer.autoguide.html#$"),
        ("pyro.infer.autoguide.AutoLowRankMultivariateNormal", PY, "infer.autoguide.html#$"),
        ("pyro.infer.autoguide.AutoIAFNormal", PY, "infer.autoguide.html#$"),
        ("pyro.poutine.scale", "py:function", "poutine.html#pyro.poutine.handlers.scale"),
        ("pyro.distributions.Normal", PY, "distributions.html#normal"),
        ("pyro.distributions.HalfNormal", PY, "distributions.html#halfnormal"),
        ("pyro.distributions.ImproperUniform", PY, "distributions.html#improperuniform"),
    ],
    "torch": [
        ("torch.Tensor", PY, "tensors.html#$"),
        ("torch.nn.Module", PY, "generated/torch.nn.Module.html#$"),
        ("torch.optim.Optimizer", PY, "optim.html#$"),
        ("torch.optim.Adam", PY, "generated/torch.optim.Adam.html#$"),
        ("torch.optim.SGD", PY, "generated/torch.optim.SGD.html#$"),
        ("torch.optim.RMSprop", PY, "generated/torch.optim.RMSprop.html#$"),
        ("torch.device", PY, "tensor_attributes.html#$"),
        ("torch.dtype", PY, "tensor_attributes.html#$"),
        ("torch.Generator", PY, "generated/torch.Generator.html#$"),
        ("torch.load", "py:function", "generated/torch.load.html#$"),
        ("torch.nn.parallel.DistributedDataParallel", PY, "generated/torch.nn.parallel.DistributedDataParallel.html#$"),
    ],
    "arviz": [
        ("arviz.InferenceData", PY, "api/generated/arviz.InferenceData.html#$"),
        ("arviz.psislw", "py:function", "api/generated/arviz.psislw.html#$"),
        ("arviz.summary", "py:function", "api/generated/arviz.summary.html#$"),
        ("arviz.ess", "py:function", "api/generated/arviz.ess.html#$"),
        ("arviz.rhat", "py:function", "api/generated/arviz.rhat.html#$"),
        ("arviz.plot_trace", "py:function", "api/generated/arviz.plot_trace.html#$"),
        ("arviz.plot_forest", "py:function", "api/generated/arviz.plot_forest.html#$"),
    ],
}


def write_inventories(app, config):
    """Write an objects.inv (format 2) per project where conf.py's intersphinx_mapping expects it."""
    for name, (_, location) in config.intersphinx_mapping.items():
        entries = OFFLINE_INVENTORIES.get(name)
        if entries is None or "://" in str(location):
            continue
        lines = "".join(f"{obj} {role} 1 {uri} -\n" for obj, role, uri in entries)
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"# Sphinx inventory version 2\n# Project: {name}\n# Version: stable\n"
            "# The remainder of this file is compressed using zlib.\n"
        )
        data = header.encode() + zlib.compress(lines.encode())
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)


def setup(app):
    app.connect("config-inited", write_inventories, priority=100)  # before intersphinx reads them
    app.connect("builder-inited", sync_notebooks, priority=100)  # before the sources are listed
    app.connect("env-before-read-docs", read_gallery_last)
    app.connect("env-get-outdated", outdated_without_thumbnail)
    app.connect("doctree-read", write_thumbnail)
    app.add_directive("zoo-cli", ZooCli)
    app.connect("autodoc-process-docstring", plain_text_docstrings, priority=600)  # after napoleon
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
