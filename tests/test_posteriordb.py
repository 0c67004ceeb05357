"""The posteriordb suite: every transcription has Stan's log density, the references fit the models,
the closed forms are right, and NUTS finds the reference means.

The log densities here are written a second time, from the Stan code, in numpy/scipy (loops where Stan
loops, transformed data computed from the raw JSON), independently of ``zoo/posteriordb/models.py``.
"""

import json
import math
import re
import warnings
import zipfile

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_value
from scipy import integrate, stats

from inference.diagnostics import flat_elements
from inference.errors import InvalidInputError
from inference.mcmc import nuts
from zoo import posteriordb

NAMES = posteriordb.names()
POSTERIORDB = [n for n in NAMES if not n.startswith("conjugate-")]
CONJUGATE = [n for n in NAMES if n.startswith("conjugate-")]


# ---- helpers ----------------------------------------------------------------------------------------
def raw_data(name):
    """posteriordb's data block of posterior ``name``, read from the shipped zip (numpy arrays)."""
    data_name = {
        "earnings-earn_height": "earnings",
        "earnings-logearn_interaction_z": "earnings",
        "kilpisjarvi_mod-kilpisjarvi": "kilpisjarvi_mod",
        "nes2000-nes": "nes2000",
        "diamonds-diamonds": "diamonds",
        "garch-garch11": "garch",
        "gp_pois_regr-gp_pois_regr": "gp_pois_regr",
        "arma-arma11": "arma",
        "hmm_example-hmm_example": "hmm_example",
    }[name]
    with zipfile.ZipFile(posteriordb.DATA_DIR / f"{data_name}.json.zip") as z:
        d = json.loads(z.read(f"{data_name}.json"))
    return {k: np.asarray(v, dtype=float) for k, v in d.items()}


def reference_point(p):
    """{site: float64 tensor}: the reference means put back into the sites' shapes."""
    sites = {}
    for label, (mean, _) in p.reference.items():
        match = re.fullmatch(r"(\w+)\[([\d, ]+)\]", label)
        if match:
            index = tuple(int(i) for i in match.group(2).split(","))
            sites.setdefault(match.group(1), {})[index] = mean
        else:
            sites[label] = mean
    values = {}
    for site, v in sites.items():
        if isinstance(v, dict):
            array = np.zeros(tuple(max(i[d] for i in v) + 1 for d in range(len(next(iter(v))))))
            for index, mean in v.items():
                array[index] = mean
            v = array
        values[site] = torch.as_tensor(v, dtype=torch.float64)
    return values


def trace_at(p, values):
    """The model's trace with its latent sites set to ``values`` (no draws from the priors, which an
    improper prior cannot make; the sites stay latent, unlike under poutine.condition)."""
    model = InitMessenger(init_to_value(values=values, fallback=None))(p.model)
    return poutine.trace(model).get_trace(*p.data)


def latent_sites(trace):
    return [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not poutine.util.site_is_subsample(s)
    ]


def perturbed(p, values, seed, size=0.5):
    """The point ``values`` moved by +-size reference sds per element (random signs), kept inside each
    site's support: a simplex moves along the simplex (the last element takes up the change)."""
    rng = np.random.default_rng(seed)
    trace = trace_at(p, values)
    out = {}
    for site, value in values.items():
        sds = np.array(
            [p.reference[label][1] for label, _ in flat_elements({site: value.numpy()[None]}, [site])]
        ).reshape(value.shape)
        step = size * sds * rng.choice([-1.0, 1.0], size=value.shape)
        support = trace.nodes[site]["fn"].support
        while True:
            new = value.numpy() + step
            if support is torch.distributions.constraints.simplex:
                new[-1] = 1 - new[:-1].sum()
            new = torch.as_tensor(new)
            if bool(support.check(new).all()):
                break
            step = step / 2
        out[site] = new
    return out


# ---- the Stan models again, in numpy/scipy: log density up to a constant ----------------------------
norm, t_dist = stats.norm, stats.t


def earn_height_logp(v, d):
    return norm.logpdf(d["earn"], v["beta"][0] + v["beta"][1] * d["height"], v["sigma"]).sum()


