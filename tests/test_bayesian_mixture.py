"""zoo.gmm.variational and zoo.gmm.conjugate: CAVI for the Bayesian Gaussian mixture against scikit-learn,
the identities of coordinate ascent, the Pyro model with the same priors, and the PSIS verdict of q both
ways."""

import math
import warnings

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import BayesianGaussianMixture as SklearnBGM

import inference
from inference.errors import ConvergenceWarning, InvalidInputError
from zoo.gmm import BayesianGaussianMixture
from zoo.gmm.conjugate import _log_joint, _log_wishart, conjugate_model, precisions_from_sites

EPS = np.finfo(np.float64).eps
CENTRES = np.array([[0.0, 0.0], [1.0, 0.2], [0.2, 1.2]])
SHAPE = np.array([[1.0, 0.3], [0.0, 0.6]])


def blobs(n_per, separation, seed=0):
    """Three correlated Gaussian clusters [3 n_per, 2] whose centres are ``separation`` apart (order of)."""
    rng = np.random.RandomState(seed)
    X = np.concatenate([rng.randn(n_per, 2) @ SHAPE + separation * c for c in CENTRES])
    return X, np.repeat(np.arange(3), n_per)


def same_fit(ours, theirs, rtol):
    """Every fitted quantity of the two estimators agrees to ``rtol`` (relative to each quantity's scale)."""
    for name in (
        "weights_",
        "means_",
        "covariances_",
        "precisions_cholesky_",
        "mean_precision_",
        "degrees_of_freedom_",
    ):
        a, b = getattr(ours, name).numpy(), np.asarray(getattr(theirs, name))
        assert np.abs(a - b).max() <= rtol * max(1.0, np.abs(b).max()), name
    conc = ours.weight_concentration_
    for a, b in zip(conc if isinstance(conc, tuple) else [conc], np.atleast_2d(theirs.weight_concentration_)):
        np.testing.assert_allclose(a.numpy(), b, rtol=rtol)


# Both implementations run the same float64 fixed-point map with the operations in another order. One
# iteration's rounding is a few eps relative per N-term sum (N = 450: 450 eps ≈ 1e-13 at worst), and near its
# fixed point CAVI contracts, so over at most 300 iterations the trajectories stay within 300 × 1e-13 = 3e-11
# of each other. RTOL = 1e-9 keeps a 30-fold margin over that bound; any difference of formula (a prior term,
# a digamma argument off by one) moves the bound by far more than 1e-9 relative.
RTOL = 1e-9
# priors away from the defaults, so that every prior term (several vanish at α0 = β0 = 1) is exercised
PRIORS = dict(
    weight_concentration_prior=0.7,
    mean_precision_prior=0.4,
    mean_prior=[1.0, -0.5],
    degrees_of_freedom_prior=3.5,
    covariance_prior=[[2.0, 0.3], [0.3, 0.5]],
)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
@pytest.mark.parametrize("prior_type", ["dirichlet_distribution", "dirichlet_process"])
def test_same_seed_same_fit_as_sklearn(covariance_type, prior_type):
    X, _ = blobs(150, 5.0)
    settings = dict(
        n_components=4,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior_type,
        tol=1e-8,
        max_iter=300,
        init_params="kmeans",
    )
    theirs = SklearnBGM(random_state=1, **settings).fit(X)
    ours = BayesianGaussianMixture(seed=1, **settings).fit(X)
    assert ours.n_iter_ == theirs.n_iter_ and ours.converged_ == theirs.converged_
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=RTOL)
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=RTOL)
    same_fit(ours, theirs, RTOL)
    np.testing.assert_array_equal(ours.predict(X).numpy(), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X).numpy(), theirs.predict_proba(X), atol=RTOL)
    np.testing.assert_allclose(ours.score_samples(X).numpy(), theirs.score_samples(X), rtol=RTOL)


