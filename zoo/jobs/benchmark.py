"""`zoo benchmark`: every inference method on every reference posterior of ``zoo.posteriordb``.

Each (posterior, method) cell fits ``posterior.model(*posterior.data)`` with the method, takes 1000
draws from the fit, and scores every scalar element of every latent site against the posterior's
reference mean and sd (closed form where ``posterior.exact``, a long NUTS run otherwise):

    error    = (mean - ref_mean) / ref_sd      how far off the mean is, in reference sds
    sd_ratio = sd / ref_sd                     < 1: over-confident, > 1: under-confident

A cell is *accurate* when max |error| <= 0.2 and every sd ratio lies in [0.75, 1.3] (for NUTS, which
should match the reference up to Monte Carlo error, max |error| <= 0.15). Its *verdict* is "ok" when the
fit reports ``diagnostics["converged"]`` and raised no ``inference.ConvergenceWarning``, else "warned".
The acceptance check is the column ``trusted_or_warned`` (accurate, or warned): a fit may be wrong, but
never silently.

Methods (``METHODS``): nuts, laplace, laplace+psis (the Laplace fit resampled by Pareto-smoothed
importance weights), pathfinder (``inference.pathfinder``, four paths), svi-meanfield, svi-lowrank,
svi-fullrank, svi-fullrank+psis and svi-flow (SVI with ``inference.guide(model, family)`` and
``inference.svi``'s default settings). ``DEFAULT_METHODS`` is all
of them but svi-flow: a normalising-flow guide is the slowest fit by far on a CPU, so it runs only when
asked for. A "+psis" row reweights the very fit of its base row (laplace, svi-fullrank), not a refit; its
seconds are the base fit's plus the reweighting's, and its verdict is the reweighted fit's own (k-hat of
the weights): the base fit's warnings belong to the base row.

Files in ``out``: results.csv (one row per cell, rewritten atomically after every cell, so an interrupted
run keeps every cell it finished and ``resume=True`` goes on from there), and at the end heatmap.png
(methods x posteriors, colour = max |error|) and table.md (the same as a markdown table).

The file runs past 400 lines because the method table, the scoring, the resumable results file and its
table and heatmap are one job, read top to bottom; about a third of it is docstrings.
"""

import functools
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import inference
from inference.common import hide_progress
from inference.diagnostics import flat_elements, posterior_draws
from inference.errors import ConvergenceWarning, InvalidInputError
from inference.files import atomic_write_text

COLUMNS = [
    "posterior",
    "method",
    "seed",
    "status",
    "verdict",
    "accurate",
    "trusted_or_warned",
    "max_abs_error",
    "min_sd_ratio",
    "max_sd_ratio",
    "khat",
    "seconds",
    "warnings",
    "error",
]
NUM_DRAWS = 1000
MAX_ERROR = 0.2  # accuracy bounds of an approximation, in reference sds
MAX_ERROR_EXACT = {"nuts": 0.15}  # methods that should match the reference up to Monte Carlo error
SD_RATIO_RANGE = (0.75, 1.3)
FILES = ["results.csv", "heatmap.png", "table.md"]


# ---- the methods: name -> function(posterior, seed) -> Fit ----------------------------------------
def reuse_last(method):
    """Wrap ``method`` so that a second call with the same posterior and seed returns the first call's fit
    and re-issues the warnings it raised, instead of fitting again.

    This is how a "+psis" row reweights the very fit of its base row; the warnings are re-issued so that
    the base row hears them whichever of the two rows ran first. Only the last fit is kept (cells run
    posterior by posterior).
    """
    last = {}

    @functools.wraps(method)
    def reused(posterior, seed):
        if last.get("posterior") is not posterior or last.get("seed") != seed:
            last.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit = method(posterior, seed)
            last.update(posterior=posterior, seed=seed, fit=fit, warnings=caught)
        for w in last["warnings"]:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return last["fit"]

    return reused


def fit_nuts(posterior, seed):
    """NUTS: 1000 draws after 500 warm-up steps; ``posterior.nuts`` adds or overrides settings."""
    settings = {"num_samples": 1000, "warmup_steps": 500, "progress": False, **posterior.nuts}
    return inference.nuts(posterior.model, *posterior.data, seed=seed, **settings)


def fit_laplace(posterior, seed):
    """Laplace: a Gaussian at the mode with the exact Hessian."""
    return inference.laplace(posterior.model, *posterior.data, seed=seed)


