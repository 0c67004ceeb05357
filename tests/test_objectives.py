"""Rényi-α and importance-weighted (IWAE) training objectives: elbo="renyi" (alpha) and elbo="iwae".

With K draws z_k ~ q and log weights ℓ_k = log p(x, z_k) − log q(z_k), the objective is
L_α = 1/(1 − α) log (1/K Σ_k exp((1 − α) ℓ_k)) (Li & Turner 2016), the IWAE bound at α = 0 (Burda et al.
2016). What the maths fixes, and is checked here:

* with q the exact posterior every weight is p(x), so every L_α is log p(x), for any α and K;
* the estimate is the exact function of the draws above, one bound per element of the plates holding every
  site (per data point), with the minibatch scale outside the log-mean-exp;
* IWAE: E L_1 = ELBO, E L_K rises with K and stays below log p(x) (Burda et al., Theorem 1);
* training with α < 1 gives wider (mass-covering) mean-field sds than the ELBO, near the minimiser of
  D_α(q ‖ p) in closed form;
* the compiled step gives the eager step's loss and gradients; bad settings are clear errors.
"""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_compiled_fit_is_the_eager_fit
from pyro.infer.autoguide import AutoNormal
from scipy.optimize import minimize

import inference
from inference.capture import CapturedStep
from inference.errors import InvalidInputError
from inference.objectives import make_elbo, scale_plate
from inference.svi import SVI, CompileNotice
from zoo import VAE
from zoo.data import digits
from zoo.posteriordb.conjugate import make_linear_regression, make_normal_mean


def bound(log_w, alpha):
    """L_α of log weights [K, ...] along the draws: the definition, written out independently."""
    a = 1.0 - alpha
    return (torch.logsumexp(a * log_w, dim=0) - math.log(log_w.shape[0])) / a


# ---- a local model: z_n ~ N(0, 1), x_n ~ N(z_n, 1); p(x_n) = N(0, 2), p(z_n | x_n) = N(x_n / 2, 1/2) ----
def local_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def local_guide(shift=0.0, widen=1.0, draws=None):
    """q(z_n) = N(x_n / 2 + shift, widen² / 2): the exact posterior at shift 0, widen 1."""

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x / 2 + shift, widen * 0.5**0.5))
        if draws is not None:
            draws.append(z)

    return guide


def local_x():
    return torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5


# ---- the conjugate normal mean (zoo.posteriordb): a global latent, closed-form log p(x) ----------------
NORMAL = make_normal_mean()
Y, SIGMA, M0, S0 = NORMAL.data
POST_MEAN, POST_SD = NORMAL.reference["mu"]


def log_evidence():
    """y ~ N(m0 1, σ² I + s0² 1 1ᵀ): mu integrated out."""
    n = Y.shape[0]
    cov = SIGMA**2 * torch.eye(n, dtype=torch.float64) + S0**2 * torch.ones(n, n, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(M0 * torch.ones(n, dtype=torch.float64), cov).log_prob(Y).item()


def normal_guide(loc, scale, draws=None):
    def guide(y, sigma, prior_mean, prior_sd):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(loc, dtype=torch.float64), scale))
        if draws is not None:
            draws.append(mu)

    return guide


OBJECTIVES = [
    ("iwae", None, 1, False),
    ("iwae", None, 7, False),
    ("iwae", None, 7, True),
    ("renyi", 0.5, 3, False),
    ("renyi", 0.5, 5, True),
    ("renyi", 2.0, 4, True),
]


@pytest.mark.parametrize("name, alpha, k, vectorize", OBJECTIVES)
def test_the_exact_posterior_makes_every_bound_the_log_evidence(name, alpha, k, vectorize):
    # q = p(z | x): every weight is p(x), whatever the draw, so L_α = log p(x) for every α and K.
    # Float64 throughout: equal to rounding (1e-10 relative of values of size 10-20).
    elbo = make_elbo(name, alpha=alpha, num_particles=k, vectorize_particles=vectorize, max_plate_nesting=1)
    loss = elbo.loss(NORMAL.model, normal_guide(POST_MEAN, POST_SD), *NORMAL.data)
    assert loss == pytest.approx(-log_evidence(), rel=1e-10)
    # per data point: a sum of log p(x_n) = log N(x_n; 0, 2), each element of the data plate its own bound,
    # times the minibatch scale of the plate
    x = local_x()
    with scale_plate("data", 3.0):
        loss = elbo.loss(local_model, local_guide(), x)
    assert loss == pytest.approx(-3.0 * dist.Normal(torch.zeros_like(x), 2**0.5).log_prob(x).sum().item(), rel=1e-10)


