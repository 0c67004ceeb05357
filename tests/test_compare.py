"""compare(): small errors for good fits, large for a poor one; PSIS k-hat; the comparison figures."""

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from test_laplace import (
    normal_mean_data,
    normal_mean_model,
    normal_mean_posterior,
    regression_data,
    regression_model,
    regression_posterior,
)

from inference.diagnostics import compare, summarize
from inference.errors import InvalidInputError
from inference.laplace import laplace
from inference.plots import plot_losses, plot_posteriors
from inference.result import Fit

N = 1000  # draws per fit in compare(); Monte-Carlo error of a mean in sd units: 1/sqrt(N)


def gaussian_fit(mean, sd, site="mu", method="exact", target=None):
    """A hand-made Fit drawing `site` ~ N(mean, sd²) (independent elements); with `target` = (mean, sd)
    of the true posterior it also has importance log weights log N(z; target) - log N(z; mean, sd)."""
    q = torch.distributions.Normal(torch.as_tensor(mean, dtype=torch.float64), sd)

    def draw(n, seed=0):
        g = torch.Generator().manual_seed(seed)
        return {site: q.loc + q.scale * torch.randn(n, *q.loc.shape, generator=g, dtype=torch.float64)}

    def importance(n, seed=0):
        z = draw(n, seed)
        p = torch.distributions.Normal(*target)
        return z, (p.log_prob(z[site]) - q.log_prob(z[site])).reshape(n, -1).sum(-1).numpy()  # joint

    return Fit(method=method, losses=[], seconds=0.0, draw=draw, importance=importance if target is not None else None)


@pytest.fixture(scope="module")
def normal_case():
    x = normal_mean_data()
    mean, sd = normal_mean_posterior(x)
    return x, mean, sd


def test_good_fits_small_error_poor_fit_large(normal_case):
    x, mean, sd = normal_case
    fits = {
        "exact": gaussian_fit(mean, sd),
        "laplace": laplace(normal_mean_model, x),
        # the right curvature at the wrong point: its mean is 5 posterior sds off
        "poor": laplace(normal_mean_model, x, init={"mu": mean + 5 * sd}, optimize=False),
    }
    table = compare(fits, reference="exact", num_samples=N)
    assert list(table.columns) == ["method", "variable", "mean", "sd", "error", "sd_ratio", "khat", "seconds"]
    assert list(table.method) == ["exact", "laplace", "poor"] and set(table.variable) == {"mu"}
    rows = table.set_index("method")
    # independent draws on both sides: the error has sd sqrt(2/N), the sd ratio about sqrt(1/N)
    assert abs(rows.loc["laplace", "error"]) <= 4 * math.sqrt(2 / N)
    assert abs(rows.loc["laplace", "sd_ratio"] - 1) <= 4 * math.sqrt(1 / N)
    assert abs(rows.loc["poor", "error"] - 5) <= 4 * math.sqrt(2 / N)  # the check can fail
    assert rows.loc["exact", "error"] == 0 and rows.loc["exact", "sd_ratio"] == 1
    assert np.isnan(rows.loc["exact", "khat"])  # no log weights
    assert rows.loc["laplace", "seconds"] == fits["laplace"].seconds

    summary = summarize(table)
    assert list(summary.index) == ["exact", "laplace", "poor"]
    assert summary.loc["poor", "max_abs_error"] > 3 > summary.loc["laplace", "max_abs_error"]


