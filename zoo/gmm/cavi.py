"""The formulas of CAVI (``zoo.gmm.variational``) that differ by covariance type and weight prior, as tables.

    COVARIANCES     covariance_type -> scatter S_k, the inverse scale W_k⁻¹, scikit-learn's precision factor,
                    log-determinant and Mahalanobis terms, the default covariance_prior and its check
    WEIGHT_PRIORS   weight_concentration_prior_type -> q(π)'s concentration, E[log π_k], log C(α), E[π_k]

plus scikit-learn's initial responsibilities and the tensor helpers the estimator and the conjugate Pyro
model (``zoo.gmm.conjugate``) share. The maths is in ``zoo.gmm.variational``'s docstring.
"""

import math

import numpy as np
import torch


# ---- the tables: covariance_type and weight_concentration_prior_type -> the formulas that differ --------------
# Shapes: S_k and covariances_ are [K, D, D] ("full"), [K, D] ("diag"), [K] ("spherical"); P is scikit-learn's
# precisions_cholesky_ ((chol Σ_k)⁻ᵀ for "full", Σ_k^(-1/2) otherwise), with P Pᵀ = Σ_k⁻¹.
def _full_scatter(X, resp, nk, xk, reg):
    """S_k: the responsibility-weighted covariance of the points about x̄_k, plus λ I."""
    diff = X.unsqueeze(0) - xk.unsqueeze(1)  # [K, N, D]
    sk = torch.einsum("nk,knd,kne->kde", resp, diff, diff) / nk[:, None, None]
    return sk + reg * torch.eye(X.shape[1], dtype=X.dtype)


def _full_precision_cholesky(cov):
    chol, info = torch.linalg.cholesky_ex(cov)
    if (info > 0).any():
        return None
    return torch.linalg.solve_triangular(chol, torch.eye(cov.shape[-1], dtype=cov.dtype).expand_as(cov), upper=False).mT


def _diag_scatter(X, resp, nk, xk, reg):
    return (resp.T @ (X * X)) / nk[:, None] - xk * xk + reg


def _positive_definite(value, D):
    return value.shape == (D, D) and torch.allclose(value, value.T) and bool((torch.linalg.eigvalsh(value) > 0).all())


COVARIANCES = {
    "full": {
        "scatter": _full_scatter,
        # W_k⁻¹ = W0⁻¹ + N_k S_k + β0 N_k / β_k (x̄_k − m0)(x̄_k − m0)ᵀ, from (prior, N_k, S_k, x̄_k − m0, β0 / β_k)
        "inverse_scale": lambda prior, nk, sk, d, shrink: (
            prior + nk[:, None, None] * (sk + shrink[:, None, None] * d.unsqueeze(2) * d.unsqueeze(1))
        ),
        "precision_cholesky": _full_precision_cholesky,
        "log_det": lambda P, D: log_diag(P),  # ½ log det P Pᵀ
        "mahalanobis": lambda X, m, P: (
            (torch.einsum("nd,kde->nke", X, P) - torch.einsum("kd,kde->ke", m, P)).square().sum(-1)
        ),  # [N, K]
        "default_prior": lambda X: torch.atleast_2d(torch.cov(X.T)),
        "prior_ok": _positive_definite,
        "precisions": lambda P: P @ P.mT,
    },
    "diag": {
        "scatter": _diag_scatter,
        "inverse_scale": lambda prior, nk, sk, d, shrink: prior + nk[:, None] * (sk + shrink[:, None] * d * d),
        "precision_cholesky": lambda cov: cov.rsqrt() if bool((cov > 0).all()) else None,
        "log_det": lambda P, D: torch.log(P).sum(-1),
        "mahalanobis": lambda X, m, P: (X.unsqueeze(1) - m).square().mul(P.square()).sum(-1),
        "default_prior": lambda X: X.var(0),
        "prior_ok": lambda value, D: value.shape == (D,) and bool((value > 0).all()),
        "precisions": lambda P: P.square(),
    },
    "spherical": {
        "scatter": lambda X, resp, nk, xk, reg: _diag_scatter(X, resp, nk, xk, reg).mean(1),
        "inverse_scale": lambda prior, nk, sk, d, shrink: prior + nk * (sk + shrink * d.square().mean(1)),
        "precision_cholesky": lambda cov: cov.rsqrt() if bool((cov > 0).all()) else None,
        "log_det": lambda P, D: D * torch.log(P),
        "mahalanobis": lambda X, m, P: (X.unsqueeze(1) - m).square().sum(-1) * P.square(),
        "default_prior": lambda X: X.var(0).mean(),
        "prior_ok": lambda value, D: value.ndim == 0 and bool(value > 0),
        "precisions": lambda P: P.square(),
    },
}


