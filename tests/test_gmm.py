"""zoo.GaussianMixture: closed-form EM against scikit-learn, EM identities, the Pyro models."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SklearnMixture

import inference
from inference.errors import InvalidInputError
from inference.laplace import laplace
from inference.mcmc import nuts
from zoo import data
from zoo.gmm import DegenerateComponentWarning, GaussianMixture, align_fit, match_components, permute_components


def _sklearn_score(X, K, covariance_type, n_init=5):
    sk = SklearnMixture(K, covariance_type=covariance_type, n_init=n_init, random_state=0, tol=1e-6, max_iter=1000).fit(
        X
    )
    return sk.score(X)


@pytest.mark.parametrize("name", ["well", "overlapping", "iris", "wine"])
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_score_at_least_sklearn(name, covariance_type):
    # Both run EM to the same tolerance from several starts; ours must find an optimum at least as good.
    if name in ("iris", "wine"):
        X, _ = data.load_table(name)
    else:
        X = data.make_mixture(400, 3, 2, separation=4.0 if name == "well" else 1.0, seed=1).X
    X = X.numpy()
    gmm = GaussianMixture(3, covariance_type=covariance_type, n_init=10, seed=0, tol=1e-6, max_iter=1000).fit(X)
    assert gmm.score(X) >= _sklearn_score(X, 3, covariance_type, n_init=10) - 1e-3
    # lower_bound_ is the log-likelihood of the fitted θ (score centres the data slightly differently:
    # float64 round-off of D²-term quadratic forms, ~1e-12 relative)
    assert gmm.lower_bound_ == pytest.approx(gmm.score(X), rel=1e-10)


def test_recovers_well_separated_clusters():
    mix = data.make_mixture(600, 4, 3, separation=6.0, seed=2)
    gmm = GaussianMixture(4, n_init=3, seed=0).fit(mix.X)
    assert adjusted_rand_score(mix.labels, gmm.predict(mix.X)) > 0.98
    perm = match_components(gmm.means_, mix.means)
    # each mean within 4 standard errors (sd <= 1.5 per axis, >= ~60 points per component)
    assert (gmm.means_[perm] - mix.means).abs().max() < 4 * 1.5 / np.sqrt(60)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_log_likelihood_never_decreases(covariance_type):
    X = data.make_mixture(500, 4, 3, separation=1.5, seed=3).X
    gmm = GaussianMixture(4, covariance_type=covariance_type, tol=0, max_iter=60, seed=0, init="random").fit(X)
    trace = gmm.log_likelihood_trace_
    assert len(trace) == 61 and gmm.n_iter_ == 60
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))  # monotone up to float64 round-off


def test_matches_sklearn_iterations_from_the_same_start():
    # Same start, same number of M-steps: the same parameters up to round-off.
    X = data.make_mixture(500, 3, 3, separation=2.0, seed=4).X.numpy()
    w, m, c = GaussianMixture(3, seed=0).initial_params(X)
    ours = GaussianMixture(3, init=m, weights_init=w, covariances_init=c, tol=0, max_iter=15).fit(X)
    sk = SklearnMixture(
        3, weights_init=w.numpy(), means_init=m.numpy(), precisions_init=np.linalg.inv(c.numpy()), tol=0, max_iter=15
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X)
    np.testing.assert_allclose(ours.means_.numpy(), sk.means_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours.covariances_.numpy(), sk.covariances_, rtol=1e-7, atol=1e-9)
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-10)


def test_float32_agrees_with_float64():
    X = data.make_mixture(400, 3, 2, seed=5).X
    g64 = GaussianMixture(3, seed=0, tol=1e-8, max_iter=300).fit(X)
    g32 = GaussianMixture(3, seed=0, tol=1e-5, max_iter=300, dtype=torch.float32).fit(X)
    assert g32.means_.dtype == torch.float32 and g32.predict_proba(X).dtype == torch.float32
    # float32 round-off ~1e-7 relative on O(10) log-densities; convergence tolerance 1e-5
    assert g32.score(X) == pytest.approx(g64.score(X), abs=1e-3)


def test_predictions_and_sampling_are_consistent():
    mix = data.make_mixture(300, 2, 2, seed=6)
    gmm = GaussianMixture(2, covariance_type="diag", seed=0).fit(mix.X)
    proba = gmm.predict_proba(mix.X)
    assert proba.shape == (300, 2) and torch.allclose(proba.sum(1), torch.ones(300, dtype=proba.dtype))
    assert torch.equal(gmm.predict(mix.X), proba.argmax(1))
    x, z = gmm.sample(2000, seed=0)
    assert x.shape == (2000, 2) and z.shape == (2000,)
    # samples come from the fitted mixture: the fitted model scores them like its training data (±0.15)
    assert gmm.score(x) == pytest.approx(gmm.score(mix.X), abs=0.15)
    assert gmm.bic(mix.X) > gmm.aic(mix.X)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros(5), "2-D"),
        (np.zeros((0, 2)), "empty"),
        (np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 3.0]]), "NaN"),
        (np.array([[0.0, 1.0], [1.0, np.inf], [2.0, 3.0]]), "NaN or infinite"),
        (np.zeros((2, 2)) + np.arange(2)[:, None], "more than the 2 data points"),
    ],
)
def test_bad_data(X, match):
    with pytest.raises(InvalidInputError, match=match):
        GaussianMixture(3).fit(X)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"covariance_type": "tied"}, "covariance_type"),
        ({"n_components": 0}, "n_components"),
        ({"tol": -1.0}, "tol"),
        ({"init": "bogus"}, "init"),
        ({"n_init": 0}, "n_init"),
        ({"reg_covar": -1e-3}, "reg_covar"),
        ({"dtype": torch.int64}, "dtype"),
        ({"init": np.zeros((2, 2))}, "init means"),
    ],
)
def test_bad_settings(kwargs, match):
    X = data.make_mixture(50, 2, 2, seed=0).X
    with pytest.raises(InvalidInputError, match=match):
        GaussianMixture(**{"n_components": 3, **kwargs}).fit(X)


def test_degenerate_cases_say_what_happened():
    X = data.make_mixture(50, 2, 2, seed=0).X
    with pytest.raises(InvalidInputError, match="not fitted"):
        GaussianMixture(2).predict(X)
    with pytest.raises(InvalidInputError, match="features"):
        GaussianMixture(2, seed=0).fit(X).score(X[:, :1])
    with pytest.raises(InvalidInputError, match="distinct points"):
        GaussianMixture(3, seed=0).fit(torch.ones(10, 2))
    # points on a line: a full covariance without regularisation is singular
    line = torch.linspace(0, 1, 20)[:, None] * torch.tensor([[1.0, 2.0]])
    with pytest.raises(InvalidInputError, match="singular"):
        GaussianMixture(2, reg_covar=0, seed=0).fit(line)
    # a component placed far from every point loses them all: re-initialised, with a warning
    far = torch.cat([data.make_mixture(60, 2, 2, seed=1).X.mean(0, keepdim=True), torch.full((1, 2), 1e3)])
    with pytest.warns(DegenerateComponentWarning, match="lost all"):
        GaussianMixture(2, init=far, max_iter=5, seed=0).fit(data.make_mixture(60, 2, 2, seed=1).X)


def test_restarts_keep_the_best():
    X = data.make_mixture(300, 5, 2, separation=2.5, seed=7).X
    # restart r of n_init is the single fit with seed + r, so the best of four restarts is the best of
    # the four single fits, to the last bit
    single = [GaussianMixture(5, init="random", seed=s, tol=1e-6).fit(X).score(X) for s in range(4)]
    best = GaussianMixture(5, init="random", n_init=4, seed=0, tol=1e-6).fit(X).score(X)
    assert len(set(single)) > 1  # the starts differ, so keeping the best is a real choice
    assert best == max(single)


def test_variational_em_reproduces_em():
    # Exact E-step by enumeration + an L-BFGS M-step (gradient tolerance 1e-12) is EM with a numerically
    # solved M-step: traces agree to the solver's accuracy, far below 1e-8 per point.
    X = data.make_mixture(200, 3, 2, seed=8).X
    for covariance_type in ("full", "diag"):
        gmm = GaussianMixture(3, covariance_type=covariance_type, seed=0, reg_covar=0.0)
        w, m, c = gmm.initial_params(X)
        em = GaussianMixture(
            3,
            covariance_type=covariance_type,
            init=m,
            weights_init=w,
            covariances_init=c,
            reg_covar=0.0,
            tol=0,
            max_iter=8,
        ).fit(X)
        fit = inference.variational_em(
            gmm.to_pyro(X).model, None, X, max_iter=8, tol=0, max_plate_nesting=1, progress=False
        )
        np.testing.assert_allclose(-fit.losses / X.shape[0], em.log_likelihood_trace_, rtol=0, atol=1e-8)


def test_bayesian_posteriors_bracket_the_truth():
    mix = data.make_mixture(200, 2, 2, separation=5.0, seed=9)
    gmm = GaussianMixture(2, seed=0, n_init=2).fit(mix.X)
    models = gmm.to_pyro(mix.X)
    fits = {
        "svi": inference.svi(
            models.bayes_model,
            models.bayes_guide(),
            mix.X,
            elbo="enum",
            steps=300,
            lr=0.02,
            progress=False,
            max_plate_nesting=1,
        ),
        "laplace": laplace(models.bayes_model, mix.X, init=models.bayes_init, max_plate_nesting=1),
        "nuts": nuts(
            models.bayes_model,
            mix.X,
            num_samples=100,
            warmup_steps=100,
            init=models.bayes_init,
            max_plate_nesting=1,
            progress=False,
        ),
    }
    for name, fit in fits.items():
        fit = align_fit(fit, mix.means)
        means = fit.samples(400)["means"]
        lo, hi = means.quantile(0.0005, dim=0), means.quantile(0.9995, dim=0)
        # 99.9% central intervals, 4 numbers per method: all should hold the truth
        assert ((lo <= mix.means) & (mix.means <= hi)).all(), (name, lo, hi, mix.means)
    z = models.posterior_assignments(mix.X, fits["laplace"].samples(3))
    assert z.shape == (3, 200)
    assert adjusted_rand_score(models.posterior_assignments(mix.X, temperature=0)[0], gmm.predict(mix.X)) == 1.0


def test_label_matching():
    means = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    perm = match_components(means[[2, 0, 1]], means)
    assert list(perm) == [1, 2, 0]
    sites = {"means": means[[2, 0, 1]][None], "weights": torch.tensor([[0.5, 0.2, 0.3]]), "other": torch.ones(1)}
    out = permute_components(sites, perm)
    assert torch.equal(out["means"][0], means) and torch.equal(out["weights"][0], torch.tensor([0.2, 0.3, 0.5]))


def test_data_readers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n5,7,z\n")
    with pytest.raises(InvalidInputError, match="not numeric"):
        data.read_csv(path)
    X = data.read_csv(path, columns=["a", "b"])
    assert X.shape == (3, 2) and X[2, 1] == 7
    (tmp_path / "n.csv").write_text("1,2\n3,4\n")
    assert data.read_csv(tmp_path / "n.csv").shape == (2, 2)  # no header
    (tmp_path / "m.csv").write_text("a,b\n1,\n3,4\n")
    with pytest.raises(InvalidInputError, match="missing"):
        data.read_csv(tmp_path / "m.csv")
    with pytest.raises(InvalidInputError, match="does not exist"):
        data.read_csv(tmp_path / "nope.csv")
    X, y = data.load_table("iris")
    assert X.shape == (150, 4) and torch.allclose(X.mean(0), torch.zeros(4, dtype=X.dtype), atol=1e-12)
