"""The Bayesian mixture of ``zoo.gmm.variational`` as a Pyro model, and its CAVI posterior q as a ``Fit``.

Pyro cannot move a Wishart matrix to an unconstrained space, so :func:`conjugate_model` writes Λ_k by
Bartlett's decomposition, which has exactly the Wishart(ν0, W0) law: Λ_k = L0 A_k A_kᵀ L0ᵀ, L0 = chol(W0),
A_k lower triangular with (A_k)_ii² ~ χ²(ν0 − i) (site "bartlett_chi2" [K, D]) and (A_k)_ij ~ N(0, 1),
i > j (site "bartlett_normal" [K, D(D−1)/2]). :func:`precisions_from_sites` maps draws of those sites (any
method's) back to Λ_k, :func:`bartlett_sites` the other way.

:func:`posterior_fit` (behind ``BayesianGaussianMixture.to_fit``) returns q(π) Π_k q(μ_k, Λ_k) as an
``inference.result.Fit`` whose draws carry the same sites (plus "precisions" Λ_k [K, D, D]) and whose
importance weights p(X, θ)/q(θ), z summed out, give the PSIS k-hat of the verdict.
:class:`ConjugateMixture` holds the model with its priors, a starting point and the guides, with the names
of ``zoo.gmm.PyroMixture``'s Bayesian model, so that every inference method runs on either.
"""

import math

import pyro
import pyro.distributions as dist
import torch

from inference import verdict
from inference.errors import InvalidInputError, check_matrix, check_positive
from inference.result import Fit

from .cavi import like, log_diag
from .models import BayesianGuides


def _bartlett_factor(chi2, normal):
    """A [..., D, D], lower triangular: sqrt(chi2) [..., D] on the diagonal, ``normal`` [..., D(D−1)/2] below
    it in row-major order (None when D = 1). Built by a product, not in place, so autograd and vmap pass."""
    D = chi2.shape[-1]
    A = torch.diag_embed(chi2.sqrt())
    if D > 1:
        i, j = torch.tril_indices(D, D, -1)
        place = torch.zeros(D * D, i.numel(), dtype=chi2.dtype, device=chi2.device)
        place[i * D + j, torch.arange(i.numel())] = 1
        A = A + (normal @ place.T).reshape(*normal.shape[:-1], D, D)
    return A


def _prior_tril(priors, like):
    """L0 = chol(W0), W0 = covariance_prior⁻¹, in ``like``'s dtype and device."""
    cov0 = torch.as_tensor(priors["covariance_prior"], dtype=like.dtype, device=like.device)
    return torch.linalg.cholesky(torch.linalg.inv(cov0))


def bartlett_sites(precision_chol, priors):
    """The model's Bartlett sites of Λ = B Bᵀ, from its Cholesky factor B [..., K, D, D]: A = L0⁻¹ B,
    "bartlett_chi2" = diag(A)², "bartlett_normal" = A below the diagonal (row-major; absent when D = 1)."""
    A = torch.linalg.solve_triangular(_prior_tril(priors, precision_chol), precision_chol, upper=False)
    D = A.shape[-1]
    sites = {"bartlett_chi2": torch.diagonal(A, dim1=-2, dim2=-1).square()}
    if D > 1:
        i, j = torch.tril_indices(D, D, -1)
        sites["bartlett_normal"] = A[..., i, j]
    return sites


def precisions_from_sites(sites, priors):
    """Λ_k = L0 A_k A_kᵀ L0ᵀ [..., K, D, D] from draws of the Bartlett sites (any method's, e.g. NUTS's)."""
    chi2 = sites["bartlett_chi2"]
    B = _prior_tril(priors, chi2) @ _bartlett_factor(chi2, sites.get("bartlett_normal"))
    return B @ B.mT


