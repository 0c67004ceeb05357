"""NUTS: the No-U-Turn sampler, the reference posterior every approximation is compared to.

The sampler is Stan's (and Pyro's and NumPyro's) algorithm, written out here on one flat unconstrained
vector z so that the only per-step cost is the model's potential U(z) and its gradient, which
:class:`inference.potential.FlatPotential` captures once as a compiled graph (Pyro's own NUTS spends most
of its time in Python bookkeeping per leapfrog step: tracing the model, dicts of tensors, adapters).

The sampler itself (Hamiltonian, trajectories, warm-up) is :mod:`inference.nuts_sampler`; this module
sets it up on a model, runs the chains and judges them.

Chains: chain c is seeded with ``seed + c`` (its starting point through Pyro's RNG, its momenta and
uniform draws through NumPy's), so a chain's draws depend on its seed alone: several chains run in
parallel worker processes (fork) give the same draws as run one after another, and R-hat across them is
meaningful. Each chain runs on one torch thread. The draws keep their chain structure, so ArviZ's R-hat
and ESS apply, and divergent transitions travel with the draws as ``sample_stats["diverging"]``.
"""

import functools
import logging
import multiprocessing
import time
import warnings

import numpy as np
import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_uniform, init_to_value
from pyro.infer.mcmc.util import initialize_model
from tqdm import tqdm

from . import verdict
from .common import az, cpu_count, hide_progress, resample
from .errors import MODEL_ERRORS, InvalidInputError, check_choice, check_data, check_positive, model_error
from .init import improper_priors_start_at_zero
from .nuts_sampler import Sampler
from .potential import FlatPotential
from .result import Fit

RHAT_LIMIT = 1.01  # Vehtari et al. (2021): split R-hat above it, the chains disagree
ESS_PER_CHAIN = 100  # ... and fewer bulk effective draws than this per chain are too few to trust


