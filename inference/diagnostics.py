"""Compare posterior approximations against a reference, one tidy table.

For every method and every scalar element of every latent site (``"w[0]"``, ``"L[1, 0]"``, ArviZ's
names) the table holds the posterior mean and sd, and, against the reference fit (usually NUTS):

    error    = (mean - mean_ref) / sd_ref     how far off the mean is, in reference sds
    sd_ratio = sd / sd_ref                    < 1: over-confident, > 1: under-confident

and the Pareto k-hat of PSIS applied to the importance weights p(x, z) / q(z), z ~ q (Yao et al. 2018, "Yes,
but did it work?"): k-hat < 0.5 the approximation is close enough for importance sampling to fix it, 0.5-0.7
usable, > 0.7 the approximation cannot be trusted. k-hat is one number per method: the fit's own verdict's
where it has one, else from ``Fit.importance`` (Laplace, and SVI where the guide provides it); it is NaN
otherwise, and 0 when all weights are equal (q is exactly the posterior, where the Pareto fit is undefined).
"""

import numpy as np
import pandas as pd

from . import verdict
from .common import to_numpy
from .errors import InvalidInputError, check_positive
from .result import Fit

COLUMNS = ["method", "variable", "mean", "sd", "error", "sd_ratio", "khat", "seconds"]


def compare(fits, reference=None, var_names=None, num_samples=1000, seed=0):
    """One row per (method, variable element): mean, sd, error, sd_ratio, khat, seconds.

    Args:
        fits: ``{method name: Fit}``, e.g. ``{"svi": f1, "laplace": f2, "nuts": f3}``.
        reference: the key of the reference fit; None picks the one NUTS fit if there is exactly one,
            else the table has no reference (error and sd_ratio NaN).
        var_names: sites to compare; default the latent sites every fit has.
        num_samples, seed: draws taken from each non-MCMC fit (MCMC fits use all their draws) and
            for the importance weights behind k-hat.

    Returns:
        pandas.DataFrame with columns ``COLUMNS``; rows grouped by method in the order of ``fits``.
        ``summarize(table)`` condenses it to one row per method.
    """
    fits = check_fits(fits)
    check_positive("num_samples", num_samples, integer=True)
    if reference is None:
        nuts = [k for k, f in fits.items() if f.method == "nuts"]
        reference = nuts[0] if len(nuts) == 1 else None
    elif reference not in fits:
        raise InvalidInputError(f"reference={reference!r} is not one of the fits {list(fits)}")
    draws = {name: posterior_draws(fit, num_samples, seed) for name, fit in fits.items()}
    var_names = check_var_names(draws, var_names)
    elements = {name: dict(flat_elements(d, var_names)) for name, d in draws.items()}

    rows = []
    for name, fit in fits.items():
        khat = _khat(fit, num_samples, seed)
        for label, x in elements[name].items():
            # identical draws (a point estimate) have sd 0 exactly, not the round-off of their mean
            mean, sd = x.mean(), (x.std(ddof=1) if np.ptp(x) > 0 else 0.0)
            error = sd_ratio = np.nan
            if reference is not None:
                ref = elements[reference][label]
                ref_mean, ref_sd = ref.mean(), ref.std(ddof=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    error, sd_ratio = (mean - ref_mean) / ref_sd, sd / ref_sd
            rows.append([name, label, mean, sd, error, sd_ratio, khat, float(fit.seconds)])
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["reference"] = reference
    return table


def summarize(table):
    """One row per method of a :func:`compare` table: the worst |error|, the sd ratios' range, k-hat
    and seconds. Index: method."""
    groups = table.groupby("method", sort=False)
    return pd.DataFrame(
        {
            "max_abs_error": groups["error"].apply(lambda e: e.abs().max()),
            "min_sd_ratio": groups["sd_ratio"].min(),
            "max_sd_ratio": groups["sd_ratio"].max(),
            "khat": groups["khat"].first(),
            "seconds": groups["seconds"].first(),
        }
    )


def posterior_draws(fit, num_samples=1000, seed=0):
    """{site: numpy array [n, *shape]}: all draws of an MCMC fit, ``num_samples`` fresh ones otherwise."""
    if fit.chains is not None:
        return {k: to_numpy(v).reshape(-1, *v.shape[2:]) for k, v in fit.chains.items()}
    return {k: to_numpy(v) for k, v in fit.samples(num_samples, seed).items()}


def flat_elements(draws, var_names):
    """Yield (label, draws of one scalar element [n]) for each element of each site, ArviZ-style labels."""
    for site in var_names:
        x = draws[site]
        if x.ndim == 1:
            yield site, x
            continue
        for index in np.ndindex(*x.shape[1:]):
            yield f"{site}[{', '.join(map(str, index))}]", x[(slice(None),) + index]


def check_fits(fits):
    if not isinstance(fits, dict) or not fits:
        raise InvalidInputError("fits must be a non-empty dict {method name: Fit}")
    for name, fit in fits.items():
        if not isinstance(fit, Fit):
            raise InvalidInputError(f"fits[{name!r}] is a {type(fit).__name__}, expected an inference.Fit")
    return fits


def check_var_names(draws, var_names):
    common = [k for k in next(iter(draws.values())) if all(k in d for d in draws.values())]
    if var_names is None:
        if not common:
            sites = {n: list(d) for n, d in draws.items()}
            raise InvalidInputError(f"the fits share no latent site: {sites}")
        var_names = common
    if isinstance(var_names, str):
        var_names = [var_names]
    for name, d in draws.items():
        missing = [v for v in var_names if v not in d]
        if missing:
            raise InvalidInputError(f"var_names {missing} are not sites of fit {name!r} (its sites: {list(d)})")
    shapes = {v: {d[v].shape[1:] for d in draws.values()} for v in var_names}
    bad = {v: sorted(s) for v, s in shapes.items() if len(s) > 1}
    if bad:
        raise InvalidInputError(f"sites have different shapes across the fits: {bad}")
    return list(var_names)


def _khat(fit, num_samples, seed):
    """Pareto k-hat of PSIS on the fit's log importance weights; NaN where it has none. A fit that judged
    itself (``diagnostics["khat"]``, from more draws) is not weighed again."""
    if "khat" in fit.diagnostics:
        return float(fit.diagnostics["khat"])
    log_weights = fit.log_weights(num_samples, seed)
    return np.nan if log_weights is None else verdict.psis(log_weights)[1]
