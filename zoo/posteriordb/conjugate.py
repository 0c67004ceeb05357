"""Conjugate posteriors with closed-form means and sds: the suite's exact references.

Each ``make_*`` function returns a :class:`Conjugate`: the Pyro model, its data (small, drawn with a
fixed seed, so the skewed posteriors really are skewed), and the exact posterior mean and sd of every
latent element, from the formulas in its docstring. Hyperparameters travel in the data tuple, so the
model is ``model(*data)`` like every posterior of the suite.
"""

from typing import Callable, NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch


class Conjugate(NamedTuple):
    model: Callable
    data: tuple
    reference: dict  # element label -> (mean, sd), exact
    description: str


def _tensor(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


# ---- normal mean, known noise -----------------------------------------------------------------------
def normal_mean_model(y, sigma, prior_mean, prior_sd):
    """mu ~ N(prior_mean, prior_sd),   y_n ~ N(mu, sigma) with sigma known.

    Args:
        y: observations [N].
        sigma: the noise sd (0-dim).
        prior_mean, prior_sd: the prior of mu (0-dim).
    """
    mu = pyro.sample("mu", dist.Normal(prior_mean, prior_sd))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def make_normal_mean(seed=0):
    """1-D normal mean: the posterior is normal,

    precision  l_n = 1 / prior_sd^2 + N / sigma^2
    mean       m_n = (prior_mean / prior_sd^2 + sum(y) / sigma^2) / l_n,   sd = l_n^(-1/2)
    """
    y = np.random.default_rng(seed).normal(1.5, 2.0, size=8)
    sigma, m0, s0 = 2.0, 0.0, 5.0
    precision = 1 / s0**2 + y.size / sigma**2
    mean = (m0 / s0**2 + y.sum() / sigma**2) / precision
    return Conjugate(
        normal_mean_model,
        tuple(map(_tensor, (y, sigma, m0, s0))),
        {"mu": (float(mean), float(precision**-0.5))},
        "normal mean with known noise sd, normal prior, N=8: exact normal posterior",
    )


# ---- linear regression, known noise, correlated design ----------------------------------------------
def linear_regression_model(X, y, sigma, prior_sd):
    """w ~ N(0, prior_sd^2 I),   y_n ~ N(X_n . w, sigma) with sigma known.

    Args:
        X: design [N, D].
        y: responses [N].
        sigma: the noise sd (0-dim).
        prior_sd: the prior sd of each coefficient (0-dim).
    """
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), prior_sd).to_event(1))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal((X * w.to(X.dtype)).sum(-1), sigma), obs=y)


def make_linear_regression(seed=0):
    """Gaussian linear regression, 4 coefficients, the first two columns of X correlated (~0.9), so the
    posterior correlation of w_0 and w_1 is about -0.9. The posterior is normal,

        covariance  S = (X^T X / sigma^2 + I / prior_sd^2)^-1,   mean  m = S X^T y / sigma^2,

    and the reference holds m and sqrt(diag S).
    """
    rng = np.random.default_rng(seed)
    N = 30
    z = rng.normal(size=N)
    X = np.column_stack([z, z + 0.35 * rng.normal(size=N), rng.normal(size=N), rng.normal(size=N)])
    sigma, prior_sd = 1.0, 2.0
    y = X @ np.array([1.0, -0.5, 0.8, 0.0]) + sigma * rng.normal(size=N)
    cov = np.linalg.inv(X.T @ X / sigma**2 + np.eye(X.shape[1]) / prior_sd**2)
    mean = cov @ X.T @ y / sigma**2
    reference = {f"w[{i}]": (float(mean[i]), float(np.sqrt(cov[i, i]))) for i in range(X.shape[1])}
    return Conjugate(
        linear_regression_model,
        tuple(map(_tensor, (X, y, sigma, prior_sd))),
        reference,
        "linear regression, known noise, 4 coefficients two of which correlate at -0.9 "
        "a posteriori: exact multivariate normal",
    )


# ---- normal with unknown mean and variance ----------------------------------------------------------
def normal_gamma_model(y, prior_mean, prior_count, a0, b0):
    """sigma2 ~ InverseGamma(a0, b0),   mu | sigma2 ~ N(prior_mean, sqrt(sigma2 / prior_count)),
    y_n ~ N(mu, sqrt(sigma2)).

    Args:
        y: observations [N].
        prior_mean, prior_count: the prior of mu given sigma2 (its sd is that of prior_count points).
        a0, b0: shape and scale of the inverse-gamma prior of the variance (0-dim).
    """
    sigma2 = pyro.sample("sigma2", dist.InverseGamma(a0, b0))
    mu = pyro.sample("mu", dist.Normal(prior_mean, (sigma2 / prior_count).sqrt()))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, sigma2.sqrt()), obs=y)