@pytest.mark.parametrize("name, alpha, k, vectorize", OBJECTIVES)
def test_the_estimate_is_the_bound_of_its_draws(name, alpha, k, vectorize):
    # The loss is an exact function of the guide's draws (recorded here): float64 rounding only.
    alpha = alpha or 0.0
    elbo = make_elbo(
        name,
        alpha=alpha if name == "renyi" else None,
        num_particles=k,
        vectorize_particles=vectorize,
        max_plate_nesting=1,
    )
    # Local latents: one bound per data point, then the sum; the minibatch scale (3) multiplies the bounds,
    # outside the log-mean-exp (inside, it would be another objective: a bound of order 1 - 3 (1 - α)).
    x, draws = local_x(), []
    with scale_plate("data", 3.0):
        loss = elbo.loss(local_model, local_guide(shift=0.3, widen=1.4, draws=draws), x)
    z = draws[0] if vectorize and k > 1 else torch.stack(draws)  # [K, N]
    log_w = (
        dist.Normal(0.0, 1.0).log_prob(z)
        + dist.Normal(z, 1.0).log_prob(x)
        - dist.Normal(x / 2 + 0.3, 1.4 * 0.5**0.5).log_prob(z)
    )
    assert z.shape == (k, 6)
    assert loss == pytest.approx(-3.0 * bound(log_w, alpha).sum().item(), rel=1e-10)
    # A global latent: the data plate does not hold mu, so there is one joint bound, the scaled likelihood
    # inside each weight (the estimate of log p(x, mu) a minibatch gives).
    draws = []
    with scale_plate("data", 3.0):
        loss = elbo.loss(NORMAL.model, normal_guide(POST_MEAN + POST_SD, 1.5 * POST_SD, draws), *NORMAL.data)
    mu = (draws[0] if vectorize and k > 1 else torch.stack(draws)).reshape(k, 1)
    log_w = (
        dist.Normal(M0, S0).log_prob(mu).squeeze(-1)
        + 3.0 * dist.Normal(mu, SIGMA).log_prob(Y).sum(-1)
        - dist.Normal(torch.tensor(POST_MEAN + POST_SD, dtype=torch.float64), 1.5 * POST_SD).log_prob(mu).squeeze(-1)
    )
    assert loss == pytest.approx(-bound(log_w, alpha).item(), rel=1e-10)


@pytest.mark.parametrize("name, alpha, k, vectorize", [("iwae", None, 5, True), ("renyi", 0.5, 3, False)])
def test_a_subsampled_pyro_plate_scales_the_bounds_outside(name, alpha, k, vectorize):
    # Pyro's own minibatching, pyro.plate(size=12, subsample=4 indices), scales by 12/4: outside, as above.
    x, idx, draws = torch.linspace(-2.0, 3.0, 12, dtype=torch.float64), torch.tensor([1, 4, 7, 10]), []

    def model(x):
        with pyro.plate("data", x.shape[0], subsample=idx) as i:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[i])

    def guide(x):
        with pyro.plate("data", x.shape[0], subsample=idx) as i:
            draws.append(pyro.sample("z", dist.Normal(x[i] / 2 + 0.3, 1.4 * 0.5**0.5)))

    elbo = make_elbo(name, alpha=alpha, num_particles=k, vectorize_particles=vectorize, max_plate_nesting=1)
    loss = elbo.loss(model, guide, x)
    z = draws[0] if vectorize else torch.stack(draws)  # [K, 4]
    xs = x[idx]
    log_w = (
        dist.Normal(0.0, 1.0).log_prob(z)
        + dist.Normal(z, 1.0).log_prob(xs)
        - dist.Normal(xs / 2 + 0.3, 1.4 * 0.5**0.5).log_prob(z)
    )
    assert z.shape == (k, 4)
    assert loss == pytest.approx(-3.0 * bound(log_w, alpha or 0.0).sum().item(), rel=1e-10)