def logearn_interaction_z_logp(v, d):
    z = (d["height"] - d["height"].mean()) / d["height"].std(ddof=1)
    b = v["beta"]
    mean = b[0] + b[1] * z + b[2] * d["male"] + b[3] * z * d["male"]
    return norm.logpdf(np.log(d["earn"]), mean, v["sigma"]).sum()


def nes_logp(v, d):
    b, age = v["beta"], d["age_discrete"]
    mean = (
        b[0]
        + b[1] * d["real_ideo"]
        + b[2] * d["race_adj"]
        + b[3] * (age == 2)
        + b[4] * (age == 3)
        + b[5] * (age == 4)
        + b[6] * d["educ1"]
        + b[7] * d["gender"]
        + b[8] * d["income"]
    )
    return norm.logpdf(d["partyid7"], mean, v["sigma"]).sum()


def kilpisjarvi_logp(v, d):
    return (
        norm.logpdf(v["alpha"], d["pmualpha"], d["psalpha"])
        + norm.logpdf(v["beta"], d["pmubeta"], d["psbeta"])
        + norm.logpdf(d["y"], v["alpha"] + v["beta"] * d["x"], v["sigma"]).sum()
    )


def diamonds_logp(v, d):
    X = d["X"][:, 1:]
    Xc = X - X.mean(axis=0)
    return (
        norm.logpdf(v["b"], 0, 1).sum()
        + t_dist.logpdf(v["Intercept"], 3, 8, 10)
        + t_dist.logpdf(v["sigma"], 3, 0, 10)
        - t_dist.logsf(0, 3, 0, 10)
        + norm.logpdf(d["Y"], v["Intercept"] + Xc @ v["b"], v["sigma"]).sum()
    )


def garch_logp(v, d):
    # Pyro's site is beta1_raw = beta1 / (1 - alpha1): Stan's density in beta1, times the Jacobian
    mu, alpha0, alpha1 = v["mu"], v["alpha0"], v["alpha1"]
    beta1 = v["beta1_raw"] * (1 - alpha1)
    y = d["y"]
    sigma = np.empty(y.size)
    sigma[0] = d["sigma1"]
    for t in range(1, y.size):
        sigma[t] = math.sqrt(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * sigma[t - 1] ** 2)
    return norm.logpdf(y, mu, sigma).sum() + math.log(1 - alpha1)


def arma_logp(v, d):
    mu, phi, theta, sigma = v["mu"], v["phi"], v["theta"], v["sigma"]
    y = d["y"]
    err = np.empty(y.size)
    err[0] = y[0] - (mu + phi * mu)
    for t in range(1, y.size):
        err[t] = y[t] - (mu + phi * y[t - 1] + theta * err[t - 1])
    return (
        norm.logpdf(mu, 0, 10)
        + norm.logpdf(phi, 0, 2)
        + norm.logpdf(theta, 0, 2)
        + stats.cauchy.logpdf(sigma, 0, 2.5)
        + norm.logpdf(err, 0, sigma).sum()
    )


def gp_logp(v, d):
    x, rho, alpha = d["x"], v["rho"], v["alpha"]
    cov = np.array([[alpha**2 * math.exp(-((xi - xj) ** 2) / (2 * rho**2)) for xj in x] for xi in x])
    f = np.linalg.cholesky(cov + 1e-10 * np.eye(x.size)) @ v["f_tilde"]
    return (
        stats.gamma.logpdf(rho, 25, scale=1 / 4)
        + norm.logpdf(alpha, 0, 2)
        + norm.logpdf(v["f_tilde"]).sum()
        + stats.poisson.logpmf(d["k"], np.exp(f)).sum()
    )


