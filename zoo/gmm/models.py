"""The Gaussian mixture as Pyro models, for every inference method of the ``inference`` package.

    classic     θ = (π, μ, Σ) are ``pyro.param`` sites        z_n ~ Categorical(π), x_n ~ N(μ_z, Σ_z)
    Bayesian    π ~ Dirichlet, μ_k ~ Normal, Σ_k = diag(s_k) C_k diag(s_k) with s_k ~ LogNormal, C_k ~ LKJ

In both, z is enumerated (``infer={"enumerate": "parallel"}``), so the ELBO with ``elbo="enum"`` sums it out
exactly: ``inference.variational_em(m.model, None, X)`` is EM, ``inference.svi(m.bayes_model,
m.bayes_guide(), X, elbo="enum")`` Bayesian SVI, and ``inference.laplace``/``inference.nuts`` run on
``m.bayes_model``. :class:`PyroMixture` holds everything the models need (the starting point, the data's
centre and sd for the priors) from its construction, so model and guide share no hidden state.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal
from pyro.infer.autoguide.initialization import init_to_median

from inference.draws import seeded
from inference.errors import InvalidInputError, check_choice, check_matrix, check_positive

from . import em
from .covariance import COVARIANCES

# the sites indexed by component (relabelled together by ``zoo.gmm.labels``): this module's Bayesian model's,
# those of the conjugate model (``zoo.gmm.conjugate``) and the precisions derived from them
COMPONENT_SITES = ("weights", "means", "scales", "corr_chol", "bartlett_chi2", "bartlett_normal", "precisions")


class BayesianGuides:
    """The guides of a mixture's Bayesian model (``bayes_model``, z enumerated), started at ``bayes_init``
    ({site: value}); shared by :class:`PyroMixture` and :class:`zoo.gmm.conjugate.ConjugateMixture`."""

    def bayes_guide(self):
        """A new ``AutoMultivariateNormal`` over the Bayesian model's global sites, starting at ``bayes_init``."""
        return AutoMultivariateNormal(
            poutine.block(self.bayes_model, hide=["z"]), init_loc_fn=self._init_loc, init_scale=0.01
        )

    def map_guide(self):
        """A new ``AutoDelta`` guide of the Bayesian model: SVI with it finds the MAP (posterior mode)."""
        return AutoDelta(poutine.block(self.bayes_model, hide=["z"]), init_loc_fn=self._init_loc)

    def _init_loc(self, site):
        if site["name"] in self.bayes_init:
            return self.bayes_init[site["name"]].to(site["fn"].sample().dtype).clone()
        return init_to_median(site)