def nuts(
    model,
    *data,
    num_samples=1000,
    warmup_steps=500,
    num_chains=1,
    seed=0,
    target_accept_prob=0.8,
    max_tree_depth=10,
    max_plate_nesting=None,
    progress=None,
    init=None,
    dense_mass=False,
    chain_method="parallel",
    compile=True,
    background=False,
):
    """Sample the posterior of ``model(*data)`` with NUTS.

    Args:
        model: a Pyro model; discrete sites with enumerable support are summed out (give
            ``max_plate_nesting`` if the model has them inside plates).
        *data: the model's positional arguments (tensors are checked for NaN).
        num_samples: draws kept per chain.
        warmup_steps: adaptation steps per chain (discarded).
        num_chains: chains; chain c is seeded with ``seed + c``.
        seed: seeds chain 0 (starting point, momenta, uniform draws).
        target_accept_prob: the mean acceptance statistic step-size adaptation aims at.
        max_tree_depth: at most 2^max_tree_depth leapfrog steps per draw (Hoffman & Gelman 2014).
        max_plate_nesting: for models with enumerated discrete sites inside plates (else inferred).
        progress: show a progress bar (default: when stderr is a terminal).
        init: optional ``{site: constrained value}`` starting point (else uniform in (-2, 2) on the
            unconstrained space, Pyro's default; improper priors included), or "laplace": start every
            chain at the Laplace fit's mode with its covariance H⁻¹ as the first inverse mass matrix
            (dense or the diagonal), so that warm-up begins already scaled to the posterior; the
            windowed adaptation then goes on from there.
        dense_mass: adapt a dense mass matrix (for strongly correlated posteriors) instead of a diagonal.
        chain_method: "parallel" runs the chains in worker processes, as many at once as there are CPU
            cores (where the platform can fork; else in sequence); "sequential" one after another in this
            process. The draws are the same either way.
        compile: capture the potential and its gradient as one compiled graph (see
            :mod:`inference.potential`; it falls back to Pyro's potential where it cannot apply); False
            evaluates Pyro's potential at every step (for models whose Python control flow depends on
            the latent values).
        background: start the chains in worker processes and return at once a :class:`PendingFit`,
            whose ``result()`` waits for them and gives the Fit, so the caller can fit other methods
            meanwhile (where the platform can fork; else the chains run now). No progress bar.

    Returns:
        Fit with method "nuts": ``chains`` site -> tensor [chain, draw, *shape]; ``sample_stats``
        "diverging", "step_size", "acceptance_rate", "lp" (log density on the unconstrained
        space), "tree_depth" and "n_steps" (leapfrog steps), each [chain, draw]; ``diagnostics`` "r_hat"
        and "ess_bulk" (ArviZ, site -> array of the site's shape), "num_divergences", "step_size" per
        chain, "potential" ("compiled" or "pyro") and "potential_note" (why not compiled, else ""),
        "chain_method" (how the chains actually ran); ``draw(n, seed)`` resamples the pooled chains
        (without replacement while n <= total). ``losses`` is empty. The verdict in ``diagnostics``:
        "converged", "warnings", "khat" (NaN: the draws are the posterior's own).

    Raises:
        InvalidInputError: a bad setting, NaN data, a model without continuous latent sites, or a model
            that fails to run (the message keeps Pyro's, which names the site).

    Warns:
        ConvergenceWarning on divergent transitions, split R-hat > 1.01 with several chains, or a bulk
        ESS below 100 per chain.
    """
    for name, value in [("num_samples", num_samples), ("num_chains", num_chains), ("max_tree_depth", max_tree_depth)]:
        check_positive(name, value, integer=True)
    check_positive("warmup_steps", warmup_steps, integer=True, allow_zero=True)
    if not 0 < target_accept_prob < 1:
        raise InvalidInputError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob!r}")
    check_choice("chain_method", chain_method, {"parallel", "sequential"})
    check_data(data)
    if init is not None and not isinstance(init, dict) and init != "laplace":
        raise InvalidInputError(f"init must be a dict {{site: constrained value}} or 'laplace', got {init!r}")
    covariance = None
    if init == "laplace":
        from .laplace import laplace

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", verdict.ConvergenceWarning)  # only its mode and curvature serve
            start_fit = laplace(model, *data, max_plate_nesting=max_plate_nesting, seed=seed, check=False)
        init, covariance = start_fit.params, (start_fit.diagnostics["covariance"], start_fit.diagnostics["sites"])
    values = {k: torch.as_tensor(v, dtype=torch.get_default_dtype()) for k, v in (init or {}).items()}
    strategy = init_to_value(values=values) if values else init_to_uniform

    start = time.perf_counter()
    data = tuple(a.detach() if torch.is_tensor(a) else a for a in data)
    processes = min(num_chains, cpu_count()) if chain_method == "parallel" else 1
    if processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        processes = 1  # spawn would have to pickle the compiled graph and the model
    # blocked, as in Pyro's MCMC.run: handlers around the call do not see the model's runs in here
    with pyro.poutine.block():
        potential, starts = _set_up(model, data, num_chains, seed, strategy, max_plate_nesting, compile)
        inverse_metric = None if covariance is None else _laplace_metric(covariance, potential, dense_mass)
        sampler = Sampler(potential, target_accept_prob, max_tree_depth, dense_mass, inverse_metric)
        jobs = [(starts[c], seed + c) for c in range(num_chains)]
        if background and "fork" in multiprocessing.get_all_start_methods():
            pending = _start_chains(sampler, jobs, warmup_steps, num_samples, max(processes, 1))
            return PendingFit(
                lambda: _fit(
                    pending.get(),
                    potential,
                    num_chains,
                    num_samples,
                    warmup_steps,
                    f"background ({max(processes, 1)} processes)",
                    time.perf_counter() - start,
                    model,
                    data,
                ),
                pending,
            )
        with tqdm(
            total=num_chains * (warmup_steps + num_samples), disable=hide_progress(progress), desc="nuts", leave=False
        ) as bar:
            try:
                runs = _run_chains(sampler, jobs, warmup_steps, num_samples, processes, bar)
            except MODEL_ERRORS as e:  # Pyro's potential failing at a point reached while sampling
                raise model_error(e, "in nuts") from None
    fit = _fit(
        runs,
        potential,
        num_chains,
        num_samples,
        warmup_steps,
        f"parallel ({processes} processes)" if processes > 1 else "sequential",
        time.perf_counter() - start,
        model,
        data,
    )
    return PendingFit(lambda: fit, None) if background else fit