def copies_model(y, sigma, prior_mean, prior_sd, copies):
    # R independent copies of the normal-mean problem; the copies plate holds every site, so the loss is
    # the sum of R independent bounds: R replicates of the estimate in one call.
    with pyro.plate("copies", copies, dim=-2):
        mu = pyro.sample("mu", dist.Normal(prior_mean, prior_sd))
        with pyro.plate("data", y.shape[0], dim=-1):
            pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_the_iwae_bound_rises_with_k_towards_the_log_evidence():
    # A fixed q = N(m + 0.5 s, (1.3 s)²) against the posterior N(m, s²) (Burda et al. 2016, Theorem 1):
    # E L_1 = ELBO = log p(x) − KL(q ‖ p), E L_K non-decreasing in K, and below log p(x).
    loc, scale = POST_MEAN + 0.5 * POST_SD, 1.3 * POST_SD
    log_px = log_evidence()
    kl = math.log(POST_SD / scale) + (scale**2 + (loc - POST_MEAN) ** 2) / (2 * POST_SD**2) - 0.5

    def guide(y, sigma, prior_mean, prior_sd, copies):
        with pyro.plate("copies", copies, dim=-2):
            pyro.sample("mu", dist.Normal(torch.tensor(loc, dtype=torch.float64), scale))

    copies, batches = 500, 20
    means, ses = {}, {}
    pyro.set_rng_seed(0)
    for k in (1, 2, 10, 100):
        elbo = make_elbo("iwae", num_particles=k, vectorize_particles=True, max_plate_nesting=2)
        # batch means over `copies` replicates each: their spread gives the standard error
        values = np.array([-elbo.loss(copies_model, guide, *NORMAL.data, copies) / copies for _ in range(batches)])
        means[k], ses[k] = values.mean(), values.std(ddof=1) / math.sqrt(batches)
    # Monte Carlo tolerances: 4 standard errors of the means (of their difference for pairs).
    assert abs(means[1] - (log_px - kl)) < 4 * ses[1]
    ks = sorted(means)
    for a, b in zip(ks, ks[1:]):
        assert means[b] - means[a] > -4 * math.hypot(ses[a], ses[b])
    for k in ks:
        assert means[k] < log_px + 4 * ses[k]
    assert means[100] - means[1] > 4 * math.hypot(ses[1], ses[100])  # it really rises
    # Towards log p(x): for large K the gap is χ²(p ‖ q) / (2K) + O(1/K²) (the delta method on
    # log of a mean of K weights; Maddison et al. 2017), with ∫ p² / q in closed form for two normals.
    # That is under a fiftieth of the K = 1 gap (the KL) here, so a tenth leaves room for the O(1/K²) terms.
    chi2 = (
        scale**2
        / (POST_SD * math.sqrt(2 * scale**2 - POST_SD**2))
        * math.exp((loc - POST_MEAN) ** 2 / (2 * scale**2 - POST_SD**2))
        - 1
    )
    assert chi2 / (2 * 100) < kl / 50
    assert log_px - means[100] < kl / 10 + 4 * ses[100]


def renyi_optimal_sds(cov, alpha):
    """The mean-field sds s minimising D_α(q ‖ p) for p = N(m, C), q = N(m, diag s²), from the closed form

        log ∫ q^α p^(1−α) = −α/2 log det S − (1−α)/2 log det C − 1/2 log det(α S⁻¹ + (1−α) C⁻¹),

    D_α = log ∫ q^α p^(1−α) / (α − 1): for 0 < α < 1, minimising D_α maximises the integral."""
    c_inv, logdet_c = np.linalg.inv(cov), np.linalg.slogdet(cov)[1]

    def negative_log_integral(log_sd):
        s2 = np.exp(2 * log_sd)
        m = alpha * np.diag(1 / s2) + (1 - alpha) * c_inv
        return alpha / 2 * np.log(s2).sum() + (1 - alpha) / 2 * logdet_c + 0.5 * np.linalg.slogdet(m)[1]

    start = np.log(np.sqrt(np.diag(cov)))
    result = minimize(
        negative_log_integral, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}
    )
    assert result.success
    return np.exp(result.x)


