"""Pyro transcriptions of nine posteriordb models: the same log density as the Stan code, up to a constant.

Conventions (the Stan code ships in ``data/stan/``, and each docstring writes its equations):

- a Stan parameter with no sampling statement has a flat prior on its declared support:
  ``pyro.sample(name, ImproperUniform(support, ...))``, which adds 0 to the log density;
- ``target += ...`` becomes ``pyro.factor``; a prior on a ``<lower=0>`` parameter that Stan leaves
  untruncated in the code (``sigma ~ cauchy(0, 2.5)``) is the half distribution, which differs from
  Stan's density by log 2 only;
- ``transformed parameters`` become ``pyro.deterministic`` sites; ``transformed data`` are computed once
  by the loader (:mod:`zoo.posteriordb`), so the models take them as arguments;
- site names are Stan's parameter names, so ``beta`` holds Stan's ``beta[1..K]`` as ``beta[0..K-1]``
  (the one exception is garch11's ``beta1_raw``, see :func:`garch11`); the regressions index it as
  ``beta[..., k]`` and multiply rather than ``@``, so that a batch of draws (a plate of particles left
  of the data plate) evaluates in one pass.

Recursions over time that are linear (ARMA errors, GARCH variances) are solved as one triangular
system instead of a Python loop: the same numbers, and NUTS takes hundreds of gradients per draw, each
of which would otherwise walk the loop forwards and backwards in T small autograd steps. Latent values
may arrive as float32 (the default dtype) while the data are float64: matrix products promote
explicitly.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def _flat(name, support, shape=()):
    """A flat (improper) prior on ``support``: Stan's parameter without a sampling statement."""
    return pyro.sample(name, dist.ImproperUniform(support, (), shape))


def _linear_recursion(rate, a):
    """x [T] with x_0 = a_0 and x_t = rate * x_{t-1} + a_t: the bidiagonal system (I - rate S) x = a
    (S shifts down by one), solved by forward substitution in one call, so autograd sees one node
    instead of T."""
    T = a.shape[0]
    system = torch.eye(T, dtype=a.dtype) - rate * torch.diag(a.new_ones(T - 1), -1)
    return torch.linalg.solve_triangular(system, a.unsqueeze(-1), upper=False).squeeze(-1)


def earn_height(earn, height):
    """ARM ch. 4: earnings on height, flat priors.

        earn_n ~ N(beta_1 + beta_2 height_n, sigma),   beta flat on R^2,   sigma flat on (0, inf)

    Args:
        earn: yearly earnings in dollars [N].
        height: height in inches [N].
    """
    beta = _flat("beta", constraints.real, (2,))
    sigma = _flat("sigma", constraints.positive)
    with pyro.plate("data", earn.shape[0]):
        pyro.sample("earn", dist.Normal(beta[..., 0] + beta[..., 1] * height, sigma), obs=earn)


def logearn_interaction_z(log_earn, z_height, male, inter):
    """ARM ch. 4: log earnings on standardised height, sex and their interaction, flat priors.

        log_earn_n ~ N(beta_1 + beta_2 z_n + beta_3 male_n + beta_4 z_n male_n, sigma)

    Args (Stan's transformed data, computed by the loader):
        log_earn: log(earn) [N].
        z_height: (height - mean) / sd, sd with N - 1 as Stan's sd() [N].
        male: 1 for men, 0 for women [N].
        inter: z_height * male [N].
    """
    beta = _flat("beta", constraints.real, (4,))
    sigma = _flat("sigma", constraints.positive)
    mean = beta[..., 0] + beta[..., 1] * z_height + beta[..., 2] * male + beta[..., 3] * inter
    with pyro.plate("data", log_earn.shape[0]):
        pyro.sample("log_earn", dist.Normal(mean, sigma), obs=log_earn)


def nes(partyid7, real_ideo, race_adj, age30_44, age45_64, age65up, educ1, gender, income):
    """ARM ch. 4: party identification (NES 2000) on ideology, race, age group, education, sex, income.

        partyid7_n ~ N(beta_1 + beta_2 real_ideo_n + ... + beta_9 income_n, sigma),   flat priors

    Args: the data vectors [N] in Stan's order; the age dummies are Stan's transformed data
    (age_discrete == 2, 3, 4), computed by the loader.
    """
    beta = _flat("beta", constraints.real, (9,))
    sigma = _flat("sigma", constraints.positive)
    mean = (
        beta[..., 0]
        + beta[..., 1] * real_ideo
        + beta[..., 2] * race_adj
        + beta[..., 3] * age30_44
        + beta[..., 4] * age45_64
        + beta[..., 5] * age65up
        + beta[..., 6] * educ1
        + beta[..., 7] * gender
        + beta[..., 8] * income
    )
    with pyro.plate("data", partyid7.shape[0]):
        pyro.sample("partyid7", dist.Normal(mean, sigma), obs=partyid7)


