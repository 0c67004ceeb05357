"""Gaussian mixture: a scikit-learn-like estimator with a fast closed-form EM, and its Pyro models.

    π ~ Dirichlet(α)  (Bayesian variant)      z_n ~ Categorical(π)      x_n | z_n = k ~ N(μ_k, Σ_k)

Closed-form EM (MATH.md §2). Each component's log-density is linear in a fixed feature map of x,

    log π_k + log N(x; μ_k, Σ_k) = φ(x) · η_k,
    φ(x) = [x_i x_j (i <= j), x, 1],   η_k = [-½ P_k (off-diagonal entries doubled), P_k μ_k,
                                              log π_k - ½ μ_kᵀ P_k μ_k - ½ log det(2π Σ_k)],

with P_k = Σ_k⁻¹ from the Cholesky factor of Σ_k (for "diag" and "spherical", φ(x) = [x², x, 1]). So one
EM iteration over all points and components is two matrix products on the cached features Φ [N, F]:

    E-step   L = Φ H  [N, K] (H = [η_1 .. η_K]),  log p(x_n) = logsumexp_k L_nk,  r_nk = exp(L_nk - log p(x_n))
    stats    S = Rᵀ Φ  [K, F]  holds N_k = Σ_n r_nk, Σ_n r_nk x_n and Σ_n r_nk x_n x_nᵀ at once
    M-step   π_k = N_k / N,  μ_k = S1_k / N_k,  Σ_k = S2_k / N_k - μ_k μ_kᵀ + λ I

The statistics S are sums over points, so a distributed or streaming fit only has to add them up
(:func:`e_step`, :func:`sufficient_statistics`, :func:`m_step` are separate for that). The data are
centred first (a mixture is shift-equivariant), which keeps the quadratic form well conditioned; the
M-step runs in float64 on the [K, F] statistics whatever the data's dtype.

Pyro: :meth:`GaussianMixture.model` is the classic model (π, μ, Σ as ``pyro.param`` θ, z enumerated) for
``inference.variational_em`` and maximum likelihood by SVI; :meth:`GaussianMixture.bayes_model` puts
priors on them, for ``inference.svi`` with :attr:`GaussianMixture.bayes_guide`, ``inference.laplace`` and
``inference.nuts``. :func:`match_components` undoes label switching between fits.
"""
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

from inference import distributed as dist_
from inference.errors import ConvergenceWarning, InvalidInputError, check_choice, check_positive  # noqa: F401
from inference.svi import seeded

COVARIANCE_TYPES = ("full", "diag", "spherical")
INITS = ("kmeans++", "kmeans", "random")
_CACHE_BYTES = 1 << 30  # cache the features Φ up to this size; beyond it they are rebuilt per chunk


class DegenerateComponentWarning(UserWarning):
    """A component lost (almost) all its points and was re-initialised."""


# ---- EM on sufficient statistics ----------------------------------------------------------------------
def features(X, covariance_type):
    """φ(X) [N, F]: [x_i x_j for i <= j, x, 1] for "full" (F = D(D+1)/2 + D + 1), else [x², x, 1] (F = 2D + 1)."""
    ones = X.new_ones(X.shape[0], 1)
    if covariance_type == "full":
        i, j = torch.triu_indices(X.shape[1], X.shape[1], device=X.device)
        return torch.cat([X[:, i] * X[:, j], X, ones], dim=1)
    return torch.cat([X * X, X, ones], dim=1)