def hmm_logp(v, d):
    theta, mu, y = [v["theta1"], v["theta2"]], v["mu"], d["y"]
    K = 2
    gamma = np.empty((y.size, K))
    for k in range(K):
        gamma[0, k] = norm.logpdf(y[0], mu[k], 1)
    for t in range(1, y.size):
        for k in range(K):
            acc = [gamma[t - 1, j] + math.log(theta[j][k]) + norm.logpdf(y[t], mu[k], 1) for j in range(K)]
            gamma[t, k] = np.logaddexp.reduce(acc)
    return norm.logpdf(mu[0], 3, 1) + norm.logpdf(mu[1], 10, 1) + np.logaddexp.reduce(gamma[-1])


# conjugate models: vectorised over leading axes of the parameters (for the quadrature below)
def normal_mean_logp(v, d):
    y, sigma, m0, s0 = d
    mu = np.asarray(v["mu"])[..., None]
    return norm.logpdf(mu[..., 0], m0, s0) + norm.logpdf(y, mu, sigma).sum(-1)


def linear_regression_logp(v, d):
    X, y, sigma, prior_sd = d
    return norm.logpdf(v["w"], 0, prior_sd).sum() + norm.logpdf(y, X @ v["w"], sigma).sum()


def normal_gamma_logp(v, d):
    y, m0, k0, a0, b0 = d
    sigma2, mu = np.asarray(v["sigma2"]), np.asarray(v["mu"])
    return (
        stats.invgamma.logpdf(sigma2, a0, scale=b0)
        + norm.logpdf(mu, m0, np.sqrt(sigma2 / k0))
        + norm.logpdf(y, mu[..., None], np.sqrt(sigma2)[..., None]).sum(-1)
    )


def beta_binomial_logp(v, d):
    k, n, a0, b0 = d
    return stats.beta.logpdf(v["theta"], a0, b0) + stats.binom.logpmf(k, n, v["theta"])


def gamma_poisson_logp(v, d):
    y, a0, b0 = d
    lam = np.asarray(v["lam"])[..., None]
    return stats.gamma.logpdf(lam[..., 0], a0, scale=1 / b0) + stats.poisson.logpmf(y, lam).sum(-1)


STAN_LOGP = {
    "earnings-earn_height": earn_height_logp,
    "earnings-logearn_interaction_z": logearn_interaction_z_logp,
    "kilpisjarvi_mod-kilpisjarvi": kilpisjarvi_logp,
    "nes2000-nes": nes_logp,
    "diamonds-diamonds": diamonds_logp,
    "garch-garch11": garch_logp,
    "gp_pois_regr-gp_pois_regr": gp_logp,
    "arma-arma11": arma_logp,
    "hmm_example-hmm_example": hmm_logp,
    "conjugate-normal-mean": normal_mean_logp,
    "conjugate-linear-regression": linear_regression_logp,
    "conjugate-normal-gamma": normal_gamma_logp,
    "conjugate-beta-binomial": beta_binomial_logp,
    "conjugate-gamma-poisson": gamma_poisson_logp,
}


def independent_logp(name, p, values):
    v = {k: (x.item() if x.dim() == 0 else x.numpy()) for k, x in values.items()}
    d = raw_data(name) if name in POSTERIORDB else tuple(a.numpy() for a in p.data)
    return float(STAN_LOGP[name](v, d))


# ---- the suite's contents ---------------------------------------------------------------------------
def test_names():
    assert len(NAMES) >= 13 and len(set(NAMES)) == len(NAMES)
    assert len(POSTERIORDB) == 9 and len(CONJUGATE) >= 4
    assert set(STAN_LOGP) == set(NAMES)  # every posterior has its independent check here


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(InvalidInputError, match="earnings-earn_height.*conjugate-normal-mean"):
        posteriordb.load("earnings")
    with pytest.raises(InvalidInputError):
        posteriordb.load(None)


