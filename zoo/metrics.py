"""Disentanglement metrics: how well single latent dimensions capture single generating factors.

Both take the codes of a data set with known factors (e.g. ``zoo.data.shapes``), codes [n, D] (the
posterior means μ(x)) and factors [n, K] (integer levels), and return a score in [0, 1]:

- :func:`mig`, the mutual information gap (Chen et al. 2018): for each factor v_k, the gap between the two
  latents most informative about it, normalised by its entropy, averaged over factors,

      MIG = (1/K) Σ_k [ I(z_{j(1)}; v_k) − I(z_{j(2)}; v_k) ] / H(v_k),

  with each code discretised into equal-width bins (the estimator of Locatello et al. 2019).
- :func:`factorvae_score` (Kim & Mnih 2018): fix one factor, take a batch of data sharing that factor's
  level, find the latent with the smallest variance (after scaling each latent by its spread over the data);
  the accuracy of a majority-vote classifier from that latent's index to the fixed factor.

A perfectly disentangled code scores 1 on both; a code mixing factors across latents scores near 0.
Factors with a single level (entropy 0) carry no information and are left out.
"""

import numpy as np
import torch
from sklearn.metrics import mutual_info_score

from inference.errors import InvalidInputError


def _as_arrays(codes, factors):
    codes = codes.detach().cpu().numpy() if torch.is_tensor(codes) else np.asarray(codes)
    factors = factors.detach().cpu().numpy() if torch.is_tensor(factors) else np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0] or codes.shape[0] < 2:
        raise InvalidInputError(
            f"codes must be [n, D] and factors [n, K] with the same n >= 2; got {codes.shape} and {factors.shape}"
        )
    if not np.isfinite(codes).all():
        raise InvalidInputError("codes contain NaN or infinite values")
    if not np.issubdtype(factors.dtype, np.integer):
        raise InvalidInputError(f"factors must hold integer levels, got dtype {factors.dtype}")
    return codes.astype(np.float64), factors


def discretize(codes, n_bins=20):
    """Each column of codes [n, D] cut into ``n_bins`` equal-width bins over its range: ints [n, D]."""
    codes = np.asarray(codes, dtype=np.float64)
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins=n_bins)
        out[:, j] = np.digitize(codes[:, j], edges[1:-1])
    return out


def mutual_information(codes, factors, n_bins=20):
    """I(z_j; v_k) in nats for every latent j and factor k, on discretised codes: [D, K]."""
    codes, factors = _as_arrays(codes, factors)
    binned = discretize(codes, n_bins)
    return np.array(
        [
            [mutual_info_score(factors[:, k], binned[:, j]) for k in range(factors.shape[1])]
            for j in range(binned.shape[1])
        ]
    )


def factor_entropy(factors):
    """H(v_k) in nats of each factor's empirical distribution: [K]."""
    factors = np.asarray(factors)
    return np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])


def mig(codes, factors, n_bins=20, per_factor=False):
    """The mutual information gap in [0, 1] (see the module docstring).

    Args:
        codes: [n, D] latent codes (D >= 2), e.g. ``vae.codes(images)``.
        factors: [n, K] integer factor levels, e.g. from ``zoo.data.shapes``.
        n_bins: equal-width bins per latent for the mutual-information estimate.
        per_factor: also return the normalised gap of every factor (NaN for constant factors).
    """
    codes, factors = _as_arrays(codes, factors)
    if codes.shape[1] < 2:
        raise InvalidInputError("MIG needs at least 2 latent dimensions (a gap between the top two)")
    mi = mutual_information(codes, factors, n_bins)
    entropy = factor_entropy(factors)
    top = np.sort(mi, axis=0)[::-1]
    gaps = np.full(factors.shape[1], np.nan)
    varying = entropy > 0
    if not varying.any():
        raise InvalidInputError("every factor is constant in this data: MIG is undefined")
    gaps[varying] = (top[0, varying] - top[1, varying]) / entropy[varying]
    score = float(np.nanmean(gaps))
    return (score, gaps) if per_factor else score


def factorvae_score(codes, factors, batch_size=64, n_train=800, n_eval=400, seed=0, active_threshold=0.05):
    """The FactorVAE disentanglement score in [0, 1] (Kim & Mnih 2018), from a data set of codes.

    Each vote: pick a (varying) factor k and one of its levels at random, draw ``batch_size`` data points
    with that level (the other factors vary as in the data set), scale every latent by its standard
    deviation over the whole data, and take the latent with the smallest empirical variance. A
    majority-vote classifier (latent -> factor), trained on ``n_train`` votes, is scored on ``n_eval``
    fresh votes. Latents whose variance over the data is below ``active_threshold`` are collapsed and
    cannot be chosen (as in disentanglement_lib); with none active the score is 0.

    The data set must hold many points per factor level (a few thousand random shapes do).
    """
    codes, factors = _as_arrays(codes, factors)
    rng = np.random.default_rng(seed)
    scale = codes.std(axis=0)
    active = scale**2 > active_threshold
    if not active.any():
        return 0.0
    varying = [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1]
    if not varying:
        raise InvalidInputError("every factor is constant in this data: the FactorVAE score is undefined")
    normed = codes[:, active] / scale[active]
    members = {k: {v: np.flatnonzero(factors[:, k] == v) for v in np.unique(factors[:, k])} for k in varying}

    def votes(n):
        out = np.empty((n, 2), dtype=np.int64)
        for i in range(n):
            k = varying[rng.integers(len(varying))]
            levels = list(members[k])
            rows = members[k][levels[rng.integers(len(levels))]]
            batch = normed[rng.choice(rows, size=batch_size, replace=len(rows) < batch_size)]
            out[i] = np.argmin(batch.var(axis=0)), k
        return out

    train, test = votes(n_train), votes(n_eval)
    n_latent, n_factor = normed.shape[1], factors.shape[1]
    table = np.zeros((n_latent, n_factor), dtype=np.int64)
    np.add.at(table, (train[:, 0], train[:, 1]), 1)
    classify = table.argmax(axis=1)  # each latent votes for its most frequent factor
    return float(np.mean(classify[test[:, 0]] == test[:, 1]))