def test_khat_small_for_exact_large_for_misscaled(normal_case):
    x, mean, sd = normal_case
    laplace_fit = laplace(normal_mean_model, x)  # q is the posterior: equal weights
    assert compare({"laplace": laplace_fit}, num_samples=N).khat[0] < 0.5
    # target N(0, I) in 10 dimensions. A proposal 1.2 times wider has bounded weights (k-hat < 0.5).
    # One r = 0.1 times too narrow has weights p/q ~ exp((1 - r²) χ²_10 / 2): a Pareto tail with
    # k = 1 - r² = 0.99 (Yao et al. 2018: above 0.7, importance sampling cannot repair q).
    zero, one = torch.zeros(10, dtype=torch.float64), torch.ones(10, dtype=torch.float64)
    fits = {
        "slightly_wide": gaussian_fit(zero, 1.2 * one, method="svi", target=(zero, one)),
        "narrow": gaussian_fit(zero, 0.1 * one, method="svi", target=(zero, one)),
    }
    table = compare(fits, reference="slightly_wide", num_samples=N)
    khat = table.groupby("method").khat.first()
    assert khat["slightly_wide"] < 0.5 and khat["narrow"] > 0.7
    assert np.allclose(table[table.method == "narrow"].sd_ratio, 0.1 / 1.2, rtol=4 / math.sqrt(N))


def test_vector_sites_get_one_row_per_element():
    X, y = regression_data()
    mean, covariance = regression_posterior(X, y)
    sd = covariance.diag().sqrt()
    fits = {"exact": gaussian_fit(mean, sd, site="w"), "laplace": laplace(regression_model, X, y)}
    table = compare(fits, reference="exact", num_samples=N)
    assert list(table.variable) == ["w[0]", "w[1]", "w[2]"] * 2
    assert np.all(np.abs(table.error) <= 4 * math.sqrt(2 / N))
    assert np.allclose(table[table.method == "exact"]["mean"], mean.numpy(), atol=4 * sd.max() / math.sqrt(N))


def test_no_reference_and_bad_arguments(normal_case):
    x, mean, sd = normal_case
    fits = {"a": gaussian_fit(mean, sd), "b": gaussian_fit(mean + sd, sd)}
    table = compare(fits, num_samples=100)  # no NUTS fit: no reference
    assert table.error.isna().all() and table.attrs["reference"] is None
    with pytest.raises(InvalidInputError, match="reference"):
        compare(fits, reference="nuts")
    with pytest.raises(InvalidInputError, match="not sites"):
        compare(fits, var_names=["sigma"])
    with pytest.raises(InvalidInputError, match="Fit"):
        compare({"a": 3.0})
    with pytest.raises(InvalidInputError, match="non-empty"):
        compare({})


# --- figures ---------------------------------------------------------------------------------------


def test_plot_losses(normal_case, tmp_path):
    x, mean, sd = normal_case
    long = Fit(method="svi", losses=100 + 1e4 * np.exp(-np.arange(300) / 20), seconds=1.0, draw=lambda n, s: {})
    fits = {
        "svi": long,
        "laplace": laplace(normal_mean_model, x),
        "at_a_point": laplace(normal_mean_model, x, init={"mu": mean}, optimize=False),
        "exact": gaussian_fit(mean, sd),
    }  # no losses: skipped
    fig = plot_losses(fits)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["svi", "laplace", "at_a_point"]
    assert lines[2].get_marker() == "o" and len(lines[2].get_xdata()) == 1  # a single point is a marker
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"  # 300 steps, 2 orders of magnitude
    fig.savefig(tmp_path / "losses.png")
    assert (tmp_path / "losses.png").stat().st_size > 0


def test_plot_posteriors(tmp_path):
    X, y = regression_data()
    mean, covariance = regression_posterior(X, y)
    fits = {"exact": gaussian_fit(mean, covariance.diag().sqrt(), site="w"), "laplace": laplace(regression_model, X, y)}
    fig = plot_posteriors(fits, num_samples=300)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 + 1  # three elements of w and the forest
    for ax, label in zip(fig.axes[:3], ["w[0]", "w[1]", "w[2]"]):
        assert ax.get_title() == label and len(ax.get_lines()) == len(fits)
    forest = fig.axes[3]
    assert [t.get_text() for t in forest.get_yticklabels()] == ["w[0]", "w[1]", "w[2]"]
    assert len(forest.get_lines()) == len(fits)  # one row of means per method
    assert len(plot_posteriors(fits, num_samples=300, forest=False, max_elements=2).axes) == 2
    fig.savefig(tmp_path / "posteriors.png")
    assert (tmp_path / "posteriors.png").stat().st_size > 0
