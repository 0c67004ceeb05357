"""Disentanglement metrics on codes whose relation to the factors is known by construction."""

import numpy as np
import pytest
import torch

from inference.errors import InvalidInputError
from zoo.metrics import factor_entropy, factorvae_score, mig, mutual_information


def full_grid(sizes):
    """Every combination of factor levels once (independent, uniform factors): int [prod(sizes), K]."""
    return np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))


def test_entropy_and_mutual_information_of_exact_codes():
    f = full_grid([3, 4, 5])
    assert factor_entropy(f) == pytest.approx(np.log([3, 4, 5]))
    mi = mutual_information(f.astype(float), f, n_bins=20)
    # each code is its factor (distinct bins for distinct levels): I = H; independent factors: I = 0
    assert np.diag(mi) == pytest.approx(np.log([3, 4, 5]))
    assert np.abs(mi - np.diag(np.diag(mi))).max() < 1e-12


def test_mig_is_one_for_a_disentangled_code_and_drops_when_factors_mix():
    f = full_grid([3, 4, 5])
    codes = 2.0 * f + 1.0  # any monotone map of each factor
    assert mig(codes, f) == pytest.approx(1.0)
    # two latents carry the first factor equally: its gap is 0, the others keep theirs
    dup = np.column_stack([codes[:, 0], codes])
    score, gaps = mig(dup, f, per_factor=True)
    assert gaps == pytest.approx([0.0, 1.0, 1.0])
    assert score == pytest.approx(2 / 3)
    # a rotated code spreads each factor over two latents
    rotated = np.column_stack([f[:, 0] + f[:, 1], f[:, 0] - f[:, 1], f[:, 2]]).astype(float)
    assert mig(rotated, f) < 0.7
    assert mig(torch.tensor(codes), torch.tensor(f)) == pytest.approx(1.0)  # tensors are accepted


def test_mig_ignores_constant_factors_and_rejects_bad_input():
    f = full_grid([4, 1, 5])
    score, gaps = mig(f.astype(float), f, per_factor=True)
    assert np.isnan(gaps[1]) and score == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="same n"):
        mig(np.zeros((5, 2)), f)
    with pytest.raises(InvalidInputError, match="at least 2"):
        mig(f[:, :1].astype(float), f)
    with pytest.raises(InvalidInputError, match="integer"):
        mig(f.astype(float), f.astype(float))
    with pytest.raises(InvalidInputError, match="NaN"):
        mig(np.full(f.shape, np.nan), f)


def test_factorvae_score_perfect_for_a_disentangled_code_and_chance_for_noise():
    f = full_grid([4, 6, 8, 8])
    rng = np.random.default_rng(1)
    codes = np.column_stack([f, rng.normal(size=len(f))]).astype(float)  # plus one nuisance latent
    assert factorvae_score(codes, f, seed=0) == 1.0
    noise = rng.normal(size=(len(f), 5))
    assert factorvae_score(noise, f, seed=0) < 0.5  # chance is 1/4; a perfect code scores 1
    # collapsed latents (variance below the threshold) are never chosen
    assert factorvae_score(np.zeros((len(f), 3)), f) == 0.0
