"""Whether a fit can be trusted: the checks behind ``fit.diagnostics["converged"]`` and ConvergenceWarning.

Every method ends by calling :func:`deliver` with the reasons it found to distrust its own result. The
reasons come from three checks, each a standard one:

* :func:`loss_settled` — has a stochastic loss trace stopped decreasing? The second half of the run is
  split in two quarters; the drop of the mean from the third quarter to the last is compared with its
  standard error from batch means (which accounts for the steps' autocorrelation). A drop larger than
  three standard errors (and than 0.01 nats, below which no posterior changes visibly) means the
  optimiser was still descending when it stopped.
* :func:`psis` — Pareto-smoothed importance sampling (Vehtari et al. 2024) of the weights
  p(x, z) / q(z), z ~ q. Its k-hat says how far q is from the posterior (Yao et al. 2018): below 0.5
  close, 0.5-0.7 biased but usable once reweighted (``fit.samples(n, reweight=True)``), above 0.7 not
  to be trusted, not even after reweighting. Both bands above 0.5 earn a warning, each with its advice.
* :func:`shift_reason` — the same weights give importance-sampling estimates of the posterior means and
  sds; when a mean differs from q's own by more than 0.1 sd, or an sd by more than a factor e^0.2, plus
  their Monte Carlo error (2/sqrt(ESS)), q is off where it counts, whatever k-hat says (k-hat judges the
  tails, this the centre and the spread: a low-rank guide too narrow by a third can keep k-hat < 0.5).
* MCMC's own: divergences, split R-hat and bulk ESS (in :mod:`inference.mcmc`).
"""

import math
import warnings

import numpy as np

from .common import az
from .errors import ConvergenceWarning

KHAT_LIMIT = 0.7  # above it PSIS cannot rescue the approximation (Vehtari et al. 2024, §3)
KHAT_GOOD = 0.5  # below it q is close enough to use as it is (Yao et al. 2018, §2.3)
SHIFT_LIMIT = 0.1  # sds a reweighted mean may differ from q's own, beyond its Monte Carlo error
SPREAD_LIMIT = 0.2  # |log| of the factor a reweighted sd may differ from q's by (about 22%): inside
# the sd-ratio band [0.75, 1.3] that zoo benchmark calls accurate
MIN_STEPS = 50  # a shorter trace cannot tell a trend from noise


def loss_settled(losses, tail=0.5, batches=5, z=3.0, floor=0.05):
    """Whether the loss trace has stopped decreasing, and a sentence saying why not.

    Args:
        losses: 1-D array, the loss per step (noisy: Monte Carlo ELBO estimates, minibatches).
        tail: fraction of the trace, at its end, that is tested.
        batches: batch means per half of the tail (their spread gives the standard error).
        z: how many standard errors the drop must exceed to count as a trend.
        floor: a drop below this many nats never counts: what a decaying rate still shaves off the
            jitter of converged parameters, not a trend.

    Returns:
        (settled, reason): reason is None when settled. With halves A, B of the tail,
        drop = mean(A) - mean(B), se = sqrt(var(batch means of A)/b + var(batch means of B)/b);
        not settled when drop > max(z se, floor).
    """
    losses = np.asarray(losses, dtype=float)
    if losses.size < MIN_STEPS:
        return False, f"only {losses.size} steps: too few to tell whether the loss has settled"
    n = max(int(losses.size * tail), 2 * batches * 2)
    n -= n % (2 * batches)
    window = losses[-n:]
    if not np.isfinite(window).all():
        return False, "the loss is not finite at the end of the run"
    halves = window.reshape(2, batches, -1).mean(-1)  # [half, batch]
    drop = halves[0].mean() - halves[1].mean()
    se = math.sqrt((halves.var(axis=1, ddof=1) / batches).sum())
    if drop > max(z * se, floor):
        return False, (
            f"the loss was still falling at the end of the run ({drop:.3g} over the last "
            f"{n // 2} steps, {drop / se if se > 0 else math.inf:.1f} standard errors): "
            "give more steps, or a larger lr"
        )
    return True, None