def fit_pathfinder(posterior, seed):
    """Pathfinder: four L-BFGS paths, their best normals importance-resampled by PSIS."""
    return inference.pathfinder(posterior.model, *posterior.data, seed=seed, progress=False)


def svi_method(family):
    """A method: SVI with the ``family`` autoguide and ``inference.svi``'s default settings."""

    def fit_svi(posterior, seed):
        guide = inference.guide(posterior.model, family)
        return inference.svi(posterior.model, guide, *posterior.data, seed=seed, progress=False)

    fit_svi.__doc__ = f"SVI with the {family} autoguide, default settings."
    return fit_svi


def reweighted_method(base):
    """A method: the fit of ``METHODS[base]`` resampled by its Pareto-smoothed importance weights."""

    def fit_reweighted(posterior, seed):
        with warnings.catch_warnings():
            # the base row reports the base fit's verdict; this row's verdict is the reweighted fit's own
            # (PSIS k-hat), so that a base fit that reweighting rescues is not counted as warned here
            warnings.simplefilter("ignore", ConvergenceWarning)
            base_fit = METHODS[base](posterior, seed)
        start = time.perf_counter()
        fit = base_fit.reweighted(seed=seed)
        fit.seconds = base_fit.seconds + (time.perf_counter() - start)  # the row's cost is both steps
        return fit

    fit_reweighted.__doc__ = f"The {base} fit, reweighted by PSIS."
    return fit_reweighted


METHODS = {
    "nuts": fit_nuts,
    "laplace": reuse_last(fit_laplace),
    "laplace+psis": reweighted_method("laplace"),
    "pathfinder": fit_pathfinder,
    "svi-meanfield": svi_method("meanfield"),
    "svi-lowrank": svi_method("lowrank"),
    "svi-fullrank": reuse_last(svi_method("fullrank")),
    "svi-fullrank+psis": reweighted_method("svi-fullrank"),
    "svi-flow": svi_method("flow"),
}
DEFAULT_METHODS = [name for name in METHODS if name != "svi-flow"]


# ---- the job ---------------------------------------------------------------------------------------
def run_benchmark(posteriors=None, methods=None, out=None, seed=0, progress=None, resume=False):
    """Fit every posterior with every method and score each fit against the posterior's reference.

    Args:
        posteriors: names in ``zoo.posteriordb`` or posterior objects (``name``, ``model``, ``data``,
            ``reference``, ``nuts``); default: every posterior of ``zoo.posteriordb``.
        methods: names in ``METHODS``; default ``DEFAULT_METHODS`` (all but svi-flow).
        out: folder for results.csv, heatmap.png and table.md; None writes nothing.
        seed: seed of every fit and of the draws scored.
        progress: show a progress bar over the cells (default: on a terminal).
        resume: keep the cells that ``out``/results.csv holds with status "ok" and the same seed, and run
            only the others; its rows for posteriors or methods not asked for now are kept too.

    Returns:
        pandas.DataFrame with one row per cell and the columns ``COLUMNS``; a failed cell has status
        "failed", its ``error``, and NaN/NA where a fit was needed.
    """
    posteriors = load_posteriors(posteriors)
    methods = check_methods(DEFAULT_METHODS if methods is None else methods)
    if resume and out is None:
        raise InvalidInputError("resume=True needs out, the folder of the run to resume")
    out = None if out is None else Path(out)
    grid = [(p.name, m) for p in posteriors for m in methods]
    previous = read_results(out / "results.csv") if resume else {}
    done = {key: row for key, row in previous.items() if key in grid and row["status"] == "ok" and row["seed"] == seed}
    others = [row for key, row in previous.items() if key not in grid]  # not ours to drop
    rows = dict(done)
    todo = [(p, m) for p in posteriors for m in methods if (p.name, m) not in done]

    bar = tqdm(todo, desc="benchmark", unit="cell", dynamic_ncols=True, disable=hide_progress(progress))
    try:
        for posterior, method in bar:
            bar.set_postfix_str(f"{posterior.name} / {method}")
            rows[(posterior.name, method)] = run_cell(posterior, method, seed)
            if out is not None:  # after every cell: an interrupted run keeps what it finished
                atomic_write_text(out / "results.csv", _table(rows, grid, others).to_csv(index=False))
    finally:
        bar.close()

    table = _table(rows, grid, others)
    if out is not None:
        from inference.plots import save_figure

        atomic_write_text(out / "results.csv", table.to_csv(index=False))
        save_figure(plot_heatmap(table), out / "heatmap.png")
        atomic_write_text(out / "table.md", markdown_table(table))
    return table


