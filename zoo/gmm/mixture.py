"""`GaussianMixture`: a scikit-learn-style estimator fitted by closed-form EM (:mod:`zoo.gmm.em`).

    z_n ~ Categorical(π),   x_n | z_n = k ~ N(μ_k, Σ_k)

Settings in the constructor, ``fit`` learns, fitted attributes end in ``_`` (as ``sklearn.mixture``).
:meth:`GaussianMixture.to_pyro` hands the fitted (or initial) parameters to the Pyro models of
:mod:`zoo.gmm.models`, where every other inference method runs.
"""

import math
import warnings

import numpy as np
import torch

from inference import distributed
from inference.common import generator
from inference.errors import ConvergenceWarning, InvalidInputError, check_choice, check_matrix, check_positive

from . import em
from .covariance import COVARIANCES

INITS = ("kmeans++", "kmeans", "random")
EMPTY = 1e-3  # a component with fewer points than this is empty: its M-step is undefined


class DegenerateComponentWarning(UserWarning):
    """A component lost (almost) all its points and was re-initialised."""


class GaussianMixture:
    """A Gaussian mixture fitted by closed-form EM.

    Settings follow ``sklearn.mixture.GaussianMixture``:

    Args:
        n_components: K, the number of components.
        covariance_type: "full" (Σ_k any covariance), "diag" (diagonal) or "spherical" (σ_k² I).
        tol: stop when the mean log-likelihood per point changes by less than ``tol`` (0: run ``max_iter``).
        reg_covar: λ added to the diagonal of every covariance (guards against components collapsing).
        max_iter: the most M-steps per initialisation.
        n_init: initialisations; the fit with the highest log-likelihood is kept. With a ``seed``, start r
            is the one a single fit with ``seed + r`` makes, so a restart can be reproduced on its own.
        init: "kmeans++" (k-means++ seeding, points assigned to the nearest seed), "kmeans" (the same
            followed by Lloyd's k-means), "random" (K distinct data points as seeds), or an array of
            initial means [K, D]. Weights and covariances start from the seeds' clusters unless given.
        weights_init: optional starting weights [K].
        covariances_init: optional starting covariances (the shape of ``covariances_``); with ``init`` an
            array of means and both given, EM starts exactly there.
        seed: seed of the initialisations (None: fresh randomness each fit).
        dtype: of the computation and the fitted tensors (float32 halves memory and time; the M-step is
            float64 either way).
        device: of the computation; None keeps the data's device (e.g. "cuda").
        verbose: print the log-likelihood at every iteration.
        distributed: fit one mixture to the union of the rows that every process of a torch.distributed
            group passes to ``fit`` (its shard, e.g. ``inference.distributed.shard(X)``): each EM iteration
            all-reduces the sufficient statistics and the log-likelihood, so the fit equals single-process
            EM on all the rows up to round-off. The initialisation is computed by rank 0 from its shard
            (exactly the single-process start when ``init``, ``weights_init`` and ``covariances_init`` are
            all given). Methods other than ``fit`` work on the rows they are given.

    Fitted attributes (torch tensors): ``weights_`` [K], ``means_`` [K, D], ``covariances_`` ([K, D, D]
    "full", [K, D] "diag", [K] "spherical"), ``lower_bound_`` (mean log-likelihood per point of the fitted
    parameters, = ``score(X)``), ``log_likelihood_trace_`` (numpy, one entry per E-step: the start, then
    after each M-step; never decreasing), ``n_iter_`` (M-steps of the best run), ``converged_``,
    ``n_features_in_``.
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init="kmeans++",
        weights_init=None,
        covariances_init=None,
        seed=None,
        dtype=torch.float64,
        device=None,
        verbose=False,
        distributed=False,
    ):
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
        self.verbose = verbose
        self.distributed = distributed

    def __repr__(self):
        init = repr(self.init) if isinstance(self.init, str) else f"<means {tuple(np.shape(self.init))}>"
        return (
            f"GaussianMixture(n_components={self.n_components}, covariance_type={self.covariance_type!r}, init={init})"
        )

    # -- checks -------------------------------------------------------------------------------------
    def _check_settings(self):
        check_positive("n_components", self.n_components, integer=True)
        check_choice("covariance_type", self.covariance_type, COVARIANCES)
        check_positive("tol", self.tol, allow_zero=True)
        check_positive("reg_covar", self.reg_covar, allow_zero=True)
        check_positive("max_iter", self.max_iter, allow_zero=True, integer=True)
        check_positive("n_init", self.n_init, integer=True)
        check_choice("dtype", self.dtype, (torch.float32, torch.float64))
        if isinstance(self.init, str):
            check_choice("init", self.init, INITS)

    def as_data(self, X, name="X"):
        """X as a checked [N, D] tensor of the estimator's dtype and device."""
        return check_matrix(X, name, dtype=self.dtype, device=self.device)

    def _check_fitted(self, X=None):
        if not hasattr(self, "means_"):
            raise InvalidInputError("this GaussianMixture is not fitted yet: call fit(X) first")
        if X is not None and X.shape[1] != self.means_.shape[1]:
            raise InvalidInputError(f"X has {X.shape[1]} features but the mixture was fitted on {self.means_.shape[1]}")

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit by EM from ``n_init`` initialisations and keep the best. X: [N, D]. Returns self."""
        self._check_settings()
        X = self.as_data(X)
        N, D = X.shape
        K = self.n_components
        if self.distributed:
            distributed.require_group("GaussianMixture(distributed=True)")
            if distributed.total(D, op="min") != distributed.total(D, op="max"):
                raise InvalidInputError("the processes' shards of X have different numbers of features")
            N = distributed.total(N)
        if K > N:
            raise InvalidInputError(f"n_components={K} is more than the {N} data points")
        center = distributed.all_reduce_sum(X.double().sum(0)) / N if self.distributed else X.double().mean(0)
        feats = em.Features(X, center.to(X.dtype), self.covariance_type)
        best = None
        for run in range(self.n_init):
            gen = generator(None if self.seed is None else self.seed + run)
            start = self._on_rank0(lambda: self._initialize(X, center, gen), X.device)
            result = self._em(feats, N, *start, gen)
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
        if not self.converged_ and self.tol > 0:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations (last change of the "
                f"mean log-likelihood {float(np.diff(best['trace'][-2:]).sum()):.3g}, tol={self.tol}); "
                f"increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def fit_predict(self, X, y=None):
        """Fit, then the most probable component of each row of X [N]."""
        return self.fit(X).predict(X)

    def _em(self, feats, n_total, weights, means, cov, gen):
        """EM from (weights, centred means, covariances) in float64: trace, n_iter, converged, params."""
        D = feats.X.shape[1]
        factor = self._factor(cov, D, "at the start")
        trace, n_iter, converged = [], 0, False
        for it in range(self.max_iter + 1):
            eta = em.natural_parameters(weights, means, factor, self.covariance_type).to(feats.X.dtype)
            ll, stats = em.em_pass(feats, eta)
            if self.distributed:
                ll, stats = em.sum_over_ranks(ll, stats, feats.X.shape[0], n_total)
            if not math.isfinite(ll):
                raise InvalidInputError(
                    f"the log-likelihood became {ll} at EM iteration {it}; the data may be "
                    f"too large for {self.dtype} (standardise X or use float64)"
                )
            trace.append(ll)
            if self.verbose:
                print(f"EM iteration {it}: mean log-likelihood {ll:.8f}")
            if it > 0 and abs(trace[-1] - trace[-2]) < self.tol:
                converged = True
                break
            if it == self.max_iter:
                break
            nk, means, cov = em.m_step(stats, D, self.covariance_type, self.reg_covar)
            empty = nk < EMPTY
            if empty.any():
                means, cov, nk = self._on_rank0(
                    lambda: self._reseed(empty, stats, means, cov, nk, feats.X, feats.center, gen, it), feats.X.device
                )
            weights = nk / nk.sum()
            factor = self._factor(cov, D, f"after EM iteration {it + 1}")
            n_iter += 1
        return {"trace": trace, "n_iter": n_iter, "converged": converged, "params": (weights, means, cov)}

    def _reseed(self, empty, stats, means, cov, nk, X, center, gen, it):
        """Restart empty components at random data points with the data's overall covariance."""
        ks = empty.nonzero()[:, 0].tolist()
        warnings.warn(
            f"component(s) {ks} lost all their points at EM iteration {it + 1}; re-initialised at "
            f"random data points (the log-likelihood may drop at this step)",
            DegenerateComponentWarning,
            stacklevel=3,
        )
        _, _, overall = em.m_step(stats.sum(0, keepdim=True), X.shape[1], self.covariance_type, self.reg_covar)
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
        return tuple(t.to(device) for t in distributed.on_rank0(lambda: tuple(t.cpu() for t in fn())))

    def _factor(self, cov, D, when):
        factor, bad = em.cholesky(cov, self.covariance_type, D)
        if factor is None:
            raise InvalidInputError(
                f"the covariance of component {bad} is singular (not positive definite) {when}: it has "
                f"collapsed onto too few points or a lower-dimensional subspace. Increase reg_covar "
                f"(now {self.reg_covar}), use fewer components or covariance_type='diag'"
            )
        return factor

    def _initialize(self, X, center, gen):
        """Starting (weights [K], centred means [K, D], covariances) in float64."""
        K, D = self.n_components, X.shape[1]
        given = self.init if not isinstance(self.init, str) else None
        if given is not None:
            means = check_matrix(given, "init means", dtype=torch.float64, device=X.device)
            if means.shape != (K, D):
                raise InvalidInputError(f"init means must have shape ({K}, {D}), got {tuple(means.shape)}")
            means = means - center
        else:
            means = self._seeds(X - center.to(X.dtype), gen).double()
        labels = em.nearest(X - center.to(X.dtype), means.to(X.dtype))
        weights, label_means, cov = em.params_from_labels(X, center, labels, K, self.covariance_type, self.reg_covar)
        if given is None:
            means = label_means
        if self.weights_init is not None:
            weights = torch.as_tensor(np.asarray(self.weights_init, dtype=np.float64)).to(X.device)
            if weights.shape != (K,) or (weights <= 0).any() or not torch.isfinite(weights).all():
                raise InvalidInputError(f"weights_init must be {K} positive numbers, got {self.weights_init!r}")
            weights = weights / weights.sum()
        if self.covariances_init is not None:
            cov = torch.as_tensor(np.asarray(self.covariances_init, dtype=np.float64)).to(X.device)
            shape = COVARIANCES[self.covariance_type].shape(K, D)
            if cov.shape != shape:
                raise InvalidInputError(
                    f"covariances_init must have shape {shape} for covariance_type="
                    f"{self.covariance_type!r}, got {tuple(cov.shape)}"
                )
        return weights, means, cov

    def initial_params(self, X):
        """The first initialisation EM would start from on X: (weights [K], means [K, D], covariances)."""
        self._check_settings()
        X = self.as_data(X)
        if self.n_components > X.shape[0]:
            raise InvalidInputError(f"n_components={self.n_components} is more than the {X.shape[0]} data points")
        center = X.double().mean(0)
        weights, means, cov = self._initialize(X, center, generator(self.seed))
        return weights.to(self.dtype), (means + center).to(self.dtype), cov.to(self.dtype)

    def _seeds(self, Xc, gen):
        """K initial means [K, D] from the centred data by the chosen ``init``."""
        K = self.n_components
        if self.init == "random":
            return Xc[torch.randperm(Xc.shape[0], generator=gen)[:K].to(Xc.device)]
        centers = em.kmeans_plusplus(Xc, K, gen)
        if centers is None:
            raise InvalidInputError(f"X has fewer than n_components={K} distinct points")
        return em.lloyd(Xc, centers) if self.init == "kmeans" else centers

    # -- using the fit ------------------------------------------------------------------------------
    def _pass(self, X):
        """Log-likelihoods [N] and responsibilities [N, K] of X under the fitted mixture."""
        X = self.as_data(X)
        self._check_fitted(X)
        center = self.weights_.double() @ self.means_.double()
        eta = em.natural_parameters(
            self.weights_.double(), self.means_.double() - center, self.factor_(), self.covariance_type
        ).to(X.dtype)
        return em.score_pass(em.Features(X, center.to(X.dtype), self.covariance_type, cache=False), eta)

    def factor_(self):
        """The fitted covariances' factor: Cholesky factors [K, D, D] ("full") or sds [K, D], float64."""
        self._check_fitted()
        return self._factor(self.covariances_.double(), self.means_.shape[1], "in the fitted model")

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
        gen = generator(seed)
        z = torch.multinomial(self.weights_.double().cpu(), n_samples, replacement=True, generator=gen)
        eps = torch.randn(n_samples, self.means_.shape[1], generator=gen, dtype=torch.float64)
        factor = self.factor_().cpu()
        x = self.means_.double().cpu()[z] + COVARIANCES[self.covariance_type].noise(factor[z], eps)
        return x.to(self.dtype).to(self.means_.device), z.to(self.means_.device)

    def _n_parameters(self):
        K, D = self.means_.shape
        return COVARIANCES[self.covariance_type].n_parameters(K, D) + K * D + K - 1

    def bic(self, X):
        """Bayesian information criterion: −2 log p(X; θ̂) + (number of parameters) log N (lower is better)."""
        N = self.as_data(X).shape[0]
        return -2 * self.score(X) * N + self._n_parameters() * math.log(N)

    def aic(self, X):
        """Akaike information criterion: −2 log p(X; θ̂) + 2 (number of parameters)."""
        N = self.as_data(X).shape[0]
        return -2 * self.score(X) * N + 2 * self._n_parameters()

    # -- Pyro ---------------------------------------------------------------------------------------
    def to_pyro(self, X, **priors):
        """The Pyro models of this mixture on X (:class:`zoo.gmm.models.PyroMixture`), starting from the
        fitted parameters (or, unfitted, from the initialisation EM would use on X).

        Args:
            X: data [N, D]; its mean and sd also centre and scale the Bayesian model's priors.
            **priors: ``prior_concentration``, ``prior_scale``, ``lkj_concentration`` of the Bayesian model.
        """
        from .models import PyroMixture

        X = self.as_data(X)
        if hasattr(self, "means_"):
            self._check_fitted(X)
            start = (self.weights_, self.means_, self.covariances_)
        else:
            start = self.initial_params(X)
        return PyroMixture(X, self.n_components, covariance_type=self.covariance_type, start=start, **priors)
