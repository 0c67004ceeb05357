"""Closed-form EM for a Gaussian mixture, on sufficient statistics (MATH.md §2).

Each component's log-density is linear in a fixed feature map of x (:mod:`zoo.gmm.covariance`),

    log π_k + log N(x; μ_k, Σ_k) = φ(x) · η_k,
    η_k = [-½ P_k (off-diagonal entries doubled), P_k μ_k, log π_k - ½ μ_kᵀ P_k μ_k - ½ log det(2π Σ_k)],

with P_k = Σ_k⁻¹. So one EM iteration over all points and components is two matrix products on the
cached features Φ [N, F]:

    E-step   L = Φ H  [N, K] (H = [η_1 .. η_K]),  log p(x_n) = logsumexp_k L_nk,  r_nk = exp(L_nk - log p(x_n))
    stats    S = Rᵀ Φ  [K, F]  holds N_k = Σ_n r_nk, Σ_n r_nk x_n and Σ_n r_nk x_n x_nᵀ at once
    M-step   π_k = N_k / N,  μ_k = S1_k / N_k,  Σ_k = S2_k / N_k - μ_k μ_kᵀ + λ I

The statistics S are sums over points, so a distributed or streaming fit only has to add them up
(:func:`e_step`, :func:`sufficient_statistics`, :func:`m_step` are separate for that). The data are
centred first (a mixture is shift-equivariant), which keeps the quadratic form well conditioned; the
M-step runs in float64 on the [K, F] statistics whatever the data's dtype.
"""

import torch
from sklearn.cluster import kmeans_plusplus as sklearn_kmeans_plusplus

from inference import distributed

from .covariance import COVARIANCES, LOG_2PI

CACHE_BYTES = 1 << 30  # cache the features Φ up to this size; beyond it they are rebuilt per chunk
CHUNK_BYTES = 256 << 20  # rows of Φ built at once


def features(X, covariance_type):
    """φ(X) [N, F]: [x_i x_j for i <= j, x, 1] for "full" (F = D(D+1)/2 + D + 1), else [x², x, 1] (F = 2D + 1)."""
    return COVARIANCES[covariance_type].features(X)


def natural_parameters(weights, means, factor, covariance_type):
    """H [F, K] such that Φ H = log π_k + log N(x; μ_k, Σ_k).

    Args:
        weights: π [K].
        means: μ [K, D].
        factor: the Cholesky factor of Σ_k [K, D, D] ("full"), or the sds [K, D] ("diag", "spherical").
        covariance_type: a key of ``COVARIANCES``.
    """
    D = means.shape[1]
    quad, lin, half_log_det = COVARIANCES[covariance_type].natural(means, factor)
    const = torch.log(weights) - 0.5 * (lin * means).sum(-1) - half_log_det - 0.5 * D * LOG_2PI
    return torch.cat([quad, lin, const.unsqueeze(-1)], dim=1).T


def e_step(phi, eta):
    """Log-likelihoods log p(x_n) [N] and responsibilities r [N, K] = p(z_n = k | x_n) for features Φ [N, F]."""
    log_joint = phi @ eta
    log_norm = torch.logsumexp(log_joint, dim=1)
    return log_norm, torch.exp(log_joint - log_norm.unsqueeze(1))


def sufficient_statistics(phi, resp):
    """S = Rᵀ Φ [K, F] in float64: per component N_k (last column), Σ r x and Σ r x xᵀ (packed as in φ)."""
    return (resp.T @ phi).double()


def m_step(stats, D, covariance_type, reg_covar):
    """Closed-form M-step from summed statistics S [K, F] (float64).

    Returns:
        (N_k [K], means [K, D], covariances: [K, D, D] "full", [K, D] "diag", [K] "spherical"), with
        Σ_k = Σ r x xᵀ / N_k − μ_k μ_kᵀ + λ I. Components with N_k = 0 get NaN (the caller handles them).
    """
    nk = stats[:, -1]
    means = stats[:, -1 - D : -1] / nk.unsqueeze(1)
    second = stats[:, : -1 - D] / nk.unsqueeze(1)
    return nk, means, COVARIANCES[covariance_type].covariances(second, means, reg_covar)


def cholesky(covariances, covariance_type, D):
    """The factor the E-step needs (Cholesky of Σ_k, or sds [K, D]) and None; or None and the index of the
    first component whose Σ_k is not positive definite."""
    factor, bad = COVARIANCES[covariance_type].factor(covariances, D)
    if bad.any():
        return None, int(bad.nonzero()[0, 0])
    return factor, None


