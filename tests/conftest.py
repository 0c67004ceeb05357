"""Fixtures every test gets, and the conjugate models whose posteriors are known in closed form, shared by
the tests of every inference method (``from conftest import NormalMean, Regression, ...``)."""

import os
import warnings

os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", message=".*ArviZ is undergoing a major refactor.*")

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Each test starts with an empty param store, default dtype and validation on."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


# ---- conjugate models with closed-form posteriors -------------------------------------------------
class NormalMean:
    """mu ~ N(m0, s0²), x_i ~ N(mu, σ²): the posterior of mu is normal, in closed form.

    Args:
        prior_loc, prior_scale: m0, s0.
        noise: σ.
    """

    def __init__(self, prior_loc, prior_scale, noise):
        self.prior_loc, self.prior_scale, self.noise = prior_loc, prior_scale, noise

    def model(self, x):
        mu = pyro.sample("mu", dist.Normal(self.prior_loc, self.prior_scale))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, self.noise), obs=x)

    def data(self, n=30, seed=0, loc=2.5):
        """n draws of x with mu = ``loc``."""
        g = torch.Generator().manual_seed(seed)
        return loc + self.noise * torch.randn(n, generator=g)

    def posterior(self, x):
        """(mean, sd) of mu | x: precision 1/s0² + n/σ², mean = (m0/s0² + Σx/σ²) / precision."""
        x = torch.as_tensor(x).double()
        precision = 1 / self.prior_scale**2 + x.numel() / self.noise**2
        mean = (self.prior_loc / self.prior_scale**2 + x.sum() / self.noise**2) / precision
        return float(mean), precision**-0.5


class Regression:
    """w ~ N(0, I/α), y ~ N(X w, σ²): the posterior of w is normal, in closed form, and so is p(y | X).

    Args:
        alpha: α, the prior precision of each weight.
        sigma: σ, the noise sd.
    """

    def __init__(self, alpha, sigma):
        self.alpha, self.sigma = alpha, sigma

    def model(self, X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), self.alpha**-0.5).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ w, self.sigma), obs=y)

    def data(self, n=40, p=3, seed=0):
        """X [n, p] standard normal, y from w = (1, -2, 0.5)[:p]."""
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(n, p, generator=g)
        y = X @ torch.tensor([1.0, -2.0, 0.5])[:p] + self.sigma * torch.randn(n, generator=g)
        return X, y

    def posterior(self, X, y):
        """(mean [p], covariance [p, p]) of w | X, y: Λ = αI + XᵀX/σ², mean = Λ⁻¹ Xᵀy/σ²."""
        X, y = X.double(), y.double()
        precision = self.alpha * torch.eye(X.shape[1], dtype=X.dtype) + X.T @ X / self.sigma**2
        covariance = torch.linalg.inv(precision)
        return covariance @ X.T @ y / self.sigma**2, covariance

    def log_evidence(self, X, y):
        """log p(y | X): y ~ N(0, σ² I + X Xᵀ / α)."""
        X, y = X.double(), y.double()
        cov = self.sigma**2 * torch.eye(X.shape[0], dtype=X.dtype) + X @ X.T / self.alpha
        return float(dist.MultivariateNormal(torch.zeros_like(y), cov).log_prob(y))


def mixture_model(x):
    """Two unit-variance components with known weights (0.3, 0.7); their means mu [2] ~ N((-1, 1), 3²);
    the assignments z are discrete and summed out."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor([-1.0, 1.0]), 3.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.7])))
        pyro.sample("x", dist.Normal(mu[z], 1.0), obs=x)


def assert_compiled_fit_is_the_eager_fit(model, make_guide, *data, **settings):
    """A 60-step ``inference.svi`` fit with the TorchScript step gives the eager fit's losses and parameters
    (float32 rounding compounding over 60 steps: rtol 1e-5 on the losses, 1e-4 on the parameters)."""
    import inference

    fits = {
        c: inference.svi(
            model, make_guide(), *data, steps=60, init="guide", compile=c, seed=3, progress=False, **settings
        )
        for c in (False, "torchscript")
    }
    assert fits[False].diagnostics["step"] == "eager"
    assert fits["torchscript"].diagnostics["step"] == "torchscript"
    torch.testing.assert_close(
        torch.as_tensor(fits["torchscript"].losses), torch.as_tensor(fits[False].losses), rtol=1e-5, atol=1e-3
    )
    for name, value in fits[False].params.items():
        torch.testing.assert_close(fits["torchscript"].params[name], value, rtol=1e-4, atol=1e-5)