@pytest.mark.parametrize("init_params", ["random", "k-means++", "random_from_data"])
def test_other_inits_follow_sklearn(init_params):
    X, _ = blobs(100, 5.0)
    settings = dict(n_components=3, tol=1e-8, max_iter=300, init_params=init_params, n_init=2)
    theirs = SklearnBGM(random_state=3, **settings).fit(X)
    ours = BayesianGaussianMixture(seed=3, **settings).fit(X)
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=RTOL)
    same_fit(ours, theirs, RTOL)


def test_given_responsibilities_same_trajectory_as_sklearn(monkeypatch):
    X, _ = blobs(150, 4.0)
    resp = np.random.RandomState(7).dirichlet(np.ones(3), size=X.shape[0])
    settings = dict(
        n_components=3, weight_concentration_prior_type="dirichlet_distribution", tol=1e-8, max_iter=300, **PRIORS
    )
    theirs = SklearnBGM(**settings)
    monkeypatch.setattr(theirs, "_initialize_parameters", lambda X_, rs, xp=None: theirs._initialize(X_, resp))
    theirs.fit(X)
    ours = BayesianGaussianMixture(resp_init=resp, **settings).fit(X)
    assert ours.n_iter_ == theirs.n_iter_ > 5
    np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=RTOL)
    same_fit(ours, theirs, RTOL)
    np.testing.assert_array_equal(ours.predict(X).numpy(), theirs.predict(X))