def psis(log_weights):
    """Pareto-smoothed importance weights: (normalised log weights [S], k-hat, ESS of the weights).

    Args:
        log_weights: array [S] of log p(x, z_s) - log q(z_s), z_s ~ q.

    Returns:
        k-hat is 0 when the weights are all equal (q is the posterior itself, where the Pareto fit is
        undefined) and NaN when no weight is finite. ESS = 1 / sum(w_s^2) of the normalised weights.
    """
    log_weights = np.asarray(log_weights, dtype=float)
    finite = np.isfinite(log_weights)
    if np.isnan(log_weights).any() or not finite.any():
        return np.full_like(log_weights, -np.log(log_weights.size)), math.nan, math.nan
    if finite.all() and np.ptp(log_weights) <= 1e-6 * max(1.0, np.abs(log_weights).max()):
        return np.full_like(log_weights, -np.log(log_weights.size)), 0.0, float(log_weights.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns when k-hat > 0.7: the verdict reports it instead
        smoothed, khat = az.psislw(log_weights)
    smoothed = smoothed - np.logaddexp.reduce(smoothed)
    return smoothed, float(khat), float(1.0 / np.exp(2 * smoothed).sum())


def khat_reason(khat, what="q", reweightable=True):
    """The sentence a k-hat above KHAT_GOOD earns, or None.

    Args:
        khat: the Pareto k-hat of the fit's importance weights.
        what: names the approximation in the sentence.
        reweightable: whether the fit offers reweighted draws (the advice for 0.5 < k-hat <= 0.7).
    """
    if math.isfinite(khat) and khat > KHAT_LIMIT:
        return (
            f"PSIS k-hat = {khat:.2f} > {KHAT_LIMIT}: {what} is far from the posterior where it "
            "matters (try a richer guide, or check against nuts)"
        )
    if math.isfinite(khat) and khat > KHAT_GOOD and reweightable:
        return (
            f"PSIS k-hat = {khat:.2f} > {KHAT_GOOD}: {what} is biased; its reweighted draws, "
            "fit.samples(n, reweight=True), can be used"
        )
    return None


def weighted_shift(draws, log_weights):
    """How far importance weighting moves q's moments, over every scalar element of the draws.

    Args:
        draws: {site: tensor [S, *shape]}, z_s ~ q.
        log_weights: array [S] of log p(x, z_s) - log q(z_s).

    Returns:
        (shift, spread, ESS): the largest absolute difference of weighted and plain mean, in q's sds;
        the largest absolute log of the ratio of weighted to plain sd; and the ESS of the smoothed weights.
    """
    smoothed, _, ess = psis(log_weights)
    if not draws:  # a guide without latent sites of its own: nothing to move
        return 0.0, 0.0, ess
    w = np.exp(smoothed)
    x = np.concatenate([np.asarray(v.detach().cpu().double()).reshape(len(w), -1) for v in draws.values()], 1)
    mean, sd = x.mean(0), x.std(0)
    weighted_mean = w @ x
    weighted_sd = np.sqrt(np.maximum(w @ (x - weighted_mean) ** 2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(sd > 0, np.abs(weighted_mean - mean) / sd, 0.0)
        spread = np.where((sd > 0) & (weighted_sd > 0), np.abs(np.log(weighted_sd / sd)), 0.0)
    if not shift.size:
        return 0.0, 0.0, ess
    return float(np.nanmax(shift)), float(np.nanmax(spread)), ess


def shift_reason(draws, log_weights, what="q"):
    """The sentence reweighting earns when it moves a posterior mean by more than 0.1 sd, or changes a
    posterior sd by more than a factor e^0.2 (about 22%), beyond the Monte Carlo error 2/sqrt(ESS)
    of either; else None."""
    shift, spread, ess = weighted_shift(draws, log_weights)
    if not (math.isfinite(shift) and math.isfinite(ess)) or ess <= 0:
        return None
    error = 2 / math.sqrt(ess)
    if shift > SHIFT_LIMIT + error:
        return (
            f"importance weights move a posterior mean by {shift:.2f} sd (> {SHIFT_LIMIT + error:.2f}): "
            f"{what} is off centre; use fit.samples(n, reweight=True), or a richer approximation"
        )
    if math.isfinite(spread) and spread > SPREAD_LIMIT + error:
        return (
            f"importance weights change a posterior sd by a factor {math.exp(spread):.2f} "
            f"(> {math.exp(SPREAD_LIMIT + error):.2f}): {what} is too narrow or too wide; use "
            "fit.samples(n, reweight=True), or a richer approximation"
        )
    return None


def deliver(method, diagnostics, reasons, stacklevel=3):
    """Record the verdict in ``diagnostics`` ("converged", "warnings") and warn when there are reasons.

    Args:
        method: the method's name, for the message.
        diagnostics: the fit's diagnostics dict (updated in place).
        reasons: sentences, each one thing that was seen; None entries are dropped.
        stacklevel: passed to warnings.warn so the warning points at the user's call.
    """
    reasons = [r for r in reasons if r]
    diagnostics["converged"] = not reasons
    diagnostics["warnings"] = reasons
    if reasons:
        warnings.warn(
            f"{method}: the fit cannot be trusted: " + "; ".join(reasons), ConvergenceWarning, stacklevel=stacklevel + 1
        )
    return diagnostics