class PendingFit:
    """NUTS chains running in worker processes (``nuts(..., background=True)``): ``result()`` waits for
    them and returns the Fit (its ``seconds`` run from the start to the end of the wait)."""

    def __init__(self, finish, pending):
        self._finish, self._pending, self._fit = finish, pending, None

    def result(self):
        if self._fit is None:
            try:
                self._fit = self._finish()
            except MODEL_ERRORS as e:  # Pyro's potential failing at a point reached while sampling
                raise model_error(e, "in nuts") from None
            finally:
                if self._pending is not None:
                    self._pending.close()
        return self._fit


def _fit(runs, potential, num_chains, num_samples, warmup_steps, chain_method, seconds, model=None, data=()):
    """The Fit of finished chains: draws constrained, ArviZ's R-hat and ESS, the verdict."""
    z = torch.from_numpy(np.stack([r.pop("z") for r in runs])).to(potential.dtype)  # [chain, draw, d]
    chains = {k: v.detach() for k, v in potential.constrain(z).items()}
    sample_stats = {k: np.stack([r[k] for r in runs]) for k in runs[0] if k != "final_step_size"}
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
        "r_hat": {k: r_hat[k].values for k in chains},
        "ess_bulk": {k: ess[k].values for k in chains},
        "num_divergences": int(sample_stats["diverging"].sum()),
        "step_size": [r["final_step_size"] for r in runs],
        "num_chains": num_chains,
        "num_samples": num_samples,
        "warmup_steps": warmup_steps,
        "khat": np.nan,
        "potential": "compiled" if potential.compiled else "pyro",
        "potential_note": potential.note,
        "chain_method": chain_method,
    }
    verdict.deliver("nuts", diagnostics, _reasons(diagnostics), stacklevel=3)
    total = num_chains * num_samples
    pooled = {k: v.reshape(total, *v.shape[2:]) for k, v in chains.items()}
    return Fit(
        method="nuts",
        losses=np.zeros(0),
        seconds=seconds,
        draw=functools.partial(resample, pooled),
        diagnostics=diagnostics,
        chains=chains,
        sample_stats=sample_stats,
        model=model,
        data=data,
    )


def _reasons(d):
    """What makes a NUTS run untrustworthy: divergences, disagreeing chains, too few effective draws."""
    reasons = []
    if d["num_divergences"]:
        reasons.append(
            f"{d['num_divergences']} divergent transitions: the sampler cannot reach part of the "
            "posterior (raise target_accept_prob, or reparametrise the model)"
        )
    # NaN: R-hat and ESS of a constant element (a site fixed by its support) are undefined, not bad
    worst_rhat = max((np.nanmax(v) for v in d["r_hat"].values() if np.isfinite(v).any()), default=np.nan)
    if d["num_chains"] > 1 and worst_rhat > RHAT_LIMIT:
        reasons.append(f"R-hat = {worst_rhat:.3f} > {RHAT_LIMIT}: the chains disagree (run them longer)")
    least_ess = min((np.nanmin(v) for v in d["ess_bulk"].values() if np.isfinite(v).any()), default=np.nan)
    if least_ess < ESS_PER_CHAIN * d["num_chains"]:
        reasons.append(
            f"bulk ESS = {least_ess:.0f} < {ESS_PER_CHAIN} per chain: too few effective draws "
            "(more num_samples, or dense_mass=True for a correlated posterior)"
        )
    return reasons


