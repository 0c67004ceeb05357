"""Bayesian Gaussian mixture by coordinate-ascent variational inference (CAVI), as scikit-learn's.

The model (Bishop 2006, PRML §10.2), with scikit-learn's priors and names::

    π ~ Dirichlet(α0)                       α0 = weight_concentration_prior (default 1/K)
    Λ_k ~ Wishart(ν0, W0)                   ν0 = degrees_of_freedom_prior (default D),
                                            W0⁻¹ = covariance_prior (default the data's covariance)
    μ_k | Λ_k ~ N(m0, (β0 Λ_k)⁻¹)           β0 = mean_precision_prior (default 1), m0 = mean_prior (default x̄)
    z_n ~ Categorical(π),   x_n | z_n = k ~ N(μ_k, Λ_k⁻¹)

CAVI alternates the two exact coordinate updates of q(z) q(π) Π_k q(μ_k, Λ_k)::

    E-step  log ρ_nk = E[log π_k] + ½ E[log det Λ_k] − D/2 log 2π
                       − ½ (D/β_k + ν_k (x_n − m_k)ᵀ W_k (x_n − m_k)),
            r_nk = ρ_nk / Σ_j ρ_nj,   E[log det Λ_k] = Σ_i ψ((ν_k − i)/2) + D log 2 + log det W_k
    M-step  N_k = Σ_n r_nk,  x̄_k = Σ_n r_nk x_n / N_k,
            S_k = Σ_n r_nk (x_n − x̄_k)(x_n − x̄_k)ᵀ / N_k + λ I
            α_k = α0 + N_k,  β_k = β0 + N_k,  m_k = (β0 m0 + N_k x̄_k) / β_k,  ν_k = ν0 + N_k,
            W_k⁻¹ = W0⁻¹ + N_k S_k + β0 N_k / β_k (x̄_k − m0)(x̄_k − m0)ᵀ

(``covariances_`` = W_k⁻¹ / ν_k = E[Λ_k]⁻¹ and ``precisions_cholesky_`` its inverse's factor, as scikit-learn
stores them). With weight_concentration_prior_type="dirichlet_process", π is the truncated stick-breaking
π_k = v_k Π_{j<k} (1 − v_j), v_k ~ Beta(1, α0), with q(v_k) = Beta(1 + N_k, α0 + Σ_{j>k} N_j).
The lower bound is scikit-learn's: at q(π, μ, Λ) optimal for r::

    lower_bound = −Σ r log r − Σ_k log B(W_k, ν_k) − log C(α) − D/2 Σ_k log β_k   (+ constants it drops),

non-decreasing over the iterations when λ = 0 (each step is an exact coordinate maximum). The full ELBO
F (= lower_bound plus the dropped constants, :meth:`BayesianGaussianMixture.elbo_constant`) bounds log p(X).
For "diag" and "spherical", scikit-learn's formulas are followed as they are (its E-step keeps the
Wishart's Σ_i ψ((ν_k − i)/2) for D independent precisions), so there they match scikit-learn rather than an
exact CAVI; ``to_fit`` and the Pyro model are therefore "full" only.

The Pyro model with the same priors (:func:`zoo.gmm.conjugate.conjugate_model`, for SVI, Laplace, NUTS and
Pathfinder) and q as an ``inference.result.Fit`` (:meth:`BayesianGaussianMixture.to_fit`, with a PSIS k-hat
verdict) are in ``zoo.gmm.conjugate``; the formulas that differ by covariance type and weight prior are the
tables of ``zoo.gmm.cavi``. The file runs past 400 lines because it is the one estimator, read top to bottom,
and about half of it is docstrings.
"""

import math
import time
import warnings

import numpy as np
import torch

from inference.common import generator
from inference.errors import (
    ConvergenceWarning,
    InvalidInputError,
    check_array,
    check_choice,
    check_matrix,
    check_positive,
)

