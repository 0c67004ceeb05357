"""LOO and model comparison through ArviZ: the log_likelihood, posterior_predictive and observed_data groups
of every fit (inference/predictive.py), against closed forms.

- PSIS-LOO of NUTS draws of a conjugate regression against brute-force leave-one-out (exact posteriors);
- az.compare ranks a 3-component mixture above a 2-component one on 3-cluster data;
- the pointwise log-likelihood of an enumerated mixture is the closed-form mixture density (identity);
- the groups and their dims for svi, laplace, nuts and variational EM fits; az.plot_ppc; hand-built fits;
- the checks fire on cases built to be wrong and stay quiet on right ones.
"""

import math
import warnings

import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.ops.indexing import Vindex

import inference.predictive as predictive
from inference import ConvergenceWarning, laplace, nuts, svi, variational_em
from inference.common import az
from inference.errors import InvalidInputError
from inference.predictive import Replay
from inference.result import Fit, point_mass_draw

matplotlib.use("Agg")
# ArviZ 0.23's own calls into newer pandas and matplotlib
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*inplace keyword.*"),
    pytest.mark.filterwarnings("ignore:.*alias_mapping.*"),
]

SIGMA, ALPHA = 0.8, 0.5  # regression noise sd and prior precision of the weights
# float32 log-densities of the same quantities computed in two orders agree to a few ulps of values O(10)
IDENTITY_RTOL = 1e-5


# ---- a conjugate Bayesian linear regression --------------------------------------------------------------
def regression(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), ALPHA**-0.5).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), SIGMA), obs=y)


def regression_matmul(X, y):
    """The same model written with ``X @ w``, which a batch of draws of w breaks (one draw at a time)."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), ALPHA**-0.5).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, SIGMA), obs=y)


def regression_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g)
    return X, X @ torch.tensor([1.0, -0.5]) + SIGMA * torch.randn(n, generator=g)


def exact_loo(X, y, sigma=SIGMA):
    """Σ_i log p(y_i | y_-i): the posterior without point i is N(m, Λ⁻¹), Λ = αI + X_-iᵀX_-i/σ²,
    m = Λ⁻¹X_-iᵀy_-i/σ², and y_i | y_-i ~ N(x_iᵀm, σ² + x_iᵀΛ⁻¹x_i)."""
    X, y = X.double(), y.double()
    total = 0.0
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        precision = ALPHA * torch.eye(X.shape[1], dtype=X.dtype) + X[keep].T @ X[keep] / sigma**2
        cov = torch.linalg.inv(precision)
        mean = cov @ X[keep].T @ y[keep] / sigma**2
        sd = math.sqrt(sigma**2 + float(X[i] @ cov @ X[i]))
        total += float(dist.Normal(X[i] @ mean, sd).log_prob(y[i]))
    return total


@pytest.fixture(scope="module")
def regression_nuts():
    X, y = regression_data()
    return (
        nuts(
            regression,
            X,
            y,
            num_samples=500,
            warmup_steps=300,
            num_chains=2,
            chain_method="sequential",
            seed=0,
            progress=False,
        ),
        X,
        y,
    )


def test_psis_loo_of_nuts_matches_brute_force_leave_one_out(regression_nuts):
    fit, X, y = regression_nuts
    idata = fit.to_inference_data()
    loo = az.loo(idata)
    exact = exact_loo(X, y)
    # tolerance: az.loo's own standard error of elpd_loo (as the issue asks). It measures the spread of the
    # pointwise elpd over the data, not Monte-Carlo error (which, with every k-hat < 0.7, is far smaller)
    assert (loo.pareto_k.values < 0.7).all()
    assert abs(loo.elpd_loo - exact) <= loo.se, (loo.elpd_loo, exact, loo.se)
    # ... and that tolerance still tells a wrong likelihood: the exact LOO of the model with σ doubled
    assert abs(exact_loo(X, y, 2 * SIGMA) - exact) > loo.se
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # WAIC's own caution about its approximation
        waic = az.waic(idata)
    assert abs(waic.elpd_waic - exact) <= waic.se


def test_log_likelihood_is_the_pointwise_density_at_each_draw(regression_nuts):
    fit, X, y = regression_nuts
    idata = fit.to_inference_data()
    w = torch.as_tensor(idata.posterior["w"].values)  # [chain, draw, 2]
    by_hand = dist.Normal((w.unsqueeze(-2) * X).sum(-1), SIGMA).log_prob(y).numpy()  # [chain, draw, N]
    np.testing.assert_allclose(idata.log_likelihood["y"].values, by_hand, rtol=IDENTITY_RTOL, atol=1e-5)
    # the X @ w model runs one draw at a time and gives the same numbers
    flat = {"w": w.reshape(-1, 2)}
    batched, single = Replay(regression, (X, y), flat), Replay(regression_matmul, (X, y), flat)
    assert batched.batched and not single.batched
    np.testing.assert_allclose(
        single.log_likelihood()["y"].numpy(), by_hand.reshape(-1, len(y)), rtol=IDENTITY_RTOL, atol=1e-5
    )


def summed_slopes(t, y):
    """Written for one draw: ``w.sum()`` also sums a batch of draws, silently (right shapes, wrong numbers)."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", t.shape[0]):
        pyro.sample("y", dist.Normal(w.sum() * t, 1.0), obs=y)