@pytest.mark.parametrize("name", NAMES)
def test_posterior_fits_its_model(name):
    """Data are tensors (float64 where floats), the reference names exactly the model's latent sample
    sites' elements (flat_elements' labels, in order), every sd is positive, and the log density at
    the reference means is finite."""
    p = posteriordb.load(name)
    assert p.name == name and isinstance(p.description, str) and "\n" not in p.description
    assert p.exact == (name in CONJUGATE) and isinstance(p.nuts, dict) and isinstance(p.cheap, bool)
    assert all(torch.is_tensor(a) for a in p.data)
    assert all(a.dtype == torch.float64 for a in p.data if a.is_floating_point())
    trace = trace_at(p, reference_point(p))
    sites = latent_sites(trace)
    draws = {s: trace.nodes[s]["value"].detach().numpy()[None] for s in sites}
    assert [label for label, _ in flat_elements(draws, sites)] == list(p.reference)
    assert set(p.reference_ess) == set(p.reference)
    assert all(sd > 0 and math.isfinite(mean) and math.isfinite(sd) for mean, sd in p.reference.values())
    assert math.isfinite(trace.log_prob_sum().item())


def test_load_gives_fresh_data():
    a, b = posteriordb.load("arma-arma11"), posteriordb.load("arma-arma11")
    a.data[0][0] = 1e6
    assert b.data[0][0] != 1e6 and posteriordb.load("arma-arma11").data[0][0] != 1e6


@pytest.mark.parametrize("name", NAMES)
def test_log_density_matches_stan(name):
    """Pyro's log joint minus the independent numpy one is the same constant at three points."""
    p = posteriordb.load(name)
    mean = reference_point(p)
    points = [mean, perturbed(p, mean, seed=1), perturbed(p, mean, seed=2)]
    pyro_lp = np.array([trace_at(p, v).log_prob_sum().item() for v in points])
    numpy_lp = np.array([independent_logp(name, p, v) for v in points])
    assert np.all(np.abs(pyro_lp[1:] - pyro_lp[0]) > 1e-3)  # the points really differ
    np.testing.assert_allclose(pyro_lp - pyro_lp[0], numpy_lp - numpy_lp[0], rtol=1e-8, atol=1e-7)


# ---- closed forms against numeric integration -------------------------------------------------------
def _quad_moments(logp, lo, hi, centre):
    """Mean and sd of the density exp(logp) on (lo, hi) by adaptive quadrature."""
    c = logp(centre)
    f = lambda x, k: x**k * math.exp(logp(x) - c)
    z, m1, m2 = (integrate.quad(f, lo, hi, args=(k,), epsabs=0, epsrel=1e-11, limit=200)[0] for k in range(3))
    mean = m1 / z
    return mean, math.sqrt(m2 / z - mean**2)


@pytest.mark.parametrize(
    "name, site, support",
    [
        ("conjugate-normal-mean", "mu", (-math.inf, math.inf)),
        ("conjugate-beta-binomial", "theta", (0, 1)),
        ("conjugate-gamma-poisson", "lam", (0, math.inf)),
    ],
)
def test_one_dimensional_closed_forms(name, site, support):
    p = posteriordb.load(name)
    d = tuple(a.numpy() for a in p.data)
    mean, sd = p.reference[site]
    lo, hi = max(support[0], mean - 40 * sd), min(support[1], mean + 40 * sd)
    logp = lambda x: float(STAN_LOGP[name]({site: x}, d))
    q_mean, q_sd = _quad_moments(logp, lo, hi, mean)
    assert q_mean == pytest.approx(mean, rel=1e-7, abs=1e-9 * sd)
    assert q_sd == pytest.approx(sd, rel=1e-7)


def test_normal_gamma_closed_form():
    """Trapezoid rule on a (log sigma2, mu) grid wide enough that the tails hold < 1e-8 of the mass."""
    p = posteriordb.load("conjugate-normal-gamma")
    d = tuple(a.numpy() for a in p.data)
    (s2_mean, s2_sd), (mu_mean, mu_sd) = p.reference["sigma2"], p.reference["mu"]
    log_s2 = np.linspace(math.log(s2_mean) - 5, math.log(s2_mean) + 7, 801)
    mu = np.linspace(mu_mean - 40 * mu_sd, mu_mean + 40 * mu_sd, 801)
    L, M = np.meshgrid(log_s2, mu, indexing="ij")
    log_density = normal_gamma_logp({"sigma2": np.exp(L), "mu": M}, d) + L  # + log Jacobian
    w = np.exp(log_density - log_density.max())
    w /= integrate.trapezoid(integrate.trapezoid(w, mu, axis=1), log_s2)
    moment = lambda g: integrate.trapezoid(integrate.trapezoid(g * w, mu, axis=1), log_s2)
    S2 = np.exp(L)
    assert moment(S2) == pytest.approx(s2_mean, rel=1e-6)
    assert math.sqrt(moment((S2 - s2_mean) ** 2)) == pytest.approx(s2_sd, rel=1e-5)
    assert moment(M) == pytest.approx(mu_mean, abs=1e-6 * mu_sd)
    assert math.sqrt(moment((M - mu_mean) ** 2)) == pytest.approx(mu_sd, rel=1e-5)


