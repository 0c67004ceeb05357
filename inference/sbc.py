"""Simulation-based calibration: are an inference method's posteriors right on average over the prior?

SBC (Talts, Betancourt, Simpson, Vehtari & Gelman 2018) checks any method on any model. For each
simulation i = 1..N and each scalar element of every latent site:

    θ̃ ~ p(θ),  ỹ ~ p(y | θ̃)          a run of the model with its observed sites drawn, not observed
    θ_1..θ_L ~ q(θ | ỹ)                L draws of the method fitted to ỹ
    r_i = #{l : θ_l < θ̃}  in 0..L      (ties broken at random)

If q is the exact posterior, θ̃, θ_1, ..., θ_L are exchangeable, so r_i is uniform: P(r <= j) = (j+1)/(L+1).
A q too narrow piles the ranks at both ends, one too wide in the middle, a biased one on one side.

* ECDF test (Säilynoja, Bürkner & Vehtari 2022), which decides the verdict: under uniformity the counts
  c_j = #{i : r_i <= j}, j = 0..L-1, form a Markov chain, c_j - c_{j-1} ~ Binomial(N - c_{j-1}, 1/(L+1-j)),
  each c_j ~ Binomial(N, (j+1)/(L+1)) =: F_j. The statistic is T = min_j min(F_j(c_j), 1 - F_j(c_j - 1));
  its p-value P(T' <= T) is exact, by the forward recursion over the chain, which also gives the ECDF
  plot's simultaneous band (a curve leaves it exactly when its p-value is below the level).
* chi-square on B bins of ranks (Talts et al. §4.1): sum_b (O_b - E_b)² / E_b ~ χ²(B - 1); reported.
* VSBC (Yao, Vehtari, Simpson & Gelman 2018, §3): u_i = (r_i + ½)/(L + 1) is symmetric about ½ when q's
  median is unbiased, whatever its spread; Kolmogorov-Smirnov of u against 1 - u; reported, for VI.

Verdict: an element is miscalibrated when its ECDF p-value < alpha / K (Bonferroni over K elements): a
calibrated method raises a false alarm with probability at most alpha. The ConvergenceWarning
(:func:`inference.verdict.deliver`) names each such element and which way its ranks lean.

The fit sees ``poutine.condition(model, data={site: ỹ})`` with the same arguments, whether the model takes
its observations as an argument defaulting to None (``model(x, y=None)``: name them, ``observed=("y",)``)
or as a required one that only sets shapes (``poutine.uncondition`` draws it anew for the prior run).
MCMC draws are roughly independent every T/ESS draws (Talts et al. §5.1): ``chains`` are thinned to every
ceil(T / ESS)-th draw (ESS: the least bulk or tail ESS of any element) and L draws picked among those; a
fit with fewer than L effective draws, whose autocorrelation alone skews ranks, is counted in the verdict.

The file runs past 400 lines because the simulations, their parallel runner and the result with its plots
are one check; the uniformity tests live in :mod:`inference.rank_tests`.
"""

import math
import multiprocessing
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyro
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.poutine.util import site_is_factor, site_is_subsample
from scipy import stats
from tqdm import tqdm

from . import rank_tests, verdict
from .common import az, cpu_count, hide_progress, resample
from .errors import (
    MODEL_ERRORS,
    ConvergenceWarning,
    InvalidInputError,
    check_choice,
    check_data,
    check_positive,
    model_error,
)
from .guides import guide
from .laplace import laplace
from .mcmc import nuts
from .plots import save_figure
from .result import Fit
from .svi import svi


def _svi(family):
    return lambda model, *args, seed: svi(model, guide(model, family), *args, seed=seed, progress=False)


METHODS = {  # name -> (model, *args, seed) -> Fit
    # dense mass: SBC's models are often correlated; chains in sequence: sbc's workers cannot fork their own
    "nuts": lambda model, *args, seed: nuts(
        model,
        *args,
        num_samples=1000,
        warmup_steps=500,
        dense_mass=True,
        seed=seed,
        progress=False,
        chain_method="sequential",
    ),
    "laplace": lambda model, *args, seed: laplace(model, *args, seed=seed),
    "svi-meanfield": _svi("meanfield"),
    "svi-lowrank": _svi("lowrank"),
    "svi-fullrank": _svi("fullrank"),
}