class PyroMixture(BayesianGuides):
    """The classic and Bayesian Pyro models of a K-component Gaussian mixture fitted to X.

    Args:
        X: data [N, D]: its mean and sd centre and scale the Bayesian priors (kept, so minibatches see
            the same prior).
        n_components: K.
        covariance_type: "full", "diag" or "spherical".
        start: (weights [K], means [K, D], covariances) where the classic model's parameters and the
            guides start, e.g. an EM fit (``GaussianMixture.to_pyro`` passes its own).
        prior_concentration: α of the Dirichlet prior on the weights (1: uniform on the simplex).
        prior_scale: s, the prior sd of the means in data sds.
        lkj_concentration: η of the LKJ prior on the correlations ("full", D > 1).

    Attributes:
        start: {"weights", "means", "scale_tril" (full) | "scales"}: the classic model's starting θ.
        bayes_init: {site: value}: the same θ as values of the Bayesian model's latent sites.
    """

    def __init__(
        self,
        X,
        n_components,
        *,
        covariance_type="full",
        start,
        prior_concentration=1.0,
        prior_scale=2.0,
        lkj_concentration=2.0,
    ):
        X = check_matrix(X)
        self.n_components = check_positive("n_components", n_components, integer=True)
        self.covariance_type = check_choice("covariance_type", covariance_type, COVARIANCES)
        self.prior_concentration = check_positive("prior_concentration", prior_concentration)
        self.prior_scale = check_positive("prior_scale", prior_scale)
        self.lkj_concentration = check_positive("lkj_concentration", lkj_concentration)
        self.structure = COVARIANCES[covariance_type]
        self.dim = X.shape[1]
        data = X.double()
        sd = data.std(0) if data.shape[0] > 1 else torch.ones(self.dim, dtype=torch.float64)
        self.data_loc, self.data_sd = data.mean(0), torch.where(sd > 0, sd, torch.ones_like(sd))
        self.start = self._start(start, X)
        self.bayes_init = self._bayes_init()

    def _start(self, start, X):
        weights, means, cov = (torch.as_tensor(v).detach().double() for v in start)
        factor, bad = em.cholesky(cov, self.covariance_type, self.dim)
        if factor is None:
            raise InvalidInputError(
                f"the starting covariance of component {bad} is not positive definite; increase reg_covar"
            )
        name, factor = self.structure.site_factor(factor)
        out = {"weights": weights, "means": means, name: factor}
        return {k: v.to(dtype=X.dtype, device=X.device) for k, v in out.items()}

    def _bayes_init(self):
        s = self.start
        if self.covariance_type != "full":
            return {"weights": s["weights"], "means": s["means"], "scales": s["scales"]}
        out = component_sites(s["weights"], s["means"], s["scale_tril"], "full")
        return {k: v.clone() for k, v in out.items()}

    # -- the classic model ---------------------------------------------------------------------------
    def model(self, X):
        """θ = (π, μ, Σ) as ``pyro.param`` sites; z enumerated.

        Params: "weights" [K] (simplex), "means" [K, D], and "scale_tril" [K, D, D] (full: Cholesky of Σ_k)
        or "scales" [K, D] (diag) / [K] (spherical), starting at ``start``. Sites: "z" [N] in
        ``pyro.plate("data", N)``, "x" observed. The ELBO with z enumerated (``TraceEnum_ELBO``) is the
        exact log-likelihood log p(X; θ).
        """
        weights = pyro.param("weights", lambda: self.start["weights"].clone(), constraint=constraints.simplex)
        means = pyro.param("means", lambda: self.start["means"].clone())
        if self.covariance_type == "full":
            factor = pyro.param(
                "scale_tril", lambda: self.start["scale_tril"].clone(), constraint=constraints.lower_cholesky
            )
        else:
            factor = pyro.param("scales", lambda: self.start["scales"].clone(), constraint=constraints.positive)
        self._observe(X, weights, means, factor)

    def guide(self, X):
        """The classic model's guide: empty (θ are parameters, z is enumerated out by the ELBO)."""

    # -- the Bayesian model -------------------------------------------------------------------------
    def bayes_model(self, X):
        """Priors on π, μ and the covariances; z enumerated.

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
        η = 2 mildly favours weak correlations.
        Latent sites: "weights" [K], "means" [K, D], "scales" [K, D] or [K], "corr_chol" [K, D, D].
        """
        t = lambda v: torch.as_tensor(v, dtype=X.dtype, device=X.device)  # noqa: E731
        K, D = self.n_components, self.dim
        log_sd = t(torch.log(self.data_sd / 2))
        weights = pyro.sample("weights", dist.Dirichlet(t(self.prior_concentration).expand(K)))
        with pyro.plate("components", K):
            means = pyro.sample("means", dist.Normal(t(self.data_loc), t(self.prior_scale * self.data_sd)).to_event(1))
            if self.covariance_type == "spherical":
                scales = pyro.sample("scales", dist.LogNormal(log_sd.mean(), 1.0))
            else:
                scales = pyro.sample("scales", dist.LogNormal(log_sd, 1.0).to_event(1))
            if self.covariance_type == "full":
                scales = scales.unsqueeze(-1)
                if D > 1:
                    scales = scales * pyro.sample("corr_chol", dist.LKJCholesky(D, t(self.lkj_concentration)))
        self._observe(X, weights, means, scales)

    def _observe(self, X, weights, means, factor):
        """z_n ~ Categorical(π) (enumerated), x_n ~ N(μ_z, Σ_z) with Σ_z from ``factor``."""
        with pyro.plate("data", X.shape[0]):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            factor_z = factor[(..., z) + (slice(None),) * self.structure.site_dims]
            pyro.sample("x", self.structure.likelihood(means[..., z, :], factor_z), obs=X)

    def posterior_assignments(self, X, samples=None, temperature=1, seed=0):
        """Draws of the assignments z [S, N] from p(z | x, θ) via ``pyro.infer.infer_discrete``.

        Args:
            X: data [N, D].
            samples: None for θ = ``start`` (one draw, S = 1, from the classic model), or posterior draws of
                the Bayesian model's sites {site: [S, ...]} (e.g. ``fit.samples(S)``): one z per draw.
            temperature: 1 samples z; 0 gives the most probable z.
            seed: seeds the draws.
        """
        from pyro.infer import infer_discrete

        X = check_matrix(X, dtype=self.start["means"].dtype)
        if samples is None:
            draws, model = [None], self.model
        else:
            sizes = {v.shape[0] for v in samples.values()}
            if len(sizes) != 1:
                raise InvalidInputError(f"samples must share their first (draw) dimension, got sizes {sizes}")
            draws = [{k: v[s] for k, v in samples.items()} for s in range(sizes.pop())]
            model = self.bayes_model
        out = []
        with pyro.get_param_store().scope(), seeded(seed):
            for d in draws:
                conditioned = poutine.condition(model, data=d) if d is not None else model
                sampler = infer_discrete(conditioned, first_available_dim=-2, temperature=temperature)
                out.append(poutine.trace(sampler).get_trace(X).nodes["z"]["value"])
        return torch.stack(out)