def test_renyi_and_iwae_guides_cover_more_mass_than_the_elbos():
    # Linear regression whose posterior correlates w0 and w1 at -0.91. The ELBO's mean-field optimum has
    # sds 1/sqrt(Λ_ii) (Λ the posterior precision), much narrower than the marginal sds; minimising
    # D_α(q ‖ p) for α < 1 gives wider ones (in 2-D with correlation ρ: s² / σ² = t solving
    # (1 − α) t² + (2α − 1) t − α (1 − ρ²) = 0: 1 − ρ² at α → 1, sqrt(1 − ρ²) at α = 1/2, 1 at α → 0).
    case = make_linear_regression()
    X, _, sigma, prior_sd = case.data
    cov = np.linalg.inv((X.T @ X / sigma**2 + torch.eye(4, dtype=X.dtype) / prior_sd**2).numpy())
    marginal = np.sqrt(np.diag(cov))
    kl_optimum = 1 / np.sqrt(np.diag(np.linalg.inv(cov)))
    half_optimum = renyi_optimal_sds(cov, 0.5)
    assert np.all((kl_optimum < half_optimum) & (half_optimum < marginal))
    assert np.all(half_optimum[:2] > 1.4 * kl_optimum[:2])  # the maths predicts a large widening

    sds = {}
    with warnings.catch_warnings():
        # the verdict rightly warns that a mean-field guide cannot hold this posterior
        warnings.simplefilter("ignore", inference.ConvergenceWarning)
        for name, alpha in (("trace", None), ("renyi", 0.5), ("iwae", None)):
            fit = inference.svi(
                case.model,
                AutoNormal(case.model),
                *case.data,
                steps=1000,
                lr=0.05,
                elbo=name,
                alpha=alpha,
                num_particles=64,
                vectorize_particles=True,
                max_plate_nesting=1,
                seed=0,
                progress=False,
            )
            sds[name] = fit.params["AutoNormal.scales.w"].numpy()
    # Optimisation noise: within 10% of the optimum, the tolerance tests/test_svi.py gives a fitted sd.
    np.testing.assert_allclose(sds["trace"], kl_optimum, rtol=0.1)
    # K = 64 draws make the Rényi estimate's objective L_α up to O(1/K) (its bias is a variance over K):
    # the sds are near the D_α minimiser, every one, within the same 10%.
    np.testing.assert_allclose(sds["renyi"], half_optimum, rtol=0.1)
    assert np.all(sds["renyi"][:2] > sds["trace"][:2])
    # IWAE: its K → ∞ limit is log p(x) whatever q (no optimum to compare with), and its guide gradient's
    # signal-to-noise ratio falls with K (Rainforth et al. 2018): only the direction is checked, that the
    # correlated pair widens beyond the ELBO's (by more than the two fits' 10% noise).
    assert np.all(sds["iwae"][:2] > 1.2 * sds["trace"][:2])


# ---- the compiled step ---------------------------------------------------------------------------------
def local_param_guide(x):
    loc = pyro.param("loc", torch.zeros(x.shape[0]))
    log_scale = pyro.param("log_scale", torch.zeros(x.shape[0]))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, log_scale.exp()))


def regression(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 10.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)


def regression_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(32, 3, generator=g)
    return X, X @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(32, generator=g)


@pytest.mark.parametrize(
    "name, alpha, k, vectorize",
    [("iwae", None, 4, False), ("iwae", None, 4, True), ("renyi", 0.5, 3, True), ("jit-renyi", 2.0, 3, False)],
)
@pytest.mark.parametrize("local", [True, False])
def test_the_compiled_step_gives_the_eager_loss_and_gradients(name, alpha, k, vectorize, local):
    if local:
        model, guide, data = local_model, local_param_guide, (local_x().float(),)
    else:
        model, guide, data = regression, AutoNormal(regression), regression_data()
    elbo = make_elbo(name, alpha=alpha, num_particles=k, vectorize_particles=vectorize, max_plate_nesting=1)
    with scale_plate("data", 4.0):
        elbo.loss(model, guide, *data)  # creates the parameters
    store = pyro.get_param_store()
    names = sorted(store.keys())
    params = [store[n].unconstrained() for n in names]
    step = CapturedStep(elbo, model, guide, params, data, context=lambda: scale_plate("data", 4.0))
    out = []
    for run in ("eager", "captured"):
        for p in params:
            p.grad = None
        pyro.set_rng_seed(7)
        if run == "eager":
            with scale_plate("data", 4.0):
                loss = elbo.loss_and_grads(model, guide, *data)
        else:
            loss = float(step(data)[0])
        out.append((loss, [p.grad.clone() for p in params]))
    (eager_loss, eager_grads), (loss, grads) = out
    # the same operations on the same draws: equal to float32 rounding (as in tests/test_capture.py)
    assert loss == pytest.approx(eager_loss, rel=1e-6, abs=1e-4)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_a_compiled_fit_is_the_eager_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileNotice)
        warnings.simplefilter("ignore", inference.ConvergenceWarning)
        assert_compiled_fit_is_the_eager_fit(
            regression,
            lambda: AutoNormal(regression),
            *regression_data(),
            elbo="iwae",
            num_particles=5,
            vectorize_particles=True,
            max_plate_nesting=1,
        )