@dataclass(eq=False)
class SBCResult:
    """What :func:`sbc` found.

    Attributes:
        method: the method's name (a callable's ``__name__``).
        ranks: element label (ArviZ style, "w[0]") -> int array [num_simulations], ranks in 0..num_draws.
        num_draws: L, the posterior draws each rank is taken among.
        p_values: element label -> p-value of the ECDF test (the verdict's).
        alpha: family-wise level; an element is flagged when its p-value < alpha / (number of elements).
        bins: bins of the chi-square test and of the histograms.
        calibrated: the verdict: no element flagged, and every MCMC fit had L effective draws.
        warnings: the reasons behind a False verdict (the ConvergenceWarning's sentences).
        fit_warnings: simulation index -> the ConvergenceWarning messages its fit raised (kept, not
            re-issued: one per simulation would drown the verdict).
        short_fits: MCMC fits with fewer than num_draws effective draws.
        seconds: wall time of the whole check.
    """

    method: str
    ranks: dict
    num_draws: int
    p_values: dict
    alpha: float
    bins: int
    calibrated: bool
    warnings: list = field(default_factory=list)
    fit_warnings: dict = field(default_factory=dict)
    short_fits: int = 0
    seconds: float = 0.0

    @property
    def num_simulations(self):
        return len(next(iter(self.ranks.values())))

    @property
    def threshold(self):
        """The per-element level alpha / K."""
        return self.alpha / len(self.ranks)

    def to_dataframe(self):
        """One row per element: the p-values of the ECDF, chi-square and VSBC tests, the mean of
        u = (r + ½) / (L + 1) and its variance over the uniform's (½ and 1 when calibrated), and the flag."""
        L = self.num_draws
        return pd.DataFrame(
            [
                {
                    "parameter": k,
                    "ecdf_p": self.p_values[k],
                    "chi2_p": rank_tests.chi2_p_value(r, L, self.bins),
                    "vsbc_p": rank_tests.vsbc_p_value(r, L),
                    "mean_rank": ((r + 0.5) / (L + 1)).mean(),
                    "rank_var_ratio": ((r + 0.5) / (L + 1)).var() / rank_tests.uniform_variance(L),
                    "miscalibrated": self.p_values[k] < self.threshold,
                }
                for k, r in self.ranks.items()
            ]
        )

    def plot(self, path=None, var_names=None):
        """Rank histograms with the binomial 99% band of each bin, and ECDF differences with the
        simultaneous band at the verdict's level 1 - alpha / K; one row per element.

        Args:
            path: write the figure there as PNG (None: do not write).
            var_names: element labels to show (default: all).

        Returns:
            the matplotlib Figure.
        """
        var_names = [var_names] if isinstance(var_names, str) else var_names
        labels = [check_choice("var_names", k, self.ranks) for k in (var_names or self.ranks)]
        n, L = self.num_simulations, self.num_draws
        starts, sizes = rank_tests.bin_starts(L, self.bins)
        lo_count, hi_count = stats.binom.ppf([[0.005], [0.995]], n, sizes / (L + 1))
        p = np.arange(1, L + 1) / (L + 1)
        band = rank_tests.ecdf_band(n, p, self.threshold)
        fig = Figure(figsize=(9, 2.4 * len(labels)), layout="constrained")
        axes = fig.subplots(len(labels), 2, squeeze=False)
        edges = np.append(starts, L + 1)
        for (hist, ecdf), label in zip(axes, labels):
            counts = np.bincount(np.searchsorted(starts, self.ranks[label], side="right") - 1, minlength=self.bins)
            hist.bar(starts, counts, width=sizes, align="edge", color="C0", edgecolor="white")
            hist.fill_between(
                edges,
                np.append(lo_count, lo_count[-1]),
                np.append(hi_count, hi_count[-1]),
                step="post",
                color="grey",
                alpha=0.3,
                label="99% band per bin",
            )
            hist.set_title(f"{label}: ranks (p = {self.p_values[label]:.2g})", fontsize=9)
            hist.set_xlabel(f"rank among {L} draws")
            difference = np.cumsum(np.bincount(self.ranks[label], minlength=L + 1))[:-1] / n - p
            ecdf.fill_between(
                p,
                band[0] / n - p,
                band[1] / n - p,
                step="post",
                color="grey",
                alpha=0.3,
                label=f"{1 - self.threshold:.3g} simultaneous band",
            )
            ecdf.step(p, difference, where="post", color="C1")
            ecdf.axhline(0, color="black", linewidth=0.5)
            ecdf.set_xlabel("fractional rank")
            ecdf.set_title(f"{label}: ECDF - uniform CDF", fontsize=9)
        for ax in axes[0]:
            ax.legend(fontsize=7)
        fig.suptitle(f"SBC of {self.method}: {n} simulations, L = {L}")
        if path is not None:
            save_figure(fig, path)
        return fig


