"""Figures that compare inference methods: loss traces, and overlaid marginal posteriors with a forest panel.

Both functions build a ``matplotlib.figure.Figure`` without pyplot's global state (safe under Agg, in
tests and scripts); save it with ``fig.savefig("name.png")``, or let a notebook display it.
"""

import io
import math

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde

from .diagnostics import check_fits, check_var_names, flat_elements, posterior_draws
from .errors import InvalidInputError, check_positive
from .files import atomic_write_bytes


def plot_losses(fits, *, xscale=None, yscale=None, ax=None, figsize=(6.4, 4.0), title="Loss per step"):
    """Loss traces of several fits on one axes; fits without losses (NUTS) are skipped.

    Args:
        fits: ``{method name: Fit}``.
        xscale, yscale: matplotlib scales; None chooses: a log step axis once a trace has 100 steps or
            more (the early steps, where most of the descent happens, stay visible), and a log (all
            positive) or symlog loss axis when the losses span more than two orders of magnitude.
        ax: draw into this axes instead of a new figure.

    Returns:
        the Figure. A single-point trace (e.g. a Laplace fit at a given point) is drawn as a marker.
    """
    fits = check_fits(fits)
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot()
    fig = ax.figure
    traces = {name: fit.losses for name, fit in fits.items() if fit.losses.size}
    for i, (name, fit) in enumerate(fits.items()):
        losses = fit.losses
        if not losses.size:
            continue  # colours follow the position in `fits`, so a method keeps its colour across figures
        steps = np.arange(1, losses.size + 1)
        style = {"marker": "o", "linestyle": "none"} if losses.size == 1 else {"linewidth": 1.2}
        ax.plot(steps, losses, color=f"C{i}", label=name, **style)
    if not traces:
        ax.text(0.5, 0.5, "no fit has a loss trace", ha="center", va="center", transform=ax.transAxes)
    else:
        values = np.concatenate([v[np.isfinite(v)] for v in traces.values()])
        longest = max(v.size for v in traces.values())
        ax.set_xscale(xscale or ("log" if longest >= 100 else "linear"))
        scale = yscale or _auto_yscale(values)
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=max(float(np.percentile(np.abs(values), 10)), 1e-12))
        else:
            ax.set_yscale(scale)
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    return fig


def _auto_yscale(values):
    if values.size == 0:
        return "linear"
    magnitude = np.abs(values)
    small = magnitude[magnitude > 0].min() if (magnitude > 0).any() else 1.0
    if magnitude.max() / small <= 100:
        return "linear"
    return "log" if (values > 0).all() else "symlog"


def plot_posteriors(
    fits, var_names=None, *, num_samples=1000, seed=0, max_elements=16, forest=True, interval=0.94, figsize=None
):
    """Overlaid marginal densities of several fits, one panel per variable element, and a forest panel.

    Args:
        fits: ``{method name: Fit}``; var_names: sites to show (default: those every fit has).
        num_samples, seed: draws taken from each non-MCMC fit (MCMC fits use all their draws).
        max_elements: show at most this many scalar elements (the first ones, in site order).
        forest: add a panel with each method's mean (dot) and central ``interval`` (bar) per element,
            each element standardised by its pooled mean and sd so that all share one axis.

    Returns:
        the Figure: ``len(elements)`` density axes, each with one line per fit (a vertical line where a
        fit's draws are all equal, e.g. a point estimate), plus the forest axes last.
    """
    fits = check_fits(fits)
    check_positive("max_elements", max_elements, integer=True)
    if not 0 < interval < 1:
        raise InvalidInputError(f"interval must lie in (0, 1), got {interval!r}")
    draws = {name: posterior_draws(fit, num_samples, seed) for name, fit in fits.items()}
    var_names = check_var_names(draws, var_names)
    per_fit = {name: dict(flat_elements(d, var_names)) for name, d in draws.items()}
    labels = list(next(iter(per_fit.values())))
    shown = labels[:max_elements]

    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    forest_height = 0.35 * len(shown) * max(1.0, len(fits) / 3) + 0.8 if forest else 0.0
    if figsize is None:
        figsize = (3.2 * ncols, 2.4 * nrows + forest_height)
    fig = Figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(
        nrows + bool(forest), ncols, height_ratios=[2.4] * nrows + ([forest_height] if forest else [])
    )
    for j, label in enumerate(shown):
        ax = fig.add_subplot(grid[j // ncols, j % ncols])
        _densities(ax, {name: per_fit[name][label] for name in fits})
        ax.set_title(label, fontsize=10)
        ax.set_yticks([])
        if j == 0:
            ax.legend(fontsize=8)
    if forest:
        _forest(fig.add_subplot(grid[nrows, :]), per_fit, shown, interval)
    if len(shown) < len(labels):
        fig.suptitle(f"first {len(shown)} of {len(labels)} elements", fontsize=10)
    return fig


def _densities(ax, samples):
    """One kernel density estimate per method on a shared grid."""
    finite = [x[np.isfinite(x)] for x in samples.values()]
    lo = min(x.min() for x in finite if x.size)
    hi = max(x.max() for x in finite if x.size)
    pad = 0.1 * (hi - lo) if hi > lo else 1.0
    grid = np.linspace(lo - pad, hi + pad, 200)
    for i, (name, x) in enumerate(samples.items()):
        x = x[np.isfinite(x)]
        if x.size < 2 or np.ptp(x) == 0:  # a point estimate: no density to estimate
            ax.axvline(x[0] if x.size else np.nan, color=f"C{i}", label=name)
        else:
            ax.plot(grid, gaussian_kde(x)(grid), color=f"C{i}", label=name)


def _forest(ax, per_fit, labels, interval):
    """Mean and central interval of each element, the methods side by side at each row.

    Elements of different scales share one axis, so each row is standardised by the mean and sd of all
    methods' draws of that element pooled: the panel shows how the methods differ, element by element.
    """
    n = len(per_fit)
    offsets = (np.arange(n) - (n - 1) / 2) * (0.6 / max(n, 1))
    tail = (1 - interval) / 2
    pooled = {label: np.concatenate([elements[label] for elements in per_fit.values()]) for label in labels}
    center = {label: v.mean() for label, v in pooled.items()}
    scale = {label: (v.std() if v.std() > 0 else 1.0) for label, v in pooled.items()}
    for i, (name, elements) in enumerate(per_fit.items()):
        y = np.arange(len(labels)) + offsets[i]
        x = [(elements[label] - center[label]) / scale[label] for label in labels]
        lo, hi = np.array([np.quantile(v, [tail, 1 - tail]) for v in x]).T
        ax.hlines(y, lo, hi, color=f"C{i}", linewidth=2)
        ax.plot([v.mean() for v in x], y, "o", color=f"C{i}", markersize=4, label=name)
    ax.set_yticks(np.arange(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_title(f"mean and {interval:.0%} interval, standardised per element", fontsize=10)
    ax.set_xlabel("(value − pooled mean) / pooled sd")
    ax.grid(axis="x", alpha=0.3)


def save_figure(fig, path, dpi=110):
    """Write ``fig`` to ``path`` as PNG atomically and release it (from pyplot too, if it was made there)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