# ---- the VAE: the per-datapoint IWAE bound of Burda et al. ----------------------------------------------
def test_the_vae_trains_on_the_per_datapoint_iwae_bound():
    x_train, x_test, _, _ = digits()
    vae = VAE(latent_dim=2, hidden=(32,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileNotice)
        warnings.simplefilter("ignore", inference.ConvergenceWarning)  # 8 steps: too few to judge, rightly
        vae.fit(x_train[:512], epochs=2, batch_size=128, elbo="iwae", num_particles=5, seed=0, progress=False)
    assert vae.fit_.diagnostics["elbo"] == "iwae" and vae.fit_.diagnostics["step"] == "torchscript"
    assert np.isfinite(vae.losses_).all()
    # The objective on a batch of n points with scale s is −s Σ_n L_5(x_n), whose expectation is −s n times
    # the VAE's own mean IWAE bound with k = 5 (vae.iwae, an independent computation). A bound over the
    # batch jointly would be larger by about n times the per-point gain of K = 5 over K = 1 (the check
    # below shows that gain is many standard errors); the tolerance is 4 standard errors of the difference.
    x, s, repeats = x_test[:64], 4.0, 60
    elbo = make_elbo("iwae", num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(1)
    with scale_plate("data", s):
        losses = np.array([elbo.loss(vae.model, vae.guide, x) / (s * x.shape[0]) for _ in range(repeats)])
    bounds = np.array([vae.iwae(x, k=5, seed=r) for r in range(repeats)])
    ones = np.array([vae.iwae(x, k=1, seed=r) for r in range(repeats)])
    se = math.hypot(losses.std(ddof=1), bounds.std(ddof=1)) / math.sqrt(repeats)
    assert abs(-losses.mean() - bounds.mean()) < 4 * se
    assert bounds.mean() - ones.mean() > 8 * se


# ---- names and bad input -------------------------------------------------------------------------------
BAD = [
    (dict(elbo="renyi"), "needs alpha"),
    (dict(elbo="renyi", alpha=1), "ELBO itself"),
    (dict(elbo="renyi", alpha=1.0), "ELBO itself"),
    (dict(elbo="renyi", alpha=-0.5), "alpha must be a number >= 0"),
    (dict(elbo="renyi", alpha=float("nan")), "alpha must be a number >= 0"),
    (dict(elbo="renyi", alpha="0.5"), "alpha must be a number >= 0"),
    (dict(elbo="renyi", alpha=True), "alpha must be a number >= 0"),
    (dict(elbo="iwae", alpha=0.5), "alpha=0"),
    (dict(elbo="trace", alpha=0.5), "takes none"),
    (dict(elbo="iwae", num_particles=0), "num_particles"),
    (dict(elbo="renyi", alpha=0.5, num_particles=2.5), "num_particles"),
    (dict(elbo="iwea"), "elbo"),
]


@pytest.mark.parametrize("kwargs, match", BAD)
def test_bad_settings_are_clear_errors(kwargs, match):
    X, y = regression_data()
    with pytest.raises(InvalidInputError, match=match):
        make_elbo(kwargs["elbo"], **{k: v for k, v in kwargs.items() if k != "elbo"})
    with pytest.raises(InvalidInputError, match=match):
        SVI(regression, AutoNormal(regression), **kwargs)
    with pytest.raises(InvalidInputError, match=match):
        inference.svi(regression, AutoNormal(regression), X, y, steps=5, progress=False, **kwargs)


def test_the_vae_passes_the_objective_on_and_refuses_a_bad_one():
    x = digits().x_train[:64]
    with pytest.raises(InvalidInputError, match="needs alpha"):
        VAE(latent_dim=2, hidden=(8,)).fit(x, epochs=1, elbo="renyi", progress=False)


def test_a_guide_without_reparameterised_draws_is_refused():
    # Pyro's estimator gives such sites no score-function term (none at all at α = 0): they would not train
    def model(y):
        k = pyro.sample("k", dist.Poisson(3.0))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(0.0, 1.0 + k), obs=y)

    def guide(y):
        rate = pyro.param("rate", torch.tensor(2.0), constraint=dist.constraints.positive)
        pyro.sample("k", dist.Poisson(rate))

    with pytest.raises(InvalidInputError, match="reparameterised.*'k'"):
        inference.svi(model, guide, torch.randn(10), steps=5, elbo="iwae", num_particles=3, progress=False)