def sbc(
    model,
    method,
    num_simulations=100,
    *,
    args=(),
    observed=(),
    num_draws=99,
    bins=None,
    alpha=0.01,
    processes=None,
    seed=0,
    progress=None,
):
    """Simulation-based calibration of ``method`` on ``model`` (see the module docstring).

    Args:
        model: a Pyro model; its priors must be proper (the simulations draw from them).
        method: a name in ``METHODS`` (nuts, laplace, svi-meanfield, svi-lowrank, svi-fullrank), or a
            callable ``method(model, *args) -> Fit``, called with the global RNGs seeded per simulation.
        num_simulations: N, the (θ̃, ỹ) pairs simulated and fitted.
        args: the model's positional arguments (tuple), the same for every simulation.
        observed: names of the sites to simulate and condition on, besides those the model already
            observes with ``args`` (e.g. ``("y",)`` for ``model(x, y=None)``).
        num_draws: L, posterior draws per fit; the ranks take L + 1 values.
        bins: bins of the chi-square test and the histograms (default: up to 20, at least 5 simulations
            expected per bin); at most L + 1.
        alpha: the family-wise false-alarm rate of the verdict, in (0, 1).
        processes: worker processes (fork) running the simulations; default: the CPU cores. The ranks do
            not depend on it: simulation i is seeded from (seed, i) alone, every fit runs on one thread.
        seed: non-negative int seeding everything.
        progress: show a progress bar over the simulations (default: on a terminal).

    Returns:
        SBCResult (ranks, p-values, verdict, ``to_dataframe()``, ``plot()``).

    Raises:
        InvalidInputError: a bad setting, NaN in ``args``, an unknown site in ``observed``, a model without
            observed or latent sites or that fails to run, a method that gives no Fit of every latent site.
            Whatever a fit raises on a simulated data set propagates, with a note naming the simulation.

    Warns:
        ConvergenceWarning naming the miscalibrated elements, or the MCMC fits with too few effective draws.
    """
    start = time.perf_counter()
    if not callable(model):
        raise InvalidInputError(f"model must be a Pyro model (a callable), got {type(model).__name__}")
    if isinstance(method, str):
        name, fit = check_choice("method", method, METHODS), METHODS[method]
    elif callable(method):
        name, fit = getattr(method, "__name__", "callable"), (lambda m, *a, seed: method(m, *a))
    else:
        raise InvalidInputError(f"method must be a name in {sorted(METHODS)} or a callable, got {method!r}")
    for key, value in [("num_simulations", num_simulations), ("num_draws", num_draws), ("alpha", alpha)]:
        check_positive(key, value, integer=key != "alpha")
    check_positive("seed", seed, integer=True, allow_zero=True)
    if alpha >= 1:
        raise InvalidInputError(f"alpha must lie in (0, 1), got {alpha!r}")
    bins = max(2, min(20, num_draws + 1, num_simulations // 5)) if bins is None else bins
    if check_positive("bins", bins, integer=True) > num_draws + 1:
        raise InvalidInputError(f"bins={bins} exceeds the {num_draws + 1} values a rank can take")
    processes = min(cpu_count(), num_simulations) if processes is None else processes
    check_positive("processes", processes, integer=True)
    if not isinstance(args, (tuple, list)):
        raise InvalidInputError(f"args must be a tuple of the model's arguments, got {type(args).__name__}")
    args = tuple(check_data(tuple(args), "args element"))
    observed = (observed,) if isinstance(observed, str) else observed
    if not isinstance(observed, (tuple, list)) or not all(isinstance(o, str) for o in observed):
        raise InvalidInputError(f"observed must be a tuple of site names, got {observed!r}")
    seeds = np.random.SeedSequence(seed).generate_state(2 * num_simulations).reshape(num_simulations, 2)
    job = {
        "model": model,
        "fit": fit,
        "args": args,
        "observed": observed,
        "num_draws": num_draws,
        "seeds": seeds.tolist(),
    }

    state = pyro.util.get_rng_state()  # the simulations seed the global RNGs; the caller's are restored
    try:
        pyro.set_rng_seed(job["seeds"][0][0])
        true, data = _prior_draw(model, args, observed)
        if not data:
            raise InvalidInputError(
                "observed: the model observes no site with these args and none was named; "
                "name the sites to simulate, e.g. observed=('y',)"
            )
        if not true:
            raise InvalidInputError("the model has no latent site to calibrate")
        job["sites"] = {k: v.shape for k, v in true.items()}
        if "fork" not in multiprocessing.get_all_start_methods():
            processes = 1
        results = _run(job, num_simulations, processes, progress)
    finally:
        pyro.util.set_rng_state(state)

    labels = [
        site + (f"[{', '.join(map(str, i))}]" if i else "")  # ArviZ-style: "w", "w[0, 1]"
        for site, shape in job["sites"].items()
        for i in np.ndindex(*shape)
    ]
    stacked = np.stack([r[0] for r in results])  # [num_simulations, K]
    ranks = {label: stacked[:, k] for k, label in enumerate(labels)}
    result = SBCResult(
        method=name,
        ranks=ranks,
        num_draws=num_draws,
        alpha=alpha,
        bins=bins,
        calibrated=True,
        p_values={k: rank_tests.ecdf_p_value(r, num_draws) for k, r in ranks.items()},
        fit_warnings={i: r[1] for i, r in enumerate(results) if r[1]},
        short_fits=sum(r[2] < num_draws for r in results),
    )
    diagnostics = {}
    verdict.deliver(f"sbc of {name}", diagnostics, _reasons(result, min(r[2] for r in results)), stacklevel=2)
    result.calibrated, result.warnings = diagnostics["converged"], diagnostics["warnings"]
    result.seconds = time.perf_counter() - start
    return result


# ---- one simulation ----------------------------------------------------------------------------------
def _prior_draw(model, args, observed):
    """(latent values {site: tensor}, observed values {site: tensor}) of one run of the model whose
    observed sites are drawn from their distributions."""
    try:
        trace = poutine.trace(poutine.uncondition(model)).get_trace(*args)
    except MODEL_ERRORS as e:
        raise model_error(e, "drawing from its prior predictive") from None
    sites = {
        k: s
        for k, s in trace.nodes.items()
        if s["type"] == "sample"
        and not site_is_subsample(s)
        and not site_is_factor(s)
        and not s["infer"].get("_deterministic")
    }
    for name in observed:
        if name not in sites:
            raise InvalidInputError(f"observed: the model has no sample site {name!r}; its sites: {sorted(sites)}")
    names = set(observed) | {k for k, s in sites.items() if s["infer"].get("was_observed")}
    data = {k: sites[k]["value"].detach() for k in names}
    return {k: s["value"].detach() for k, s in sites.items() if k not in names}, data


def _simulate(job, i):
    """Simulation i: (ranks of every latent element [K], the fit's warning messages, its least ESS)."""
    prior_seed, fit_seed = job["seeds"][i]
    try:
        pyro.set_rng_seed(prior_seed)
        true, data = _prior_draw(job["model"], job["args"], job["observed"])
        pyro.set_rng_seed(fit_seed)  # its own stream: the fit's noise must not replay the prior draw's
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            fit = job["fit"](poutine.condition(job["model"], data=data), *job["args"], seed=fit_seed)
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if not isinstance(fit, Fit):
            raise InvalidInputError(f"method returned a {type(fit).__name__}, expected an inference.Fit")
        draws, ess = _posterior_draws(fit, job["num_draws"], fit_seed)
        tie_break = np.random.default_rng(fit_seed)
        ranks = []
        for site, shape in job["sites"].items():
            if site not in draws or tuple(draws[site].shape[1:]) != tuple(shape):
                got = tuple(draws[site].shape[1:]) if site in draws else "no draws"
                raise InvalidInputError(
                    f"the method's fit has {got} for latent site {site!r}, expected draws of shape {tuple(shape)}"
                )
            x = draws[site].detach().reshape(job["num_draws"], -1).double().numpy()
            t = true[site].detach().reshape(-1).double().numpy()
            less, ties = (x < t).sum(0), (x == t).sum(0)
            ranks.append(less + np.floor(tie_break.random(t.size) * (ties + 1)).astype(int))
    except Exception as e:
        e.add_note(f"(in sbc simulation {i}, seeds {prior_seed}, {fit_seed})")
        raise
    return np.concatenate(ranks), [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)], ess


def _posterior_draws(fit, num_draws, seed):
    """({site: tensor [num_draws, ...]}, least ESS): independent draws, thinned by ESS for MCMC."""
    if fit.chains is None:
        return fit.samples(num_draws, seed=seed), math.inf
    chains = {k: torch.as_tensor(v).detach() for k, v in fit.chains.items()}
    num_chains, length = next(iter(chains.values())).shape[:2]
    total = num_chains * length
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ESS of a constant element divides by zero: NaN, skipped below
        data = az.convert_to_dataset({k: v.double().numpy() for k, v in chains.items()})
        ess = [az.ess(data, method=m)[k].values for m in ("bulk", "tail") for k in chains]
    ess = np.concatenate([np.ravel(e) for e in ess])
    least = float(np.nanmin(ess)) if np.isfinite(ess).any() else math.inf
    stride = max(1, math.ceil(total / least)) if math.isfinite(least) and least > 0 else 1
    thinned = {k: v[:, ::stride].reshape(-1, *v.shape[2:]) for k, v in chains.items()}
    if len(next(iter(thinned.values()))) >= num_draws:
        return resample(thinned, num_draws, seed), least
    idx = torch.linspace(0, total - 1, num_draws).round().long()
    return {k: v.reshape(total, *v.shape[2:])[idx] for k, v in chains.items()}, least


# ---- running the simulations -------------------------------------------------------------------------
_FORKED = {}  # what forked workers inherit: the job (models and methods need not be picklable)


def _forked_simulation(i):
    torch.set_num_threads(1)  # the fits are small; threads would only compete with the other workers
    return _simulate(_FORKED, i)


def _run(job, num_simulations, processes, progress):
    """Every simulation's result, in order, here (processes=1) or in forked workers."""
    bar = tqdm(total=num_simulations, disable=hide_progress(progress), desc="sbc", leave=False)
    threads, results, pool = torch.get_num_threads(), [], None
    _FORKED.update(job)
    try:
        torch.set_num_threads(1)  # here as in the workers, so that the ranks do not depend on processes
        if processes == 1:
            outcomes = (_simulate(job, i) for i in range(num_simulations))
        else:
            pool = multiprocessing.get_context("fork").Pool(processes)
            outcomes = pool.imap(_forked_simulation, range(num_simulations))
        for outcome in outcomes:
            results.append(outcome)
            bar.update()
        return results
    except AssertionError as e:
        if "daemonic" not in str(e):
            raise
        raise InvalidInputError(
            "method starts worker processes of its own (e.g. parallel NUTS chains), which "
            "sbc's workers cannot: use chain_method='sequential', or processes=1"
        ) from None
    finally:
        if pool is not None:
            pool.terminate()
        _FORKED.clear()
        torch.set_num_threads(threads)
        bar.close()


def _reasons(result, least_ess):
    """The sentences of the verdict: miscalibrated elements, and MCMC fits too short to judge."""
    n, v0 = result.num_simulations, rank_tests.uniform_variance(result.num_draws)
    flagged = []
    for label, r in result.ranks.items():
        if result.p_values[label] >= result.threshold:
            continue
        u = (r + 0.5) / (result.num_draws + 1)
        # which departure is larger, in standard errors: mean (sd sqrt(v0/n)) or variance ratio (sd ~ sqrt(0.8/n))
        z_mean, z_var = (u.mean() - 0.5) / math.sqrt(v0 / n), (u.var() / v0 - 1) / math.sqrt(0.8 / n)
        if abs(z_var) >= abs(z_mean):
            lean = "too narrow: ranks pile at both ends" if z_var > 0 else "too wide: ranks bunch in the middle"
        else:
            lean = (
                "biased low: the truth lies above most draws"
                if z_mean > 0
                else "biased high: the truth lies below most draws"
            )
        flagged.append(f"{label} (p = {result.p_values[label]:.2g}, {lean})")
    reasons = []
    if flagged:
        reasons.append(
            f"ranks not uniform for {', '.join(flagged)} (ECDF test, level {result.threshold:.2g} per "
            f"element over {n} simulations): the method's posteriors are miscalibrated"
        )
    if result.short_fits:
        reasons.append(
            f"{result.short_fits} of {n} MCMC fits had fewer than {result.num_draws} effective draws "
            f"(least ESS {least_ess:.0f}): autocorrelated draws alone make ranks non-uniform; draw "
            "more, or lower num_draws"
        )
    return reasons