def _stick_concentration(nk, a0):
    tail = torch.cumsum(nk.flip(0), 0)  # Σ_{j>k} N_j, summed as scikit-learn does
    return 1.0 + nk, a0 + torch.cat([tail[:-1].flip(0), nk.new_zeros(1)])


def _stick_expected_log(c):
    a, b = c
    both = torch.digamma(a + b)
    return torch.digamma(a) - both + torch.cat([a.new_zeros(1), torch.cumsum(torch.digamma(b) - both, 0)[:-1]])


def _stick_weights(c):
    a, b = c
    w = a / (a + b) * torch.cat([a.new_ones(1), torch.cumprod(b / (a + b), 0)[:-1]])
    return w / w.sum()


WEIGHT_PRIORS = {
    "dirichlet_distribution": {
        "concentration": lambda nk, a0: a0 + nk,  # α_k
        "expected_log": lambda c: torch.digamma(c) - torch.digamma(c.sum()),  # E[log π_k]
        "log_norm": lambda c: torch.lgamma(c.sum()) - torch.lgamma(c).sum(),  # log C(α)
        "prior_log_norm": lambda a0, K: math.lgamma(K * a0) - K * math.lgamma(a0),  # log C(α0)
        "weights": lambda c: c / c.sum(),  # E[π_k]
    },
    "dirichlet_process": {
        "concentration": _stick_concentration,  # (a_k, b_k) of q(v_k)
        "expected_log": _stick_expected_log,
        "log_norm": lambda c: -(torch.lgamma(c[0]) + torch.lgamma(c[1]) - torch.lgamma(c[0] + c[1])).sum(),
        "prior_log_norm": lambda a0, K: K * math.log(a0),  # −K log B(1, α0)
        "weights": _stick_weights,
    },
}
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def initial_resp(X, K, how, rng):
    """scikit-learn's initial responsibilities [N, K] (numpy RandomState ``rng``, used in its order)."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    x = X.numpy()
    resp = np.zeros((x.shape[0], K))
    if how == "kmeans":
        resp[np.arange(x.shape[0]), KMeans(n_clusters=K, n_init=1, random_state=rng).fit(x).labels_] = 1
    elif how == "random":
        resp = rng.uniform(size=(x.shape[0], K))
        resp /= resp.sum(1)[:, None]
    elif how == "random_from_data":
        resp[rng.choice(x.shape[0], size=K, replace=False), np.arange(K)] = 1
    else:
        resp[kmeans_plusplus(x, K, random_state=rng)[1], np.arange(K)] = 1
    return torch.as_tensor(resp, dtype=torch.float64)


def like(value, X=None):
    """``value`` as a tensor of X's dtype and device (float64 on the CPU without X)."""
    return torch.as_tensor(value, dtype=torch.float64 if X is None else X.dtype, device=None if X is None else X.device)


def log_diag(F):
    """Σ_i log F_ii [...] of matrices F [..., D, D]: half the log-determinant of F Fᵀ for a triangular F."""
    return torch.log(torch.diagonal(F, dim1=-2, dim2=-1)).sum(-1)
