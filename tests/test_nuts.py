"""NUTS: within Monte-Carlo error of closed-form posteriors, chains and diagnostics carried to ArviZ."""
import warnings

import numpy as np
import pytest
import torch

from inference.diagnostics import compare
from inference.errors import InvalidInputError
from inference.laplace import laplace
from inference.mcmc import nuts
from test_laplace import (mixture_model, normal_mean_data, normal_mean_model, normal_mean_posterior,
                          observed_only_model, regression_data, regression_model, regression_posterior)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

NUM_SAMPLES, WARMUP = 300, 200


@pytest.fixture(scope="module")
def normal_fit():
    return nuts(normal_mean_model, normal_mean_data(), num_samples=NUM_SAMPLES, warmup_steps=WARMUP,
                num_chains=2, seed=0, progress=False)


@pytest.fixture(scope="module")
def regression_fit():
    return nuts(regression_model, *regression_data(), num_samples=NUM_SAMPLES, warmup_steps=WARMUP,
                seed=1, progress=False)


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
        return nuts(normal_mean_model, normal_mean_data(), num_samples=20, warmup_steps=20, num_chains=2,
                    seed=seed, progress=False).chains["mu"]
    first = run(0)
    assert torch.equal(first, run(0)) and not torch.equal(first, run(1))
    assert not torch.equal(first[0], first[1])  # chain c runs with seed + c


def test_discrete_sites_are_enumerated():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(15, generator=g) - 2, torch.randn(35, generator=g) + 2])
    fit = nuts(mixture_model, x, num_samples=100, warmup_steps=100, max_plate_nesting=1, progress=False)
    assert set(fit.chains) == {"mu"} and fit.chains["mu"].shape == (1, 100, 2)
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