from . import conjugate
from .cavi import COVARIANCES, INIT_PARAMS, WEIGHT_PRIORS, initial_resp, like
from .covariance import COVARIANCES as STRUCTURES

_EPS = 10 * torch.finfo(torch.float64).eps  # added to N_k, as scikit-learn does, so empty components stay finite
_PRIOR_NAMES = (
    "weight_concentration_prior",
    "mean_precision_prior",
    "mean_prior",
    "degrees_of_freedom_prior",
    "covariance_prior",
)


# ---- the estimator ------------------------------------------------------------------------------------
class BayesianGaussianMixture:
    """Variational Bayes for the Gaussian mixture (CAVI), with scikit-learn's settings, priors and results.

    Args:
        n_components: K, the number of components (an upper bound: unused ones get weights near 0).
        covariance_type: "full", "diag" or "spherical" (scikit-learn's formulas; see the module docstring).
        tol: stop when the lower bound changes by less than ``tol`` (scikit-learn's: not per point).
        reg_covar: λ added to the diagonal of every S_k (0 makes each step an exact CAVI update).
        max_iter: the most E/M iterations per initialisation.
        n_init: initialisations; the one with the highest lower bound is kept.
        init_params: "kmeans", "k-means++", "random" or "random_from_data", computed exactly as
            scikit-learn does from ``numpy.random.RandomState(seed)``, so that ``seed=s`` starts where
            scikit-learn's ``random_state=s`` starts.
        resp_init: optional responsibilities [N, K] (non-negative) to start from instead; one run.
        weight_concentration_prior_type: "dirichlet_process" (stick-breaking, scikit-learn's default) or
            "dirichlet_distribution" (Bishop's; needed by :meth:`to_fit` and :func:`conjugate_model`).
        weight_concentration_prior: α0 > 0 (None: 1/K).
        mean_precision_prior: β0 > 0 (None: 1).
        mean_prior: m0 [D] (None: the data's mean).
        degrees_of_freedom_prior: ν0 > D − 1 (None: D).
        covariance_prior: W0⁻¹: [D, D] positive definite ("full"), [D] positive ("diag"), a positive number
            ("spherical"); None: the data's covariance, variances, or mean variance.
        seed: seeds the initialisation (None: fresh randomness).
        verbose: print the lower bound at every iteration.

    Fitted attributes (float64 CPU tensors): ``weights_`` [K], ``means_`` [K, D] (m_k), ``covariances_``
    (W_k⁻¹ / ν_k: [K, D, D], [K, D] or [K]), ``precisions_`` and ``precisions_cholesky_`` (their inverses and
    scikit-learn's factor of them), ``weight_concentration_`` (α [K], or the Beta parameters (a, b) of the
    sticks), ``mean_precision_`` β [K], ``degrees_of_freedom_`` ν [K], ``lower_bound_``, ``lower_bounds_``
    (numpy, one per iteration), ``converged_``, ``n_iter_``, and the resolved priors ``weight_concentration_prior_``,
    ``mean_precision_prior_``, ``mean_prior_``, ``degrees_of_freedom_prior_``, ``covariance_prior_``.
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
        init_params="kmeans",
        resp_init=None,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        seed=None,
        verbose=False,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.resp_init = resp_init
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.seed = seed
        self.verbose = verbose

    def __repr__(self):
        return (
            f"BayesianGaussianMixture(n_components={self.n_components}, covariance_type="
            f"{self.covariance_type!r}, weight_concentration_prior_type={self.weight_concentration_prior_type!r})"
        )

    # -- checks and priors --------------------------------------------------------------------------------
    def _check_settings(self):
        check_positive("n_components", self.n_components, integer=True)
        check_choice("covariance_type", self.covariance_type, COVARIANCES)
        check_positive("tol", self.tol, allow_zero=True)
        check_positive("reg_covar", self.reg_covar, allow_zero=True)
        check_positive("max_iter", self.max_iter, allow_zero=True, integer=True)
        check_positive("n_init", self.n_init, integer=True)
        check_choice("init_params", self.init_params, INIT_PARAMS)
        check_choice("weight_concentration_prior_type", self.weight_concentration_prior_type, WEIGHT_PRIORS)
        for name in ("weight_concentration_prior", "mean_precision_prior"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))

    def priors(self, X=None):
        """The resolved priors, scikit-learn's names -> float64 tensors: "weight_concentration_prior",
        "mean_precision_prior", "mean_prior" [D], "degrees_of_freedom_prior", "covariance_prior" (W0⁻¹).

        Args:
            X: data [N, D] for the data-dependent defaults; None: those of the fit.
        """
        if X is None:
            self._check_fitted()
            return {name: getattr(self, name + "_") for name in _PRIOR_NAMES}
        X = check_matrix(X, dtype=torch.float64, device="cpu")
        N, D = X.shape
        family = COVARIANCES[self.covariance_type]
        a0 = self.weight_concentration_prior or 1.0 / self.n_components
        nu0 = D if self.degrees_of_freedom_prior is None else self.degrees_of_freedom_prior
        if isinstance(nu0, bool) or not isinstance(nu0, (int, float)) or not nu0 > D - 1:
            raise InvalidInputError(f"degrees_of_freedom_prior must be a number > D - 1 = {D - 1}, got {nu0!r}")
        m0 = (
            X.mean(0)
            if self.mean_prior is None
            else check_array(self.mean_prior, "mean_prior", ndim=1, dtype=torch.float64, device="cpu")
        )
        if m0.shape != (D,):
            raise InvalidInputError(f"mean_prior must have shape ({D},), got {tuple(m0.shape)}")
        if self.covariance_prior is None:
            if N < 2:
                raise InvalidInputError("X needs at least 2 rows for the default covariance_prior")
            cov0 = family["default_prior"](X)
        else:
            cov0 = check_array(self.covariance_prior, "covariance_prior", dtype=torch.float64, device="cpu")
            if not family["prior_ok"](cov0, D):
                shape = {
                    "full": f"[{D}, {D}] symmetric positive definite",
                    "diag": f"[{D}] positive",
                    "spherical": "a positive number",
                }[self.covariance_type]
                raise InvalidInputError(
                    f"covariance_prior must be {shape} for covariance_type="
                    f"{self.covariance_type!r}, got shape {tuple(cov0.shape)}"
                )
        b0 = self.mean_precision_prior or 1.0
        return {
            "weight_concentration_prior": like(a0),
            "mean_precision_prior": like(b0),
            "mean_prior": m0,
            "degrees_of_freedom_prior": like(nu0),
            "covariance_prior": cov0,
        }

    def _check_fitted(self, X=None):
        if not hasattr(self, "means_"):
            raise InvalidInputError("this BayesianGaussianMixture is not fitted yet: call fit(X) first")
        if X is not None and X.shape[1] != self.means_.shape[1]:
            raise InvalidInputError(f"X has {X.shape[1]} features but the mixture was fitted on {self.means_.shape[1]}")

    # -- CAVI ---------------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Run CAVI from ``n_init`` initialisations (or ``resp_init``) and keep the best. X: [N, D]. Returns self.

        Raises:
            InvalidInputError: bad settings, priors or data, or a covariance that is not positive definite.
        """
        start = time.perf_counter()
        self._check_settings()
        X = check_matrix(X, dtype=torch.float64, device="cpu")
        N, K = X.shape[0], self.n_components
        if N < 2 or K > N:
            raise InvalidInputError(f"X has {N} rows: it needs at least 2, and at least n_components={K}")
        if self.seed is not None:
            check_positive("seed", self.seed, allow_zero=True, integer=True)
        prior = self.priors(X)
        given = None
        if self.resp_init is not None:
            given = check_matrix(self.resp_init, "resp_init", dtype=torch.float64, device="cpu")
            if given.shape != (N, K) or bool((given < 0).any()):
                raise InvalidInputError(
                    f"resp_init must be non-negative of shape ({N}, {K}), got shape {tuple(given.shape)}"
                )
        rng = np.random.RandomState(self.seed)  # scikit-learn's random_state, used in the same order
        best = None
        for _ in range(1 if given is not None else self.n_init):
            resp = given if given is not None else initial_resp(X, K, self.init_params, rng)
            state = self._m_step(X, resp, prior)
            bound, bounds, converged = -math.inf, [], False
            for _ in range(self.max_iter):
                log_resp = self._e_step(X, state)[1]
                state = self._m_step(X, log_resp.exp(), prior)
                previous, bound = bound, self._lower_bound(log_resp, state)
                bounds.append(bound)
                if self.verbose:
                    print(f"CAVI iteration {len(bounds)}: lower bound {bound:.10g}")
                if abs(bound - previous) < self.tol:
                    converged = True
                    break
            if best is None or bound > best[1]:
                best = (state, bound, bounds, converged)
        state, self.lower_bound_, bounds, self.converged_ = best
        self.lower_bounds_, self.n_iter_ = np.asarray(bounds, dtype=float), len(bounds)
        for name, value in prior.items():
            setattr(self, name + "_", value)
        weights, family = WEIGHT_PRIORS[self.weight_concentration_prior_type], COVARIANCES[self.covariance_type]
        self.weight_concentration_ = state["conc"]
        self.weights_ = weights["weights"](state["conc"])
        self.mean_precision_, self.means_ = state["beta"], state["means"]
        self.degrees_of_freedom_, self.covariances_ = state["nu"], state["cov"]
        self.precisions_cholesky_ = state["prec_chol"]
        self.precisions_ = family["precisions"](state["prec_chol"])
        self.n_features_in_ = X.shape[1]
        self.fit_seconds_ = time.perf_counter() - start
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                f"CAVI did not converge in max_iter={self.max_iter} iterations (tol={self.tol}); "
                "increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _m_step(self, X, resp, prior):
        """q(π, μ, Λ) optimal for responsibilities [N, K]: {conc, beta, means, nu, cov, prec_chol}."""
        family, weights = COVARIANCES[self.covariance_type], WEIGHT_PRIORS[self.weight_concentration_prior_type]
        nk = resp.sum(0) + _EPS
        xk = (resp.T @ X) / nk[:, None]
        sk = family["scatter"](X, resp, nk, xk, self.reg_covar)
        b0, m0, nu0 = prior["mean_precision_prior"], prior["mean_prior"], prior["degrees_of_freedom_prior"]
        beta, nu = b0 + nk, nu0 + nk
        cov = family["inverse_scale"](prior["covariance_prior"], nk, sk, xk - m0, b0 / beta)
        cov = cov / nu.reshape(-1, *[1] * (cov.ndim - 1))
        prec_chol = family["precision_cholesky"](cov)
        if prec_chol is None or not torch.isfinite(prec_chol).all():
            raise InvalidInputError(
                "a component's covariance W_k⁻¹/ν_k is not positive definite (degenerate data, "
                f"or a covariance_prior too small for them): increase reg_covar (now "
                f"{self.reg_covar}) or covariance_prior, or use fewer components"
            )
        return {
            "conc": weights["concentration"](nk, prior["weight_concentration_prior"]),
            "beta": beta,
            "means": (b0 * m0 + nk[:, None] * xk) / beta[:, None],
            "nu": nu,
            "cov": cov,
            "prec_chol": prec_chol,
        }

    def _e_step(self, X, state):
        """(log ρ [N, K], log r [N, K]) under q: the expected log joint of each point and component."""
        family, weights = COVARIANCES[self.covariance_type], WEIGHT_PRIORS[self.weight_concentration_prior_type]
        D, nu, beta = X.shape[1], state["nu"], state["beta"]
        log_det = family["log_det"](state["prec_chol"], D)
        maha = family["mahalanobis"](X, state["means"], state["prec_chol"])
        # covariances_ is E[Λ]⁻¹ = (ν W)⁻¹: its log-determinant carries D log ν, which E[log det Λ] has not
        log_gauss = -0.5 * (D * math.log(2 * math.pi) + maha) + log_det - 0.5 * D * torch.log(nu)
        log_lambda = D * math.log(2.0) + torch.digamma(0.5 * (nu - torch.arange(D, dtype=nu.dtype)[:, None])).sum(0)
        log_rho = log_gauss + 0.5 * (log_lambda - D / beta) + weights["expected_log"](state["conc"])
        return log_rho, log_rho - torch.logsumexp(log_rho, 1, keepdim=True)

    def _lower_bound(self, log_resp, state):
        """scikit-learn's lower bound (see the module docstring) as a float."""
        family, weights = COVARIANCES[self.covariance_type], WEIGHT_PRIORS[self.weight_concentration_prior_type]
        nu, D = state["nu"], state["means"].shape[1]
        log_det = family["log_det"](state["prec_chol"], D) - 0.5 * D * torch.log(nu)  # ½ log det W_k
        log_wishart = -(
            nu * log_det
            + 0.5 * nu * D * math.log(2.0)
            + torch.lgamma(0.5 * (nu - torch.arange(D, dtype=nu.dtype)[:, None])).sum(0)
        )
        bound = (
            -(log_resp.exp() * log_resp).sum()
            - log_wishart.sum()
            - weights["log_norm"](state["conc"])
            - 0.5 * D * torch.log(state["beta"]).sum()
        )
        return float(bound)

    def elbo_constant(self, n_samples):
        """F − lower_bound: the constants scikit-learn drops, so that lower_bound + this is the ELBO F ≤ log p(X).

        F = lower_bound + log C(α0) + K (ν0/2 log det W0⁻¹ − ν0 D/2 log 2 − Σ_i log Γ((ν0 − i)/2) + D/2 log β0)
        − N D/2 log 2π (Dirichlet; −K log B(1, α0) for the sticks), exact when reg_covar = 0. "full" only.

        Args:
            n_samples: N, the number of rows fitted.
        """
        self._check_fitted()
        if self.covariance_type != "full":
            raise InvalidInputError(
                "the full ELBO is defined for covariance_type='full' only (scikit-learn's "
                f"'{self.covariance_type}' formulas are not an exact CAVI)"
            )
        K, D = self.means_.shape
        nu0, b0 = float(self.degrees_of_freedom_prior_), float(self.mean_precision_prior_)
        wishart = (
            0.5 * nu0 * float(torch.logdet(self.covariance_prior_))
            - 0.5 * nu0 * D * math.log(2.0)
            - sum(math.lgamma(0.5 * (nu0 - i)) for i in range(D))
            + 0.5 * D * math.log(b0)
        )
        weights = WEIGHT_PRIORS[self.weight_concentration_prior_type]
        return (
            weights["prior_log_norm"](float(self.weight_concentration_prior_), K)
            + K * wishart
            - 0.5 * n_samples * D * math.log(2 * math.pi)
        )

    # -- using the fit --------------------------------------------------------------------------------------
    def _fitted_e_step(self, X):
        X = check_matrix(X, dtype=torch.float64, device="cpu")
        self._check_fitted(X)
        state = {
            "conc": self.weight_concentration_,
            "beta": self.mean_precision_,
            "means": self.means_,
            "nu": self.degrees_of_freedom_,
            "prec_chol": self.precisions_cholesky_,
        }
        return self._e_step(X, state)

    def score_samples(self, X):
        """log Σ_k ρ_nk [N], scikit-learn's score_samples: E_q[log π_k] and E_q[log N(x_n | μ_k, Λ_k⁻¹)] summed
        over k (a lower bound on the posterior predictive's log density, not that density itself)."""
        return torch.logsumexp(self._fitted_e_step(X)[0], 1)

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` (a float)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X):
        """Responsibilities r_nk of the variational E-step [N, K]."""
        return self._fitted_e_step(X)[1].exp()

    def predict(self, X):
        """argmax_k r_nk [N] (int64)."""
        return self._fitted_e_step(X)[1].argmax(1)

    def fit_predict(self, X, y=None):
        return self.fit(X).predict(X)

    def sample(self, n_samples=1, seed=None):
        """``n_samples`` points from the plug-in mixture (``weights_``, ``means_``, ``covariances_``).

        Args:
            n_samples: how many points.
            seed: seeds the draws (None: fresh randomness).

        Returns:
            (X [n_samples, D], component labels [n_samples]).
        """
        check_positive("n_samples", n_samples, integer=True)
        self._check_fitted()
        gen = generator(seed)
        K, D = self.means_.shape
        z = torch.multinomial(self.weights_, n_samples, replacement=True, generator=gen)
        eps = torch.randn(n_samples, D, generator=gen, dtype=torch.float64)
        structure = STRUCTURES[self.covariance_type]  # the covariance structures GaussianMixture samples with
        factor, _ = structure.factor(self.covariances_, D)
        return self.means_[z] + structure.noise(factor[z], eps), z

    # -- the posterior as draws, and its Pyro model -----------------------------------------------------------
    def _check_conjugate(self, what):
        self._check_fitted()
        if self.covariance_type != "full" or self.weight_concentration_prior_type != "dirichlet_distribution":
            raise InvalidInputError(
                f"{what} needs covariance_type='full' and weight_concentration_prior_type="
                f"'dirichlet_distribution' (the model of conjugate_model), got "
                f"{self.covariance_type!r} and {self.weight_concentration_prior_type!r}"
            )

    def model(self, X):
        """:func:`conjugate_model` with this estimator's priors (those of the fit, else resolved from X)."""
        priors = self.priors() if hasattr(self, "means_") else self.priors(X)
        return conjugate.conjugate_model(X, self.n_components, priors)

    def posterior_mean_sites(self):
        """The latent sites of :func:`conjugate_model` at q's means E[π], m_k, E[Λ_k] (e.g. ``init=`` for
        ``inference.laplace`` and ``inference.nuts``): {"weights" [K], "means" [K, D], "bartlett_chi2",
        "bartlett_normal"}."""
        self._check_conjugate("posterior_mean_sites")
        sites = conjugate.bartlett_sites(torch.linalg.cholesky(self.precisions_), self.priors())
        return {"weights": self.weights_.clone(), "means": self.means_.clone(), **sites}

    def to_fit(self, X, num_samples=1000, seed=0):
        """q(π) Π_k q(μ_k, Λ_k) = Dirichlet(α) × Normal-Wishart as an ``inference.result.Fit`` with a verdict.

        Args:
            X: the data [N, D] the mixture was fitted on (for the importance weights).
            num_samples: draws from q behind the PSIS k-hat of the verdict.
            seed: seeds those draws.

        Returns:
            Fit with method "cavi": ``losses`` the negative full ELBO per iteration (−lower_bounds_ minus
            :meth:`elbo_constant`); ``draw(n, seed)`` gives the sites of :func:`conjugate_model` ("weights"
            [n, K], "means" [n, K, D], "bartlett_chi2" [n, K, D], "bartlett_normal" [n, K, D(D−1)/2]) plus
            "precisions" Λ_k [n, K, D, D]; ``importance(n, seed)`` those draws and log p(X, θ) − log q(θ) with z
            summed out; diagnostics "khat", "ess", "elbo", "n_iter" and the verdict.

        Warns:
            ConvergenceWarning: CAVI stopped at max_iter, k-hat > 0.5, or the weights move q's moments.
        """
        self._check_conjugate("to_fit")
        check_positive("num_samples", num_samples, integer=True)
        X = check_matrix(X, dtype=torch.float64, device="cpu")
        self._check_fitted(X)
        return conjugate.posterior_fit(self, X, num_samples, seed)
