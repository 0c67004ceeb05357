"""Guide families by name: on a strongly correlated Gaussian posterior the full-rank guide is exact and the
mean-field guide's sds shrink to the conditional sds, as the maths says (MATH.md, variational inference).

For a Gaussian target N(m, Σ) with precision Λ = Σ⁻¹, the mean-field q = Π_i N(m_i, s_i²) minimising
KL(q ‖ p) has s_i = 1 / sqrt(Λ_ii) (Bishop 2006 §10.1.2): in two dimensions with correlation ρ, the
marginal sd times sqrt(1 - ρ²). At ρ = 0.9 that is 0.436 of the marginal sd.
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
from inference import ConvergenceWarning

RHO, SD = 0.9, torch.tensor([1.0, 3.0])
COV = torch.diag(SD) @ torch.tensor([[1.0, RHO], [RHO, 1.0]]) @ torch.diag(SD)
MEAN = torch.tensor([1.0, -2.0])


def correlated():
    """A model without data: its posterior is its prior z ~ N(MEAN, COV)."""
    pyro.sample("z", dist.MultivariateNormal(MEAN, COV))


def fitted_sds(fit, n=20000):
    return fit.samples(n, seed=0)["z"].std(0)


def test_fullrank_is_exact_and_meanfield_shrinks_to_the_conditional_sds():
    settings = dict(steps=1500, lr=0.02, num_particles=4, progress=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # the exact family: no alarm
        full = inference.svi(correlated, inference.guide(correlated, "fullrank"), **settings)
    draws = full.samples(20000, seed=0)["z"]
    # 20000 draws: the sample covariance's entries have relative standard errors near 1/sqrt(10000) = 1%,
    # and the fit's own optimisation noise is of the same order; 5% is several of both
    assert torch.allclose(torch.cov(draws.T), COV, rtol=0.05, atol=0.05 * SD.max() ** 2)
    assert ((draws.mean(0) - MEAN).abs() < 0.05 * SD).all()  # 5% of each sd, as for the covariances

    with pytest.warns(ConvergenceWarning, match="mean-field"):  # the family cannot hold ρ = 0.9
        mean_field = inference.svi(correlated, inference.guide(correlated, "meanfield"), **settings)
    predicted = 1 / torch.linalg.inv(COV).diagonal().sqrt()  # = SD * sqrt(1 - ρ²)
    assert torch.allclose(predicted, SD * math.sqrt(1 - RHO**2))
    assert torch.allclose(fitted_sds(mean_field), predicted, rtol=0.05)


def test_every_family_by_name_and_bad_names():
    for name in inference.GUIDES:
        assert callable(inference.guide(correlated, name))
    with pytest.raises(inference.InvalidInputError, match="guide"):
        inference.guide(correlated, "fullish")