def _set_up(model, data, num_chains, seed, strategy, max_plate_nesting, compile):
    """The flat potential (compiled once) and each chain's starting point z [d] (numpy float64), drawn by
    Pyro's initialisation (up to 100 tries for a finite potential) under seed + c."""
    starts = []
    # Pyro's MCMC runs without validation too: a leapfrog step may reach a point where a check fails
    # (a scale that underflows to 0), which is an infinite energy, not a user error
    with improper_priors_start_at_zero(), pyro.validation_enabled(False):
        for c in range(num_chains):
            pyro.set_rng_seed(seed + c)
            try:
                params, potential_fn, transforms, trace = initialize_model(
                    model, data, max_plate_nesting=max_plate_nesting, init_strategy=strategy
                )
            except MODEL_ERRORS as e:  # a value outside a support, no finite start point, a shape mismatch
                raise model_error(e, "in nuts") from None
            if not params:
                raise InvalidInputError("the model has no continuous latent sample sites: nothing for nuts to sample")
            if c == 0:
                order = [n for n in trace.nodes if n in params]
                potential = FlatPotential(potential_fn, transforms, params, order, compile=compile)
            starts.append(potential.flatten(params).to(torch.float64).numpy())
    return potential, starts


def _laplace_metric(covariance, potential, dense):
    """The Laplace covariance H⁻¹ (over its own flat layout, ``sites``) in the potential's layout, as the
    first inverse mass matrix: dense, or its diagonal."""
    cov, sites = covariance
    index = torch.cat([torch.arange(sites[n].start, sites[n].stop) for n in potential.names])
    cov = cov[index][:, index].double().numpy()
    return cov if dense else np.diag(cov).copy()


# ---- running chains ----------------------------------------------------------------------------------
_FORKED = {}  # what forked workers inherit: the sampler and the jobs (the compiled graph is not picklable)


def _run_chains(sampler, jobs, warmup, num_samples, processes, bar):
    """Run each job (start z, seed) for warm-up + draws; a list of per-chain results in job order."""
    if processes == 1:
        results = []
        with _one_thread():
            for z0, seed in jobs:
                results.append(sampler.run(z0, warmup, num_samples, seed, bar.update))
        return results
    context = multiprocessing.get_context("fork")
    counter = context.Value("l", 0)
    _FORKED.update(sampler=sampler, jobs=jobs, warmup=warmup, num_samples=num_samples, counter=counter)
    try:
        with context.Pool(processes) as pool:
            pending = pool.map_async(_forked_chain, range(len(jobs)))
            while not pending.ready():  # the bar follows the workers' shared step counter
                pending.wait(0.2)
                bar.update(counter.value - bar.n)
            results = pending.get()
    finally:
        _FORKED.clear()
    bar.update(counter.value - bar.n)
    return results


class _Started:
    """Chains started in a pool of forked workers: ``get()`` waits for their results, ``close()``."""

    def __init__(self, pool, pending):
        self.pool, self.pending = pool, pending

    def get(self):
        return self.pending.get()

    def close(self):
        self.pool.close()
        self.pool.join()


def _start_chains(sampler, jobs, warmup, num_samples, processes):
    """Start every job in forked workers now; the workers take what they need at the fork."""
    context = multiprocessing.get_context("fork")
    _FORKED.update(sampler=sampler, jobs=jobs, warmup=warmup, num_samples=num_samples, counter=context.Value("l", 0))
    try:
        pool = context.Pool(processes)
    finally:
        _FORKED.clear()
    return _Started(pool, pool.map_async(_forked_chain, range(len(jobs))))


def _forked_chain(c):
    """One chain in a forked worker: one torch thread (the models are small; threads would only compete
    with the other chains for the cores)."""
    torch.set_num_threads(1)
    s = _FORKED
    counter = s["counter"]

    def tick(n=1):
        with counter.get_lock():
            counter.value += n

    z0, seed = s["jobs"][c]
    with pyro.validation_enabled(False):
        return s["sampler"].run(z0, s["warmup"], s["num_samples"], seed, tick)


class _one_thread:
    """One torch thread while the chains run here, as in the workers, so the draws do not depend on
    ``chain_method`` (reductions split over threads round differently); restores the setting after."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.validation = pyro.validation_enabled(False)
        self.validation.__enter__()

    def __exit__(self, *exc):
        self.validation.__exit__(*exc)
        torch.set_num_threads(self.threads)
