"""NUTS: within Monte-Carlo error of closed-form posteriors, chains and diagnostics carried to ArviZ;
the compiled potential, parallel chains, the dense mass matrix and the Laplace start."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import mixture_model
from pyro.infer.mcmc.util import initialize_model
from test_laplace import (
    normal_mean_data,
    normal_mean_model,
    normal_mean_posterior,
    observed_only_model,
    regression_data,
    regression_model,
    regression_posterior,
)

from inference.common import cpu_count
from inference.diagnostics import compare
from inference.errors import InvalidInputError
from inference.laplace import laplace
from inference.mcmc import nuts
from inference.nuts_sampler import adaptation_windows
from inference.potential import FlatPotential

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

NUM_SAMPLES, WARMUP = 300, 200


@pytest.fixture(scope="module")
def normal_fit():
    return nuts(
        normal_mean_model,
        normal_mean_data(),
        num_samples=NUM_SAMPLES,
        warmup_steps=WARMUP,
        num_chains=2,
        seed=0,
        progress=False,
    )


@pytest.fixture(scope="module")
def regression_fit():
    return nuts(
        regression_model, *regression_data(), num_samples=NUM_SAMPLES, warmup_steps=WARMUP, seed=1, progress=False
    )


def assert_within_mc_error(fit, site, mean, sd):
    """Posterior mean and sd within 4 Monte-Carlo standard errors (ArviZ's MCSE, from the ESS)."""
    idata = fit.to_inference_data()
    mcse_mean = az.mcse(idata, var_names=[site], method="mean")[site].values
    mcse_sd = az.mcse(idata, var_names=[site], method="sd")[site].values
    x = fit.chains[site].double().numpy()
    x = x.reshape(-1, *x.shape[2:])
    assert np.all(np.abs(x.mean(0) - mean) <= 4 * mcse_mean), (x.mean(0), mean, mcse_mean)
    assert np.all(np.abs(x.std(0) - sd) <= 4 * mcse_sd), (x.std(0), sd, mcse_sd)


def test_normal_mean_within_mc_error(normal_fit):
    mean, sd = normal_mean_posterior(normal_mean_data())
    assert_within_mc_error(normal_fit, "mu", mean, sd)


def test_regression_within_mc_error(regression_fit):
    mean, covariance = regression_posterior(*regression_data())
    assert_within_mc_error(regression_fit, "w", mean.numpy(), covariance.diag().sqrt().numpy())


def test_chains_and_diagnostics(normal_fit):
    assert normal_fit.method == "nuts" and normal_fit.losses.size == 0 and normal_fit.seconds > 0
    assert normal_fit.chains["mu"].shape == (2, NUM_SAMPLES)
    assert normal_fit.sample_stats["diverging"].shape == (2, NUM_SAMPLES)
    assert normal_fit.sample_stats["diverging"].dtype == bool
    d = normal_fit.diagnostics
    assert d["num_divergences"] == int(normal_fit.sample_stats["diverging"].sum())
    assert abs(float(d["r_hat"]["mu"]) - 1) < 0.05 and float(d["ess_bulk"]["mu"]) > 100
    accept = normal_fit.sample_stats["acceptance_rate"]
    assert np.all((accept >= 0) & (accept <= 1 + 1e-9))
    # NUTS adapts its step size to reach the target acceptance on average
    assert abs(accept.mean() - 0.8) < 0.15


def test_inference_data_has_chains_and_divergences(normal_fit):
    idata = normal_fit.to_inference_data()
    assert dict(idata.posterior["mu"].sizes) == {"chain": 2, "draw": NUM_SAMPLES}
    assert dict(idata.sample_stats["diverging"].sizes) == {"chain": 2, "draw": NUM_SAMPLES}
    assert idata.sample_stats["diverging"].dtype == bool
    assert "loss_trace" in idata.groups()


def test_draw_resamples_the_pooled_chains(normal_fit):
    pooled = normal_fit.chains["mu"].reshape(-1)
    total = pooled.numel()
    everything = normal_fit.draw(total, 0)["mu"]
    assert torch.equal(everything.sort().values, pooled.sort().values)  # a permutation: no replacement
    assert normal_fit.samples(3 * total, seed=1)["mu"].shape == (3 * total,)
    assert torch.equal(normal_fit.samples(10, seed=2)["mu"], normal_fit.samples(10, seed=2)["mu"])


def test_compare_against_nuts_reference(normal_fit):
    fit = laplace(normal_mean_model, normal_mean_data())
    table = compare({"laplace": fit, "nuts": normal_fit}, num_samples=1000)  # nuts is picked as reference
    assert table.attrs["reference"] == "nuts"
    row = table[table.method == "laplace"].iloc[0]
    ess = float(normal_fit.diagnostics["ess_bulk"]["mu"])
    # both means carry Monte-Carlo error: sd·sqrt(1/ESS + 1/n) in reference-sd units
    assert abs(row.error) <= 4 * np.sqrt(1 / ess + 1 / 1000)
    assert abs(row.sd_ratio - 1) <= 4 * np.sqrt(1 / (2 * ess) + 1 / 2000)


def test_chains_are_seeded():
    def run(seed):
        return nuts(
            normal_mean_model,
            normal_mean_data(),
            num_samples=20,
            warmup_steps=20,
            num_chains=2,
            seed=seed,
            progress=False,
        ).chains["mu"]

    first = run(0)
    assert torch.equal(first, run(0)) and not torch.equal(first, run(1))
    assert not torch.equal(first[0], first[1])  # chain c runs with seed + c


def test_discrete_sites_are_enumerated():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(15, generator=g) - 2, torch.randn(35, generator=g) + 2])
    fit = nuts(mixture_model, x, num_samples=100, warmup_steps=100, max_plate_nesting=1, progress=False)
    assert set(fit.chains) == {"mu"} and fit.chains["mu"].shape == (1, 100, 2)
    assert fit.diagnostics["potential"] == "compiled"  # Pyro's enumerated sum is captured too
    # the marginal posterior is nearly Gaussian here: the draws centre on the Laplace mode (5 sds allow
    # for the Monte-Carlo error of 100 correlated draws and the mode-mean gap)
    mode = laplace(mixture_model, x, max_plate_nesting=1)
    sd = mode.diagnostics["covariance"].diag().sqrt()
    assert ((fit.chains["mu"][0].double().mean(0) - mode.params["mu"].double()).abs() <= 5 * sd).all()