def run_cell(posterior, method, seed=0):
    """Fit one posterior with one method and score it; returns a row (dict of ``COLUMNS``).

    Args:
        posterior: a posterior object (``name``, ``model``, ``data``, ``reference``, ``nuts``).
        method: a name in ``METHODS``.
        seed: seed of the fit and of the draws scored.

    Any exception of the fit or the scoring is recorded (status "failed", ``error``), so that a run goes
    on to its next cell; KeyboardInterrupt is not an Exception and stops the run.
    """
    row = dict.fromkeys(COLUMNS, np.nan)
    row.update(
        posterior=posterior.name,
        method=method,
        seed=seed,
        status="ok",
        verdict=pd.NA,
        accurate=pd.NA,
        trusted_or_warned=pd.NA,
        warnings="",
        error="",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # record repeats too: each cell must hear its own warnings
        try:
            fit = METHODS[method](posterior, seed)
            row["seconds"] = float(fit.seconds)
            row["khat"] = float(fit.diagnostics.get("khat", np.nan))
            row.update(score(fit, posterior.reference, seed=seed))
        except Exception as e:
            row.update(status="failed", error=_shorten(f"{type(e).__name__}: {e}", 500))
    row["warnings"] = _shorten(
        " | ".join(
            dict.fromkeys(
                str(w.message) for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))
            )
        ),
        400,
    )
    if row["status"] == "ok":
        warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        converged = bool(fit.diagnostics.get("converged", False))
        row["verdict"] = "ok" if converged and not warned else "warned"
        row["accurate"] = is_accurate(method, row["max_abs_error"], row["min_sd_ratio"], row["max_sd_ratio"])
        row["trusted_or_warned"] = row["accurate"] or row["verdict"] == "warned"
    return row


def score(fit, reference, num_samples=NUM_DRAWS, seed=0):
    """Compare a fit with a reference posterior, element by element.

    Args:
        fit: an ``inference.Fit``; all draws of an MCMC fit are used, ``num_samples`` fresh ones otherwise.
        reference: ``{element label: (mean, sd)}``, labels as ``inference.diagnostics.flat_elements``
            gives them (``"beta[0]"``, ``"sigma"``).
        num_samples, seed: the draws taken from a non-MCMC fit.

    Returns:
        dict: "max_abs_error" (max over elements of |mean - ref_mean| / ref_sd), "min_sd_ratio" and
        "max_sd_ratio" (sd / ref_sd); NaN if a draw is not finite.
    """
    draws = posterior_draws(fit, num_samples, seed)
    elements = dict(flat_elements(draws, list(draws)))
    missing = [label for label in reference if label not in elements]
    if missing:
        raise InvalidInputError(
            f"the fit has no draws of the reference elements {missing}; its elements: {list(elements)}"
        )
    errors, ratios = [], []
    for label, (ref_mean, ref_sd) in reference.items():
        x = np.asarray(elements[label], dtype=float)
        errors.append((x.mean() - ref_mean) / ref_sd)
        ratios.append(x.std(ddof=1) / ref_sd)
    return {
        "max_abs_error": float(np.max(np.abs(errors))),
        "min_sd_ratio": float(np.min(ratios)),
        "max_sd_ratio": float(np.max(ratios)),
    }


def is_accurate(method, max_abs_error, min_sd_ratio, max_sd_ratio):
    """True when the fit's means are within the method's tolerance and its sds within ``SD_RATIO_RANGE``
    of the reference (NaN scores are not accurate)."""
    low, high = SD_RATIO_RANGE
    return bool(
        max_abs_error <= MAX_ERROR_EXACT.get(method, MAX_ERROR) and low <= min_sd_ratio and max_sd_ratio <= high
    )


def load_posteriors(posteriors=None):
    """Posterior objects for names in ``zoo.posteriordb`` (objects pass through); None: all of them."""
    if posteriors is not None:
        posteriors = [posteriors] if isinstance(posteriors, str) else list(posteriors)
    if posteriors is None or any(isinstance(p, str) for p in posteriors):
        from zoo import posteriordb  # only for names: a caller's own posterior objects need no database

        posteriors = posteriordb.names() if posteriors is None else posteriors
        check_posteriors([p for p in posteriors if isinstance(p, str)])
        posteriors = [posteriordb.load(p) if isinstance(p, str) else p for p in posteriors]
    if not posteriors:
        raise InvalidInputError("no posteriors to benchmark")
    return posteriors


