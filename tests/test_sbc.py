"""Simulation-based calibration (inference.sbc): the uniformity tests against their definitions, the verdict
both ways on methods whose calibration is known exactly, reproducibility across process counts, bad input.

The model is Bayesian linear regression with two nearly collinear covariates, w ~ N(0, I), y ~ N(X w, σ²):
its posterior is exactly N(m, Σ) with Σ⁻¹ = I + XᵀX / σ², m = Σ Xᵀy / σ², and correlation -0.92, so a
mean-field Gaussian (the exact optimum: mean m, precisions diag(Σ⁻¹); Bishop 2006, §10.1.2) is too narrow
by a factor sqrt(1 - 0.92²) = 0.39 in each coordinate. Methods below return exact (or deliberately wrong)
Gaussians in closed form, so the rank distribution under each is known and the tests cost milliseconds.
"""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import signal, stats

import inference
from inference import ConvergenceWarning, Fit, InvalidInputError
from inference.rank_tests import chi2_p_value, ecdf_band, ecdf_p_value, tail_probability, vsbc_p_value
from inference.sbc import METHODS, sbc
from zoo.posteriordb.conjugate import make_normal_mean, normal_mean_model

X = torch.tensor([[1.0, 0.9], [1.0, 1.1], [1.0, 1.0]], dtype=torch.float64)
SIGMA = 0.5
PRECISION = torch.eye(2, dtype=torch.float64) + X.T @ X / SIGMA**2
ALPHA = 0.01
L = 99


def regression(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=X.dtype), 1.0).to_event(1))
    pyro.deterministic("fitted", X @ w)  # neither latent nor observed: sbc must skip it
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, SIGMA), obs=y)


def gaussian_fit(mean, cov):
    """A Fit whose draws are N(mean, cov), seeded by draw's seed."""
    chol = torch.linalg.cholesky(cov)

    def draw(n, seed):
        z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=mean.dtype)
        return {"w": mean + z @ chol.T}

    return Fit(method="closed form", losses=[], seconds=0.0, draw=draw)


def closed_form(scale=1.0, shift=0.0, meanfield=False):
    """A method (model, X) -> Fit: the exact posterior, its sds times ``scale``, its mean moved by ``shift``
    posterior sds, or the mean-field optimum; it reads ỹ from the conditioned model it is given."""

    def method(model, X):
        y = poutine.trace(model).get_trace(X).nodes["y"]["value"]
        cov = torch.linalg.inv(PRECISION)
        mean = cov @ X.T @ y / SIGMA**2 + shift * cov.diagonal().sqrt()
        cov = torch.diag(1 / PRECISION.diagonal()) if meanfield else cov
        return gaussian_fit(mean, scale**2 * cov)

    return method


def power_lower_bound(u_of_z, n, num_draws, level):
    """A lower bound on the probability that the ECDF test flags an element at ``level`` when its
    rank is Binomial(L, u(Z)), Z ~ N(0, 1) the truth's standardised distance from the posterior mean.

    The p-value is at most 2 L T (a union bound over the L points, each tail at most T with probability
    <= 2 T), so a single point whose tail falls below level / (2 L) suffices; the bound is the largest,
    over points j, of that probability under the alternative, where c_j ~ Binomial(n, P(r <= j)) and
    P(r <= j) = E_Z[BinomialCDF(j; L, u(Z))] by Gauss-Hermite quadrature.
    """
    z, w = np.polynomial.hermite_e.hermegauss(80)
    j = np.arange(num_draws)
    p = (j + 1) / (num_draws + 1)
    p_alt = (w[:, None] / w.sum() * stats.binom.cdf(j[None], num_draws, u_of_z(z)[:, None])).sum(0)
    c = np.arange(n + 1)[:, None]
    rejects = (stats.binom.cdf(c, n, p) < level / (2 * num_draws)) | (
        stats.binom.sf(c - 1, n, p) < level / (2 * num_draws)
    )
    return float((rejects * stats.binom.pmf(c, n, p_alt)).sum(0).max())