class Features:
    """Φ of the centred data X - center, in chunks that bound memory; cached when it fits in CACHE_BYTES.

    Args:
        X: data [N, D].
        center: [D], subtracted before the features are taken.
        covariance_type: a key of ``COVARIANCES``.
        cache: keep the chunks (False: rebuild them at every pass, e.g. for one pass of prediction).
    """

    def __init__(self, X, center, covariance_type, cache=True):
        self.X, self.center, self.covariance_type = X, center, covariance_type
        row_bytes = COVARIANCES[covariance_type].width(X.shape[1]) * X.element_size()
        self.rows = max(1, min(X.shape[0], CHUNK_BYTES // row_bytes))
        self.cache = list(self._build()) if cache and X.shape[0] * row_bytes <= CACHE_BYTES else None

    def _build(self):
        for start in range(0, self.X.shape[0], self.rows):
            yield features(self.X[start : start + self.rows] - self.center, self.covariance_type)

    def __iter__(self):
        return iter(self.cache) if self.cache is not None else self._build()


def em_pass(feats, eta):
    """One E-step over the data.

    Returns:
        (mean log-likelihood per point, statistics S [K, F]).
    """
    total, stats = 0.0, 0.0
    for phi in feats:
        log_norm, resp = e_step(phi, eta)
        total = total + log_norm.sum(dtype=torch.float64)
        stats = stats + sufficient_statistics(phi, resp)
    return float(total) / feats.X.shape[0], stats


def score_pass(feats, eta):
    """log p(x_n) [N] and responsibilities [N, K], chunk by chunk."""
    pairs = [e_step(phi, eta) for phi in feats]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def sum_over_ranks(ll, stats, n_local, n_total):
    """Distributed EM: the statistics S and the log-likelihood are sums over points, so the shards' sums add
    up to those of all the data (one all-reduce).

    Returns:
        (mean log-likelihood over all ranks' points, S summed over ranks).
    """
    packed = torch.cat([stats.reshape(-1), stats.new_tensor([ll * n_local])])
    distributed.all_reduce_sum(packed)
    return float(packed[-1]) / n_total, packed[:-1].reshape(stats.shape)


def nearest(X, centers):
    """Index of the nearest centre for each row [N] (squared distances by one matrix product)."""
    d2 = (centers * centers).sum(1) - 2 * X @ centers.T
    return d2.argmin(1)


def params_from_labels(X, center, labels, K, covariance_type, reg_covar):
    """(weights, centred means, covariances) in float64 of hard clusters.

    Covariances come from deviations about each cluster's mean (two passes: no cancellation even in
    float32). Empty clusters get the overall covariance.
    """
    D = X.shape[1]
    onehot = torch.nn.functional.one_hot(labels, K).double()
    nk = onehot.sum(0)
    Xc = (X - center.to(X.dtype)).double()
    means = (onehot.T @ Xc) / nk.clamp_min(1).unsqueeze(1)
    stats = sufficient_statistics(features(Xc - means[labels], covariance_type), onehot)
    _, _, cov = m_step(stats, D, covariance_type, reg_covar)
    if (nk == 0).any():
        everyone = torch.ones(X.shape[0], 1, dtype=torch.float64, device=X.device)
        _, _, overall = m_step(
            sufficient_statistics(features(Xc, covariance_type), everyone), D, covariance_type, reg_covar
        )
        cov[nk == 0] = overall[0]
    weights = (nk + 1e-10) / (nk + 1e-10).sum()
    return weights, means, cov


def kmeans_plusplus(Xc, K, gen):
    """K seeds [K, D] by greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's
    ``kmeans_plusplus``): each next seed a data point drawn with probability proportional to its squared
    distance to the nearest seed so far, the best of 2 + log K such draws. None when X has fewer than K
    distinct points. The seeding runs on the CPU (scikit-learn) and the seeds are returned on Xc's device.
    """
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    _, idx = sklearn_kmeans_plusplus(Xc.detach().cpu().double().numpy(), K, random_state=seed)
    centers = Xc[torch.as_tensor(idx, device=Xc.device)]
    return centers if torch.unique(centers, dim=0).shape[0] == K else None


def lloyd(Xc, centers, max_iter=100):
    """Lloyd's k-means iterations from ``centers`` [K, D] until the centres stop moving."""
    K = centers.shape[0]
    for _ in range(max_iter):
        labels = nearest(Xc, centers)
        counts = torch.bincount(labels, minlength=K).to(Xc.dtype)
        sums = torch.zeros_like(centers).index_add_(0, labels, Xc)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        if torch.equal(new, centers):
            break
        centers = new
    return centers