def check_posteriors(names):
    """Return ``names`` as a list if every one is a posterior of ``zoo.posteriordb``, else raise naming them."""
    from zoo import posteriordb

    return check_names([names] if isinstance(names, str) else list(names), posteriordb.names(), "posterior")


def check_methods(methods):
    """Return ``methods`` as a list if every name is in ``METHODS``, else raise naming the valid ones."""
    return check_names([methods] if isinstance(methods, str) else list(methods), METHODS, "method")


def check_names(names, valid, what):
    """Return ``names`` if it is non-empty and every name is in ``valid``, else raise listing them."""
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise InvalidInputError(f"unknown {what}(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    if not names:
        raise InvalidInputError(f"no {what}s given; valid: {', '.join(valid)}")
    return list(names)


def read_results(path):
    """``{(posterior, method): row}`` of a results.csv written by :func:`run_benchmark`; {} if absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if not {"posterior", "method", "status", "seed"} <= set(table.columns):
        raise InvalidInputError(f"{str(path)!r} is not a results.csv of zoo benchmark (columns {list(table.columns)})")
    table = table.reindex(columns=COLUMNS)
    table[["warnings", "error"]] = table[["warnings", "error"]].astype(object).fillna("")
    return {(row["posterior"], row["method"]): row for row in table.to_dict("records")}


def _table(rows, grid, others):
    """The results in grid order (posterior by posterior), then the kept rows of other cells."""
    return pd.DataFrame([rows[key] for key in grid if key in rows] + others, columns=COLUMNS)


def _shorten(text, width):
    return textwrap.shorten(text, width, placeholder=" ...") if text else ""


# ---- reports ---------------------------------------------------------------------------------------
WARNED, ACCURATE, INACCURATE = "⚠", "✓", "✗"
LEGEND = (
    f"Cell: max |error| of the posterior means, in reference sds / the sd ratio furthest from 1 "
    f"(sd / reference sd). {ACCURATE} accurate (max |error| <= {MAX_ERROR}, NUTS <= "
    f"{MAX_ERROR_EXACT['nuts']}, and every sd ratio in [{SD_RATIO_RANGE[0]}, {SD_RATIO_RANGE[1]}]), "
    f"{INACCURATE} not accurate, {WARNED} warned (a ConvergenceWarning, or the fit did not report "
    f"convergence); failed: the fit raised an error."
)


def _ok(table):
    return table["status"].eq("ok")


def _is_true(value):
    """A flag of a row that may be NA (failed cells) or read back from CSV."""
    return bool(pd.notna(value) and value)


def _worst_sd_ratio(row):
    """The sd ratio furthest from 1 on a log scale (a point estimate's 0 is the furthest of all)."""
    low, high = row["min_sd_ratio"], row["max_sd_ratio"]
    with np.errstate(divide="ignore"):
        return low if abs(np.log(low)) >= abs(np.log(high)) else high


def markdown_table(table):
    """A markdown table: rows posteriors, columns methods, cells ``max|error| / sd ratio mark``, and the
    legend below it."""
    posteriors = list(dict.fromkeys(table["posterior"]))
    methods = list(dict.fromkeys(table["method"]))
    cells = {(row["posterior"], row["method"]): row for row in table.to_dict("records")}
    lines = ["| posterior | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for name in posteriors:
        texts = []
        for method in methods:
            row = cells.get((name, method))
            if row is None:
                texts.append("")
            elif row["status"] != "ok":
                texts.append("failed")
            else:
                mark = ACCURATE if _is_true(row["accurate"]) else INACCURATE
                warned = f" {WARNED}" if row["verdict"] == "warned" else ""
                texts.append(f"{row['max_abs_error']:.2f} / {_worst_sd_ratio(row):.2f} {mark}{warned}")
        lines.append(f"| {name} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + f"\n\n{LEGEND}\n"


def plot_heatmap(table):
    """Figure: methods (rows) x posteriors (columns), colour = max |error| on a log scale, each cell
    annotated; warned cells hatched with a ⚠, failed cells grey."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    posteriors = list(dict.fromkeys(table["posterior"]))
    methods = list(dict.fromkeys(table["method"]))
    errors = np.full((len(methods), len(posteriors)), np.nan)
    for row in table[_ok(table)].to_dict("records"):
        errors[methods.index(row["method"]), posteriors.index(row["posterior"])] = row["max_abs_error"]
    # green below the accuracy threshold, red above: on this log scale 0.2 sits in the middle
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="white")  # white: cells not run, NaN scores
    norm = LogNorm(vmin=0.01, vmax=4.0, clip=True)

    fig, ax = plt.subplots(figsize=(max(6.5, 2.5 + 1.1 * len(posteriors)), max(3.0, 1.5 + 0.55 * len(methods))))
    image = ax.imshow(np.ma.masked_invalid(np.maximum(errors, norm.vmin)), cmap=cmap, norm=norm, aspect="auto")
    colorbar = fig.colorbar(image, ax=ax, label="max |error| (reference sds)")
    colorbar.ax.axhline(MAX_ERROR, color="black", linewidth=1.5)  # the accuracy threshold
    for row in table.to_dict("records"):
        i, j = methods.index(row["method"]), posteriors.index(row["posterior"])
        if row["status"] != "ok":
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.7", edgecolor="white"))
            ax.text(j, i, "failed", ha="center", va="center", fontsize=8, color="0.2")
            continue
        value = row["max_abs_error"]
        text = f"{value:.2g}"
        if row["verdict"] == "warned":
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.35", linewidth=0))
            text = f"{WARNED} {text}"
        if row["verdict"] == "warned":  # on a white box, readable over the hatching
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", alpha=0.8, linewidth=0),
            )
            continue
        dark = np.isfinite(value) and np.dot(cmap(norm(max(value, norm.vmin)))[:3], [0.30, 0.59, 0.11]) < 0.45
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(posteriors)), posteriors, rotation=40, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    ax.set_title(
        f"max |error| of the posterior means, in reference sds\nhatched {WARNED}: warned,  "
        f"grey: failed,  line on the colour bar: the accuracy threshold {MAX_ERROR}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def summarize(table):
    """Text: per method the cells that were accurate, warned, failed, wrong without a warning, the
    median max |error| and seconds; then every wrong fit that was not warned and every failure."""
    ok = _ok(table)
    silent = ok & ~table["trusted_or_warned"].map(_is_true)
    per_method = pd.DataFrame(
        {
            "cells": table.groupby("method", sort=False).size(),
            "accurate": table["accurate"].map(_is_true).groupby(table["method"], sort=False).sum(),
            "warned": table["verdict"].eq("warned").groupby(table["method"], sort=False).sum(),
            "failed": (~ok).groupby(table["method"], sort=False).sum(),
            "wrong_unwarned": silent.groupby(table["method"], sort=False).sum(),
            "median_error": table["max_abs_error"].where(ok).groupby(table["method"], sort=False).median(),
            "median_seconds": table["seconds"].where(ok).groupby(table["method"], sort=False).median(),
        }
    )
    with pd.option_context("display.width", 160, "display.precision", 3):
        lines = [
            "per method (error: max |mean - reference mean| / reference sd over a posterior's elements)",
            per_method.to_string(),
        ]
    if silent.any():
        lines.append(f"\n{int(silent.sum())} wrong fit(s) without a warning:")
        lines += [
            f"  {r['posterior']} / {r['method']}: max |error| {r['max_abs_error']:.3g}, sd ratio "
            f"{r['min_sd_ratio']:.3g}-{r['max_sd_ratio']:.3g}, khat {r['khat']:.3g}"
            for r in table[silent].to_dict("records")
        ]
    else:
        lines.append(f"\nevery wrong fit was warned ({int(ok.sum())} fits)")
    if not ok.all():
        lines.append(f"{int((~ok).sum())} failed cell(s):")
        lines += [f"  {r['posterior']} / {r['method']}: {r['error']}" for r in table[~ok].to_dict("records")]
    return "\n".join(lines)


def main(args):
    """`zoo benchmark` with parsed command-line ``args``: run, print the summary, name the files."""
    posteriors = load_posteriors(args.posteriors)
    methods = DEFAULT_METHODS if args.methods is None else args.methods
    print(
        f"zoo benchmark: {len(posteriors)} posteriors x {len(methods)} methods ({', '.join(methods)})"
        f"{', resuming' if args.resume else ''}",
        flush=True,
    )
    table = run_benchmark(posteriors, methods, out=args.out, seed=args.seed, progress=args.progress, resume=args.resume)
    print(summarize(table))
    print(f"wrote {', '.join(FILES)} to {args.out}/")
