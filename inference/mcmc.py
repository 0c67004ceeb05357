"""NUTS: the No-U-Turn sampler, the reference posterior every approximation is compared to.

The sampler is Stan's (and Pyro's and NumPyro's) algorithm, written out here on one flat unconstrained
vector z so that the only per-step cost is the model's potential U(z) and its gradient, which
:class:`inference.potential.FlatPotential` captures once as a compiled graph (Pyro's own NUTS spends most
of its time in Python bookkeeping per leapfrog step: tracing the model, dicts of tensors, adapters).

Hamiltonian: H(z, p) = U(z) + ½ pᵀ M⁻¹ p with momentum p ~ N(0, M) and inverse mass matrix ("metric")
M⁻¹, diagonal or dense. One transition (Hoffman & Gelman 2014; multinomial variant, Betancourt 2017):

1. draw p; the trajectory is the single point (z, p); its weight is w = exp(-H).
2. Double the trajectory in a random direction (forward or backward in time) by a subtree of 2^depth
   leapfrog steps of size ε, built recursively from two halves. Within a subtree the proposal is drawn
   among its points in proportion to exp(-H) (progressive multinomial sampling: the later half's
   proposal replaces the earlier's with probability W_later / W_subtree); at the top the new subtree's
   proposal replaces the current one with probability min(1, W_new / W_old) (biased progressive
   sampling, which favours moving far).
3. Stop when the trajectory makes a U-turn, the generalised criterion on p♯ = M⁻¹p at its two ends and
   ρ = Σ p over it: p♯₋·ρ <= 0 or p♯₊·ρ <= 0; checked on every merged subtree, and, as Stan does since
   2.26, also across the two halves extended by one point each; or when a leapfrog step's energy error
   H - H₀ exceeds 1000 (a divergence: the subtree is discarded); or at ``max_tree_depth`` doublings.
   A subtree that turns or diverges is not sampled from.

Warm-up (Stan's windowed adaptation): ε by dual averaging (Nesterov 2009; γ = 0.05, t₀ = 10, κ = 0.75)
toward the target mean acceptance statistic, the mean over the trajectory's points of
min(1, exp(H₀ - H)); M⁻¹ from the draws of "slow" windows (after an initial buffer of 75 steps, windows
of 25, 50, 100, ... steps, the last stretched to the terminal buffer of 50): their variance (or
covariance) shrunk toward 10⁻³ as (n / (n + 5)) Σ̂ + 10⁻³ (5 / (n + 5)) I; after each window ε is found
anew (doubled or halved until one step's acceptance crosses 0.8) and dual averaging restarts from
μ = log(10 ε). At the end of warm-up ε = exp(x̄), the dual-averaging average, and stays fixed. With fewer
than 20 warm-up steps only ε adapts; the 75/25/50 split becomes 15%/75%/10% when it does not fit.

Chains: chain c is seeded with ``seed + c`` (its starting point through Pyro's RNG, its momenta and
uniform draws through NumPy's), so a chain's draws depend on its seed alone: several chains run in
parallel worker processes (fork) give the same draws as run one after another, and R-hat across them is
meaningful. Each chain runs on one torch thread. The draws keep their chain structure, so ArviZ's R-hat
and ESS apply, and divergent transitions travel with the draws as ``sample_stats["diverging"]``.
"""
import logging
import math
import multiprocessing
import os
import sys
import time
import warnings

import numpy as np
import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_uniform, init_to_value
from pyro.infer.mcmc.util import initialize_model
from tqdm import tqdm

from . import verdict
from .errors import MODEL_ERRORS, InvalidInputError, check_choice, check_data, check_positive, model_error
from .init import improper_priors_start_at_zero
from .potential import FlatPotential
from .result import Fit

RHAT_LIMIT = 1.01      # Vehtari et al. (2021): split R-hat above it, the chains disagree
ESS_PER_CHAIN = 100    # ... and fewer bulk effective draws than this per chain are too few to trust
MAX_DELTA_H = 1000.0   # Stan: an energy error above this is a divergent transition

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor on import
    import arviz as az