# ---- the uniformity tests against their definitions -----------------------------------------------------
def test_ecdf_p_value_is_the_probability_of_a_smaller_statistic_under_uniform_ranks():
    rng = np.random.default_rng(1)
    n, num_draws = 50, 19
    p = np.arange(1, num_draws + 1) / (num_draws + 1)
    ranks = rng.integers(0, num_draws + 1, n)
    statistic = tail_probability(np.cumsum(np.bincount(ranks, minlength=num_draws + 1))[:-1], n, p).min()
    sims = rng.integers(0, num_draws + 1, (4000, n))
    counts = np.cumsum(np.stack([np.bincount(s, minlength=num_draws + 1) for s in sims]), 1)[:, :-1]
    monte_carlo = (tail_probability(counts, n, p).min(1) <= statistic * (1 + 1e-9)).mean()
    exact = ecdf_p_value(ranks, num_draws)
    # 4000 simulated sets: the Monte Carlo estimate has sd sqrt(p (1 - p) / 4000) <= 0.008; 4 sds
    assert abs(exact - monte_carlo) < 4 * np.sqrt(exact * (1 - exact) / 4000) + 1e-3
    # a pile of zeros: 20 of 50 ranks at 0 where 2.5 are expected; binom.sf(19, 50, 1/20) = 1.04e-13 bounds
    # one point's tail, and the p-value is at most 2 L times that
    piled = np.concatenate([np.zeros(20, int), rng.integers(0, num_draws + 1, 30)])
    assert ecdf_p_value(piled, num_draws) < 2 * num_draws * stats.binom.sf(19, 50, 1 / 20)


def test_ecdf_band_is_left_exactly_when_the_p_value_is_below_the_level():
    rng = np.random.default_rng(2)
    n, num_draws, level = 40, 9, 0.05
    p = np.arange(1, num_draws + 1) / (num_draws + 1)
    lo, hi = ecdf_band(n, p, level)
    verdicts = []
    for _ in range(100):
        skew = rng.uniform(0.3, 3)  # from uniform to strongly non-uniform rank sets
        ranks = np.minimum((rng.uniform(size=n) ** skew * (num_draws + 1)).astype(int), num_draws)
        counts = np.cumsum(np.bincount(ranks, minlength=num_draws + 1))[:-1]
        outside = ((counts < lo) | (counts > hi)).any()
        assert outside == (ecdf_p_value(ranks, num_draws) < level)
        verdicts.append(outside)
    assert 0 < sum(verdicts) < len(verdicts)  # both sides of the band were tried