def make_normal_gamma(seed=0):
    """Normal with unknown mean and variance, normal-inverse-gamma prior, N = 6. With ybar the mean
    and SS the sum of squared deviations of y,

        k_n = k0 + N,   m_n = (k0 m0 + N ybar) / k_n,   a_n = a0 + N / 2,
        b_n = b0 + SS / 2 + k0 N (ybar - m0)^2 / (2 k_n)
        sigma2 | y ~ InverseGamma(a_n, b_n):  mean b_n / (a_n - 1),  sd b_n / ((a_n - 1) sqrt(a_n - 2))
        mu | y ~ t_{2 a_n}(m_n, sqrt(b_n / (a_n k_n))):  mean m_n,  sd sqrt(b_n / (k_n (a_n - 1)))

    a_n = 6: sigma2 is right-skewed (skewness 4 sqrt(a_n - 2) / (a_n - 3) = 2.7), mu heavy-tailed.
    """
    y = np.random.default_rng(seed).normal(1.0, 1.5, size=6)
    m0, k0, a0, b0 = 0.0, 1.0, 3.0, 2.0
    n, ybar = y.size, y.mean()
    kn, an = k0 + n, a0 + n / 2
    mn = (k0 * m0 + n * ybar) / kn
    bn = b0 + 0.5 * ((y - ybar) ** 2).sum() + k0 * n * (ybar - m0) ** 2 / (2 * kn)
    reference = {
        "sigma2": (float(bn / (an - 1)), float(bn / ((an - 1) * np.sqrt(an - 2)))),
        "mu": (float(mn), float(np.sqrt(bn / (kn * (an - 1))))),
    }
    return Conjugate(
        normal_gamma_model,
        tuple(map(_tensor, (y, m0, k0, a0, b0))),
        reference,
        "normal with unknown mean and variance, normal-inverse-gamma prior, N=6: "
        "Student-t mean, skewed inverse-gamma variance",
    )


# ---- beta-binomial ----------------------------------------------------------------------------------
def beta_binomial_model(k, n, a0, b0):
    """theta ~ Beta(a0, b0),   k ~ Binomial(n, theta).

    Args:
        k: successes (0-dim, float).
        n: trials (0-dim, float).
        a0, b0: the beta prior (0-dim).
    """
    theta = pyro.sample("theta", dist.Beta(a0, b0))
    pyro.sample("k", dist.Binomial(n, theta), obs=k)


def make_beta_binomial(seed=0):
    """A rare event: k successes in n = 20 trials with success probability 0.1, uniform prior.

        theta | k ~ Beta(a, b),  a = a0 + k,  b = b0 + n - k
        mean a / (a + b),   sd sqrt(a b / ((a + b)^2 (a + b + 1)))

    near 0, so right-skewed and bounded.
    """
    n = 20
    k = np.random.default_rng(seed).binomial(n, 0.1)
    a0, b0 = 1.0, 1.0
    a, b = a0 + k, b0 + n - k
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    return Conjugate(
        beta_binomial_model,
        tuple(map(_tensor, (float(k), float(n), a0, b0))),
        {"theta": (float(a / (a + b)), float(sd))},
        f"beta-binomial, {k} successes in {n} trials, uniform prior: skewed beta posterior",
    )


# ---- gamma-Poisson ----------------------------------------------------------------------------------
def gamma_poisson_model(y, a0, b0):
    """lam ~ Gamma(a0, b0) (b0 a rate),   y_n ~ Poisson(lam).

    Args:
        y: counts [N] (float).
        a0, b0: shape and rate of the gamma prior (0-dim).
    """
    lam = pyro.sample("lam", dist.Gamma(a0, b0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Poisson(lam), obs=y)


def make_gamma_poisson(seed=0):
    """Poisson rate from N = 4 counts, gamma prior:

    lam | y ~ Gamma(a0 + sum(y), b0 + N):   mean a / b,   sd sqrt(a) / b
    """
    y = np.random.default_rng(seed).poisson(2.0, size=4).astype(np.float64)
    a0, b0 = 1.0, 0.5
    a, b = a0 + y.sum(), b0 + y.size
    return Conjugate(
        gamma_poisson_model,
        tuple(map(_tensor, (y, a0, b0))),
        {"lam": (float(a / b), float(np.sqrt(a) / b))},
        "Poisson rate from 4 counts, gamma prior: skewed gamma posterior",
    )


# where NUTS (500 warmup steps, 1000 draws, one core) takes under ~20 s; the others take 30-70 s
CHEAP = {"conjugate-normal-mean", "conjugate-beta-binomial", "conjugate-gamma-poisson"}

CONJUGATES = {
    "conjugate-normal-mean": make_normal_mean,
    "conjugate-linear-regression": make_linear_regression,
    "conjugate-normal-gamma": make_normal_gamma,
    "conjugate-beta-binomial": make_beta_binomial,
    "conjugate-gamma-poisson": make_gamma_poisson,
}