def kilpisjarvi(x, y, pmualpha, psalpha, pmubeta, psbeta):
    """Summer temperature at lake Kilpisjärvi on the year, a linear model with normal priors.

        alpha ~ N(pmualpha, psalpha),   beta ~ N(pmubeta, psbeta),   sigma flat on (0, inf)
        y_n ~ N(alpha + beta x_n, sigma)

    x is not centred, so alpha and beta are almost perfectly correlated a posteriori (the point of
    this posterior). Stan's ``xpred`` is used only outside the model block and is left out.

    Args:
        x: year [N].
        y: temperature [N].
        pmualpha, psalpha, pmubeta, psbeta: prior means and sds (0-dim tensors).
    """
    alpha = pyro.sample("alpha", dist.Normal(pmualpha, psalpha))
    beta = pyro.sample("beta", dist.Normal(pmubeta, psbeta))
    sigma = _flat("sigma", constraints.positive)
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


def diamonds(Y, Xc):
    """Diamond log price on 24 centred predictors (brms-generated), badly conditioned.

        b ~ N(0, 1)^24,   Intercept ~ t_3(8, 10),   sigma ~ half-t_3(0, 10)
        Y_n ~ N(Intercept + Xc_n . b, sigma)

    Stan writes the half-t as ``student_t_lpdf(sigma | 3, 0, 10) - student_t_lccdf(0 | 3, 0, 10)`` on
    ``real<lower=0> sigma``: the t folded at 0, whose density is twice the t's (a constant).
    ``prior_only`` is 0 in the data: the likelihood is always included.

    Args:
        Y: log price [N].
        Xc: the design matrix without its intercept column, centred (Stan's transformed data) [N, 24].
    """
    b = pyro.sample("b", dist.Normal(Xc.new_zeros(Xc.shape[1]), 1.0).to_event(1))
    intercept = pyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = pyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    with pyro.plate("data", Y.shape[0]):
        pyro.sample("Y", dist.Normal(intercept + (Xc * b.to(Xc.dtype)).sum(-1), sigma), obs=Y)


def garch11(y, sigma1):
    """GARCH(1, 1) volatility model, flat priors.

        sigma_1 = sigma1 (data),   sigma_t^2 = alpha0 + alpha1 (y_{t-1} - mu)^2 + beta1 sigma_{t-1}^2
        y_t ~ N(mu, sigma_t)
        mu flat on R, alpha0 flat on (0, inf), alpha1 flat on (0, 1), beta1 flat on (0, 1 - alpha1)

    beta1's upper bound depends on alpha1, which a Pyro site's support cannot express for NUTS (Pyro
    fixes each site's bijection at initialisation), and ``Uniform(0, 1 - alpha1)`` would add
    -log(1 - alpha1), which Stan does not have. So the site is ``beta1_raw`` flat on (0, 1) with

        beta1 = (1 - alpha1) * beta1_raw   (a ``pyro.deterministic`` site),

    and the Jacobian d beta1 / d beta1_raw = 1 - alpha1 enters as ``pyro.factor``: the density over
    (mu, alpha0, alpha1, beta1_raw) is exactly Stan's over (mu, alpha0, alpha1, beta1) times the
    Jacobian. The reference posterior's ``beta1_raw`` is beta1 / (1 - alpha1) per Stan draw.

    The variance recursion is linear, sigma_t^2 = beta1 sigma_{t-1}^2 + c_t with
    c = [sigma1^2, alpha0 + alpha1 (y_1 - mu)^2, ...], and solved by :func:`_linear_recursion`.

    Args:
        y: the series [T].
        sigma1: the first volatility (0-dim tensor).
    """
    mu = _flat("mu", constraints.real)
    alpha0 = _flat("alpha0", constraints.positive)
    alpha1 = _flat("alpha1", constraints.unit_interval)
    beta1_raw = _flat("beta1_raw", constraints.unit_interval)
    pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
    beta1 = pyro.deterministic("beta1", (1 - alpha1) * beta1_raw)
    T = y.shape[0]
    shocks = alpha0 + alpha1 * (y[:-1] - mu) ** 2
    c = torch.cat([(sigma1**2).expand(1).to(shocks), shocks])
    variance = _linear_recursion(beta1.to(c.dtype), c)
    with pyro.plate("data", T):
        pyro.sample("y", dist.Normal(mu, variance.sqrt()), obs=y)