@pytest.mark.parametrize("prior_type", ["dirichlet_distribution", "dirichlet_process"])
def test_lower_bound_never_decreases(prior_type):
    # with reg_covar = 0 every step is an exact coordinate maximum of one objective, so the bound cannot fall;
    # it may only wobble by the rounding of a float64 sum of N K terms, N K eps = 1350 × 2.2e-16 ≈ 3e-13 of it
    X, _ = blobs(150, 3.0)
    bgm = BayesianGaussianMixture(
        3,
        weight_concentration_prior_type=prior_type,
        reg_covar=0.0,
        init_params="random",
        tol=0.0,
        max_iter=150,
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol = 0 runs all iterations on purpose
        bgm.fit(X)
    steps = np.diff(bgm.lower_bounds_)
    assert bgm.n_iter_ == 150 and steps.max() > 1.0  # it did climb
    assert steps.min() >= -1e-12 * np.abs(bgm.lower_bounds_).max()


def test_full_elbo_is_the_bound_plus_dropped_constants():
    # With q(θ) optimal for r, log q(θ) = log p(θ) + Σ r_nk log p(x_n, z_n = k | θ) − const, so at EVERY θ
    #     Σ r_nk (log π_k + log N(x_n | μ_k, Λ_k⁻¹)) + log p(θ) − log q(θ) − Σ r log r = F(r, q),
    # the full ELBO = lower_bound + elbo_constant. Checked at draws of q with torch.distributions' own densities,
    # to the rounding of sums of N K = 720 terms of size ≤ 1e3 (1e-10 relative leaves a wide margin).
    X, _ = blobs(80, 3.0)
    Xt = torch.as_tensor(X)
    settings = dict(
        n_components=3,
        weight_concentration_prior_type="dirichlet_distribution",
        reg_covar=0.0,
        **PRIORS,
        resp_init=np.random.RandomState(1).dirichlet(np.ones(3), size=X.shape[0]),
    )
    resp = BayesianGaussianMixture(max_iter=0, **settings).fit(X).predict_proba(X)  # r of iteration 1's E-step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        bgm = BayesianGaussianMixture(max_iter=1, **settings).fit(X)
        fit = bgm.to_fit(X, num_samples=100)
    F = bgm.lower_bounds_[0] + bgm.elbo_constant(X.shape[0])
    assert fit.losses[0] == pytest.approx(-F)
    d, p = torch.distributions, bgm.priors()
    s = fit.draw(50, seed=3)
    cov = torch.linalg.inv(s["precisions"])
    log_lik = d.MultivariateNormal(s["means"][:, None], covariance_matrix=cov[:, None]).log_prob(Xt[None, :, None])
    W = bgm.precisions_ / bgm.degrees_of_freedom_[:, None, None]
    log_p = (
        d.Dirichlet(p["weight_concentration_prior"].expand(3)).log_prob(s["weights"])
        + d.MultivariateNormal(p["mean_prior"], precision_matrix=p["mean_precision_prior"] * s["precisions"])
        .log_prob(s["means"])
        .sum(-1)
        + d.Wishart(p["degrees_of_freedom_prior"], covariance_matrix=torch.linalg.inv(p["covariance_prior"]))
        .log_prob(s["precisions"])
        .sum(-1)
    )
    log_q = (
        d.Dirichlet(bgm.weight_concentration_).log_prob(s["weights"])
        + d.MultivariateNormal(bgm.means_, precision_matrix=bgm.mean_precision_[:, None, None] * s["precisions"])
        .log_prob(s["means"])
        .sum(-1)
        + d.Wishart(bgm.degrees_of_freedom_, covariance_matrix=W).log_prob(s["precisions"]).sum(-1)
    )
    elbo_at_draws = (
        (resp * (torch.log(s["weights"])[:, None] + log_lik)).sum((1, 2))
        + log_p
        - log_q
        - torch.special.xlogy(resp, resp).sum()
    )
    np.testing.assert_allclose(elbo_at_draws.numpy(), F, rtol=1e-10)


def test_full_elbo_with_stick_breaking_weights():
    # the same identity for q(v_k) = Beta(a_k, b_k), π_k = v_k Π_{j<k} (1 − v_j), prior v_k ~ Beta(1, α0)
    X, _ = blobs(80, 3.0)
    Xt, d = torch.as_tensor(X), torch.distributions
    settings = dict(
        n_components=3,
        weight_concentration_prior_type="dirichlet_process",
        reg_covar=0.0,
        **PRIORS,
        resp_init=np.random.RandomState(1).dirichlet(np.ones(3), size=X.shape[0]),
    )
    resp = BayesianGaussianMixture(max_iter=0, **settings).fit(X).predict_proba(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        bgm = BayesianGaussianMixture(max_iter=1, **settings).fit(X)
    F, p, (a, b) = bgm.lower_bounds_[0] + bgm.elbo_constant(X.shape[0]), bgm.priors(), bgm.weight_concentration_
    W = bgm.precisions_ / bgm.degrees_of_freedom_[:, None, None]
    # any θ will do (the identity holds at every point); torch's Wishart sampler warns of "singular samples"
    # it merely redraws, so its warning is silenced
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        v = d.Beta(a, b).sample((20,))
        lam = d.Wishart(bgm.degrees_of_freedom_, covariance_matrix=W).sample((20,))
        q_mu = d.MultivariateNormal(bgm.means_, precision_matrix=bgm.mean_precision_[:, None, None] * lam)
        mu = q_mu.sample()
    log_pi = torch.log(v) + torch.cat([torch.zeros(20, 1, dtype=v.dtype), torch.log1p(-v).cumsum(1)[:, :-1]], 1)
    log_lik = d.MultivariateNormal(mu[:, None], precision_matrix=lam[:, None]).log_prob(Xt[None, :, None])
    log_p = (
        d.Beta(torch.ones((), dtype=v.dtype), p["weight_concentration_prior"]).log_prob(v).sum(-1)
        + d.MultivariateNormal(p["mean_prior"], precision_matrix=p["mean_precision_prior"] * lam).log_prob(mu).sum(-1)
        + d.Wishart(p["degrees_of_freedom_prior"], covariance_matrix=torch.linalg.inv(p["covariance_prior"]))
        .log_prob(lam)
        .sum(-1)
    )
    log_q = (
        d.Beta(a, b).log_prob(v).sum(-1)
        + q_mu.log_prob(mu).sum(-1)
        + d.Wishart(bgm.degrees_of_freedom_, covariance_matrix=W).log_prob(lam).sum(-1)
    )
    elbo_at_draws = (
        (resp * (log_pi[:, None] + log_lik)).sum((1, 2)) + log_p - log_q - torch.special.xlogy(resp, resp).sum()
    )
    np.testing.assert_allclose(elbo_at_draws.numpy(), F, rtol=1e-10)


def test_recovers_truth_and_agrees_with_sklearn_on_separated_data():
    X, labels = blobs(300, 10.0)
    settings = dict(n_components=3, weight_concentration_prior_type="dirichlet_distribution", tol=1e-8, max_iter=300)
    bgm = BayesianGaussianMixture(seed=0, **settings).fit(X)
    truth = 10.0 * CENTRES
    order = linear_sum_assignment(((bgm.means_.numpy()[:, None] - truth) ** 2).sum(-1))[1]
    # q(μ_k) is a Student t with covariance E[(β_k Λ_k)⁻¹] = W_k⁻¹ / (β_k (ν_k − D − 1)); a posterior that
    # contracts on the truth puts it within 4 posterior sds (normal tail 6e-5 per coordinate, 6 coordinates)
    nu, D = bgm.degrees_of_freedom_, X.shape[1]
    post_cov = bgm.covariances_ * (nu / (bgm.mean_precision_ * (nu - D - 1)))[:, None, None]
    sd = torch.diagonal(post_cov, dim1=-2, dim2=-1).sqrt().numpy()
    assert (np.abs(bgm.means_.numpy() - truth[order]) <= 4 * sd).all()
    theirs = SklearnBGM(random_state=0, **settings).fit(X)
    assert (bgm.predict(X).numpy() == theirs.predict(X)).mean() >= 0.99
    assert (order[bgm.predict(X).numpy()] == labels).mean() >= 0.99


def test_pyro_model_is_the_same_bayesian_model():
    X, _ = blobs(60, 5.0)
    Xt = torch.as_tensor(X)
    bgm = BayesianGaussianMixture(3, weight_concentration_prior_type="dirichlet_distribution", seed=0).fit(X)
    priors = bgm.priors()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)  # with every latent fixed and z enumerated, −loss = log p(X, θ)

    def pyro_log_joint(sites):
        return -elbo.loss(poutine.condition(conjugate_model, data=sites), lambda *args: None, Xt, 3, priors)

    assert math.isfinite(pyro_log_joint(bgm.posterior_mean_sites()))
    # at draws of q, Pyro's density over the Bartlett sites is the Wishart density over Λ times the Jacobian
    # of (χ², normal) -> Λ = L0 A Aᵀ L0ᵀ: log J = D log 2 + Σ_i (D − i) log B_ii + Σ_i (i + 1) log (L0)_ii
    # − Σ_i log (2 A_ii) per component, with B = L0 A. Equal to rounding (1e-10 relative).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the verdict on 180 points is not this test's point
        draws = bgm.to_fit(X, num_samples=50).draw(4, seed=1)
    L0 = torch.linalg.cholesky(torch.linalg.inv(priors["covariance_prior"]))
    i = torch.arange(2)
    for s in range(4):
        sites = {k: v[s] for k, v in draws.items() if k != "precisions"}
        B = torch.linalg.cholesky(draws["precisions"][s])
        A = torch.linalg.solve_triangular(L0, B, upper=False)
        diag_A, diag_B = torch.diagonal(A, dim1=-2, dim2=-1), torch.diagonal(B, dim1=-2, dim2=-1)
        log_J = (
            2 * math.log(2)
            + ((2 - i) * diag_B.log()).sum(-1)
            + ((i + 1) * L0.diagonal().log()).sum()
            - (2 * diag_A).log().sum(-1)
        ).sum()
        ours = _log_joint(Xt, draws["weights"][s : s + 1], draws["means"][s : s + 1], B[None], priors)
        assert float(ours) + float(log_J) == pytest.approx(pyro_log_joint(sites), rel=1e-10)
        torch.testing.assert_close(precisions_from_sites(sites, priors), draws["precisions"][s])
    # our Wishart density is torch's
    nu = torch.tensor([3.5, 7.0], dtype=torch.float64)
    L = torch.linalg.cholesky(bgm.precisions_[:2])
    torch.testing.assert_close(
        _log_wishart(B[:2], L, nu), torch.distributions.Wishart(nu, scale_tril=L).log_prob(B[:2] @ B[:2].mT)
    )


def test_khat_small_for_cavi_on_separated_data_and_large_for_a_narrowed_q():
    # 10 sds apart every r_nk is 0 or 1 up to exp(−50): q(π) q(μ, Λ) is then the exact conjugate posterior (in
    # its labelling), the weights p/q are constant and k-hat is far below KHAT_GOOD = 0.5
    X, _ = blobs(200, 10.0)
    bgm = BayesianGaussianMixture(
        3, weight_concentration_prior_type="dirichlet_distribution", tol=1e-8, max_iter=300, seed=0
    ).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit = bgm.to_fit(X, num_samples=1000)
    assert fit.diagnostics["khat"] < 0.5 and fit.diagnostics["converged"]
    assert fit.method == "cavi" and np.all(np.diff(fit.losses) <= 1e-9 * np.abs(fit.losses).max())
    # the same centre with every concentration 25 times larger: q is 5 times too narrow in every direction,
    # the importance weights' tail is heavy and the verdict says so
    bgm.weight_concentration_ = bgm.weight_concentration_ * 25
    bgm.mean_precision_ = bgm.mean_precision_ * 25
    bgm.degrees_of_freedom_ = bgm.degrees_of_freedom_ * 25
    with pytest.warns(ConvergenceWarning, match="k-hat"):
        narrow = bgm.to_fit(X, num_samples=1000)
    assert narrow.diagnostics["khat"] > 0.7 and not narrow.diagnostics["converged"]


def test_fit_contract_and_inference_on_the_same_model():
    X, _ = blobs(40, 6.0)
    bgm = BayesianGaussianMixture(3, weight_concentration_prior_type="dirichlet_distribution", seed=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = bgm.to_fit(X, num_samples=200)
    draws = fit.samples(5)
    assert draws["weights"].shape == (5, 3) and draws["means"].shape == (5, 3, 2)
    assert draws["bartlett_chi2"].shape == (5, 3, 2) and draws["bartlett_normal"].shape == (5, 3, 1)
    assert draws["precisions"].shape == (5, 3, 2, 2)
    assert set(fit.to_inference_data(num_samples=20).posterior.data_vars) >= {"weights", "means", "precisions"}
    # q's draws have q's means: E[π] = α / Σ α, E[μ_k] = m_k, E[Λ_k] = ν_k W_k; within 4 Monte Carlo standard
    # errors (sample sd / sqrt(S)) for every element
    many = fit.samples(4000, seed=1)
    for site, mean in [("weights", bgm.weights_), ("means", bgm.means_), ("precisions", bgm.precisions_)]:
        assert (torch.abs(many[site].mean(0) - mean) <= 4 * many[site].std(0) / math.sqrt(4000)).all(), site
    # and q's spreads: Var π_k = α_k (α0 − α_k) / (α0² (α0 + 1)) (α0 = Σ α), Cov μ_k = W_k⁻¹ / (β_k (ν_k − D − 1))
    # (a Student t), Var (Λ_k)_ii = 2 ν_k (W_k)_ii² (Wishart). A sample sd from 4000 draws has a standard error of
    # about 1/sqrt(2 × 4000) = 1.1% (these tails at most double it): a ratio within 1 ± 0.1 is over 4 errors wide
    a, nu, D = bgm.weight_concentration_, bgm.degrees_of_freedom_, 2
    W = bgm.precisions_ / nu[:, None, None]
    expected = {
        "weights": a * (a.sum() - a) / (a.sum() ** 2 * (a.sum() + 1)),
        "means": torch.diagonal(torch.linalg.inv(W), dim1=-2, dim2=-1) / (bgm.mean_precision_ * (nu - D - 1))[:, None],
        "precisions": 2 * nu[:, None] * torch.diagonal(W, dim1=-2, dim2=-1) ** 2,
    }
    spreads = {
        "weights": many["weights"],
        "means": many["means"],
        "precisions": torch.diagonal(many["precisions"], dim1=-2, dim2=-1),
    }
    for site, var in expected.items():
        ratio = spreads[site].std(0) / var.sqrt()
        assert ((ratio > 0.9) & (ratio < 1.1)).all(), (site, ratio)
    # Laplace on the same Pyro model, started at q's means: its mode lies within a posterior sd of q's means
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lap = inference.laplace(
            bgm.model, torch.as_tensor(X), init=bgm.posterior_mean_sites(), max_plate_nesting=1, check=False
        )
    assert (torch.abs(lap.params["means"] - bgm.means_) < many["means"].std(0)).all()


def test_sample_follows_the_plug_in_mixture():
    X, _ = blobs(100, 6.0)
    bgm = BayesianGaussianMixture(3, seed=0).fit(X)
    x, z = bgm.sample(4000, seed=0)
    assert x.shape == (4000, 2) and torch.equal(x, bgm.sample(4000, seed=0)[0])
    # each label's frequency is Binomial(4000, w_k)/4000: within 4 sds of w_k
    freq = torch.bincount(z, minlength=3).double() / 4000
    assert (torch.abs(freq - bgm.weights_) <= 4 * torch.sqrt(bgm.weights_ * (1 - bgm.weights_) / 4000)).all()


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(n_components=0), "n_components"),
        (dict(covariance_type="tied"), "covariance_type"),
        (dict(init_params="nearest"), "init_params"),
        (dict(weight_concentration_prior_type="pitman_yor"), "weight_concentration_prior_type"),
        (dict(weight_concentration_prior=-1.0), "weight_concentration_prior"),
        (dict(mean_precision_prior=0.0), "mean_precision_prior"),
        (dict(degrees_of_freedom_prior=0.5), "degrees_of_freedom_prior"),
        (dict(mean_prior=[0.0, 0.0, 0.0]), "mean_prior"),
        (dict(covariance_prior=np.eye(3)), "covariance_prior"),
        (dict(covariance_prior=-np.eye(2)), "covariance_prior"),
        (dict(covariance_type="diag", covariance_prior=[1.0, -1.0]), "covariance_prior"),
        (dict(tol=-1.0), "tol"),
        (dict(max_iter=2.5), "max_iter"),
        (dict(resp_init=np.ones((5, 2))), "resp_init"),
        (dict(n_components=200), "n_components"),
    ],
)
def test_bad_settings_raise_naming_the_argument(settings, match):
    X, _ = blobs(30, 5.0)
    with pytest.raises(InvalidInputError, match=match):
        BayesianGaussianMixture(**{"n_components": 2, **settings}).fit(X)


def test_bad_data_and_misuse_raise():
    X, _ = blobs(30, 5.0)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InvalidInputError, match="X"):
        BayesianGaussianMixture(2).fit(bad)
    with pytest.raises(InvalidInputError, match="X must be 2-D"):
        BayesianGaussianMixture(2).fit(X[:, 0])
    with pytest.raises(InvalidInputError, match="not fitted"):
        BayesianGaussianMixture(2).predict(X)
    bgm = BayesianGaussianMixture(2, seed=0).fit(X)
    with pytest.raises(InvalidInputError, match="features"):
        bgm.predict(X[:, :1])
    with pytest.raises(InvalidInputError, match="dirichlet_distribution"):
        bgm.to_fit(X)  # the default prior is scikit-learn's, the stick-breaking one
    with pytest.raises(InvalidInputError, match="n_samples"):
        bgm.sample(0)
