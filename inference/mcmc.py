"""NUTS: Pyro's No-U-Turn sampler, the reference posterior every approximation is compared to.

Chains run one after another in this process (chain c seeded with ``seed + c``), which is reproducible
and avoids worker processes. The draws keep their chain structure, so ArviZ's R-hat and ESS apply, and
divergent transitions travel with the draws as ``sample_stats["diverging"]``.
"""
import logging
import sys
import time
import warnings

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_uniform, init_to_value

from . import verdict
from .errors import MODEL_ERRORS, InvalidInputError, check_data, check_positive, model_error
from .init import improper_priors_start_at_zero
from .result import Fit

RHAT_LIMIT = 1.01      # Vehtari et al. (2021): split R-hat above it, the chains disagree
ESS_PER_CHAIN = 100    # ... and fewer bulk effective draws than this per chain are too few to trust

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor on import
    import arviz as az


def nuts(model, *data, num_samples=1000, warmup_steps=500, num_chains=1, seed=0, target_accept_prob=0.8,
         max_tree_depth=10, max_plate_nesting=None, progress=None, init=None, dense_mass=False):
    """Sample the posterior of ``model(*data)`` with NUTS.

    Args:
        model: a Pyro model; discrete sites with enumerable support are summed out (give
            ``max_plate_nesting`` if the model has them inside plates).
        *data: the model's positional arguments (tensors are checked for NaN).
        num_samples, warmup_steps: draws kept and adaptation steps, per chain.
        num_chains: chains, run in sequence, chain c seeded with ``seed + c``.
        target_accept_prob, max_tree_depth: NUTS settings (Hoffman & Gelman 2014).
        progress: show Pyro's progress bar (default: when stderr is a terminal).
        init: optional ``{site: constrained value}`` starting point (else uniform in (-2, 2) on the
            unconstrained space, Pyro's default; improper priors included), or "laplace": start every
            chain at the Laplace fit's mode with its covariance H⁻¹ as the first inverse mass matrix
            (dense or the diagonal), so that warm-up begins already scaled to the posterior; the
            windowed adaptation then goes on from there.
        dense_mass: adapt a dense mass matrix (for strongly correlated posteriors) instead of a diagonal.

    Returns:
        Fit with method "nuts": ``chains`` site -> tensor [chain, draw, *shape]; ``sample_stats``
        "diverging", "step_size", "acceptance_rate" and "lp" (log density on the unconstrained
        space), each [chain, draw]; ``diagnostics`` "r_hat" and "ess_bulk" (ArviZ, site -> array of
        the site's shape), "num_divergences", "step_size" per chain; ``draw(n, seed)`` resamples the
        pooled chains (without replacement while n <= total). ``losses`` is empty. The verdict in
        ``diagnostics``: "converged", "warnings", "khat" (NaN: the draws are the posterior's own).

    Warns:
        ConvergenceWarning on divergent transitions, split R-hat > 1.01 with several chains, or a bulk
        ESS below 100 per chain.
    """
    for name, value in [("num_samples", num_samples), ("num_chains", num_chains),
                        ("max_tree_depth", max_tree_depth)]:
        check_positive(name, value, integer=True)
    check_positive("warmup_steps", warmup_steps, integer=True, allow_zero=True)
    if not 0 < target_accept_prob < 1:
        raise InvalidInputError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob!r}")
    check_data(data)
    if init is not None and not isinstance(init, dict) and init != "laplace":
        raise InvalidInputError(f"init must be a dict {{site: constrained value}} or 'laplace', got {init!r}")
    disable_progbar = (not sys.stderr.isatty()) if progress is None else not progress
    covariance = None
    if init == "laplace":
        from .laplace import laplace
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", verdict.ConvergenceWarning)   # only its mode and curvature serve
            start_fit = laplace(model, *data, max_plate_nesting=max_plate_nesting, seed=seed, check=False)
        init, covariance = start_fit.params, (start_fit.diagnostics["covariance"],
                                              start_fit.diagnostics["sites"])
    values = {k: torch.as_tensor(v, dtype=torch.get_default_dtype()) for k, v in (init or {}).items()}
    strategy = init_to_value(values=values) if values else init_to_uniform

    start = time.perf_counter()
    chains, stats, step_sizes = [], [], []
    for c in range(num_chains):
        pyro.set_rng_seed(seed + c)
        kernel = _NUTS(model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
                       max_plate_nesting=max_plate_nesting, init_strategy=strategy, full_mass=dense_mass)
        kernel.initial_covariance = covariance
        record = _StatsRecorder()
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1,
                    disable_progbar=disable_progbar, hook_fn=record)
        try:
            with improper_priors_start_at_zero():
                mcmc.run(*data)
        except MODEL_ERRORS as e:  # a value outside a support, no finite start point, a shape mismatch
            raise model_error(e, "in nuts") from None
        samples = mcmc.get_samples(group_by_chain=True)
        chains.append(samples)
        diverging = np.zeros(num_samples, dtype=bool)
        diverging[np.asarray(mcmc.diagnostics()["divergences"]["chain 0"], dtype=int)] = True
        stats.append({"diverging": diverging, **record.arrays()})
        step_sizes.append(float(stats[-1]["step_size"][-1]))
    seconds = time.perf_counter() - start

    chains = {k: torch.cat([s[k] for s in chains]).detach() for k in chains[0]}
    sample_stats = {k: np.stack([s[k] for s in stats]) for k in stats[0]}
    arviz_log = getattr(az, "_log", None) or logging.getLogger("arviz")  # arviz keeps its own Logger
    level = arviz_log.level
    arviz_log.setLevel(logging.ERROR)  # split R-hat of one chain is fine; arviz warns it wants two
    try:
        idata = az.from_dict(posterior={k: v.numpy() for k, v in chains.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # R-hat of a constant site divides by zero
            r_hat, ess = az.rhat(idata), az.ess(idata)
    finally:
        arviz_log.setLevel(level)
    diagnostics = {
        "r_hat": {k: r_hat[k].values for k in chains}, "ess_bulk": {k: ess[k].values for k in chains},
        "num_divergences": int(sample_stats["diverging"].sum()), "step_size": step_sizes,
        "num_chains": num_chains, "num_samples": num_samples, "warmup_steps": warmup_steps,
        "khat": np.nan,
    }
    verdict.deliver("nuts", diagnostics, _reasons(diagnostics), stacklevel=2)
    total = num_chains * num_samples
    pooled = {k: v.reshape(total, *v.shape[2:]) for k, v in chains.items()}

    def draw(n, seed=0):
        g = torch.Generator().manual_seed(seed)
        if n <= total:
            idx = torch.randperm(total, generator=g)[:n]
        else:
            idx = torch.randint(total, (n,), generator=g)
        return {k: v[idx] for k, v in pooled.items()}

    return Fit(method="nuts", losses=np.zeros(0), seconds=seconds, draw=draw, diagnostics=diagnostics,
               chains=chains, sample_stats=sample_stats)


def _reasons(d):
    """What makes a NUTS run untrustworthy: divergences, disagreeing chains, too few effective draws."""
    reasons = []
    if d["num_divergences"]:
        reasons.append(f"{d['num_divergences']} divergent transitions: the sampler cannot reach part of the "
                       "posterior (raise target_accept_prob, or reparametrise the model)")
    # NaN: R-hat and ESS of a constant element (a site fixed by its support) are undefined, not bad
    worst_rhat = max((np.nanmax(v) for v in d["r_hat"].values() if np.isfinite(v).any()), default=np.nan)
    if d["num_chains"] > 1 and worst_rhat > RHAT_LIMIT:
        reasons.append(f"R-hat = {worst_rhat:.3f} > {RHAT_LIMIT}: the chains disagree (run them longer)")
    least_ess = min((np.nanmin(v) for v in d["ess_bulk"].values() if np.isfinite(v).any()), default=np.nan)
    if least_ess < ESS_PER_CHAIN * d["num_chains"]:
        reasons.append(f"bulk ESS = {least_ess:.0f} < {ESS_PER_CHAIN} per chain: too few effective draws "
                       "(more num_samples, or dense_mass=True for a correlated posterior)")
    return reasons


class _NUTS(NUTS):
    """Pyro's NUTS whose first inverse mass matrix may be given: ``initial_covariance`` = (H⁻¹ [d, d],
    {site: slice of the flat vector}) from a Laplace fit on the same unconstrained space. (Pyro has no
    public way to set it: this overrides the adapter's set-up, the one place that touches it.)"""

    initial_covariance = None

    def _initialize_adapter(self):
        super()._initialize_adapter()
        if self.initial_covariance is None:
            return
        cov, sites = self.initial_covariance
        adapter = self.mass_matrix_adapter
        blocks = {}
        for names, current in adapter.inverse_mass_matrix.items():
            index = torch.cat([torch.arange(sites[n].start, sites[n].stop) for n in names])
            block = cov[index][:, index].to(current)
            blocks[names] = block if current.dim() == 2 else block.diagonal().clone()
        adapter.inverse_mass_matrix = blocks
        if self._adapter.adapt_step_size:   # the step size found for the identity no longer fits
            self._adapter.reset_step_size_adaptation(self._initial_params)


class _StatsRecorder:
    """MCMC hook that keeps per-draw step size, acceptance probability and log density."""

    def __init__(self):
        self.step_size, self.accept, self.lp = [], [], []
        self._last_mean = 0.0

    def __call__(self, kernel, params, stage, i):
        if not params:
            raise InvalidInputError("the model has no continuous latent sample sites: "
                                    "nothing for nuts to sample")
        if not stage.startswith("Sample"):
            return
        # the kernel keeps a running mean of the acceptance probability over the draws so far
        n = len(self.accept) + 1
        mean = kernel._mean_accept_prob
        self.accept.append(n * mean - (n - 1) * self._last_mean)
        self._last_mean = mean
        self.step_size.append(float(kernel.step_size))
        self.lp.append(-float(kernel._potential_energy_last))

    def arrays(self):
        return {"step_size": np.asarray(self.step_size), "acceptance_rate": np.asarray(self.accept),
                "lp": np.asarray(self.lp)}