def arma11(y):
    """ARMA(1, 1) with the first error's predecessor set to 0.

        mu ~ N(0, 10),   phi ~ N(0, 2),   theta ~ N(0, 2),   sigma ~ half-Cauchy(0, 2.5)
        nu_1 = mu + phi mu,   nu_t = mu + phi y_{t-1} + theta err_{t-1},   err_t = y_t - nu_t
        err_t ~ N(0, sigma)

    The errors follow the linear recursion err_t = -theta err_{t-1} + a_t with a_1 = y_1 - mu - phi mu
    and a_t = y_t - mu - phi y_{t-1}, solved by :func:`_linear_recursion`.

    Args:
        y: the series [T].
    """
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 10.0))
    phi = pyro.sample("phi", dist.Normal(y.new_tensor(0.0), 2.0))
    theta = pyro.sample("theta", dist.Normal(y.new_tensor(0.0), 2.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(y.new_tensor(2.5)))
    a = torch.cat([(y[0] - mu - phi * mu).reshape(1), y[1:] - mu - phi * y[:-1]])
    err = _linear_recursion(-theta.to(a.dtype), a)
    with pyro.plate("data", y.shape[0]):
        pyro.sample("err", dist.Normal(0.0, sigma), obs=err)


def gp_pois_regr(x, k):
    """Poisson regression on a latent Gaussian process, non-centred.

        rho ~ Gamma(25, 4) (rate),   alpha ~ half-N(0, 2),   f_tilde ~ N(0, I)
        K_ij = alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + 1e-10 delta_ij,   f = chol(K) f_tilde
        k_n ~ Poisson(exp(f_n))

    f is Stan's transformed parameter (a ``pyro.deterministic`` site); the latent site is f_tilde.
    The jitter 1e-10 is Stan's and needs float64 data.

    Args:
        x: inputs [N].
        k: counts [N] (float64, as Pyro's Poisson wants).
    """
    rho = pyro.sample("rho", dist.Gamma(x.new_tensor(25.0), 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(x.new_tensor(2.0)))
    f_tilde = pyro.sample("f_tilde", dist.Normal(x.new_zeros(x.shape[0]), 1.0).to_event(1))
    sq_dist = (x.unsqueeze(1) - x.unsqueeze(0)) ** 2
    cov = alpha**2 * torch.exp(-sq_dist / (2 * rho**2)) + 1e-10 * torch.eye(x.shape[0], dtype=x.dtype)
    f = pyro.deterministic("f", torch.linalg.cholesky(cov) @ f_tilde.to(x.dtype))
    with pyro.plate("data", k.shape[0]):
        pyro.sample("k", dist.Poisson(f.exp()), obs=k)


def hmm_example(y):
    """A two-state hidden Markov model with unit-variance normal emissions, states summed out.

        theta1, theta2 ~ flat on the simplex (Dirichlet(1, 1)),   theta = [theta1; theta2] (rows: from)
        mu positive and ordered,   target += log N(mu_1 | 3, 1) + log N(mu_2 | 10, 1)
        gamma_1(k) = log N(y_1 | mu_k, 1)
        gamma_t(k) = logsumexp_j [gamma_{t-1}(j) + log theta_jk] + log N(y_t | mu_k, 1)
        target += logsumexp_k gamma_N(k)

    Stan's forward algorithm, with the first state given no initial distribution (weight 1 each) as in
    the Stan code. Each step is a matrix product in the log semiring, gamma_t = gamma_{t-1} (x) M_t with
    M_t[j, k] = log theta_jk + log N(y_t | mu_k, 1), and such products associate: the N - 1 matrices
    are multiplied pairwise in log2(N) rounds (:func:`_log_matmul_chain`) rather than in N - 1 steps,
    the same sum in another order and 5x faster to differentiate. Stan's code fixes K = 2 (theta[1],
    theta[2], the two priors on mu), so K is not an argument.

    Args:
        y: observations [N].
    """
    ones = y.new_ones(2)
    theta1 = pyro.sample("theta1", dist.Dirichlet(ones))
    theta2 = pyro.sample("theta2", dist.Dirichlet(ones))
    mu = _flat("mu", constraints.positive_ordered_vector, (2,))
    theta = pyro.deterministic("theta", torch.stack([theta1, theta2]))
    pyro.factor("mu_prior", dist.Normal(3.0, 1.0).log_prob(mu[0]) + dist.Normal(10.0, 1.0).log_prob(mu[1]))
    log_emit = dist.Normal(mu, 1.0).log_prob(y.unsqueeze(-1))  # [N, K]
    steps = theta.log() + log_emit[1:].unsqueeze(-2)  # M_t [N - 1, K, K]
    pyro.factor("forward", torch.logsumexp(log_emit[0].unsqueeze(-1) + _log_matmul_chain(steps), dim=(-2, -1)))


def _log_matmul_chain(m):
    """M_1 (x) M_2 (x) ... (x) M_T for m [T, K, K], (A (x) B)[i, k] = logsumexp_j A[i, j] + B[j, k]:
    neighbours are multiplied pairwise until one matrix is left (an odd one out waits a round)."""
    while m.shape[0] > 1:
        h = m.shape[0] // 2
        pairs = torch.logsumexp(m[0 : 2 * h : 2].unsqueeze(-1) + m[1 : 2 * h : 2].unsqueeze(-3), dim=-2)
        m = torch.cat([pairs, m[2 * h :]])
    return m[0]