def test_bad_input():
    with pytest.raises(InvalidInputError, match="no continuous latent"):
        nuts(observed_only_model, normal_mean_data(), num_samples=5, warmup_steps=5, progress=False)
    x = normal_mean_data()
    x[0] = float("inf")
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        nuts(normal_mean_model, x, num_samples=5, warmup_steps=5, progress=False)
    with pytest.raises(InvalidInputError, match="target_accept_prob"):
        nuts(normal_mean_model, normal_mean_data(), target_accept_prob=1.5)
    with pytest.raises(InvalidInputError, match="chain_method"):
        nuts(normal_mean_model, normal_mean_data(), chain_method="threads")
    with pytest.raises(InvalidInputError, match="init"):
        nuts(normal_mean_model, normal_mean_data(), init="median")


def short_run(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 40 draws are too few for the verdict; only equality is checked
        return nuts(normal_mean_model, normal_mean_data(), num_samples=40, warmup_steps=40, progress=False, **kwargs)


def test_parallel_chains_draw_what_sequential_chains_draw():
    parallel = short_run(num_chains=2, seed=3, chain_method="parallel")
    sequential = short_run(num_chains=2, seed=3, chain_method="sequential")
    if cpu_count() > 1:
        assert parallel.diagnostics["chain_method"].startswith("parallel")
    assert sequential.diagnostics["chain_method"] == "sequential"
    assert torch.equal(parallel.chains["mu"], sequential.chains["mu"])
    for k in sequential.sample_stats:
        np.testing.assert_array_equal(parallel.sample_stats[k], sequential.sample_stats[k])
    # chain c is the chain a one-chain run with seed + c draws: the chains are seeded apart, not coupled
    second = short_run(num_chains=1, seed=4)
    assert torch.equal(parallel.chains["mu"][1], second.chains["mu"][0])


def flat_potential(model, *data, compile=True, seed=0):
    pyro.set_rng_seed(seed)
    params, potential_fn, transforms, trace = initialize_model(model, data)
    return FlatPotential(potential_fn, transforms, params, [n for n in trace.nodes if n in params], compile=compile)


def test_compiled_potential_and_gradient_equal_pyros():
    compiled = flat_potential(regression_model, *regression_data())
    eager = flat_potential(regression_model, *regression_data(), compile=False)
    assert compiled.compiled and compiled.note == "" and not eager.compiled
    g = np.random.default_rng(0)
    for z in g.normal(0, 3, size=(5, compiled.dim)):  # far from the point it was captured at
        U, grad = compiled(z)
        U_ref, grad_ref = eager(z)
        # the same float32 operations, possibly in another order: a few float32 ulps of the largest term
        assert U == pytest.approx(U_ref, rel=1e-5)
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-4 * np.abs(grad_ref).max())


def rounded_model():
    # Python reads the latent's value: a captured graph would freeze int(100 x) at the capture point
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.factor("step", x * int(100 * x.item()) * 1e-3)


