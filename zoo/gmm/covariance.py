"""The three covariance structures of a Gaussian mixture, one class each, dispatched from ``COVARIANCES``.

Every place that depends on the structure (the EM features and M-step, the Cholesky factor, the number of
parameters, sampling, the Pyro likelihood and priors) asks the table instead of branching on a string:

    name        Σ_k                  factor F_k (what the E-step and the Pyro model use)     φ(x)
    full        any SPD [D, D]       Cholesky L_k [D, D], Σ_k = L_k L_kᵀ                    [x_i x_j (i <= j), x, 1]
    diag        diag(σ_k²) [D]       sds σ_k [D]                                            [x², x, 1]
    spherical   σ_k² I  [scalar]     sds σ_k [D] (all D equal); the Pyro site holds one      [x², x, 1]

With these features log π_k + log N(x; μ_k, Σ_k) = φ(x) · η_k (MATH.md §2), see :mod:`zoo.gmm.em`.
"""

import math

import pyro.distributions as dist
import torch


class Full:
    """Σ_k any positive-definite matrix."""

    name = "full"
    site_dims = 2  # trailing dims of the Pyro model's factor site per component

    def width(self, D):
        """Length F of φ(x)."""
        return D * (D + 1) // 2 + D + 1

    def features(self, X):
        """φ(X) [N, F] = [x_i x_j for i <= j, x, 1]."""
        i, j = torch.triu_indices(X.shape[1], X.shape[1], device=X.device)
        return torch.cat([X[:, i] * X[:, j], X, X.new_ones(X.shape[0], 1)], dim=1)

    def natural(self, means, factor):
        """(quadratic [K, F-D-1], linear P μ [K, D], ½ log det Σ [K]) of η_k; P = L⁻ᵀ L⁻¹."""
        K, D = means.shape
        eye = torch.eye(D, dtype=factor.dtype, device=factor.device).expand(K, D, D)
        inv = torch.linalg.solve_triangular(factor, eye, upper=False)
        precision = inv.mT @ inv
        i, j = torch.triu_indices(D, D, device=means.device)
        quad = -0.5 * precision[:, i, j] * torch.where(i == j, 1.0, 2.0).to(precision)  # x_i x_j twice off-diagonal
        lin = (precision @ means.unsqueeze(-1)).squeeze(-1)
        return quad, lin, torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)

    def covariances(self, second, means, reg_covar):
        """Σ_k = E[x xᵀ] − μ_k μ_kᵀ + λ I [K, D, D] from the packed second moments [K, D(D+1)/2]."""
        K, D = means.shape
        i, j = torch.triu_indices(D, D, device=second.device)
        cov = second.new_zeros(K, D, D)
        cov[:, i, j] = second
        cov[:, j, i] = second
        cov = cov - means.unsqueeze(2) * means.unsqueeze(1)
        return cov + reg_covar * torch.eye(D, dtype=cov.dtype, device=cov.device)

    def factor(self, cov, D):
        """(F [K, D, D], bad [K]): Cholesky factors, and which components are not positive definite."""
        chol, info = torch.linalg.cholesky_ex(cov)
        return chol, (info > 0) | ~torch.isfinite(chol).all(-1).all(-1)

    def shape(self, K, D):
        """Shape of ``covariances_``."""
        return (K, D, D)

    def n_parameters(self, K, D):
        """Free parameters of the K covariances."""
        return K * D * (D + 1) // 2

    def matrix(self, cov, D):
        """Σ_k as full matrices [K, D, D], from ``covariances_``."""
        return cov

    def noise(self, factor, eps):
        """F_k ε for standard-normal ε [n, D] and the factors of the chosen components [n, ...]."""
        return (factor @ eps.unsqueeze(-1)).squeeze(-1)

    def likelihood(self, means, factor):
        """The component density of a Pyro model: N(μ, L Lᵀ) with event shape [D]."""
        return dist.MultivariateNormal(means, scale_tril=factor)

    def site_factor(self, factor):
        """The Pyro site holding the factor: ("scale_tril", L [K, D, D])."""
        return "scale_tril", factor

    def marginal_sds(self, factor):
        """sqrt(diag Σ_k) [K, D]."""
        return torch.linalg.vector_norm(factor, dim=-1)


class Diag(Full):
    """Σ_k = diag(σ_k²)."""

    name = "diag"
    site_dims = 1

    def width(self, D):
        return 2 * D + 1

    def features(self, X):
        """φ(X) [N, 2D + 1] = [x², x, 1]."""
        return torch.cat([X * X, X, X.new_ones(X.shape[0], 1)], dim=1)

    def natural(self, means, factor):
        precision = factor.pow(-2)
        return -0.5 * precision, precision * means, torch.log(factor).sum(-1)

    def covariances(self, second, means, reg_covar):
        """σ_k² = E[x²] − μ_k² + λ [K, D]."""
        return second - means * means + reg_covar

    def _variances(self, cov, D):
        return cov

    def factor(self, cov, D):
        var = self._variances(cov, D)
        return var.clamp_min(0).sqrt(), ~(var > 0).all(1) | ~torch.isfinite(var).all(1)

    def shape(self, K, D):
        return (K, D)

    def n_parameters(self, K, D):
        return K * D

    def matrix(self, cov, D):
        return torch.diag_embed(cov)

    def noise(self, factor, eps):
        return factor * eps

    def likelihood(self, means, factor):
        return dist.Normal(means, factor).to_event(1)

    def site_factor(self, factor):
        return "scales", factor

    def marginal_sds(self, factor):
        return factor


class Spherical(Diag):
    """Σ_k = σ_k² I: one variance per component."""

    name = "spherical"
    site_dims = 0

    def covariances(self, second, means, reg_covar):
        """σ_k² [K]: the mean over dimensions of the diagonal variances."""
        return super().covariances(second, means, reg_covar).mean(1)

    def _variances(self, cov, D):
        return cov.unsqueeze(1).expand(-1, D)

    def shape(self, K, D):
        return (K,)

    def n_parameters(self, K, D):
        return K

    def matrix(self, cov, D):
        return cov[:, None, None] * torch.eye(D, dtype=cov.dtype, device=cov.device)

    def likelihood(self, means, factor):
        """``factor`` is the Pyro site's σ [..., K], one per component: broadcast over the D dimensions."""
        return dist.Normal(means, factor.unsqueeze(-1).expand(means.shape)).to_event(1)

    def site_factor(self, factor):
        return "scales", factor[..., 0]


COVARIANCES = {"full": Full(), "diag": Diag(), "spherical": Spherical()}
LOG_2PI = math.log(2 * math.pi)
