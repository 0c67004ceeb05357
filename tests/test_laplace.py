"""Laplace approximation: exact on Gaussian posteriors, constraints respected, clear errors."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import NormalMean, Regression, mixture_model
from pyro.distributions import constraints

from inference.errors import InvalidInputError
from inference.laplace import laplace

# --- conjugate models with closed-form posteriors (tests/conftest.py) -----------------------------
NORMAL_MEAN = NormalMean(prior_loc=1.0, prior_scale=2.0, noise=1.5)  # mu ~ N(1, 2²), x_i ~ N(mu, 1.5²)
REGRESSION = Regression(alpha=0.5, sigma=0.3)  # w ~ N(0, 1/α I), y ~ N(Xw, 0.3²)
normal_mean_model, normal_mean_data, normal_mean_posterior = NORMAL_MEAN.model, NORMAL_MEAN.data, NORMAL_MEAN.posterior
regression_model, regression_data = REGRESSION.model, REGRESSION.data
regression_posterior, regression_log_evidence = REGRESSION.posterior, REGRESSION.log_evidence


def assert_relative(actual, expected, rtol=1e-5):
    """|actual - expected| <= rtol * max|expected|, elementwise."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= rtol * scale, (actual, expected)


# --- exactness on Gaussian posteriors -------------------------------------------------------------


def test_normal_mean_is_exact():
    x = normal_mean_data()
    mean, sd = normal_mean_posterior(x)
    fit = laplace(normal_mean_model, x)
    assert fit.method == "laplace" and fit.seconds > 0
    assert_relative(fit.params["mu"], torch.tensor(mean))
    assert_relative(fit.diagnostics["covariance"], torch.tensor([[sd**2]]))
    assert fit.diagnostics["converged"]
    # losses are U per iteration: they never increase (strong-Wolfe steps decrease U)
    assert np.all(np.diff(fit.losses) <= 1e-9 * np.abs(fit.losses[:-1]))
    assert fit.losses[-1] == pytest.approx(fit.diagnostics["potential"])


def test_regression_is_exact_and_gives_the_evidence():
    X, y = regression_data()
    mean, covariance = regression_posterior(X, y)
    fit = laplace(regression_model, X, y)
    assert_relative(fit.params["w"], mean)
    assert_relative(fit.diagnostics["covariance"], covariance)
    assert_relative(fit.diagnostics["hessian"], torch.linalg.inv(covariance))
    assert fit.diagnostics["log_evidence"] == pytest.approx(regression_log_evidence(X, y), rel=1e-8)
    # q is the posterior, so p(x, u) / q(u) = p(x) at every draw
    log_w = fit.log_weights(50, seed=1)
    assert np.allclose(log_w, fit.diagnostics["log_evidence"], rtol=0, atol=1e-7)


def test_draws_have_the_posterior_moments():
    X, y = regression_data()
    mean, covariance = regression_posterior(X, y)
    n = 4000
    w = laplace(regression_model, X, y).samples(n, seed=3)["w"].double()
    assert w.shape == (n, 3)
    sd = covariance.diag().sqrt()
    # sample mean within 4 standard errors, sample sd within 4 standard errors (sd/sqrt(2n))
    assert ((w.mean(0) - mean).abs() <= 4 * sd / math.sqrt(n)).all()
    assert ((w.std(0) - sd).abs() <= 4 * sd / math.sqrt(2 * n)).all()


def test_draws_are_seeded():
    fit = laplace(normal_mean_model, normal_mean_data())
    a, b, c = fit.samples(10, seed=0)["mu"], fit.samples(10, seed=0)["mu"], fit.samples(10, seed=1)["mu"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.get_default_dtype()


# --- constrained sites, enumeration, a given point -------------------------------------------------


def scale_model(x):
    sigma = pyro.sample("sigma", dist.HalfCauchy(1.0))
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(weights[0], sigma), obs=x)


def test_constrained_sites_respect_their_support():
    x = 0.1 * normal_mean_data(n=5)  # few points and a small scale: much posterior mass near sigma = 0
    fit = laplace(scale_model, x)
    draws = fit.samples(2000, seed=0)
    assert draws["sigma"].shape == (2000,) and (draws["sigma"] > 0).all()
    # the simplex has 3 constrained coordinates but 2 unconstrained ones
    assert fit.diagnostics["sites"]["weights"].stop - fit.diagnostics["sites"]["weights"].start == 2
    assert draws["weights"].shape == (2000, 3) and (draws["weights"] > 0).all()
    assert torch.allclose(draws["weights"].sum(-1), torch.ones(2000))
    assert (fit.params["sigma"] > 0) and torch.isfinite(torch.as_tensor(fit.log_weights(20))).all()