def test_linear_regression_closed_form():
    """The log density is quadratic, so central differences give its gradient and Hessian exactly (up
    to round-off): one Newton step from 0 lands on the mean, and -H^-1 is the covariance."""
    p = posteriordb.load("conjugate-linear-regression")
    d = tuple(a.numpy() for a in p.data)
    D, h = d[0].shape[1], 1e-2
    logp = lambda w: linear_regression_logp({"w": w}, d)
    E = np.eye(D) * h
    grad = np.array([(logp(E[i]) - logp(-E[i])) / (2 * h) for i in range(D)])
    hess = np.array(
        [
            [
                (logp(E[i] + E[j]) - logp(E[i] - E[j]) - logp(E[j] - E[i]) + logp(-E[i] - E[j])) / (4 * h * h)
                for j in range(D)
            ]
            for i in range(D)
        ]
    )
    mean, cov = -np.linalg.solve(hess, grad), np.linalg.inv(-hess)
    ref_mean = np.array([p.reference[f"w[{i}]"][0] for i in range(D)])
    ref_sd = np.array([p.reference[f"w[{i}]"][1] for i in range(D)])
    np.testing.assert_allclose(mean, ref_mean, atol=1e-6 * ref_sd.min())
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), ref_sd, rtol=1e-6)
    assert cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]) < -0.85  # the correlation is strong


# ---- NUTS finds the reference -----------------------------------------------------------------------
# The error of a NUTS mean, in reference sds, has Monte Carlo sd sqrt(1/ESS + 1/ESS_ref) (ESS_ref ~ 1e4,
# or inf for exact references). With ESS >= 420 that is <= 0.05, so the tolerance 0.15 is >= 3 Monte
# Carlo sds: a correct transcription and reference fail with probability < 0.3% per element. The test
# checks that ESS bound too, so too few draws fail as such rather than as a wrong mean. The cases are
# the cheapest posteriors of each kind with enough draws for that ESS at the sampler's worst rate over
# seeds 0-7 (about 0.55 ESS per draw on arma11, 0.23 on the one-dimensional gamma posterior).
TOLERANCE, MIN_ESS, WARMUP = 0.15, 420, 300
NUTS_CASES = [("arma-arma11", 900), ("conjugate-gamma-poisson", 2400)]


@pytest.fixture
def one_thread():
    """These models are tiny: a second torch thread only adds synchronisation (and contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, num_samples", NUTS_CASES)
def test_nuts_reproduces_reference_means(name, num_samples, one_thread):
    p = posteriordb.load(name)
    assert p.cheap
    torch.set_default_dtype(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = nuts(p.model, *p.data, num_samples=num_samples, warmup_steps=WARMUP, seed=0, progress=False, **p.nuts)
    sites = list(fit.chains)
    draws = dict(flat_elements({k: v.numpy().reshape(-1, *v.shape[2:]) for k, v in fit.chains.items()}, sites))
    ess_per_site = {k: np.reshape(v, (1, *np.shape(v))) for k, v in fit.diagnostics["ess_bulk"].items()}
    ess = {label: float(e[0]) for label, e in flat_elements(ess_per_site, sites)}
    assert sorted(draws) == sorted(p.reference)
    for label, (mean, sd) in p.reference.items():
        assert ess[label] >= MIN_ESS, (label, ess[label])
        assert abs(draws[label].mean() - mean) / sd < TOLERANCE, (label, draws[label].mean(), mean, sd)