def nuts(model, *data, num_samples=1000, warmup_steps=500, num_chains=1, seed=0, target_accept_prob=0.8,
         max_tree_depth=10, max_plate_nesting=None, progress=None, init=None, dense_mass=False,
         chain_method="parallel", compile=True, background=False):
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
    for name, value in [("num_samples", num_samples), ("num_chains", num_chains),
                        ("max_tree_depth", max_tree_depth)]:
        check_positive(name, value, integer=True)
    check_positive("warmup_steps", warmup_steps, integer=True, allow_zero=True)
    if not 0 < target_accept_prob < 1:
        raise InvalidInputError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob!r}")
    check_choice("chain_method", chain_method, {"parallel", "sequential"})
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
    data = tuple(a.detach() if torch.is_tensor(a) else a for a in data)
    processes = min(num_chains, _cpu_count()) if chain_method == "parallel" else 1
    if processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        processes = 1       # spawn would have to pickle the compiled graph and the model
    # blocked, as in Pyro's MCMC.run: handlers around the call do not see the model's runs in here
    with pyro.poutine.block():
        potential, starts = _set_up(model, data, num_chains, seed, strategy, max_plate_nesting, compile)
        inverse_metric = None if covariance is None else _laplace_metric(covariance, potential, dense_mass)
        sampler = _Sampler(potential, target_accept_prob, max_tree_depth, dense_mass, inverse_metric)
        jobs = [(starts[c], seed + c) for c in range(num_chains)]
        if background and "fork" in multiprocessing.get_all_start_methods():
            pending = _start_chains(sampler, jobs, warmup_steps, num_samples, max(processes, 1))
            return PendingFit(lambda: _fit(pending.get(), potential, num_chains, num_samples, warmup_steps,
                                           f"background ({max(processes, 1)} processes)",
                                           time.perf_counter() - start), pending)
        with tqdm(total=num_chains * (warmup_steps + num_samples), disable=disable_progbar, desc="nuts",
                  leave=False) as bar:
            try:
                runs = _run_chains(sampler, jobs, warmup_steps, num_samples, processes, bar)
            except MODEL_ERRORS as e:   # Pyro's potential failing at a point reached while sampling
                raise model_error(e, "in nuts") from None
    fit = _fit(runs, potential, num_chains, num_samples, warmup_steps,
               f"parallel ({processes} processes)" if processes > 1 else "sequential",
               time.perf_counter() - start)
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
            except MODEL_ERRORS as e:   # Pyro's potential failing at a point reached while sampling
                raise model_error(e, "in nuts") from None
            finally:
                if self._pending is not None:
                    self._pending.close()
        return self._fit


def _fit(runs, potential, num_chains, num_samples, warmup_steps, chain_method, seconds):
    """The Fit of finished chains: draws constrained, ArviZ's R-hat and ESS, the verdict."""
    z = torch.from_numpy(np.stack([r.pop("z") for r in runs])).to(potential.dtype)   # [chain, draw, d]
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
        "r_hat": {k: r_hat[k].values for k in chains}, "ess_bulk": {k: ess[k].values for k in chains},
        "num_divergences": int(sample_stats["diverging"].sum()),
        "step_size": [r["final_step_size"] for r in runs],
        "num_chains": num_chains, "num_samples": num_samples, "warmup_steps": warmup_steps,
        "khat": np.nan, "potential": "compiled" if potential.compiled else "pyro",
        "potential_note": potential.note,
        "chain_method": chain_method,
    }
    verdict.deliver("nuts", diagnostics, _reasons(diagnostics), stacklevel=3)
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


