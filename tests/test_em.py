"""inference.variational_em: with the exact E-step it is EM (MATH.md §1), checked against a closed-form
EM written here from the textbook updates; with a gradient E-step it still climbs to the MLE."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.indexing import Vindex

import inference
from inference.errors import InvalidInputError

K = 3
INIT_W = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
INIT_LOC = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
INIT_SCALE = torch.ones(K, 2, dtype=torch.float64)


def mixture_model(X):
    """Diagonal-covariance Gaussian mixture with θ = (weights, locs, scales) as parameters."""
    w = pyro.param("weights", INIT_W.clone(), constraint=dist.constraints.simplex)
    loc = pyro.param("locs", INIT_LOC.clone())
    scale = pyro.param("scales", INIT_SCALE.clone(), constraint=dist.constraints.positive)
    with pyro.plate("data", X.shape[0]):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(Vindex(loc)[z], Vindex(scale)[z]).to_event(1), obs=X)


def closed_form_em(X, iters):
    """Textbook EM for a diagonal Gaussian mixture; returns the log-likelihood before each M-step."""
    w, loc, var = INIT_W.clone(), INIT_LOC.clone(), INIT_SCALE.clone() ** 2
    trace = []
    for _ in range(iters + 1):
        log_joint = torch.log(w) + dist.Normal(loc, var.sqrt()).log_prob(X[:, None, :]).sum(-1)
        log_lik = torch.logsumexp(log_joint, dim=1)
        trace.append(log_lik.sum().item())
        r = torch.exp(log_joint - log_lik[:, None])  # E-step: responsibilities
        nk = r.sum(0)  # M-step
        w = nk / len(X)
        loc = (r.T @ X) / nk[:, None]
        var = (r.T @ X**2) / nk[:, None] - loc**2
    return np.array(trace)


@pytest.fixture
def X():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0]], dtype=torch.float64)
    z = torch.randint(0, K, (300,), generator=g)
    return centers[z] + torch.randn(300, 2, generator=g, dtype=torch.float64) * 0.8


def test_exact_e_step_reproduces_closed_form_em(X):
    torch.set_default_dtype(torch.float64)
    iters = 8
    fit = inference.variational_em(
        mixture_model, None, X, max_iter=iters, tol=0, m_steps=100, max_plate_nesting=1, progress=False
    )
    expected = -closed_form_em(X, iters)
    assert fit.method == "variational_em" and len(fit.losses) == iters + 1
    # The M-step is solved by L-BFGS to gradient tolerance 1e-12 rather than in closed form, so the
    # traces agree to the optimiser's precision, far below the EM steps' own size (~1e-1 here).
    np.testing.assert_allclose(fit.losses, expected, rtol=1e-8)


def test_exact_em_never_decreases_the_likelihood(X):
    torch.set_default_dtype(torch.float64)
    fit = inference.variational_em(mixture_model, None, X, max_iter=30, tol=1e-10, max_plate_nesting=1, progress=False)
    assert np.all(np.diff(fit.losses) <= 1e-9 * np.abs(fit.losses[1:]))
    assert fit.diagnostics["converged"]
    # point estimates travel as a point-mass posterior
    draws = fit.samples(4)
    assert torch.equal(draws["locs"][0], fit.params["locs"]) and torch.all(draws["locs"].std(0) == 0)


def test_gradient_e_step_reaches_the_mle():
    # x_n = z_n + noise, z_n ~ N(mu, 1): marginally x_n ~ N(mu, 2), so the MLE of mu is mean(x).
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, generator=g) * 2**0.5 + 1.5

    def model(x):
        mu = pyro.param("mu", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        m = pyro.param("m", torch.zeros(x.shape[0]))
        s = pyro.param("s", torch.ones(x.shape[0]), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(m, s))

    fit = inference.variational_em(
        model,
        guide,
        x,
        max_iter=25,
        e_steps=30,
        m_steps=20,
        lr=0.05,
        m_step="adam",
        elbo="trace",
        tol=0,
        progress=False,
    )
    # The optimum q(z_n) is the exact posterior N((x_n + mu)/2, 1/2): the bound is tight there, so the
    # M-step's fixed point is the MLE. Tolerance: a few posterior sds of the Monte-Carlo gradient noise.
    assert abs(fit.params["mu"].item() - x.mean().item()) < 0.1
    assert fit.losses[-1] < fit.losses[0]
    assert set(fit.samples(5)) == {"mu", "z"}


def test_exact_e_step_needs_enumerated_sites():
    def model(x):
        mu = pyro.param("mu", torch.tensor(0.0))
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    with pytest.raises(InvalidInputError, match="no enumerated discrete sites"):
        inference.variational_em(model, None, torch.randn(5), progress=False)


def test_model_without_parameters_is_refused():
    def model(x):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(InvalidInputError, match="no pyro.param sites"):
        inference.variational_em(model, None, torch.randn(5), progress=False)
