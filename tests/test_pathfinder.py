"""Pathfinder: exact where the maths says so, within Monte Carlo error of exact posteriors, honest verdicts.

Monte Carlo tolerances: ``draw`` resamples (with replacement) a pool of importance-weighted draws whose
weights have effective size ESS, so a resampled mean of n draws errs by about sd * sqrt(1/ESS + 1/n)
(importance error plus resampling error); the tests allow 4 of these standard errors (a chance failure
below 1e-4 per element; the seeds are fixed, so a pass is reproducible).
"""

import contextlib
import importlib
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate

from inference.errors import ConvergenceWarning, InvalidInputError, NonFiniteError
from inference.pathfinder import LowRankNormal, pathfinder
from zoo.posteriordb import conjugate

# the module itself (``inference.pathfinder`` the attribute is the function, once exported)
pathfinder_module = importlib.import_module("inference.pathfinder")
N_DRAWS = 4000


@contextlib.contextmanager
def quiet():
    """A context in which a ConvergenceWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        yield


def mc_bound(ess, n=N_DRAWS):
    """4 standard errors, in sds, of the mean of n draws resampled from weights of effective size ess."""
    return 4 * math.sqrt(1 / ess + 1 / n)


def dense_bfgs(alpha, pairs):
    """The inverse Hessian by BFGS updates one pair at a time from diag(alpha) (Nocedal & Wright eq. 6.17)."""
    H = torch.diag(alpha)
    eye = torch.eye(alpha.shape[0], dtype=alpha.dtype)
    for s, y in pairs:
        rho = 1 / (y @ s)
        H = (eye - rho * torch.outer(s, y)) @ H @ (eye - rho * torch.outer(y, s)) + rho * torch.outer(s, s)
    return H


@pytest.mark.parametrize("d, history", [(8, 3), (3, 4)])
def test_low_rank_normal_is_the_compact_bfgs_inverse_hessian(d, history):
    # thin QR (2J < d) and square QR (2J > d): the compact form (Byrd, Nocedal & Schnabel 1994, Thm 2.2)
    # equals the sequential BFGS updates exactly, so only round-off separates them
    g = torch.Generator().manual_seed(0)
    B = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = B @ B.T + d * torch.eye(d, dtype=torch.float64)  # an SPD Hessian
    alpha = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    S = torch.randn(d, history, generator=g, dtype=torch.float64)
    Y = A @ S  # exact secant pairs of a quadratic
    u, grad = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    q = LowRankNormal(u, grad, alpha, S, Y)
    H = dense_bfgs(alpha, list(zip(S.T, Y.T)))
    torch.testing.assert_close(q.covariance(), H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q.loc, u - H @ grad, rtol=1e-10, atol=1e-12)
    # the newest pair satisfies the secant equation H y = s (a BFGS identity)
    torch.testing.assert_close(q.covariance() @ Y[:, -1], S[:, -1], rtol=1e-9, atol=1e-12)
    reference = torch.distributions.MultivariateNormal(q.loc, covariance_matrix=H)
    x, log_q = q.sample(20000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_q, reference.log_prob(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(q.log_prob(x), log_q, rtol=1e-9, atol=1e-9)
    # sample covariance: entry (i, j) has standard error sqrt((H_ii H_jj + H_ij²) / n); 5 of them
    n, C = x.shape[0], torch.cov(x.T)
    se = ((torch.outer(H.diagonal(), H.diagonal()) + H**2) / n).sqrt()
    assert ((C - H).abs() <= 5 * se).all()


def test_exact_in_one_dimension():
    # 1-D quadratic U: one pair gives y = U'' s, the diagonal update gives α = s / y = 1 / U'' and the
    # BFGS step leaves it (it already satisfies the secant equation), and μ = u - Σ U'(u) is the exact
    # Newton step to the mode. So q is the posterior itself, log p - log q is the constant log p(y):
    # equal weights (k-hat 0, ESS = every draw) and ELBO = log evidence, up to round-off
    c = conjugate.make_normal_mean()
    ((mean, sd),) = c.reference.values()
    y, sigma, m0, s0 = c.data
    n = y.shape[0]
    evidence = torch.distributions.MultivariateNormal(
        torch.full((n,), float(m0), dtype=torch.float64),
        covariance_matrix=sigma**2 * torch.eye(n, dtype=torch.float64) + s0**2,
    ).log_prob(y)
    with quiet():
        fit = pathfinder(c.model, *c.data, num_draws=500, seed=0, progress=False)
    d = fit.diagnostics
    for q in d["normals"]:
        assert abs(float(q.loc) - mean) <= 1e-6 * sd
        assert float(q.covariance()) == pytest.approx(sd**2, rel=1e-6)
    assert d["khat"] == 0.0 and d["ess"] == pytest.approx(d["num_proposals"])
    assert max(d["elbo"]) == pytest.approx(float(evidence), abs=1e-6)
    assert -fit.losses.min() == pytest.approx(max(d["elbo"]))
    assert d["converged"] and d["paths_failed"] == 0


def test_correlated_gaussian_posterior_matches_exact_moments():
    # 4 coefficients, two correlated at -0.9 a posteriori: exact mean m and covariance S (conjugate.py).
    # The resampled draws are whitened by S: mean 0 and covariance I up to Monte Carlo error. A normal q
    # against a normal p gives weights with Pareto index k = 1 - σ_q²/σ_p² along a direction where q is
    # narrower (none where wider), so k-hat stays below 0.7 unless q's variance misses by 70%; L-BFGS on a
    # quadratic ends with exact secant pairs (y = A s), which keeps the best normal near S
    c = conjugate.make_linear_regression()
    X, y, sigma, prior_sd = c.data
    S = torch.linalg.inv(X.T @ X / sigma**2 + torch.eye(4, dtype=torch.float64) / prior_sd**2)
    m = S @ X.T @ y / sigma**2
    with quiet():
        fit = pathfinder(c.model, *c.data, seed=0, progress=False)
    d = fit.diagnostics
    assert d["khat"] <= 0.7 and d["converged"]
    w = fit.draw(N_DRAWS, seed=1)["w"].double()
    z = torch.linalg.solve_triangular(torch.linalg.cholesky(S), (w - m).T, upper=False).T
    n_eff = 1 / (1 / d["ess"] + 1 / N_DRAWS)
    assert z.mean(0).abs().max() <= mc_bound(d["ess"])
    # whitened covariance: off-diagonal entries have sd 1 / sqrt(n), diagonal ones sqrt(2 / n)
    error = torch.cov(z.T) - torch.eye(4, dtype=torch.float64)
    assert error.abs().max() <= 4 * math.sqrt(2 / n_eff)
    assert fit.losses.shape == (d["iterations"][int(np.argmax(d["elbo"]))],)


@pytest.mark.parametrize(
    "name, site, low, high",
    [("conjugate-gamma-poisson", "lam", 0.0, math.inf), ("conjugate-beta-binomial", "theta", 0.0, 1.0)],
)
def test_skewed_posteriors_in_support_and_reweighted_to_the_exact_mean(name, site, low, high):
    c = conjugate.CONJUGATES[name]()
    ((mean, sd),) = c.reference.values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # judged below against the exact answer
        fit = pathfinder(c.model, *c.data, seed=0, progress=False)
    x = fit.draw(N_DRAWS, seed=1)[site].double()
    assert ((x > low) & (x < high)).all()
    assert abs(float(x.mean()) - mean) / sd <= mc_bound(fit.diagnostics["ess"])


def test_enumerated_discrete_sites_are_summed_out():
    # two known components N(-2, 1), N(2, 1) with weight p ~ Beta(1, 1); z_n enumerated. Reference: the
    # posterior of p by quadrature on a grid of 20001 points (error far below the Monte Carlo error)
    x = torch.tensor([-2.3, -1.1, 2.5, 1.7, 2.2, -2.9, 1.4, 2.8, 0.3, 2.0], dtype=torch.float64)

    @config_enumerate
    def model(x):
        p = pyro.sample("p", dist.Beta(1.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(p))
            pyro.sample("x", dist.Normal(4.0 * z - 2.0, 1.0), obs=x)

    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)[1:-1]
    normal = torch.distributions.Normal
    lik = (
        (grid[:, None] * normal(2.0, 1.0).log_prob(x).exp() + (1 - grid[:, None]) * normal(-2.0, 1.0).log_prob(x).exp())
        .log()
        .sum(1)
    )
    w = (lik - lik.max()).exp()
    w = w / w.sum()
    mean = float((w * grid).sum())
    sd = float((w * (grid - mean) ** 2).sum()) ** 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = pathfinder(model, x, num_draws=500, max_plate_nesting=1, seed=0, progress=False)
    p = fit.draw(N_DRAWS, seed=1)["p"].double()
    assert ((p > 0) & (p < 1)).all()
    assert abs(float(p.mean()) - mean) / sd <= mc_bound(fit.diagnostics["ess"])


def test_reproducible_with_a_seed():
    c = conjugate.make_normal_gamma()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = pathfinder(c.model, *c.data, num_paths=2, num_draws=200, seed=3, progress=False)
        b = pathfinder(c.model, *c.data, num_paths=2, num_draws=200, seed=3, progress=False)
        other = pathfinder(c.model, *c.data, num_paths=2, num_draws=200, seed=4, progress=False)
    for site in ("mu", "sigma2"):
        assert torch.equal(a.draw(100, 0)[site], b.draw(100, 0)[site])
        assert not torch.equal(a.draw(100, 0)[site], other.draw(100, 0)[site])
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.log_weights(50, 2), b.log_weights(50, 2))
    # the Fit interface works on it: reweighted draws, ArviZ conversion
    assert a.reweighted(num_proposals=200).draw(10)["mu"].shape == (10,)
    assert a.to_inference_data(num_samples=20).posterior["sigma2"].shape == (1, 20)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("num_paths", 0),
        ("num_draws", -1),
        ("num_elbo_draws", 1.5),
        ("history", 0),
        ("max_iter", 0),
        ("tol", 0.0),
        ("tol", math.nan),
    ],
)
def test_bad_settings_raise(setting, value):
    c = conjugate.make_normal_mean()
    with pytest.raises(InvalidInputError, match=setting):
        pathfinder(c.model, *c.data, progress=False, **{setting: value})


def test_bad_inputs_raise():
    c = conjugate.make_normal_mean()
    with pytest.raises(InvalidInputError, match="init"):
        pathfinder(c.model, *c.data, init=[1.0], progress=False)
    with pytest.raises(InvalidInputError, match="not latent sites"):
        pathfinder(c.model, *c.data, init={"nope": 1.0}, progress=False)
    y = c.data[0].clone()
    y[0] = math.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        pathfinder(c.model, y, *c.data[1:], progress=False)

    def no_latents(y):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(InvalidInputError, match="no continuous latent"):
        pathfinder(no_latents, torch.tensor(0.5), progress=False)


def test_warns_when_lbfgs_is_stopped_early():
    # two iterations cannot reach the mode of a 4-d posterior from a random start: the verdict must say so
    c = conjugate.make_linear_regression()
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        fit = pathfinder(c.model, *c.data, max_iter=2, seed=0, progress=False)
    assert not fit.diagnostics["converged"]
    assert fit.diagnostics["lbfgs_converged"] == [False] * 4


def test_warns_on_a_heavy_tailed_posterior():
    # spike and slab: p(z) = 0.5 N(0, 1) + 0.5 N(0, 10²). The paths' normals take their curvature where
    # L-BFGS walks, near the spike, so their sd is below 3 (checked); against the slab, a normal of sd
    # s gives weights with Pareto index k = 1 - s² / 10² >= 0.91 > 0.7, and the slab holds half the mass,
    # so q's own draws reach that tail: k-hat must exceed 0.7 and the verdict must warn
    def spike_and_slab():
        z = pyro.sample("z", dist.Normal(0.0, 10.0))
        # times 0.5 + 0.5 N(z; 0, 1) / N(z; 0, 10): the density becomes the mixture
        log_ratio = dist.Normal(0.0, 1.0).log_prob(z) - dist.Normal(0.0, 10.0).log_prob(z)
        pyro.factor("spike", torch.logaddexp(torch.zeros_like(z), log_ratio) + math.log(0.5))

    with pytest.warns(ConvergenceWarning, match="k-hat"):
        fit = pathfinder(spike_and_slab, seed=0, progress=False)
    assert all(float(q.covariance()) ** 0.5 < 3 for q in fit.diagnostics["normals"])
    assert fit.diagnostics["khat"] > 0.7 and not fit.diagnostics["converged"]


def test_failed_paths_warn_and_all_failed_raises(monkeypatch):
    c = conjugate.make_normal_mean()
    run_path, calls = pathfinder_module._run_path, []

    def second_path_fails(*args):
        calls.append(1)
        path = run_path(*args)
        if len(calls) == 2:
            path.update(normal=None, elbo=math.nan, failure="made to fail")
        return path

    monkeypatch.setattr(pathfinder_module, "_run_path", second_path_fails)
    with pytest.warns(ConvergenceWarning, match="1 of 4 paths failed"):
        fit = pathfinder(c.model, *c.data, num_draws=100, progress=False)
    assert fit.diagnostics["paths_failed"] == 1 and len(fit.diagnostics["normals"]) == 3
    monkeypatch.setattr(pathfinder_module, "_start", lambda *args: None)
    with pytest.raises(NonFiniteError, match="every path failed"):
        pathfinder(c.model, *c.data, progress=False)