def conjugate_model(X, n_components, priors):
    """The Bayesian mixture of the module docstring in Pyro, z enumerated, Λ_k by Bartlett's decomposition.

    Args:
        X: data [N, D].
        n_components: K.
        priors: {name: value} with scikit-learn's names, e.g. ``BayesianGaussianMixture.priors(X)``.

    Latent sites: "weights" [K] ~ Dirichlet(α0); in plate "components": "bartlett_chi2" [K, D] ~ χ²(ν0 − i),
    "bartlett_normal" [K, D(D−1)/2] ~ N(0, 1) (D > 1), "means" [K, D] ~ N(m0, (β0 Λ_k)⁻¹); in plate "data":
    "z" [N] (enumerated, so use max_plate_nesting=1) and the observed "x".
    """
    K, D = n_components, X.shape[-1]
    t = lambda v: like(v, X)  # noqa: E731
    weights = pyro.sample("weights", dist.Dirichlet(t(priors["weight_concentration_prior"]).expand(K)))
    dof = t(priors["degrees_of_freedom_prior"]) - torch.arange(D, dtype=X.dtype, device=X.device)
    with pyro.plate("components", K):
        chi2 = pyro.sample("bartlett_chi2", dist.Chi2(dof).to_event(1))
        normal = (
            pyro.sample("bartlett_normal", dist.Normal(t(0.0), t(1.0)).expand([D * (D - 1) // 2]).to_event(1))
            if D > 1
            else None
        )
        # values given from outside (inference.nuts starts in the default dtype) join X's dtype here
        B = _prior_tril(priors, X) @ _bartlett_factor(chi2, normal).to(X.dtype)  # chol of Λ_k
        precision = B @ B.mT
        means = pyro.sample(
            "means",
            dist.MultivariateNormal(
                t(priors["mean_prior"]), precision_matrix=t(priors["mean_precision_prior"]) * precision
            ),
        )
    with pyro.plate("data", X.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights.to(X.dtype)), infer={"enumerate": "parallel"})
        component = dist.MultivariateNormal(means.to(X.dtype)[..., z, :], precision_matrix=precision[..., z, :, :])
        pyro.sample("x", component, obs=X)


def _log_normal(x, mean, B, scale):
    """log N(x | mean, (scale B Bᵀ)⁻¹) [...] for B [..., D, D] lower triangular."""
    D = x.shape[-1]
    y = ((x - mean).unsqueeze(-2) @ B).squeeze(-2)
    return (
        -0.5 * D * math.log(2 * math.pi) + 0.5 * D * torch.log(scale) + log_diag(B) - 0.5 * scale * y.square().sum(-1)
    )


def _log_wishart(B, L, nu):
    """log Wishart(Λ | ν, W) [...] at Λ = B Bᵀ, W = L Lᵀ (both factors lower triangular)."""
    D = B.shape[-1]
    M = torch.linalg.solve_triangular(L, B, upper=False)  # tr(W⁻¹ Λ) = ‖L⁻¹ B‖²
    return (
        (nu - D - 1) * log_diag(B)
        - 0.5 * M.square().sum((-2, -1))
        - 0.5 * nu * D * math.log(2.0)
        - nu * log_diag(L)
        - torch.mvlgamma(0.5 * nu, D)
    )


def _log_joint(X, weights, means, B, priors, chunk_elements=1 << 22):
    """log p(X, π, μ, Λ) [S] with z summed out, at S draws (weights [S, K], means [S, K, D], B = chol Λ)."""
    K = weights.shape[-1]
    log_prior = (
        dist.Dirichlet(like(priors["weight_concentration_prior"]).expand(K)).log_prob(weights)
        + _log_normal(means, like(priors["mean_prior"]), B, like(priors["mean_precision_prior"])).sum(-1)
        + _log_wishart(B, _prior_tril(priors, B), like(priors["degrees_of_freedom_prior"])).sum(-1)
    )
    step = max(1, chunk_elements // (X.numel() * K))
    log_lik = []
    for s in range(0, weights.shape[0], step):
        w, m, b = weights[s : s + step], means[s : s + step], B[s : s + step]
        y = torch.einsum("nd,skde->skne", X, b) - torch.einsum("skd,skde->ske", m, b).unsqueeze(2)
        log_det = log_diag(b)  # [s, K]
        comp = (torch.log(w) + log_det - 0.5 * X.shape[1] * math.log(2 * math.pi)).unsqueeze(-1) - 0.5 * y.square().sum(
            -1
        )  # [s, K, N]
        log_lik.append(torch.logsumexp(comp, 1).sum(-1))
    return log_prior + torch.cat(log_lik)


def _draw_q(q, priors, n, seed):
    """n draws of q: (sites of conjugate_model + "precisions", chol Λ [n, K, D, D], log q [n])."""
    K, D = q["means"].shape
    nu = q["nu"][:, None] - torch.arange(D, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # the distributions' samplers take no generator: seed a private stream
        torch.manual_seed(seed)
        weights = dist.Dirichlet(q["alpha"]).sample((n,))
        chi2 = dist.Chi2(nu).sample((n,))  # Bartlett for q's own W_k
        normal = torch.randn(n, K, D * (D - 1) // 2, dtype=torch.float64)
        eps = torch.randn(n, K, D, 1, dtype=torch.float64)
    B = q["scale_tril"] @ _bartlett_factor(chi2, normal)  # Λ_k = B Bᵀ ~ Wishart(ν_k, W_k)
    means = q["means"] + torch.linalg.solve_triangular(B.mT, eps, upper=True).squeeze(-1) / q["beta"][:, None].sqrt()
    log_q = (
        dist.Dirichlet(q["alpha"]).log_prob(weights)
        + _log_normal(means, q["means"], B, q["beta"]).sum(-1)
        + _log_wishart(B, q["scale_tril"], q["nu"]).sum(-1)
    )
    sites = {"weights": weights, "means": means, **bartlett_sites(B, priors), "precisions": B @ B.mT}
    return sites, B, log_q


class ConjugateMixture(BayesianGuides):
    """:func:`conjugate_model` with its priors and a starting point, named as ``PyroMixture``'s Bayesian model.

    Args:
        X: data [N, D] (its dtype and device are the model's).
        n_components: K.
        priors: {name: value} with scikit-learn's names, e.g. ``BayesianGaussianMixture.priors(X)``.
        start: (weights [K], means [K, D], covariances [K, D, D]) where the guides and ``bayes_init`` start,
            e.g. an EM fit.

    Attributes:
        bayes_init: {site: value}: ``start`` as values of the model's latent sites ("weights", "means",
            "bartlett_chi2", "bartlett_normal"), e.g. ``init=`` of ``inference.laplace`` and ``inference.nuts``.
    """

    def __init__(self, X, n_components, priors, start):
        X = check_matrix(X)
        self.n_components = check_positive("n_components", n_components, integer=True)
        self.priors = {k: like(v, X) for k, v in priors.items()}
        weights, means, cov = (torch.as_tensor(v).detach().to(dtype=X.dtype, device=X.device) for v in start)
        if cov.shape != (n_components, X.shape[1], X.shape[1]):
            raise InvalidInputError(
                f"the conjugate model needs full covariances [K, D, D] = "
                f"[{n_components}, {X.shape[1]}, {X.shape[1]}] to start from, got "
                f"{tuple(cov.shape)}"
            )
        chol, info = torch.linalg.cholesky_ex(torch.linalg.inv(cov))
        if (info > 0).any():
            raise InvalidInputError("a starting covariance is not positive definite; increase reg_covar")
        self.bayes_init = {"weights": weights, "means": means, **bartlett_sites(chol, self.priors)}

    def bayes_model(self, X):
        """:func:`conjugate_model` on X with these priors; z enumerated (use max_plate_nesting=1)."""
        conjugate_model(X, self.n_components, self.priors)


def posterior_fit(bgm, X, num_samples, seed):
    """q of a fitted ``BayesianGaussianMixture`` as a Fit with a verdict (``BayesianGaussianMixture.to_fit``).

    Args:
        bgm: the fitted estimator ("full", "dirichlet_distribution"; checked by the caller).
        X: the data [N, D] it was fitted on, float64 (for the importance weights).
        num_samples: draws from q behind the PSIS k-hat of the verdict.
        seed: seeds those draws.
    """
    priors, nu = bgm.priors(), bgm.degrees_of_freedom_
    q = {
        "alpha": bgm.weight_concentration_,
        "beta": bgm.mean_precision_,
        "means": bgm.means_,
        "nu": nu,
        "scale_tril": torch.linalg.cholesky(bgm.precisions_ / nu[:, None, None]),
    }  # chol of W_k

    def draw(n, seed=0):
        return _draw_q(q, priors, n, seed)[0]

    def importance(n, seed=0):
        sites, chol, log_q = _draw_q(q, priors, n, seed)
        return sites, (_log_joint(X, sites["weights"], sites["means"], chol, priors) - log_q).numpy()

    losses = -(bgm.lower_bounds_ + bgm.elbo_constant(X.shape[0]))
    draws, log_w = importance(num_samples, seed)
    _, khat, ess = verdict.psis(log_w)
    diagnostics = {
        "n_iter": bgm.n_iter_,
        "lower_bound": bgm.lower_bound_,
        "khat": khat,
        "ess": ess,
        "elbo": float(-losses[-1]) if losses.size else math.nan,
    }
    reasons = [
        None
        if bgm.converged_
        else f"CAVI stopped at max_iter={bgm.max_iter} before the lower bound changed by less than tol={bgm.tol}",
        "no importance weight is finite" if not math.isfinite(khat) else None,
        verdict.khat_reason(khat, "q (CAVI)"),
        verdict.shift_reason(draws, log_w, "q (CAVI)"),
    ]
    verdict.deliver("cavi", diagnostics, reasons, stacklevel=4)
    params = {
        "weight_concentration": bgm.weight_concentration_,
        "mean_precision": bgm.mean_precision_,
        "means": bgm.means_,
        "degrees_of_freedom": nu,
        "covariances": bgm.covariances_,
    }
    return Fit(
        method="cavi",
        losses=losses,
        seconds=bgm.fit_seconds_,
        draw=draw,
        params=params,
        diagnostics=diagnostics,
        importance=importance,
    )
