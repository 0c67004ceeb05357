"""Property-based tests: random shapes and values thrown at the data entry points.

Every call either works, with finite results, or raises the project's own error type (an InferenceError) —
never a bare torch/Pyro traceback and never a silent NaN.
"""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pyro.infer.autoguide import AutoNormal

import inference
import zoo
from inference.errors import InferenceError
from zoo import fep

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

values = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.just(float("nan")), st.just(float("inf")), st.just(0.0))
shapes = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)


def tensor_data(dtype=np.float64):
    return shapes.flatmap(lambda shape: arrays(dtype, shape, elements=values))


def works_or_project_error(call):
    """Run ``call``; return its result, or None if it raised an InferenceError. Anything else fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    except InferenceError as e:
        assert str(e), "a project error must say what is wrong"
        return None


def all_finite(x):
    if torch.is_tensor(x):
        return bool(torch.isfinite(x).all())
    return bool(np.all(np.isfinite(np.asarray(x, dtype=float))))


@SETTINGS
@given(X=tensor_data(), k=st.integers(-1, 4), cov=st.sampled_from(["full", "diag", "spherical", "tied"]))
def test_gaussian_mixture_fit(X, k, cov):
    def call():
        gmm = zoo.GaussianMixture(n_components=k, covariance_type=cov, max_iter=20, seed=0).fit(X)
        return gmm.score(X), gmm.predict_proba(X)

    out = works_or_project_error(call)
    if out is not None:
        score, proba = out
        assert math.isfinite(score) and all_finite(proba)
        assert torch.allclose(
            torch.as_tensor(proba).sum(-1).double(), torch.ones(len(X), dtype=torch.float64), atol=1e-6
        )


@SETTINGS
@given(
    x=tensor_data(np.float32),
    latent=st.integers(-1, 3),
    likelihood=st.sampled_from(["bernoulli", "gaussian", "continuous_bernoulli"]),
    beta=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 4.0, float("nan")]),
)
def test_vae_fit_and_evaluate(x, latent, likelihood, beta):
    def call():
        vae = zoo.VAE(latent_dim=latent, likelihood=likelihood, beta=beta, hidden=(8,))
        x01 = torch.as_tensor(x)
        vae.fit(x01, epochs=1, batch_size=4, progress=False)
        return vae.elbo(x01)

    out = works_or_project_error(call)
    if out is not None:
        assert all_finite(out)


@SETTINGS
@given(x=tensor_data(np.float32), batch=st.one_of(st.none(), st.integers(-1, 8)))
def test_svi_on_any_data(x, batch):
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", data.shape[0] if data.dim() else 1):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

    def call():
        fit = inference.svi(model, AutoNormal(model), torch.as_tensor(x), steps=3, batch_size=batch, progress=False)
        return fit.losses

    out = works_or_project_error(call)
    if out is not None:
        assert all_finite(out)


@SETTINGS
@given(x=tensor_data())
def test_laplace_on_any_data(x):
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", data.shape[0] if data.dim() else 1):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

    out = works_or_project_error(lambda: inference.laplace(model, torch.as_tensor(x)).samples(10))
    if out is not None:
        assert all_finite(out["mu"])


@SETTINGS
@given(
    sigma=st.sampled_from([-1.0, 0.0, 0.1, 1.0, float("nan"), float("inf")]),
    dt=st.sampled_from([-0.1, 0.0, 0.005, 0.05, float("nan")]),
    onset=st.sampled_from([0.0, 0.5, 2.0, 5.0]),
    kappa=st.sampled_from([0.1, 1.0, 1e3]),
)
def test_fep_simulate_settings(sigma, dt, onset, kappa):
    out = works_or_project_error(
        lambda: fep.simulate(sigma_z=sigma, dt=dt, t_end=1.0, action_onset=onset, kappa_mu=kappa)
    )
    if out is not None:
        assert np.isfinite(out.select_dtypes("number").to_numpy()).all()