def _cpu_count():
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


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
                    model, data, max_plate_nesting=max_plate_nesting, init_strategy=strategy)
            except MODEL_ERRORS as e:   # a value outside a support, no finite start point, a shape mismatch
                raise model_error(e, "in nuts") from None
            if not params:
                raise InvalidInputError("the model has no continuous latent sample sites: "
                                        "nothing for nuts to sample")
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
_FORKED = {}    # what forked workers inherit: the sampler and the jobs (the compiled graph is not picklable)


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
            while not pending.ready():      # the bar follows the workers' shared step counter
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
    _FORKED.update(sampler=sampler, jobs=jobs, warmup=warmup, num_samples=num_samples,
                   counter=context.Value("l", 0))
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


# ---- the sampler ------------------------------------------------------------------------------------
class _State:
    """A point of phase space: position z, momentum p, p♯ = M⁻¹p, gradient g = dU/dz, potential U."""
    __slots__ = ("z", "p", "p_sharp", "grad", "U")

    def __init__(self, z, p, p_sharp, grad, U):
        self.z, self.p, self.p_sharp, self.grad, self.U = z, p, p_sharp, grad, U


class _Tree:
    """A stretch of trajectory: its left and right end (in time), ρ = Σ p over its points, log W =
    log Σ exp(H₀ - H) over them, and the point sampled from it so far."""
    __slots__ = ("left", "right", "rho", "log_weight", "proposal")

    def __init__(self, left, right, rho, log_weight, proposal):
        self.left, self.right, self.rho, self.log_weight, self.proposal = left, right, rho, log_weight, proposal


def _no_u_turn(p_sharp_minus, p_sharp_plus, rho):
    """Betancourt's generalised criterion: the ends still move apart along ρ."""
    return float(p_sharp_minus @ rho) > 0 and float(p_sharp_plus @ rho) > 0


def _turns(left, right, rho):
    """Whether the merged trajectory left + right (total ρ) has turned: over the whole, and (Stan 2.26)
    over each half extended by the neighbouring point of the other half."""
    return not (_no_u_turn(left.left.p_sharp, right.right.p_sharp, rho)
                and _no_u_turn(left.left.p_sharp, right.left.p_sharp, left.rho + right.left.p)
                and _no_u_turn(left.right.p_sharp, right.right.p_sharp, right.rho + left.right.p))