def test_value_dependent_python_falls_back_to_pyros_potential():
    potential = flat_potential(rounded_model)
    assert not potential.compiled and potential.note.startswith("not compiled")
    U, grad = potential(np.array([0.5]))
    # -log N(0.5 | 0, 1) - 0.5 * 50 * 1e-3, as Pyro computes it
    assert U == pytest.approx(0.5 * 0.25 + 0.5 * math.log(2 * math.pi) - 0.025, rel=1e-5)


def two_piece_model():
    # an improper flat prior whose density is written with a Python branch on the value:
    # exp(-x²/2) right of 0, exp(-x²/8) left of it
    x = pyro.sample("x", dist.ImproperUniform(dist.constraints.real, (), ()))
    pyro.factor("density", -0.5 * x**2 if x.item() > 0 else -0.125 * x**2)


def test_compile_false_samples_a_value_dependent_model():
    fit = nuts(two_piece_model, num_samples=500, warmup_steps=200, seed=0, progress=False, compile=False)
    assert fit.diagnostics["potential"] == "pyro"
    # two half-normals with sds 1 (right, mass 1/3) and 2 (left, 2/3): mean (1 - 4) / (1.5 sqrt(2π)),
    # second moment (1/2 + 4) / 1.5 = 3
    mean = -3 / (1.5 * math.sqrt(2 * math.pi))
    sd = math.sqrt(3 - mean**2)
    idata = fit.to_inference_data()
    mcse = float(az.mcse(idata, var_names=["x"], method="mean")["x"])
    assert abs(fit.chains["x"].double().mean().item() - mean) <= 4 * mcse
    assert abs(fit.chains["x"].double().std().item() - sd) <= 4 * float(
        az.mcse(idata, var_names=["x"], method="sd")["x"]
    )


def correlated_regression_data(n=40, seed=0):
    """The regression with two nearly collinear predictors: posterior correlation about -0.99."""
    g = torch.Generator().manual_seed(seed)
    x0, noise, x2 = torch.randn(3, n, generator=g)
    X = torch.stack([x0, x0 + 0.1 * noise, x2], dim=1)
    y = X @ torch.tensor([1.0, -0.5, 2.0]) + 0.5 * torch.randn(n, generator=g)
    return X, y


@pytest.mark.parametrize("dense_mass", [True, False])
def test_laplace_start_needs_no_warmup(dense_mass):
    # The posteriors are Gaussian, so the Laplace fit is exact: started at its mode with its covariance as
    # the inverse mass matrix, NUTS samples correctly with no warm-up at all. Dense: the ridge of nearly
    # collinear predictors; diagonal: the plain regression (a diagonal cannot undo a ridge's correlation).
    X, y = correlated_regression_data() if dense_mass else regression_data()
    fit = nuts(
        regression_model,
        X,
        y,
        num_samples=300,
        warmup_steps=0,
        seed=2,
        init="laplace",
        dense_mass=dense_mass,
        progress=False,
    )
    mean, covariance = regression_posterior(X, y)
    assert_within_mc_error(fit, "w", mean.numpy(), covariance.diag().sqrt().numpy())
    assert fit.diagnostics["converged"]
    if dense_mass:
        # the exact covariance makes the ridge a round Gaussian: short trajectories from the first draw
        # (the identity would need many steps along the ridge)
        assert np.median(fit.sample_stats["n_steps"]) <= 7


def test_dense_mass_adapts_to_a_correlated_posterior():
    X, y = correlated_regression_data()
    fit = nuts(regression_model, X, y, num_samples=300, warmup_steps=300, seed=1, dense_mass=True, progress=False)
    mean, covariance = regression_posterior(X, y)
    assert_within_mc_error(fit, "w", mean.numpy(), covariance.diag().sqrt().numpy())
    # a dense metric turns the ridge into a round Gaussian: short trajectories after warm-up
    assert np.median(fit.sample_stats["n_steps"]) <= 7


def test_adaptation_windows_are_stans():
    # Stan's schedule for 1000 warm-up steps: buffers of 75 and 50 around windows 25, 50, 100, 200, 500
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert adaptation_windows(500) == [(75, 100), (100, 150), (150, 250), (250, 450)]
    assert adaptation_windows(100) == [(15, 90)] and adaptation_windows(19) == []


def test_background_chains_give_the_same_draws():
    # nuts(..., background=True) starts the chains in a worker and returns at once; result() waits
    args = dict(num_samples=50, warmup_steps=50, seed=3, progress=False)
    here = nuts(regression_model, *regression_data(), **args)
    pending = nuts(regression_model, *regression_data(), background=True, **args)
    there = pending.result()
    assert pending.result() is there
    assert torch.equal(there.chains["w"], here.chains["w"])
    assert there.diagnostics["chain_method"].startswith("background")