def test_discrete_sites_are_summed_out():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(15, generator=g) - 2, torch.randn(35, generator=g) + 2])
    fit = laplace(mixture_model, x, max_plate_nesting=1)
    mu = fit.params["mu"].double().requires_grad_(True)
    # U(mu) by hand: -log N(mu; m0, 3²) - Σ_n log Σ_k π_k N(x_n; mu_k, 1)
    log_lik = torch.logsumexp(
        torch.log(torch.tensor([0.3, 0.7], dtype=mu.dtype)) + dist.Normal(mu, 1.0).log_prob(x.double()[:, None]), -1
    ).sum()
    U = -(dist.Normal(torch.tensor([-1.0, 1.0], dtype=mu.dtype), 3.0).log_prob(mu).sum() + log_lik)
    (grad,) = torch.autograd.grad(U, mu)
    assert fit.diagnostics["potential"] == pytest.approx(float(U.detach()), rel=1e-6)
    assert grad.abs().max() < 1e-4  # the fit's point is the mode of the hand-written marginal


def double_well_model():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    x = pyro.sample("x", dist.Normal(0.0, 10.0))
    pyro.factor("well", -4 * (x**2 - 1) ** 2 - a * x / 10)


def double_well_hessian(a, x):
    """d²U/d(a, x)² for U = a²/2 + x²/200 + 4(x² - 1)² + a x / 10."""
    return torch.tensor([[1.0, 0.1], [0.1, 1 / 100 + 4 * (12 * x**2 - 4)]], dtype=torch.float64)


def test_given_point_gives_the_curvature_there():
    a, x = 0.2, 1.3
    fit = laplace(double_well_model, init={"a": a, "x": x}, optimize=False)
    assert fit.params["a"] == pytest.approx(a) and fit.params["x"] == pytest.approx(x)
    H = double_well_hessian(a, x)
    assert_relative(fit.diagnostics["hessian"], H, rtol=1e-10)
    assert fit.diagnostics["log_det_hessian"] == pytest.approx(math.log(torch.linalg.det(H)), rel=1e-10)
    U = (
        a**2 / 2
        + x**2 / 200
        + 4 * (x**2 - 1) ** 2
        + a * x / 10
        + 0.5 * math.log(2 * math.pi)
        + math.log(10 * math.sqrt(2 * math.pi))
    )
    assert fit.diagnostics["potential"] == pytest.approx(U, rel=1e-10)
    assert fit.losses.size == 1 and fit.losses[0] == pytest.approx(U)


def test_saddle_point_names_the_site():
    with pytest.raises(InvalidInputError, match="not positive definite") as info:
        laplace(double_well_model, init={"a": 0.0, "x": 0.0}, optimize=False)
    assert "'x'" in str(info.value) and "'a'" not in str(info.value)
    # started off the saddle, L-BFGS reaches a well, where the Hessian is positive definite
    fit = laplace(double_well_model, init={"a": 0.0, "x": 0.5})
    assert abs(abs(float(fit.params["x"])) - 1) < 0.05


def flat_prior_model(x):
    mu = pyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, NORMAL_MEAN.noise), obs=x)


def unidentified_model(x):
    a = pyro.sample("a", dist.ImproperUniform(constraints.real, (), ()))
    b = pyro.sample("b", dist.ImproperUniform(constraints.real, (), ()))
    c = pyro.sample("c", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(a + b + c, NORMAL_MEAN.noise), obs=x)


def test_flat_prior_gives_the_likelihood_curvature():
    x = normal_mean_data()
    # improper priors cannot be sampled: without init the start is 0 on the unconstrained space
    for init in ({"mu": 0.0}, None):
        fit = laplace(flat_prior_model, x, init=init)
        assert_relative(fit.params["mu"], x.double().mean())
        assert_relative(fit.diagnostics["covariance"], torch.tensor([[NORMAL_MEAN.noise**2 / x.numel()]]))


def test_flat_direction_at_the_mode_names_the_sites():
    # only a + b is identified: the Hessian at the mode is singular along a - b, and c is well defined
    with pytest.raises(InvalidInputError, match="not positive definite") as info:
        laplace(unidentified_model, normal_mean_data(), init={"a": 0.0, "b": 0.0})
    assert "['a', 'b']" in str(info.value) and "'c'" not in str(info.value)


# --- bad input ------------------------------------------------------------------------------------


def observed_only_model(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def test_no_latent_sites_is_an_error():
    with pytest.raises(InvalidInputError, match="no continuous latent"):
        laplace(observed_only_model, normal_mean_data())


def test_nan_data_is_an_error():
    x = normal_mean_data()
    x[3] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        laplace(normal_mean_model, x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"init": {"nope": 1.0}}, "not latent sites"),
        ({"init": {"a": 0.0}, "optimize": False}, "missing"),
        ({"optimize": False}, "needs init"),
        ({"max_iter": 0}, "max_iter"),
        ({"init": [1.0]}, "init must be a dict"),
        ({"init": {"x": [1.0, 2.0]}}, "shape"),
    ],
)
def test_bad_arguments_are_errors(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        laplace(double_well_model, **kwargs)


def test_init_outside_the_support_is_an_error():
    with pytest.raises(InvalidInputError, match="support"):
        laplace(scale_model, normal_mean_data(), init={"sigma": -1.0})