def test_chi2_and_vsbc_p_values_match_scipy():
    ranks = np.random.default_rng(3).integers(0, 20, 60)
    expected = stats.chisquare(np.bincount(ranks // 4, minlength=5)).pvalue  # 5 bins of 4 ranks
    assert chi2_p_value(ranks, 19, 5) == pytest.approx(expected, rel=1e-12)
    symmetric = np.concatenate([ranks, 19 - ranks])  # u and 1 - u: the same sample
    assert vsbc_p_value(symmetric, 19) == pytest.approx(1.0)


# ---- the verdict, both ways -----------------------------------------------------------------------------
def test_exact_posterior_is_calibrated():
    # ranks of exact posterior draws are exactly uniform, so this alarm fires with probability <= ALPHA
    # (Bonferroni over the 2 elements, each p-value exact); with a fixed seed, the test is deterministic
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = sbc(
            regression, closed_form(), 250, args=(X,), observed=("y",), alpha=ALPHA, processes=1, progress=False
        )
    assert result.calibrated and not result.warnings
    assert set(result.ranks) == {"w[0]", "w[1]"}
    assert all(r.min() >= 0 and r.max() <= L and r.shape == (250,) for r in result.ranks.values())
    table = result.to_dataframe()
    assert list(table.parameter) == ["w[0]", "w[1]"] and not table.miscalibrated.any()


RHO = np.sqrt(1 - (PRECISION[0, 1] ** 2 / (PRECISION[0, 0] * PRECISION[1, 1])).item())  # mean-field sd ratio


@pytest.mark.parametrize(
    "method, u_of_z, lean",
    [
        (closed_form(meanfield=True), lambda z: stats.norm.cdf(z / RHO), "too narrow"),
        (closed_form(scale=2.0), lambda z: stats.norm.cdf(z / 2.0), "too wide"),
        (closed_form(shift=1.0), lambda z: stats.norm.cdf(z - 1.0), "biased high"),
    ],
    ids=["meanfield", "overdispersed", "shifted"],
)
def test_miscalibrated_method_is_named(method, u_of_z, lean):
    # the rank of the truth among L draws of q is Binomial(L, u(Z)) with Z ~ N(0, 1) the truth's
    # standardised distance from the posterior mean: u = Phi(Z / 0.39) for mean field, Phi(Z / 2) for
    # sds doubled, Phi(Z - 1) for the mean moved up 1 sd. 250 simulations give each element a power above
    # 0.999 at the Bonferroni level ALPHA / 2 (asserted here, so a smaller N fails the test, not chance)
    n = 250
    assert power_lower_bound(u_of_z, n, L, ALPHA / 2) > 0.999
    with pytest.warns(ConvergenceWarning, match=rf"sbc of method: .*w\[0\] \(p = [^)]*{lean}.*w\[1\] "):
        result = sbc(regression, method, n, args=(X,), observed=("y",), alpha=ALPHA, processes=1, progress=False)
    assert not result.calibrated
    assert result.to_dataframe().miscalibrated.all()


def chains_method(phi):
    """A method whose fit carries two AR(1) chains of 1000 draws with stationary law the exact posterior:
    z_t = phi z_(t-1) + sqrt(1 - phi²) e_t, w_t = m + chol(Σ) z_t. phi = 0: independent draws (calibrated,
    no thinning); phi = 0.99: ESS about 2000 (1 - phi) / (1 + phi) = 10 < L, too autocorrelated to rank."""

    def method(model, X):
        y = poutine.trace(model).get_trace(X).nodes["y"]["value"]
        cov = torch.linalg.inv(PRECISION)
        e = torch.randn(2, 1000, 2, dtype=torch.float64).numpy()  # sbc seeds the global RNG per simulation
        e[:, 1:] *= np.sqrt(1 - phi**2)  # z_0 = e_0 ~ N(0, I): the chains start in the stationary law
        z = torch.from_numpy(signal.lfilter([1.0], [1.0, -phi], e, axis=1))
        chains = {"w": cov @ X.T @ y / SIGMA**2 + z @ torch.linalg.cholesky(cov).T}
        fit = gaussian_fit(torch.zeros(2, dtype=torch.float64), cov)
        fit.chains = chains
        return fit

    return method


def test_mcmc_draws_are_judged_by_their_effective_number():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        # independent chains: uniform ranks, so the alarm fires with probability <= ALPHA
        good = sbc(regression, chains_method(0.0), 30, args=(X,), observed=("y",), processes=1, progress=False)
    assert good.calibrated and good.short_fits == 0
    with pytest.warns(ConvergenceWarning, match="30 of 30 MCMC fits had fewer than 99 effective draws"):
        bad = sbc(regression, chains_method(0.99), 30, args=(X,), observed=("y",), processes=1, progress=False)
    assert bad.short_fits == 30 and not bad.calibrated


def test_laplace_is_calibrated_and_ranks_do_not_depend_on_processes():
    # the posterior is Gaussian, so the Laplace approximation is exact: alarm probability <= ALPHA
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        one = sbc(regression, "laplace", 4, args=(X,), observed=("y",), num_draws=19, processes=1, progress=False)
        two = sbc(regression, "laplace", 4, args=(X,), observed=("y",), num_draws=19, processes=2, progress=False)
    assert one.calibrated and two.calibrated
    for k in one.ranks:
        np.testing.assert_array_equal(one.ranks[k], two.ranks[k])


def test_seed_sets_the_simulations():
    runs = [
        sbc(regression, closed_form(), 10, args=(X,), observed=("y",), seed=seed, processes=1, progress=False)
        for seed in (0, 0, 1)
    ]
    np.testing.assert_array_equal(runs[0].ranks["w[0]"], runs[1].ranks["w[0]"])
    assert not np.array_equal(runs[0].ranks["w[0]"], runs[2].ranks["w[0]"])


def test_fits_own_warnings_are_collected_not_reissued():
    def warning_method(model, X):
        warnings.warn("closed form: the fit cannot be trusted: on purpose", ConvergenceWarning)
        return closed_form()(model, X)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # exact draws: alarm probability <= ALPHA
        result = sbc(regression, warning_method, 3, args=(X,), observed=("y",), processes=1, progress=False)
    assert sorted(result.fit_warnings) == [0, 1, 2] and "on purpose" in result.fit_warnings[0][0]


def test_nuts_runs_in_workers():
    def short_nuts(model, X):
        return inference.nuts(model, X, num_samples=200, warmup_steps=150, dense_mass=True, progress=False)

    result = sbc(regression, short_nuts, 2, args=(X,), observed=("y",), num_draws=19, processes=2, progress=False)
    assert result.short_fits == 0 and all(0 <= r.min() and r.max() <= 19 for r in result.ranks.values())


def test_model_observing_a_required_argument_and_plot(tmp_path):
    # posteriordb's style, model(y, sigma, prior_mean, prior_sd) with obs=y: y only sets the shape;
    # the exact posterior of mu is normal (zoo.posteriordb.conjugate), so ranks are uniform
    data = make_normal_mean().data

    def exact(model, y, sigma, m0, s0):
        y = poutine.trace(model).get_trace(y, sigma, m0, s0).nodes["y"]["value"]
        precision = 1 / s0**2 + len(y) / sigma**2
        mean = (m0 / s0**2 + y.sum() / sigma**2) / precision
        fit = gaussian_fit(mean.reshape(1), precision.reshape(1, 1) ** -1)
        return Fit(method="exact", losses=[], seconds=0.0, draw=lambda n, seed: {"mu": fit.draw(n, seed)["w"][:, 0]})

    state = torch.get_rng_state()
    result = sbc(normal_mean_model, exact, 40, args=data, processes=1, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left as it was
    assert list(result.ranks) == ["mu"] and result.calibrated
    fig = result.plot(tmp_path / "sbc.png")
    assert (tmp_path / "sbc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 2


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "pathfinder"}, "method"),
        ({"method": 3}, "method"),
        ({"num_simulations": 0}, "num_simulations"),
        ({"num_draws": 2.5}, "num_draws"),
        ({"alpha": 1.5}, "alpha"),
        ({"bins": 200}, "bins"),
        ({"processes": 0}, "processes"),
        ({"seed": -1}, "seed"),
        ({"observed": ("z",)}, "observed"),
        ({"observed": ()}, "observed"),
        ({"observed": 3}, "observed"),
        ({"args": X}, "args"),
        ({"args": (torch.full((3, 2), float("nan")),)}, "NaN"),
        ({"method": lambda model, X: 1.0}, "expected an inference.Fit"),
        ({"method": lambda model, X: gaussian_fit(torch.zeros(3), torch.eye(3))}, "latent site 'w'"),
    ],
)
def test_bad_input_raises(kwargs, match):
    settings = {
        "method": closed_form(),
        "num_simulations": 2,
        "args": (X,),
        "observed": ("y",),
        "processes": 1,
        "progress": False,
        **kwargs,
    }
    with pytest.raises(InvalidInputError, match=match):
        sbc(regression, **settings)


def test_named_methods():
    assert set(METHODS) >= {"nuts", "laplace", "svi-meanfield", "svi-fullrank"}
