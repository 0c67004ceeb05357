"""`Fit`: the one result every inference method returns.

A fit knows how to draw from the posterior approximation it learned, how long it took and the loss trace
it followed; ``to_inference_data`` turns it into ArviZ ``InferenceData`` so that fits by different methods
compare in one table (:func:`inference.compare`) and one plot.
"""
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from . import verdict
from .errors import InvalidInputError, check_positive

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor on import
    import arviz as az
import xarray as xr


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

    def __post_init__(self):
        self.losses = np.asarray(self.losses, dtype=float).reshape(-1)

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
            raise InvalidInputError(f"a {self.method} fit has no importance weights to reweight with "
                                    "(point estimates and MCMC draws have none)")
        check_positive("num_proposals", num_proposals, integer=True)
        start = time.perf_counter()
        proposals, log_weights = self.importance(num_proposals, seed)
        smoothed, khat, ess = verdict.psis(log_weights)
        probs = torch.as_tensor(np.exp(smoothed - smoothed.max()))

        def draw(num_samples, seed=0):
            g = torch.Generator().manual_seed(seed)
            idx = torch.multinomial(probs, num_samples, replacement=True, generator=g)
            return {k: v[idx] for k, v in proposals.items()}

        diagnostics = {"khat": khat, "ess": ess, "num_proposals": num_proposals, "reweighted": True}
        verdict.deliver(f"{self.method} (reweighted)", diagnostics,
                        [verdict.khat_reason(khat, "the approximation behind the weights",
                                             reweightable=False)])
        return Fit(method=self.method, losses=self.losses, params=self.params, draw=draw,
                   seconds=self.seconds + time.perf_counter() - start, diagnostics=diagnostics)

    def to_inference_data(self, num_samples=1000, seed=0):
        """ArviZ InferenceData: ``posterior`` with dims (chain, draw, ...), and the loss trace.

        MCMC fits keep their own chains (``num_samples`` is ignored) and their sample_stats; other
        methods contribute one chain of ``num_samples`` fresh draws. The loss trace is the group
        ``loss_trace`` (variable ``loss`` over dim ``step``); method and wall time are attributes.
        """
        if self.chains is not None:
            posterior = {k: _numpy(v) for k, v in self.chains.items()}
        else:
            posterior = {k: _numpy(v)[None] for k, v in self.samples(num_samples, seed).items()}
        stats = {k: np.asarray(v) for k, v in (self.sample_stats or {}).items()}
        attrs = {"inference_method": self.method, "seconds": float(self.seconds)}
        idata = az.from_dict(posterior=posterior, sample_stats=stats or None, attrs=attrs)
        idata.add_groups({"loss_trace": xr.Dataset({"loss": ("step", self.losses)}, attrs=attrs)})
        return idata

    def __repr__(self):
        last = f", final loss {self.losses[-1]:.4g}" if self.losses.size else ""
        return f"Fit(method={self.method!r}, {self.losses.size} steps{last}, {self.seconds:.2f} s)"


def _numpy(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def point_mass_draw(params):
    """``draw`` for a point estimate: every draw is the estimate itself (posterior sd 0).

    Used by EM and variational EM, whose θ are parameters rather than latent variables, so that their
    estimates sit in the same tables and plots as the posteriors of the Bayesian methods.
    """
    params = {k: torch.as_tensor(v).detach() for k, v in params.items()}

    def draw(num_samples, seed):
        return {k: v.expand(num_samples, *v.shape).clone() for k, v in params.items()}
    return draw
