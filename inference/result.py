"""`Fit`: the one result every inference method returns.

A fit knows how to draw from the posterior approximation it learned, how long it took and the loss trace
it followed; ``to_inference_data`` turns it into ArviZ ``InferenceData`` so that fits by different methods
compare in one table (:func:`inference.compare`) and one plot. A fit that keeps its model and data also
gives the pointwise log-likelihood and posterior predictive draws at its posterior draws
(:mod:`inference.predictive`), so that ``az.loo``, ``az.waic``, ``az.compare`` and ``az.plot_ppc`` apply to
every method.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import xarray as xr

from . import predictive, verdict
from .common import az, generator, to_numpy
from .errors import InvalidInputError, check_positive


@dataclass(eq=False)
class Fit:
    """The result of one inference run.

    Attributes:
        method: "svi", "variational_em", "laplace", "nuts" or "em".
        losses: 1-D array, the loss (negative ELBO, or negative log-likelihood for EM) per step;
            empty for NUTS.
        seconds: wall time of the fit.
        params: learned parameters and point estimates, name -> tensor (e.g. the param store of an SVI
            fit, the MAP of a Laplace fit).
        diagnostics: method-specific extras (Hessian, divergences, stopping step, ...) and the verdict:
            "converged" (whether the fit can be trusted), "warnings" (why not), "khat".
        draw: ``draw(num_samples, seed) -> {site: tensor [num_samples, *site_shape]}``, the posterior
            (approximation) of the latent sites.
        importance: optional ``importance(num_samples, seed) -> (draws, log_weights)``: draws z ~ q as
            ``draw`` gives them and, for each, log p(x, z) - log q(z) (array [num_samples]), for PSIS
            k-hat and reweighted draws; None where it cannot be computed (point estimates, MCMC).
        chains: for MCMC, the draws themselves, site -> tensor [chain, draw, *site_shape].
        sample_stats: for MCMC, per-draw statistics, name -> array [chain, draw] (e.g. "diverging").
        model: the Pyro model the fit is of, or None (a fit built by hand).
        data: tuple, the model's positional arguments (the full data set, also for minibatch fits).

    Every method that builds a Fit (svi, laplace, nuts, variational_em, pathfinder, ...) passes
    ``model=model, data=data``, and puts the model's ``pyro.param`` values (constrained) in ``params``
    where the model has any; ``draw`` gives every continuous latent site of the model (discrete
    enumerable sites it leaves out are summed out). ``to_inference_data`` then adds the log_likelihood,
    posterior_predictive and observed_data groups.
    """

    method: str
    losses: np.ndarray
    seconds: float
    draw: Callable[[int, int], dict]
    params: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    importance: Optional[Callable[[int, int], tuple]] = None
    chains: Optional[dict] = None
    sample_stats: Optional[dict] = None
    model: Optional[Callable] = None
    data: tuple = ()

    def __post_init__(self):
        self.losses = np.asarray(self.losses, dtype=float).reshape(-1)
        self.data = tuple(self.data)

    def samples(self, num_samples=1000, seed=0, reweight=False):
        """Draw ``num_samples`` posterior samples: dict site -> tensor [num_samples, *site_shape].

        With ``reweight=True``, the draws of :meth:`reweighted` (PSIS-resampled; Laplace and SVI fits).
        """
        check_positive("num_samples", num_samples, integer=True)
        fit = self.reweighted(seed=seed) if reweight else self
        return {k: v.detach() for k, v in fit.draw(num_samples, seed).items()}

    def log_weights(self, num_samples=1000, seed=0):
        """log p(x, z) - log q(z) at ``num_samples`` draws z ~ q (array), or None without ``importance``."""
        return None if self.importance is None else self.importance(num_samples, seed)[1]

    def reweighted(self, num_proposals=4000, seed=0):
        """This fit with its draws corrected by Pareto-smoothed importance sampling.

        ``num_proposals`` draws z_s ~ q get weights w_s ∝ p(x, z_s) / q(z_s), smoothed by fitting a
        generalised Pareto distribution to the largest (ArviZ's ``psislw``); the new fit's draws are
        resampled from the proposals with probabilities w_s (with replacement). Its diagnostics hold
        "khat" (above 0.7 the correction cannot be trusted either: ConvergenceWarning) and "ess" (the
        weights' effective sample size, 1 / Σ w_s²); ``seconds`` adds the time of the correction.

        Args:
            num_proposals: draws from q that are weighted and resampled.
            seed: seeds the proposals; each ``draw(n, seed)`` of the result resamples with its own seed.
        """
        if self.importance is None:
            raise InvalidInputError(
                f"a {self.method} fit has no importance weights to reweight with "
                "(point estimates and MCMC draws have none)"
            )
        check_positive("num_proposals", num_proposals, integer=True)
        start = time.perf_counter()
        proposals, log_weights = self.importance(num_proposals, seed)
        smoothed, khat, ess = verdict.psis(log_weights)
        probs = torch.as_tensor(np.exp(smoothed - smoothed.max()))

        def draw(num_samples, seed=0):
            g = generator(seed)
            idx = torch.multinomial(probs, num_samples, replacement=True, generator=g)
            return {k: v[idx] for k, v in proposals.items()}

        diagnostics = {"khat": khat, "ess": ess, "num_proposals": num_proposals, "reweighted": True}
        verdict.deliver(
            f"{self.method} (reweighted)",
            diagnostics,
            [verdict.khat_reason(khat, "the approximation behind the weights", reweightable=False)],
        )
        return Fit(
            method=self.method,
            losses=self.losses,
            params=self.params,
            draw=draw,
            seconds=self.seconds + time.perf_counter() - start,
            diagnostics=diagnostics,
            model=self.model,
            data=self.data,
        )

    def to_inference_data(
        self, num_samples=1000, seed=0, *, log_likelihood=True, posterior_predictive=True, progress=None
    ):
        """ArviZ InferenceData of the fit, for ``az.summary``, ``az.loo``, ``az.compare``, ``az.plot_ppc``.

        Groups (dims after chain and draw; a site's value dims are named after its plates, e.g. "data",
        else "<site>_dim_<i>" as ArviZ names them):

        - ``posterior``: each latent site [chain, draw, *site_shape]. MCMC fits keep their own chains
          (``num_samples`` is ignored); other methods give one chain of ``num_samples`` fresh draws.
        - ``sample_stats``: MCMC's per-draw statistics.
        - ``log_likelihood``: each observed site's pointwise log p(x_i | θ) at each posterior draw,
          [chain, draw, *batch_shape] (one value per plate element; event dims summed; discrete sites the
          model enumerates summed out per observation; no minibatch scale).
        - ``posterior_predictive``: each observed site replicated, x_rep ~ p(x | θ) per draw,
          [chain, draw, *value_shape].
        - ``observed_data``: each observed site's value; ``constant_data``: the model's other tensor
          arguments, named as in its signature (e.g. covariates).
        - ``loss_trace``: variable ``loss`` over dim ``step``; method and wall time are attributes.

        The groups of the model are there only when the fit keeps its model and data (every method of
        this package does; a Fit built by hand without ``model`` has posterior, sample_stats and
        loss_trace only) and the model has observed sites (``pyro.factor`` terms are not observations).
        Where they cannot be computed (a latent site the fit does not draw, an observed
        site whose observations are not independent given the draws) they are left out with a warning.
        With several observed sites, ``az.loo`` needs ``var_name``.

        Args:
            num_samples: draws of a non-MCMC fit.
            seed: seeds those draws and the replicated data.
            log_likelihood: compute the log_likelihood group.
            posterior_predictive: compute the posterior_predictive group (both False: the model is not
                replayed, and observed_data and constant_data are left out too).
            progress: a tqdm bar where the model must be replayed one draw at a time (None: on a
                terminal only).

        Returns:
            arviz.InferenceData.

        Raises:
            InvalidInputError: num_samples not a positive integer, or the switches not True/False.
        """
        for name, value in (("log_likelihood", log_likelihood), ("posterior_predictive", posterior_predictive)):
            if not isinstance(value, bool):
                raise InvalidInputError(f"{name} must be True or False, got {value!r}")
        if self.chains is not None:
            draws = {k: torch.as_tensor(v) for k, v in self.chains.items()}
        else:
            draws = {k: v[None] for k, v in self.samples(num_samples, seed).items()}
        shape = tuple(next(iter(draws.values())).shape[:2]) if draws else (1, num_samples)
        posterior = {k: to_numpy(v) for k, v in draws.items()}
        stats = {k: np.asarray(v) for k, v in (self.sample_stats or {}).items()}
        attrs = {"inference_method": self.method, "seconds": float(self.seconds)}
        groups, dims = {}, None
        if self.model is not None and (log_likelihood or posterior_predictive):
            flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in draws.items()}
            groups, dims = predictive.inference_groups(
                self.model,
                self.data,
                flat,
                self.params,
                shape,
                log_likelihood=log_likelihood,
                posterior_predictive=posterior_predictive,
                seed=seed,
                progress=progress,
            )
        idata = az.from_dict(posterior=posterior, sample_stats=stats or None, dims=dims, attrs=attrs, **groups)
        idata.add_groups({"loss_trace": xr.Dataset({"loss": ("step", self.losses)}, attrs=attrs)})
        return idata

    def __repr__(self):
        last = f", final loss {self.losses[-1]:.4g}" if self.losses.size else ""
        return f"Fit(method={self.method!r}, {self.losses.size} steps{last}, {self.seconds:.2f} s)"


def point_mass_draw(params):
    """``draw`` for a point estimate: every draw is the estimate itself (posterior sd 0).

    Used by EM and variational EM, whose θ are parameters rather than latent variables, so that their
    estimates sit in the same tables and plots as the posteriors of the Bayesian methods.
    """
    params = {k: torch.as_tensor(v).detach() for k, v in params.items()}

    def draw(num_samples, seed):
        return {k: v.expand(num_samples, *v.shape).clone() for k, v in params.items()}

    return draw