def natural_parameters(weights, means, chol, covariance_type):
    """H [F, K] such that Φ H = log π_k + log N(x; μ_k, Σ_k) (see the module docstring).

    ``chol``: the Cholesky factor of Σ_k [K, D, D] ("full"), or the standard deviations [K, D] ("diag",
    "spherical": all D equal).
    """
    K, D = means.shape
    if covariance_type == "full":
        eye = torch.eye(D, dtype=chol.dtype, device=chol.device).expand(K, D, D)
        inv_chol = torch.linalg.solve_triangular(chol, eye, upper=False)      # L⁻¹
        precision = inv_chol.mT @ inv_chol                                     # P = L⁻ᵀ L⁻¹
        i, j = torch.triu_indices(D, D, device=means.device)
        quad = -0.5 * precision[:, i, j] * torch.where(i == j, 1.0, 2.0).to(precision)
        lin = (precision @ means.unsqueeze(-1)).squeeze(-1)
        half_log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    else:
        precision = chol.pow(-2)
        quad = -0.5 * precision
        lin = precision * means
        half_log_det = torch.log(chol).sum(-1)
    const = torch.log(weights) - 0.5 * (lin * means).sum(-1) - half_log_det - 0.5 * D * math.log(2 * math.pi)
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

    Returns (N_k [K], means [K, D], covariances: [K, D, D] "full", [K, D] "diag", [K] "spherical"),
    with Σ_k = Σ r x xᵀ / N_k − μ_k μ_kᵀ + λ I. Components with N_k = 0 get NaN (the caller handles them).
    """
    nk = stats[:, -1]
    means = stats[:, -1 - D:-1] / nk.unsqueeze(1)
    second = stats[:, :-1 - D] / nk.unsqueeze(1)
    if covariance_type == "full":
        K = stats.shape[0]
        i, j = torch.triu_indices(D, D, device=stats.device)
        cov = stats.new_zeros(K, D, D)
        cov[:, i, j] = second
        cov[:, j, i] = second
        cov = cov - means.unsqueeze(2) * means.unsqueeze(1)
        cov = cov + reg_covar * torch.eye(D, dtype=cov.dtype, device=cov.device)
    else:
        cov = second - means * means + reg_covar
        if covariance_type == "spherical":
            cov = cov.mean(1)
    return nk, means, cov


def cholesky(covariances, covariance_type, D):
    """The factor the E-step needs: Cholesky of Σ_k ("full") or standard deviations [K, D]; None if Σ_k
    is not positive definite, with the index of the first bad component."""
    if covariance_type == "full":
        chol, info = torch.linalg.cholesky_ex(covariances)
        bad = (info > 0) | ~torch.isfinite(chol).all(-1).all(-1)
    else:
        var = covariances if covariance_type == "diag" else covariances.unsqueeze(1).expand(-1, D)
        bad = ~(var > 0).all(1) | ~torch.isfinite(var).all(1)
        chol = var.clamp_min(0).sqrt()
    if bad.any():
        return None, int(bad.nonzero()[0, 0])
    return chol, None


class _Features:
    """Φ of the centred data, in chunks that bound memory; cached when they fit in ``_CACHE_BYTES``."""

    def __init__(self, X, center, covariance_type):
        self.X, self.center, self.covariance_type = X, center, covariance_type
        D = X.shape[1]
        width = D * (D + 1) // 2 + D + 1 if covariance_type == "full" else 2 * D + 1
        row_bytes = width * X.element_size()
        self.rows = max(1, min(X.shape[0], (256 << 20) // row_bytes))
        self.cache = list(self._build()) if X.shape[0] * row_bytes <= _CACHE_BYTES else None

    def _build(self):
        for start in range(0, self.X.shape[0], self.rows):
            yield features(self.X[start:start + self.rows] - self.center, self.covariance_type)

    def __iter__(self):
        return iter(self.cache) if self.cache is not None else self._build()


def _em_pass(feats, eta, want_resp=False):
    """One pass over the data: (mean log-likelihood, statistics S [K, F], responsibilities or None)."""
    total, stats, resps = 0.0, 0.0, []
    for phi in feats:
        log_norm, resp = e_step(phi, eta)
        total = total + log_norm.sum(dtype=torch.float64)
        stats = stats + sufficient_statistics(phi, resp)
        if want_resp:
            resps.append(resp)
    return float(total) / feats.X.shape[0], stats, (torch.cat(resps) if want_resp else None)


def _sum_over_ranks(ll, stats, n_local, n_total):
    """Distributed EM: the statistics S and the log-likelihood are sums over points, so the shards'
    sums add up to those of all the data (one all-reduce). Returns (mean log-likelihood, S)."""
    packed = torch.cat([stats.reshape(-1), stats.new_tensor([ll * n_local])])
    dist_.all_reduce_sum(packed)
    return float(packed[-1]) / n_total, packed[:-1].reshape(stats.shape)


# ---- the estimator ----------------------------------------------------------------------------------
class GaussianMixture:
    """A Gaussian mixture fitted by closed-form EM, with its Pyro models for every other inference method.

    Settings follow ``sklearn.mixture.GaussianMixture``:

    Args:
        n_components: K, the number of components.
        covariance_type: "full" (Σ_k any covariance), "diag" (diagonal) or "spherical" (σ_k² I).
        tol: stop when the mean log-likelihood per point changes by less than ``tol`` (0: run ``max_iter``).
        reg_covar: λ added to the diagonal of every covariance (guards against components collapsing).
        max_iter: the most M-steps per initialisation.
        n_init: initialisations; the fit with the highest log-likelihood is kept.
        init: "kmeans++" (k-means++ seeding, points assigned to the nearest seed), "kmeans" (the same
            followed by Lloyd's k-means), "random" (K distinct data points as seeds), or an array of
            initial means [K, D]. Weights and covariances start from the seeds' clusters unless given.
        weights_init, covariances_init: optional starting weights [K] and covariances (the fitted
            ``covariances_`` shape); with ``init`` an array of means and both given, EM starts exactly there.
        seed: seed of the initialisations (None: fresh randomness each fit).
        dtype, device: of the computation and the fitted tensors (float32 halves memory and time; the
            M-step is float64 either way). device=None keeps the data's device (e.g. "cuda").
        distributed: fit one mixture to the union of the rows that every process of a torch.distributed
            group passes to ``fit`` (its shard, e.g. ``inference.distributed.shard(X)``): each EM iteration
            all-reduces the sufficient statistics and the log-likelihood, so the fit equals single-process
            EM on all the rows up to round-off. The initialisation is computed by rank 0 from its shard
            (exactly the single-process start when ``init``, ``weights_init`` and ``covariances_init`` are
            all given). Methods other than ``fit`` work on the rows they are given.
        prior_concentration, prior_scale, lkj_concentration: hyper-parameters of :meth:`bayes_model`.
        verbose: print the log-likelihood at every iteration.

    Fitted attributes (torch tensors): ``weights_`` [K], ``means_`` [K, D], ``covariances_`` ([K, D, D]
    "full", [K, D] "diag", [K] "spherical"), ``lower_bound_`` (mean log-likelihood per point of the fitted
    parameters, = ``score(X)``), ``log_likelihood_trace_`` (numpy, one entry per E-step: the start, then
    after each M-step; never decreasing), ``n_iter_`` (M-steps of the best run), ``converged_``.
    """

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6, max_iter=100,
                 n_init=1, init="kmeans++", weights_init=None, covariances_init=None, seed=None,
                 dtype=torch.float64, device=None, prior_concentration=1.0, prior_scale=2.0,
                 lkj_concentration=2.0, verbose=False, distributed=False):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init = init
        self.weights_init = weights_init
        self.covariances_init = covariances_init
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.prior_concentration = prior_concentration
        self.prior_scale = prior_scale
        self.lkj_concentration = lkj_concentration
        self.verbose = verbose
        self.distributed = distributed
        self._start_cache = (None, None)
        self._prior_cache = None

    def __repr__(self):
        return (f"GaussianMixture(n_components={self.n_components}, "
                f"covariance_type={self.covariance_type!r}, init={_describe(self.init)})")

    # -- checks -------------------------------------------------------------------------------------
    def _check_settings(self):
        check_positive("n_components", self.n_components, integer=True)
        check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)
        check_positive("tol", self.tol, allow_zero=True)
        check_positive("reg_covar", self.reg_covar, allow_zero=True)
        check_positive("max_iter", self.max_iter, allow_zero=True, integer=True)
        check_positive("n_init", self.n_init, integer=True)
        check_positive("prior_concentration", self.prior_concentration)
        check_positive("prior_scale", self.prior_scale)
        check_positive("lkj_concentration", self.lkj_concentration)
        if self.dtype not in (torch.float32, torch.float64):
            raise InvalidInputError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if isinstance(self.init, str):
            check_choice("init", self.init, INITS)

    def _as_data(self, X, name="X"):
        """X as a [N, D] tensor of the estimator's dtype/device, checked for shape and finiteness."""
        try:
            if torch.is_tensor(X):
                X = X.detach()
            else:
                X = torch.as_tensor(np.asarray(X, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"{name} must be a numeric array [N, D]: {e}") from None
        if not (X.is_floating_point() or X.dtype in (torch.int32, torch.int64, torch.uint8, torch.int16)):
            raise InvalidInputError(f"{name} must be a real array [N, D], got dtype {X.dtype}")
        X = X.to(dtype=self.dtype, device=self.device)
        if X.ndim != 2:
            hint = " (one feature: use X.reshape(-1, 1))" if X.ndim == 1 else ""
            raise InvalidInputError(f"{name} must be 2-D [N, D], got shape {tuple(X.shape)}{hint}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise InvalidInputError(f"{name} is empty (shape {tuple(X.shape)})")
        bad = ~torch.isfinite(X)
        if bad.any():
            rows = bad.any(1).nonzero()[:, 0]
            raise InvalidInputError(f"{name} contains {int(bad.sum())} NaN or infinite value(s), in "
                                    f"{rows.numel()} row(s), the first row {int(rows[0])}")
        return X

    def _check_fitted(self, X=None):
        if not hasattr(self, "means_"):
            raise InvalidInputError("this GaussianMixture is not fitted yet: call fit(X) first")
        if X is not None and X.shape[1] != self.means_.shape[1]:
            raise InvalidInputError(f"X has {X.shape[1]} features but the mixture was fitted on "
                                    f"{self.means_.shape[1]}")

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit by EM from ``n_init`` initialisations and keep the best. X: [N, D]. Returns self."""
        self._check_settings()
        X = self._as_data(X)
        N, D = X.shape
        K = self.n_components
        if self.distributed:
            dist_.require_group("GaussianMixture(distributed=True)")
            if dist_.total(D, op="min") != dist_.total(D, op="max"):
                raise InvalidInputError("the processes' shards of X have different numbers of features")
            N = dist_.total(N)
        if K > N:
            raise InvalidInputError(f"n_components={K} is more than the {N} data points")
        gen = _generator(self.seed)
        center = dist_.all_reduce_sum(X.double().sum(0)) / N if self.distributed else X.double().mean(0)
        feats = _Features(X, center.to(X.dtype), self.covariance_type)
        feats.n_total = N
        best = None
        for run in range(self.n_init):
            start = self._on_rank0(lambda: self._initialize(X, center, gen), X.device)
            result = self._em(feats, *start, gen)
            if self.verbose and self.n_init > 1:
                print(f"init {run}: log-likelihood {result['trace'][-1]:.6f}")
            if best is None or result["trace"][-1] > best["trace"][-1]:
                best = result
        weights, means, cov = best["params"]
        self.weights_ = weights.to(self.dtype)
        self.means_ = (means + center).to(self.dtype)
        self.covariances_ = cov.to(self.dtype)
        self.log_likelihood_trace_ = np.asarray(best["trace"])
        self.lower_bound_ = float(best["trace"][-1])
        self.n_iter_ = best["n_iter"]
        self.converged_ = best["converged"]
        self.n_features_in_ = D
        self._start_cache = (None, None)
        if not self.converged_ and self.tol > 0:
            warnings.warn(f"EM did not converge in max_iter={self.max_iter} iterations (last change of the "
                          f"mean log-likelihood {float(np.diff(best['trace'][-2:]).sum()):.3g}, tol={self.tol}); "
                          f"increase max_iter or tol", ConvergenceWarning, stacklevel=2)
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).predict(X)

    def _em(self, feats, weights, means, cov, gen):
        """EM from (weights, centred means, covariances) in float64: trace, n_iter, converged, params."""
        N, D = feats.X.shape
        ct = self.covariance_type
        chol = self._cholesky(cov, D, "at the start")
        trace, n_iter, converged = [], 0, False
        for it in range(self.max_iter + 1):
            eta = natural_parameters(weights, means, chol, ct).to(feats.X.dtype)
            ll, stats, _ = _em_pass(feats, eta)
            if self.distributed:
                ll, stats = _sum_over_ranks(ll, stats, feats.X.shape[0], feats.n_total)
            if not math.isfinite(ll):
                raise InvalidInputError(f"the log-likelihood became {ll} at EM iteration {it}; the data may be "
                                        f"too large for {self.dtype} (standardise X or use float64)")
            trace.append(ll)
            if self.verbose:
                print(f"EM iteration {it}: mean log-likelihood {ll:.8f}")
            if it > 0 and abs(trace[-1] - trace[-2]) < self.tol:
                converged = True
                break
            if it == self.max_iter:
                break
            nk, means, cov = m_step(stats, D, ct, self.reg_covar)
            empty = nk < 1e-3   # less than a thousandth of a point: the M-step is undefined there
            if empty.any():
                means, cov, nk = self._on_rank0(lambda: self._reseed(empty, stats, means, cov, nk, feats.X,
                                                                     feats.center, gen, it), feats.X.device)
            weights = nk / nk.sum()
            chol = self._cholesky(cov, D, f"after EM iteration {it + 1}")
            n_iter += 1
        return {"trace": trace, "n_iter": n_iter, "converged": converged, "params": (weights, means, cov)}

    def _reseed(self, empty, stats, means, cov, nk, X, center, gen, it):
        """Restart empty components at random data points with the data's overall covariance."""
        ks = empty.nonzero()[:, 0].tolist()
        warnings.warn(f"component(s) {ks} lost all their points at EM iteration {it + 1}; re-initialised at "
                      f"random data points (the log-likelihood may drop at this step)",
                      DegenerateComponentWarning, stacklevel=3)
        _, _, overall = m_step(stats.sum(0, keepdim=True), X.shape[1], self.covariance_type, self.reg_covar)
        rows = torch.randint(X.shape[0], (len(ks),), generator=gen).to(X.device)
        means, cov, nk = means.clone(), cov.clone(), nk.clone()
        means[ks] = (X[rows] - center).double()
        cov[ks] = overall[0]
        nk[ks] = 1.0
        return means, cov, nk

    def _on_rank0(self, fn, device):
        """fn() -> tensors; distributed: computed by rank 0 (from its shard) and sent to every rank."""
        if not self.distributed:
            return fn()
        return tuple(t.to(device) for t in dist_.on_rank0(lambda: tuple(t.cpu() for t in fn())))

    def _cholesky(self, cov, D, when):
        chol, bad = cholesky(cov, self.covariance_type, D)
        if chol is None:
            raise InvalidInputError(
                f"the covariance of component {bad} is singular (not positive definite) {when}: it has "
                f"collapsed onto too few points or a lower-dimensional subspace. Increase reg_covar "
                f"(now {self.reg_covar}), use fewer components or covariance_type='diag'")
        return chol

    def _initialize(self, X, center, gen):
        """Starting (weights [K], centred means [K, D], covariances) in float64."""
        K, D = self.n_components, X.shape[1]
        given = self.init if not isinstance(self.init, str) else None
        if given is not None:
            means = torch.as_tensor(np.asarray(given, dtype=np.float64) if not torch.is_tensor(given)
                                    else given.detach().double()).to(X.device)
            if means.shape != (K, D) or not torch.isfinite(means).all():
                raise InvalidInputError(f"init means must be a finite array of shape ({K}, {D}), got "
                                        f"shape {tuple(means.shape)}")
            means = means - center
        else:
            means = self._seeds(X - center.to(X.dtype), gen).double()
        labels = _nearest(X - center.to(X.dtype), means.to(X.dtype))
        weights, label_means, cov = _params_from_labels(X, center, labels, K, self.covariance_type,
                                                        self.reg_covar)
        if given is None:
            means = label_means
        if self.weights_init is not None:
            weights = torch.as_tensor(np.asarray(self.weights_init, dtype=np.float64)).to(X.device)
            if weights.shape != (K,) or (weights <= 0).any() or not torch.isfinite(weights).all():
                raise InvalidInputError(f"weights_init must be {K} positive numbers, got {self.weights_init!r}")
            weights = weights / weights.sum()
        if self.covariances_init is not None:
            cov = torch.as_tensor(np.asarray(self.covariances_init, dtype=np.float64)).to(X.device)
            shape = {"full": (K, D, D), "diag": (K, D), "spherical": (K,)}[self.covariance_type]
            if cov.shape != shape:
                raise InvalidInputError(f"covariances_init must have shape {shape} for covariance_type="
                                        f"{self.covariance_type!r}, got {tuple(cov.shape)}")
        return weights, means, cov

    def initial_params(self, X):
        """The first initialisation EM would start from on X: (weights [K], means [K, D], covariances)."""
        self._check_settings()
        X = self._as_data(X)
        if self.n_components > X.shape[0]:
            raise InvalidInputError(f"n_components={self.n_components} is more than the {X.shape[0]} data points")
        center = X.double().mean(0)
        weights, means, cov = self._initialize(X, center, _generator(self.seed))
        return weights.to(self.dtype), (means + center).to(self.dtype), cov.to(self.dtype)

    def _seeds(self, Xc, gen):
        """K initial means [K, D] from the centred data by the chosen ``init``."""
        K, N = self.n_components, Xc.shape[0]
        if self.init == "random":
            return Xc[torch.randperm(N, generator=gen)[:K].to(Xc.device)]
        first = int(torch.randint(N, (1,), generator=gen))
        idx = [first]
        d2 = (Xc - Xc[first]).pow(2).sum(1).double()
        for _ in range(1, K):
            if not d2.sum() > 0:
                raise InvalidInputError(f"X has fewer than n_components={K} distinct points")
            i = int(torch.multinomial((d2 / d2.sum()).cpu(), 1, generator=gen))
            idx.append(i)
            d2 = torch.minimum(d2, (Xc - Xc[i]).pow(2).sum(1).double())
        centers = Xc[idx]
        if self.init == "kmeans":
            for _ in range(100):   # Lloyd's iterations
                labels = _nearest(Xc, centers)
                counts = torch.bincount(labels, minlength=K).to(Xc.dtype)
                sums = torch.zeros_like(centers).index_add_(0, labels, Xc)
                new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
                if torch.equal(new, centers):
                    break
                centers = new
        return centers

    # -- using the fit ------------------------------------------------------------------------------
    def _pass(self, X):
        """Log-likelihoods [N] and responsibilities [N, K] of X under the fitted mixture."""
        X = self._as_data(X)
        self._check_fitted(X)
        center = self.weights_.double() @ self.means_.double()
        chol = self._fitted_chol()
        eta = natural_parameters(self.weights_.double(), self.means_.double() - center, chol,
                                 self.covariance_type).to(X.dtype)
        feats = _Features.__new__(_Features)
        feats.X, feats.center, feats.covariance_type, feats.cache = X, center.to(X.dtype), self.covariance_type, None
        D = X.shape[1]
        width = D * (D + 1) // 2 + D + 1 if self.covariance_type == "full" else 2 * D + 1
        feats.rows = max(1, (256 << 20) // (width * X.element_size()))
        log_norms, resps = [], []
        for phi in feats:
            log_norm, resp = e_step(phi, eta)
            log_norms.append(log_norm)
            resps.append(resp)
        return torch.cat(log_norms), torch.cat(resps)

    def _fitted_chol(self):
        return self._cholesky(self.covariances_.double(), self.means_.shape[1], "in the fitted model")

    def score_samples(self, X):
        """log p(x_n) [N] under the fitted mixture."""
        return self._pass(X)[0]

    def score(self, X, y=None):
        """Mean log-likelihood per point (a float)."""
        return float(self.score_samples(X).double().mean())

    def predict_proba(self, X):
        """Responsibilities p(z_n = k | x_n) [N, K]."""
        return self._pass(X)[1]

    def predict(self, X):
        """Most probable component of each point [N] (int64)."""
        return self.predict_proba(X).argmax(1)

    def sample(self, n_samples=1, seed=None):
        """Draw ``n_samples`` points: (X [n, D], component labels [n])."""
        check_positive("n_samples", n_samples, integer=True)
        self._check_fitted()
        gen = _generator(seed)
        z = torch.multinomial(self.weights_.double().cpu(), n_samples, replacement=True, generator=gen)
        eps = torch.randn(n_samples, self.means_.shape[1], generator=gen, dtype=torch.float64)
        chol = self._fitted_chol().cpu()
        x = self.means_.double().cpu()[z] + (
            (chol[z] @ eps.unsqueeze(-1)).squeeze(-1) if self.covariance_type == "full" else chol[z] * eps)
        return x.to(self.dtype).to(self.means_.device), z.to(self.means_.device)

    def _n_parameters(self):
        K, D = self.means_.shape
        cov = {"full": K * D * (D + 1) // 2, "diag": K * D, "spherical": K}[self.covariance_type]
        return cov + K * D + K - 1

    def bic(self, X):
        """Bayesian information criterion: −2 log p(X; θ̂) + (number of parameters) log N (lower is better)."""
        N = self._as_data(X).shape[0]
        return -2 * self.score(X) * N + self._n_parameters() * math.log(N)

    def aic(self, X):
        """Akaike information criterion: −2 log p(X; θ̂) + 2 (number of parameters)."""
        N = self._as_data(X).shape[0]
        return -2 * self.score(X) * N + 2 * self._n_parameters()


    # -- Pyro -------------------------------------------------------------------------------------------
    def model(self, X):
        """The classic mixture for Pyro: θ = (π, μ, Σ) are ``pyro.param`` sites, z is enumerated.

        Params: "weights" [K] (simplex), "means" [K, D], and "scale_tril" [K, D, D] (full: Cholesky of Σ_k),
        "scales" [K, D] (diag) or [K] (spherical). They start at the fitted values if the estimator is
        fitted, else at its initialisation (``init``, ``seed``) on X. Sites: "z" [N] in
        ``pyro.plate("data", N)`` with ``infer={"enumerate": "parallel"}``, "x" observed. The ELBO with
        z enumerated (``TraceEnum_ELBO``) is the exact log-likelihood log p(X; θ), so
        ``inference.variational_em(gmm.model, None, X)`` is EM and ``inference.svi(gmm.model, gmm.guide,
        X, elbo="enum")`` is maximum likelihood by gradient steps.
        """
        start = lambda name: (lambda: self._start(X)[name].clone())   # the store must own its tensors
        weights = pyro.param("weights", start("weights"), constraint=constraints.simplex)
        means = pyro.param("means", start("means"))
        if self.covariance_type == "full":
            scale = pyro.param("scale_tril", start("scale_tril"), constraint=constraints.lower_cholesky)
        else:
            scale = pyro.param("scales", start("scales"), constraint=constraints.positive)
        self._observe(X, weights, means, scale)

    def guide(self, X):
        """The classic model's guide: empty (θ are parameters, z is enumerated out by the ELBO)."""

    def bayes_model(self, X):
        """The Bayesian mixture: priors on π, μ and the covariances, z enumerated.

            weights ~ Dirichlet(α 1_K)                       α = prior_concentration (1: uniform simplex)
            means_k ~ N(m, (s · sd)²)  per dimension          m, sd: the data's mean and sd; s = prior_scale
            scales_k ~ LogNormal(log(sd / 2), 1) per dimension ([K] for "spherical": one scale each)
            corr_chol_k ~ LKJCholesky(D, η)                  "full" only (D > 1); η = lkj_concentration
            Σ_k = diag(scales_k) C_k diag(scales_k),  C_k = corr_chol_k corr_chol_kᵀ

        Why these: the scale-aware centre and widths make the priors weak on any data (the means may lie
        anywhere within ±2 data sds; a component's sd is a priori a half of the data's, give or take a
        factor e), so the posterior is data-dominated. LogNormal scales are Gaussian on the log scale,
        the unconstrained space where Laplace, the autoguide and NUTS work, so those approximations see a
        smooth, light-tailed target (a half-Cauchy's heavy tail slows NUTS and makes k-hat worse), and
        the separate scales/correlations keep "scales" (marginal sds) comparable across covariance types.
        η = 2 mildly favours weak correlations. The data-based centre and sd are taken from the X of the
        first call (or set by :meth:`fit`) and then kept, so minibatches see the same prior.
        Latent sites: "weights" [K], "means" [K, D], "scales" [K, D] or [K], "corr_chol" [K, D, D].
        """
        prior = self._prior(X)
        self._last_X = X        # for the autoguides' starting point (_init_loc)
        K, D = self.n_components, X.shape[1]
        weights = pyro.sample("weights", dist.Dirichlet(prior["concentration"]))
        with pyro.plate("components", K):
            means = pyro.sample("means", dist.Normal(prior["loc"], prior["scale"]).to_event(1))
            if self.covariance_type == "spherical":
                scales = pyro.sample("scales", dist.LogNormal(prior["log_sd"].mean(), 1.0))
            else:
                scales = pyro.sample("scales", dist.LogNormal(prior["log_sd"], 1.0).to_event(1))
            if self.covariance_type == "full" and D > 1:
                corr = pyro.sample("corr_chol", dist.LKJCholesky(D, prior["eta"]))
                scales = scales.unsqueeze(-1) * corr
            elif self.covariance_type == "full":
                scales = scales.unsqueeze(-1)
        self._observe(X, weights, means, scales)

    @property
    def bayes_guide(self):
        """A new, untrained ``AutoMultivariateNormal`` over the global sites of :meth:`bayes_model` (z is
        enumerated by ``elbo="enum"``), starting at the fitted values or the initialisation. Each read
        gives a fresh guide: keep the one you train (``inference.svi`` keeps it in its ``Fit``)."""
        from pyro.infer.autoguide import AutoMultivariateNormal
        return AutoMultivariateNormal(poutine.block(self.bayes_model, hide=["z"]),
                                      init_loc_fn=self._init_loc, init_scale=0.01)

    @property
    def map_guide(self):
        """A new ``AutoDelta`` guide for :meth:`bayes_model`: SVI with it finds the MAP (posterior mode)."""
        from pyro.infer.autoguide import AutoDelta
        return AutoDelta(poutine.block(self.bayes_model, hide=["z"]), init_loc_fn=self._init_loc)

    def bayes_init(self, X):
        """Starting values of :meth:`bayes_model`'s latent sites (fitted or initial θ): {site: tensor}."""
        s = {k: v.clone() for k, v in self._start(X).items()}
        out = {"weights": s["weights"], "means": s["means"]}
        if self.covariance_type == "full":
            cov = s["scale_tril"] @ s["scale_tril"].mT
            sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
            out["scales"] = sd
            if X.shape[1] > 1:
                out["corr_chol"] = torch.linalg.cholesky(cov / (sd.unsqueeze(-1) * sd.unsqueeze(-2)))
        else:
            out["scales"] = s["scales"]
        return out

    def _init_loc(self, site):
        from pyro.infer.autoguide.initialization import init_to_median
        X = getattr(self, "_last_X", None)
        start = self.bayes_init(X) if X is not None else {}
        if site["name"] in start:
            return start[site["name"]].to(site["fn"].sample().dtype).clone()
        return init_to_median(site)

    def _observe(self, X, weights, means, scale):
        """z_n ~ Categorical(π) (enumerated), x_n ~ N(μ_z, Σ_z); ``scale`` is scale_tril or sds."""
        with pyro.plate("data", X.shape[0]):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            if self.covariance_type == "full":
                component = dist.MultivariateNormal(means[..., z, :], scale_tril=scale[..., z, :, :])
            else:
                sd = scale[..., z, :] if self.covariance_type == "diag" \
                    else scale[..., z].unsqueeze(-1).expand(*z.shape, X.shape[1])
                component = dist.Normal(means[..., z, :], sd).to_event(1)
            pyro.sample("x", component, obs=X)

    def _start(self, X):
        """θ to start the Pyro models from, in X's dtype: {"weights", "means", "scale_tril" | "scales"}."""
        cached_X, cached = self._start_cache
        if cached_X is X:
            return cached
        if hasattr(self, "means_"):
            weights, means, cov = self.weights_.double(), self.means_.double(), self.covariances_.double()
        else:
            weights, means, cov = (v.double() for v in self.initial_params(X))
        chol = cholesky(cov, self.covariance_type, means.shape[1])[0]
        if chol is None:
            raise InvalidInputError("the starting covariances are not positive definite; increase reg_covar")
        start = {"weights": weights, "means": means}
        if self.covariance_type == "full":
            start["scale_tril"] = chol
        else:
            start["scales"] = chol if self.covariance_type == "diag" else chol[:, 0]
        start = {k: v.detach().to(dtype=X.dtype, device=X.device).clone() for k, v in start.items()}
        self._start_cache = (X, start)
        return start

    def _prior(self, X):
        if self._prior_cache is None:
            data = X.detach().double()
            sd = data.std(0) if data.shape[0] > 1 else torch.ones(data.shape[1], dtype=torch.float64)
            sd = torch.where(sd > 0, sd, torch.ones_like(sd))
            self._prior_cache = {"loc": data.mean(0), "sd": sd}
        loc, sd = self._prior_cache["loc"], self._prior_cache["sd"]
        t = lambda v: torch.as_tensor(v, dtype=X.dtype, device=X.device)
        return {"concentration": t(self.prior_concentration).expand(self.n_components),
                "loc": t(loc), "scale": t(self.prior_scale * sd), "log_sd": t(torch.log(sd / 2)),
                "eta": t(self.lkj_concentration)}

    def posterior_assignments(self, X, samples=None, temperature=1, seed=0):
        """Draws of the assignments z [S, N] from p(z | x, θ) via ``pyro.infer.infer_discrete``.

        ``samples``: None for the fitted point estimate (one draw, S = 1, from the classic model), or a
        dict of posterior draws of :meth:`bayes_model`'s sites {site: [S, ...]} (e.g. ``fit.samples(S)``):
        one z per draw, so the result mixes over the posterior of θ. ``temperature=0`` gives the most
        probable z instead of a sample.
        """
        from pyro.infer import infer_discrete
        X = torch.as_tensor(X) if not torch.is_tensor(X) else X
        if samples is None:
            self._check_fitted()
            X = self._as_data(X)
            draws, model = [None], self.model     # θ = the fitted values, in a fresh param store
        else:
            S = {v.shape[0] for v in samples.values()}
            if len(S) != 1:
                raise InvalidInputError(f"samples must share their first (draw) dimension, got sizes {S}")
            draws = [{k: v[s] for k, v in samples.items()} for s in range(S.pop())]
            model = self.bayes_model
        out = []
        with pyro.get_param_store().scope(), seeded(seed):
            for d in draws:
                conditioned = poutine.condition(model, data=d) if samples is not None else model
                sampler = infer_discrete(conditioned, first_available_dim=-2, temperature=temperature)
                out.append(poutine.trace(sampler).get_trace(X).nodes["z"]["value"])
        return torch.stack(out)


def _describe(init):
    return repr(init) if isinstance(init, str) else f"<means {tuple(np.shape(init))}>"


def _generator(seed):
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _nearest(X, centers):
    """Index of the nearest centre for each row [N] (squared distances by one matrix product)."""
    d2 = (centers * centers).sum(1) - 2 * X @ centers.T
    return d2.argmin(1)


def _params_from_labels(X, center, labels, K, covariance_type, reg_covar):
    """(weights, centred means, covariances) in float64 of hard clusters, from deviations about each
    cluster's mean (two passes: no cancellation even in float32). Empty clusters get the overall covariance."""
    D = X.shape[1]
    onehot = torch.nn.functional.one_hot(labels, K).double()
    nk = onehot.sum(0)
    Xc = (X - center.to(X.dtype)).double()
    means = (onehot.T @ Xc) / nk.clamp_min(1).unsqueeze(1)
    stats = sufficient_statistics(features(Xc - means[labels], covariance_type), onehot)
    _, _, cov = m_step(stats, D, covariance_type, reg_covar)
    if (nk == 0).any():
        _, _, overall = m_step(sufficient_statistics(features(Xc, covariance_type), torch.ones_like(nk[:1]).expand(
            X.shape[0], 1)), D, covariance_type, reg_covar)
        cov[nk == 0] = overall[0]
    weights = (nk + 1e-10) / (nk + 1e-10).sum()
    return weights, means, cov


# ---- label switching and comparing fits -----------------------------------------------------------
COMPONENT_SITES = ("weights", "means", "scales", "corr_chol")


def match_components(means, reference):
    """The permutation ``perm`` [K] with ``means[perm]`` closest to ``reference`` (both [K, D]): the
    Hungarian algorithm on squared distances between means (undoes label switching between fits)."""
    from scipy.optimize import linear_sum_assignment
    a, b = (np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, dtype=float) for v in (reference, means))
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidInputError(f"means {b.shape} and reference {a.shape} must both be [K, D]")
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return linear_sum_assignment(cost)[1]


def permute_components(sites, perm, axis=1):
    """Apply ``perm`` along the component axis (``axis``: 1 for draws [S, K, ...], 2 for chains) of the
    component-indexed sites in ``sites``; other sites are returned unchanged."""
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    return {k: (v.index_select(axis, perm.to(v.device)) if k in COMPONENT_SITES else v) for k, v in sites.items()}


def align_fit(fit, reference, num_samples=200):
    """A copy of ``fit`` whose components are relabelled to match ``reference`` means [K, D]; MCMC chains
    are matched one by one (each chain may have settled in a different labelling)."""
    import dataclasses
    if fit.chains is not None:
        perms = [match_components(fit.chains["means"][c].mean(0), reference) for c in range(fit.chains["means"].shape[0])]
        chains = {k: torch.stack([permute_components({k: v[c:c + 1]}, p, axis=2)[k][0] for c, p in enumerate(perms)])
                  for k, v in fit.chains.items()}
        pooled = {k: v.reshape(-1, *v.shape[2:]) for k, v in chains.items()}

        def draw(n, seed):
            gen = _generator(seed)
            total = next(iter(pooled.values())).shape[0]
            idx = torch.randperm(total, generator=gen)[:n] if n <= total else torch.randint(total, (n,), generator=gen)
            return {k: v[idx] for k, v in pooled.items()}
        return dataclasses.replace(fit, chains=chains, draw=draw)
    perm = match_components(fit.samples(num_samples)["means"].mean(0), reference)
    return dataclasses.replace(fit, draw=lambda n, seed: permute_components(fit.draw(n, seed), perm))


def component_sites(weights, means, scale, covariance_type):
    """The sites of :meth:`GaussianMixture.bayes_model` for a point estimate θ, so that EM and the
    Bayesian posteriors compare element by element: "weights", "means", "scales" (marginal sds [K, D],
    or [K] for "spherical") and, for "full" (D > 1), "corr_chol". ``scale``: the Cholesky factor of Σ_k
    for "full", else the sds."""
    out = {"weights": weights.detach(), "means": means.detach()}
    if covariance_type == "full":
        out["scales"] = torch.linalg.vector_norm(scale, dim=-1).detach()     # sqrt(diag(L Lᵀ))
        if means.shape[-1] > 1:
            out["corr_chol"] = (scale / out["scales"].unsqueeze(-1)).detach()
    else:
        out["scales"] = scale.detach()
    return out


def log_predictive(X, sites, covariance_type):
    """Mean log pointwise predictive density (1/N) Σ_n log (1/S) Σ_s p(x_n | θ_s) over draws θ_s
    {"weights" [S, K], "means" [S, K, D], "scales", optional "corr_chol"}; for one point estimate
    (S = 1) the mean log-likelihood per point."""
    X = X.double()
    w, mu, sd = sites["weights"].double(), sites["means"].double(), sites["scales"].double()
    if covariance_type == "full":
        tril = torch.diag_embed(sd)
        if "corr_chol" in sites:
            tril = sd.unsqueeze(-1) * sites["corr_chol"].double()
        comp = dist.MultivariateNormal(mu, scale_tril=tril)
    else:
        comp = dist.Normal(mu, sd if covariance_type == "diag" else sd.unsqueeze(-1).expand_as(mu)).to_event(1)
    logp = torch.logsumexp(comp.log_prob(X[:, None, None, :]) + torch.log(w), dim=-1)   # [N, S]
    return float((torch.logsumexp(logp, 1) - math.log(logp.shape[1])).mean())


METHODS = ("em", "variational_em", "map", "svi", "laplace", "nuts")


def compare_methods(X, n_components=3, *, methods=METHODS, covariance_type="full", out=None, steps=1000,
                    lr=0.05, num_samples=300, warmup_steps=200, n_init=5, seed=0, truth=None,
                    progress=False, data_units=None):
    """Fit one data set by every method, align their labels, and compare them (the `zoo compare gmm` job).

    Methods: "em" (closed form), "variational_em" (exact E-step by enumeration, numerical M-step; its
    trace must match EM's), "map" (SVI with a Delta guide on the Bayesian model), "svi" (Bayesian model,
    multivariate-normal autoguide), "laplace" and "nuts" (Bayesian model, z summed out). All start from the
    EM fit's parameters, and all components are relabelled to match EM's means.

    Args:
        X: data [N, D]. n_components, covariance_type: the mixture. steps, lr: SVI steps and rate (MAP and
        Bayesian). num_samples, warmup_steps: NUTS. n_init: EM restarts. truth: optional true means
        [K, D], marked on the cluster plot. out: folder for the files (None: write nothing).
        data_units: ``(center, scale)`` [D] each when X is the caller's data standardised as
        (data - center) / scale: the files written (``comparison.csv``, the InferenceData) then report the
        means and scales in the data's own units (see :func:`in_data_units`); the fits stay standardised.

    Returns:
        dict: "fits" {method: Fit (aligned)}, "table" (``inference.compare``: one row per method and
        parameter element), "summary" (one row per method: log_lik, seconds, max |error| vs NUTS, k-hat),
        "model" (the fitted GaussianMixture), "files" (paths written).
    """
    import dataclasses
    import time
    from inference.diagnostics import compare, summarize
    from inference.em import variational_em
    from inference.laplace import laplace
    from inference.mcmc import nuts
    from inference.result import Fit, point_mass_draw
    from inference.svi import svi

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidInputError(f"methods {unknown or list(methods)} are not among {list(METHODS)}")
    gmm = GaussianMixture(n_components, covariance_type=covariance_type, n_init=n_init, seed=seed,
                          tol=1e-8, max_iter=500)
    X = gmm._as_data(X)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(X)
    em_seconds = time.perf_counter() - t0
    N = X.shape[0]
    start = gmm._start(X)
    scale_name = "scale_tril" if covariance_type == "full" else "scales"
    em_sites = component_sites(start["weights"], start["means"], start[scale_name], covariance_type)
    fits = {}
    if "em" in methods:
        fits["em"] = Fit(method="em", losses=-N * gmm.log_likelihood_trace_, seconds=em_seconds,
                                   params=dict(start), draw=point_mass_draw(em_sites),
                                   diagnostics={"n_iter": gmm.n_iter_, "converged": gmm.converged_})
    # NUTS, the slowest, samples in a worker process while the other methods fit here, one torch thread
    # each (the tensors are small; two processes on two threads each would fight over the cores)
    threads = torch.get_num_threads()
    pending = None
    try:
        if "nuts" in methods:
            torch.set_num_threads(1)
            pending = nuts(gmm.bayes_model, X, num_samples=num_samples, warmup_steps=warmup_steps,
                           init=gmm.bayes_init(X), max_plate_nesting=1, seed=seed, progress=progress,
                           background=True)
        if "variational_em" in methods:
            f = variational_em(gmm.model, None, X, max_iter=200, tol=1e-10, max_plate_nesting=1,
                                         progress=progress, seed=seed)
            sites = component_sites(f.params["weights"], f.params["means"], f.params[scale_name], covariance_type)
            fits["variational_em"] = dataclasses.replace(f, draw=point_mass_draw(sites))
        # a cosine-annealed rate: the constant-rate noise of the guide's parameters would otherwise show up as
        # posterior error in the comparison
        bayes = dict(elbo="enum", steps=steps, lr=lr, schedule="cosine", seed=seed, progress=progress,
                     max_plate_nesting=1)
        if "map" in methods:
            fits["map"] = svi(gmm.bayes_model, gmm.map_guide, X, **bayes)
        if "svi" in methods:
            fits["svi"] = svi(gmm.bayes_model, gmm.bayes_guide, X, **bayes)
        if "laplace" in methods:
            fits["laplace"] = laplace(gmm.bayes_model, X, init=gmm.bayes_init(X), max_plate_nesting=1,
                                                seed=seed)
        if pending is not None:
            fits["nuts"] = pending.result()
    finally:
        torch.set_num_threads(threads)
    reference_means = gmm.means_.double()
    fits = {k: align_fit(f, reference_means) for k, f in fits.items()}

    var_names = ["weights", "means", "scales"]
    table = compare(fits, reference="nuts" if "nuts" in fits else None, var_names=var_names,
                              num_samples=500, seed=seed)
    summary = summarize(table)
    summary.insert(0, "log_lik", [log_predictive(X, f.samples(200, seed), covariance_type) for f in fits.values()])
    result = {"fits": fits, "table": table, "summary": summary, "model": gmm, "files": []}
    if out is not None:
        result["files"] = _write_comparison(out, X, fits, table, summary, gmm, truth, var_names,
                                            data_units=data_units)
    return result


def in_data_units(table, data_units=None, covariance_type="full"):
    """The comparison table with a ``units`` column, its means and scales in the data's own units.

    ``data_units``: ``(center, scale)`` [D] of a standardisation x_std = (x - center) / scale (None: the
    data were not standardised). A mean μ_kd becomes center_d + scale_d μ_kd, a scale σ_kd becomes
    scale_d σ_kd, and their posterior sds scale by scale_d; ``error`` and ``sd_ratio`` are ratios of
    quantities in the same units, so they do not change. ``units`` says what each row is in: "data" (means
    and scales), "none" (weights, correlations), or "standardised" (a spherical scale shared by columns of
    different sds, which has no single value in the data's units).
    """
    table = table.copy()
    kind = table["variable"].str.extract(r"^(\w+)(?:\[(.*)\])?$")
    table["units"] = np.where(kind[0].isin(["means", "scales"]), "data", "none")
    if data_units is None:
        return table
    center, scale = (np.asarray(torch.as_tensor(v, dtype=torch.float64).cpu(), dtype=float) for v in data_units)
    for i, (site, index) in kind.iterrows():
        if site not in ("means", "scales"):
            continue
        idx = [int(j) for j in str(index).split(",")] if isinstance(index, str) else []
        if len(idx) == 2:
            d = idx[1]
            s_d, c_d = scale[d], (center[d] if site == "means" else 0.0)
        elif site == "scales" and np.allclose(scale, scale[0]):    # spherical, equal column sds
            s_d, c_d = scale[0], 0.0
        else:
            table.loc[i, "units"] = "standardised"
            continue
        table.loc[i, "mean"] = c_d + s_d * table.loc[i, "mean"]
        table.loc[i, "sd"] = s_d * table.loc[i, "sd"]
    return table


def _idata_in_data_units(idata, data_units):
    """``means`` and per-dimension ``scales`` of an InferenceData's posterior in the data's own units."""
    if data_units is None:
        return idata
    center, scale = (np.asarray(torch.as_tensor(v, dtype=torch.float64).cpu(), dtype=float) for v in data_units)
    post = idata.posterior
    if "means" in post:
        post["means"] = post["means"].copy(data=post["means"].values * scale + center)
    if "scales" in post and post["scales"].ndim == 4:        # chain, draw, K, D
        post["scales"] = post["scales"].copy(data=post["scales"].values * scale)
    return idata


def _write_comparison(out, X, fits, table, summary, gmm, truth, var_names, data_units=None):
    """Write figures (PNG), the tables (CSV) and every fit's InferenceData (netCDF), each atomically.

    With ``data_units`` (the caller standardised its data), ``comparison.csv`` and the InferenceData report
    means and scales in the data's own units, and ``comparison.csv``'s ``units`` column says so per row."""
    from pathlib import Path
    from inference.checkpoint import atomic_output, atomic_write_text
    from inference.plots import plot_losses, plot_posteriors, save_figure
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    figures = {"losses.png": plot_losses(fits, title="Negative log-likelihood / ELBO / potential per step"),
               "posteriors.png": plot_posteriors(fits, var_names=var_names),
               "clusters.png": _plot_clusters(X, fits, gmm, truth)}
    written += [save_figure(fig, out / name) for name, fig in figures.items()]
    written.append(atomic_write_text(out / "comparison.csv",
                                     in_data_units(table, data_units, gmm.covariance_type).to_csv(index=False)))
    written.append(atomic_write_text(out / "summary.csv", summary.to_csv()))
    for name, fit in fits.items():
        with atomic_output(out / f"{name}.nc") as tmp:
            _idata_in_data_units(fit.to_inference_data(num_samples=500), data_units).to_netcdf(
                tmp, engine="h5netcdf")
        written.append(out / f"{name}.nc")
    return written


def _plot_clusters(X, fits, gmm, truth=None):
    """The data (first two coordinates) coloured by EM's assignment, each method's posterior-mean means,
    and EM's 2-sd ellipses."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    x = X.double().cpu().numpy()
    y = x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))
    ax.scatter(x[:, 0], y, c=gmm.predict(X).cpu().numpy(), cmap="tab10", s=8, alpha=0.5, vmin=0, vmax=9)
    if x.shape[1] > 1:
        cov = gmm.covariances_.double().cpu()
        if gmm.covariance_type == "diag":
            cov = torch.diag_embed(cov)
        elif gmm.covariance_type == "spherical":
            cov = cov[:, None, None] * torch.eye(x.shape[1], dtype=torch.float64)
        t = np.linspace(0, 2 * np.pi, 100)
        for k in range(gmm.n_components):
            vals, vecs = np.linalg.eigh(cov[k, :2, :2].numpy())
            ellipse = (vecs * 2 * np.sqrt(vals)) @ np.stack([np.cos(t), np.sin(t)])
            ax.plot(*(gmm.means_[k, :2].double().cpu().numpy()[:, None] + ellipse), color="k", lw=0.8)
    markers = "os^DvpP*"
    for i, (name, fit) in enumerate(fits.items()):
        m = fit.samples(200)["means"].double().mean(0).cpu().numpy()
        ax.scatter(m[:, 0], m[:, 1] if m.shape[1] > 1 else np.zeros(len(m)), marker=markers[i % len(markers)],
                   s=60, facecolors="none", edgecolors=f"C{i}", linewidths=1.5, label=name)
    if truth is not None:
        t_ = np.asarray(truth, dtype=float)
        ax.scatter(t_[:, 0], t_[:, 1] if t_.shape[1] > 1 else np.zeros(len(t_)), marker="+", s=120,
                   color="k", label="truth")
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]" if x.shape[1] > 1 else "")
    ax.set_title(f"{gmm.n_components}-component mixture, EM clusters (2-sd ellipses) and each method's means")
    return fig