class _Sampler:
    """Multinomial NUTS with Stan's windowed adaptation on a flat z (see the module docstring).

    Args:
        potential: z (numpy [d]) -> (U, dU/dz).
        target_accept_prob: the dual-averaging target δ.
        max_tree_depth: most doublings per transition.
        dense: adapt a dense inverse mass matrix (else diagonal).
        inverse_metric: the first M⁻¹ ([d] diagonal or [d, d]), else the identity.
    """

    def __init__(self, potential, target_accept_prob, max_tree_depth, dense, inverse_metric=None):
        self.potential = potential
        self.dim = potential.dim
        self.delta, self.max_depth, self.dense = target_accept_prob, max_tree_depth, dense
        self.initial_metric = inverse_metric

    # -- the metric
    def _set_metric(self, inverse_metric):
        self.inverse_metric = inverse_metric
        if self.dense:
            # p = L⁻ᵀ r with M⁻¹ = L Lᵀ has covariance L⁻ᵀ L⁻¹ = M
            self._momentum_factor = np.linalg.inv(np.linalg.cholesky(inverse_metric)).T
        else:
            self._momentum_factor = 1.0 / np.sqrt(inverse_metric)

    def _velocity(self, p):
        return self.inverse_metric @ p if self.dense else self.inverse_metric * p

    def _momentum(self):
        r = self.rng.standard_normal(self.dim)
        return self._momentum_factor @ r if self.dense else self._momentum_factor * r

    # -- dynamics
    def _leapfrog(self, s, eps):
        p = s.p - 0.5 * eps * s.grad
        z = s.z + eps * self._velocity(p)
        U, grad = self.potential(z)
        self.n_steps += 1
        if not np.all(np.isfinite(grad)):
            U = np.inf
        p = p - 0.5 * eps * grad
        return _State(z, p, self._velocity(p), grad, U)

    def _energy(self, s):
        return s.U + 0.5 * float(s.p @ s.p_sharp)

    def _build(self, s, depth, eps, H0):
        """A subtree of 2^depth leapfrog steps from s (direction: the sign of eps), or None where it
        diverges or turns (then it is not sampled from and the trajectory stops)."""
        if depth == 0:
            new = self._leapfrog(s, eps)
            delta = self._energy(new) - H0
            if math.isnan(delta):
                delta = math.inf
            self.sum_accept += math.exp(-delta) if delta > 0 else 1.0
            if delta > MAX_DELTA_H:
                self.diverging = True
                return None
            return _Tree(new, new, new.p, -delta, new)
        inner = self._build(s, depth - 1, eps, H0)
        if inner is None:
            return None
        outer = self._build(inner.right if eps > 0 else inner.left, depth - 1, eps, H0)
        if outer is None:
            return None
        log_weight = np.logaddexp(inner.log_weight, outer.log_weight)
        # uniform progressive sampling within a subtree: the outer half's point with its share of weight
        take_outer = self.rng.random() < math.exp(outer.log_weight - log_weight)
        proposal = outer.proposal if take_outer else inner.proposal
        left, right = (inner, outer) if eps > 0 else (outer, inner)
        rho = left.rho + right.rho
        if _turns(left, right, rho):
            return None
        return _Tree(left.left, right.right, rho, log_weight, proposal)

    def transition(self, s, eps):
        """One NUTS draw from state s (z, gradient and U; p is drawn here). Returns the new state and the
        stats: (accept statistic, diverging, tree depth, leapfrog steps)."""
        p = self._momentum()
        s = _State(s.z, p, self._velocity(p), s.grad, s.U)
        H0 = self._energy(s)
        tree = _Tree(s, s, p, 0.0, s)
        self.n_steps, self.sum_accept, self.diverging = 0, 0.0, False
        depth = 0
        while depth < self.max_depth:
            forward = self.rng.random() < 0.5
            sub = self._build(tree.right if forward else tree.left, depth, eps if forward else -eps, H0)
            if sub is None:
                break
            depth += 1
            # biased progressive sampling: move to the new subtree with probability min(1, W_new / W_old)
            proposal = tree.proposal
            if sub.log_weight > tree.log_weight or self.rng.random() < math.exp(sub.log_weight - tree.log_weight):
                proposal = sub.proposal
            left, right = (tree, sub) if forward else (sub, tree)
            rho = left.rho + right.rho
            tree = _Tree(left.left, right.right, rho, np.logaddexp(tree.log_weight, sub.log_weight), proposal)
            if _turns(left, right, rho):
                break
        accept = self.sum_accept / max(self.n_steps, 1)
        return tree.proposal, (accept, self.diverging, depth, self.n_steps)

    def _find_step_size(self, s, eps):
        """Stan's heuristic: from one leapfrog step's acceptance at ε, a direction (up if above 0.8);
        then double (or halve) ε until a step's acceptance crosses 0.8, with a fresh momentum each try."""
        def log_accept(eps):
            p = self._momentum()
            start = _State(s.z, p, self._velocity(p), s.grad, s.U)
            delta = self._energy(start) - self._energy(self._leapfrog(start, eps))     # H₀ - H
            return -math.inf if math.isnan(delta) else delta

        up = log_accept(eps) > math.log(0.8)
        for _ in range(100):
            if (log_accept(eps) > math.log(0.8)) != up:
                break
            eps = eps * 2.0 if up else eps / 2.0
            if not 1e-10 < eps < 1e7:   # a flat or a broken density: let dual averaging take over
                return min(max(eps, 1e-10), 1e7)
        return eps

    # -- a whole chain
    def run(self, z0, num_warmup, num_samples, seed, tick):
        """Warm-up and draws from z0 (numpy float64 [d]) with RNG seed ``seed``; ``tick()`` after each
        iteration. Returns numpy arrays: "z" [num_samples, d] and the per-draw stats, and the final ε."""
        self.rng = np.random.default_rng(seed)
        self.n_steps = 0
        identity = np.eye(self.dim) if self.dense else np.ones(self.dim)
        metric = identity if self.initial_metric is None else self.initial_metric
        self._set_metric(metric)
        U, grad = self.potential(z0)
        state = _State(z0, None, None, grad, U)
        eps = self._find_step_size(state, 1.0)
        adapt = _DualAveraging(eps, self.delta)
        windows = _windows(num_warmup)
        window_draws = []
        for i in range(num_warmup):
            state, (accept, *_) = self.transition(state, eps)
            eps = adapt.update(accept)
            if windows and windows[0][0] <= i < windows[0][1]:
                window_draws.append(state.z)
                if i == windows[0][1] - 1:      # end of a slow window: a new metric, ε found anew
                    windows.pop(0)
                    self._set_metric(_regularised(np.array(window_draws), self.dense))
                    window_draws = []
                    eps = self._find_step_size(state, eps)
                    adapt = _DualAveraging(eps, self.delta)
            tick()
        if num_warmup:
            eps = adapt.final()
        out = {"z": np.empty((num_samples, self.dim)), "diverging": np.zeros(num_samples, dtype=bool),
               "step_size": np.full(num_samples, eps), "acceptance_rate": np.empty(num_samples),
               "lp": np.empty(num_samples), "tree_depth": np.empty(num_samples, dtype=np.int64),
               "n_steps": np.empty(num_samples, dtype=np.int64)}
        for i in range(num_samples):
            state, (accept, diverging, depth, n_steps) = self.transition(state, eps)
            out["z"][i], out["lp"][i] = state.z, -state.U
            out["acceptance_rate"][i], out["diverging"][i] = accept, diverging
            out["tree_depth"][i], out["n_steps"][i] = depth, n_steps
            tick()
        out["final_step_size"] = float(eps)
        return out