def component_sites(weights, means, factor, covariance_type):
    """The Bayesian model's sites for a point estimate θ, so that EM and the posteriors compare element by
    element.

    Args:
        weights: π [K].
        means: μ [K, D].
        factor: the Cholesky factor of Σ_k [K, D, D] ("full"), else the sds ([K, D], or [K] "spherical").
        covariance_type: "full", "diag" or "spherical".

    Returns:
        {"weights", "means", "scales" (marginal sds [K, D], or [K] for "spherical"), and for "full" with
        D > 1 "corr_chol" (the Cholesky factor of the correlation matrix)}.
    """
    out = {"weights": weights.detach(), "means": means.detach()}
    if covariance_type == "full":
        out["scales"] = torch.linalg.vector_norm(factor, dim=-1).detach()  # sqrt(diag(L Lᵀ))
        if means.shape[-1] > 1:
            out["corr_chol"] = (factor / out["scales"].unsqueeze(-1)).detach()
    else:
        out["scales"] = factor.detach()
    return out


def log_predictive(X, sites, covariance_type):
    """Mean log pointwise predictive density (1/N) Σ_n log (1/S) Σ_s p(x_n | θ_s).

    Args:
        X: data [N, D].
        sites: draws θ_s {"weights" [S, K], "means" [S, K, D], "scales", optional "corr_chol"} (for one
            point estimate, S = 1: the mean log-likelihood per point).
        covariance_type: "full", "diag" or "spherical".
    """
    X = X.double()
    w, mu, sd = sites["weights"].double(), sites["means"].double(), sites["scales"].double()
    if covariance_type == "full":
        factor = sd.unsqueeze(-1) * sites["corr_chol"].double() if "corr_chol" in sites else torch.diag_embed(sd)
    else:
        factor = sd
    comp = COVARIANCES[covariance_type].likelihood(mu, factor)
    logp = torch.logsumexp(comp.log_prob(X[:, None, None, :]) + torch.log(w), dim=-1)  # [N, S]
    return float((torch.logsumexp(logp, 1) - math.log(logp.shape[1])).mean())