def test_batched_replay_that_changes_the_numbers_is_not_used():
    t, y = torch.linspace(-1, 1, 6), torch.linspace(0, 2, 6)
    w = torch.randn(30, 2, generator=torch.Generator().manual_seed(2))
    replay = Replay(summed_slopes, (t, y), {"w": w})
    expected = dist.Normal(w.sum(-1, keepdim=True) * t, 1.0).log_prob(y)
    torch.testing.assert_close(replay.log_likelihood()["y"], expected, rtol=IDENTITY_RTOL, atol=1e-5)
    assert not replay.batched  # the check fired: batched, draw 0 would see the sum over all draws


# ---- Bayesian Gaussian mixtures with enumerated assignments ----------------------------------------------
def mixture(K):
    def model(x):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
        locs = pyro.sample("locs", dist.Normal(torch.zeros(K), 10.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(Vindex(locs)[..., z], 1.0), obs=x)

    return model


def mixture_indexing(x):
    """K = 2 in Pyro's textbook style: ``locs[z]`` indexes the draws when the draws are batched."""
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def three_clusters(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(3, n, generator=g) + torch.tensor([[-6.0], [0.0], [6.0]])).reshape(-1)


def mixture_log_density(x, weights, locs):
    """log Σ_k π_k N(x_i; μ_k, 1) per draw and point: [S, N]."""
    return torch.logsumexp(weights.log()[:, None, :] + dist.Normal(locs[:, None, :], 1.0).log_prob(x[:, None]), -1)


def quiet_laplace(model, *data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the mixture posterior is not Gaussian
        return laplace(model, *data, max_plate_nesting=1)


def test_compare_ranks_three_components_first_on_three_cluster_data():
    x = three_clusters()
    idatas = {f"K={K}": quiet_laplace(mixture(K), x).to_inference_data(500) for K in (2, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a high Pareto k of the merged clusters' outliers
        table = az.compare(idatas)
    assert table.index[0] == "K=3"
    # the difference is real: larger than twice its own standard error (az.compare's dse)
    assert table.loc["K=2", "elpd_diff"] > 2 * table.loc["K=2", "dse"]


@pytest.mark.parametrize("model", [mixture(2), mixture_indexing], ids=["vindex", "indexing"])
def test_enumerated_log_likelihood_is_the_mixture_density(model):
    x = three_clusters(n=5)[5:]  # two clusters
    g = torch.Generator().manual_seed(1)
    draws = {"weights": dist.Dirichlet(torch.ones(2)).sample((40,)), "locs": 3 * torch.randn(40, 2, generator=g)}
    replay = Replay(model, (x,), draws)
    # the batched check: fires (one draw at a time) for locs[z], stays quiet for Vindex
    assert replay.batched == (model is not mixture_indexing)
    log_lik = replay.log_likelihood()["x"]
    torch.testing.assert_close(
        log_lik, mixture_log_density(x, draws["weights"], draws["locs"]), rtol=IDENTITY_RTOL, atol=1e-5
    )
    rep = replay.posterior_predictive(seed=0)["x"]
    assert rep.shape == (40, len(x)) and torch.isfinite(rep).all()


def test_captured_replay_gives_the_model_s_numbers(monkeypatch):
    x = three_clusters(n=5)[5:]
    draws = {"weights": dist.Dirichlet(torch.ones(2)).sample((30,)), "locs": 3 * torch.randn(30, 2)}
    replay = Replay(mixture_indexing, (x,), draws)
    monkeypatch.setattr(predictive, "CAPTURE_SECONDS", math.inf)  # every draw through the model
    direct = replay.log_likelihood()["x"], replay.posterior_predictive(seed=3)["x"]
    monkeypatch.setattr(predictive, "CAPTURE_SECONDS", 0.0)  # a captured graph
    captured_run = []
    original = Replay._captured
    monkeypatch.setattr(
        Replay, "_captured", lambda self, fn: captured_run.append(original(self, fn)) or captured_run[-1]
    )
    captured = replay.log_likelihood()["x"], replay.posterior_predictive(seed=3)["x"]
    assert all(run is not None for run in captured_run) and len(captured_run) == 2
    # the same operations on the same random numbers: equal up to float32 round-off
    for a, b in zip(direct, captured):
        torch.testing.assert_close(a, b, rtol=IDENTITY_RTOL, atol=1e-5)


def test_variational_em_log_likelihood_uses_its_parameters():
    x = three_clusters(n=15)[15:]

    def model(x):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(torch.tensor([0.5, 0.5])), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)

    fit = variational_em(model, None, x, max_iter=50, max_plate_nesting=1, progress=False)
    idata = fit.to_inference_data(num_samples=10)
    expected = mixture_log_density(x, torch.full((1, 2), 0.5), fit.params["locs"][None])
    np.testing.assert_allclose(
        idata.log_likelihood["x"].values[0], expected.expand(10, -1).numpy(), rtol=IDENTITY_RTOL, atol=1e-5
    )
    assert idata.posterior_predictive["x"].shape == (1, 10, len(x))


# ---- the groups of every method ---------------------------------------------------------------------------
def check_groups(idata, chains, draws, n):
    for group in (
        "posterior",
        "log_likelihood",
        "posterior_predictive",
        "observed_data",
        "constant_data",
        "loss_trace",
    ):
        assert group in idata.groups(), group
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood["y"].shape == (chains, draws, n)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "data")
    assert idata.observed_data["y"].dims == ("data",)
    assert idata.constant_data["X"].shape == (n, 2)
    assert np.isfinite(idata.log_likelihood["y"].values).all()


def test_groups_of_svi_laplace_and_nuts_fits(regression_nuts, tmp_path):
    nuts_fit, X, y = regression_nuts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a short run: only the groups matter here
        svi_fit = svi(regression, AutoNormal(regression), X, y, steps=100, progress=False)
    fits = {"svi": svi_fit, "laplace": laplace(regression, X, y), "nuts": nuts_fit}
    for name, fit in fits.items():
        idata = fit.to_inference_data(num_samples=200)
        chains, draws = (2, 500) if name == "nuts" else (1, 200)
        check_groups(idata, chains, draws, len(y))
    axes = az.plot_ppc(idata, num_pp_samples=20, random_seed=0)
    np.ravel(axes)[0].figure.savefig(tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").stat().st_size > 0
    # the groups can be left out, and a reweighted fit keeps its model
    assert "log_likelihood" not in fits["laplace"].to_inference_data(50, log_likelihood=False).groups()
    assert "log_likelihood" in fits["laplace"].reweighted(num_proposals=200).to_inference_data(50).groups()


def test_minibatch_scale_does_not_enter_the_log_likelihood():
    X, y = regression_data()

    def scaled(X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), ALPHA**-0.5).to_event(1))
        with pyro.plate("data", X.shape[0]), poutine.scale(scale=10.0):  # as a minibatch's N/B would
            pyro.sample("y", dist.Normal((X * w).sum(-1), SIGMA), obs=y)

    w = torch.randn(5, 2)
    log_lik = Replay(scaled, (X, y), {"w": w}).log_likelihood()["y"]
    torch.testing.assert_close(log_lik, dist.Normal(w @ X.T, SIGMA).log_prob(y), rtol=IDENTITY_RTOL, atol=1e-5)


def test_hand_built_fit_converts_without_model_groups():
    fit = Fit(method="em", losses=[3.0, 2.0], seconds=0.1, draw=point_mass_draw({"mu": torch.zeros(2)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = fit.to_inference_data(num_samples=7)
    assert set(idata.groups()) == {"posterior", "loss_trace"}
    assert idata.posterior["mu"].shape == (1, 7, 2)


# ---- what cannot be computed is left out, with a warning ----------------------------------------------------
def global_switch(x):
    """A discrete site outside the data plate: given the draws, the points are not independent."""
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc + 3 * c, 1.0), obs=x)


def local_switch(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(loc + 3 * c, 1.0), obs=x)


def subsampled(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=3) as idx:
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x[idx])


def hand_fit(model, x, sites=("loc",)):
    draws = {s: torch.zeros(()) for s in sites}
    return Fit(method="laplace", losses=[], seconds=0.0, draw=point_mass_draw(draws), model=model, data=(x,))


def test_groups_that_cannot_be_computed_are_left_out_with_a_warning():
    x = torch.linspace(-2, 2, 8)
    with pytest.warns(UserWarning, match="no log_likelihood group.*not local"):
        idata = hand_fit(global_switch, x).to_inference_data(5)
    assert "log_likelihood" not in idata.groups() and "posterior_predictive" in idata.groups()
    with pytest.warns(UserWarning, match="'loc'.*neither among the fit's draws"):
        idata = hand_fit(local_switch, x, sites=()).to_inference_data(5)
    assert "observed_data" not in idata.groups()
    with pytest.warns(UserWarning, match="subsampled plate"):
        hand_fit(subsampled, x).to_inference_data(5)
    # quiet where the discrete site is local: the two-component density, exactly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = hand_fit(local_switch, x).to_inference_data(5)
    expected = torch.logsumexp(dist.Normal(torch.tensor([[0.0], [3.0]]), 1.0).log_prob(x) + math.log(0.5), 0)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0, 0], expected.numpy(), rtol=IDENTITY_RTOL)


def test_bad_arguments_raise():
    x = torch.linspace(-2, 2, 8)
    fit = hand_fit(local_switch, x)
    with pytest.raises(InvalidInputError, match="num_samples"):
        fit.to_inference_data(num_samples=0)
    with pytest.raises(InvalidInputError, match="log_likelihood"):
        fit.to_inference_data(5, log_likelihood="yes")
    with pytest.raises(InvalidInputError, match="posterior_predictive"):
        fit.to_inference_data(5, posterior_predictive=None)