class _DualAveraging:
    """Nesterov's dual averaging of log ε toward a mean acceptance statistic δ (Hoffman & Gelman 2014,
    Stan's constants), restarted from μ = log(10 ε₀)."""
    GAMMA, T0, KAPPA = 0.05, 10.0, 0.75

    def __init__(self, eps, delta):
        self.mu, self.delta = math.log(10 * eps), delta
        self.t, self.s_bar, self.x_bar = 0, 0.0, 0.0

    def update(self, accept):
        self.t += 1
        eta = 1.0 / (self.t + self.T0)
        self.s_bar = (1 - eta) * self.s_bar + eta * (self.delta - min(1.0, accept))
        x = self.mu - self.s_bar * math.sqrt(self.t) / self.GAMMA
        weight = self.t ** -self.KAPPA
        self.x_bar = (1 - weight) * self.x_bar + weight * x
        return math.exp(x)

    def final(self):
        return math.exp(self.x_bar)


def _windows(num_warmup):
    """Stan's slow adaptation windows [(start, end)] of warm-up iterations (end exclusive)."""
    if num_warmup < 20:
        return []
    init, term, base = 75, 50, 25
    if init + base + term > num_warmup:
        init, term = int(0.15 * num_warmup), int(0.1 * num_warmup)
        base = num_warmup - init - term
    last, start, size, windows = num_warmup - term, init, base, []
    while start < last:
        end = min(start + size, last)
        if end + 2 * size > last:       # the next (doubled) window would not fit: this one takes the rest
            end = last
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


def _regularised(draws, dense):
    """The window's (co)variance, shrunk toward 10⁻³ I by 5 pseudo-draws (Stan's regularisation)."""
    n = draws.shape[0]
    if dense:
        cov = np.cov(draws, rowvar=False).reshape(draws.shape[1], draws.shape[1])
        return (n / (n + 5.0)) * cov + 1e-3 * (5.0 / (n + 5.0)) * np.eye(draws.shape[1])
    return (n / (n + 5.0)) * draws.var(axis=0, ddof=1) + 1e-3 * (5.0 / (n + 5.0))
