"""Tests of uniformity for the ranks of simulation-based calibration (:mod:`inference.sbc`).

With L draws per fit, a rank r takes the values 0..L, uniformly when the method is calibrated:

* ECDF test (Säilynoja, Bürkner & Vehtari 2022): the counts c_j = #{i : r_i <= j}, j = 0..L-1, form a Markov
  chain with c_j ~ Binomial(N, (j+1)/(L+1)) =: F_j; the statistic T = min_j min(F_j(c_j), 1 - F_j(c_j - 1))
  has an exact p-value P(T' <= T) by a forward recursion over the chain, which also gives the ECDF plot's
  simultaneous band.
* chi-square on B bins (Talts et al. 2018, §4.1), and VSBC's symmetry test (Yao et al. 2018, §3).
"""

import math

import numpy as np
from scipy import stats


def uniform_variance(num_draws):
    """Variance of u = (r + ½) / (L + 1), r uniform on 0..L."""
    return ((num_draws + 1) ** 2 - 1) / (12 * (num_draws + 1) ** 2)


def tail_probability(counts, n, p):
    """Two-sided tail probability min(F(c), 1 - F(c - 1)) of counts c under Binomial(n, p)."""
    return np.minimum(stats.binom.cdf(counts, n, p), stats.binom.sf(counts - 1, n, p))


def leaves_band(n, p, statistic):
    """For uniform ranks: (P(some tail probability <= ``statistic``), the counts (lo [J], hi [J]) whose
    tails exceed it at each point), by the forward recursion over the Markov chain of the counts. The
    first is summed from the mass that leaves the band at each point, so that tiny p-values keep their
    digits (1 - P(stay) would round them to 0)."""
    tails = tail_probability(np.arange(n + 1)[None, :], n, p[:, None])  # [J, n + 1], unimodal in the count
    allowed = tails > statistic * (1 + 1e-9)  # the observed curve's own tail is not "above" itself
    if not allowed.any(1).all():
        return 1.0, None
    lo, hi = allowed.argmax(1), n - allowed[:, ::-1].argmax(1)
    prob, a, left = np.ones(1), np.zeros(1, dtype=int), 0.0  # before the first point: count 0
    for j in range(len(p)):
        q = (p[j] - (p[j - 1] if j else 0.0)) / (1 - (p[j - 1] if j else 0.0))
        left += prob @ (stats.binom.cdf(lo[j] - 1 - a, n - a, q) + stats.binom.sf(hi[j] - a, n - a, q))
        b = np.arange(lo[j], hi[j] + 1)
        prob, a = prob @ stats.binom.pmf(b[None, :] - a[:, None], n - a[:, None], q), b
    return float(left), (lo, hi)


def ecdf_p_value(ranks, num_draws):
    """p-value of the ECDF test of uniformity of ``ranks`` (int array in 0..num_draws): the probability
    that uniform ranks give a smallest tail probability T' <= the observed T (see the module docstring)."""
    p = np.arange(1, num_draws + 1) / (num_draws + 1)
    counts = np.cumsum(np.bincount(ranks, minlength=num_draws + 1))[:-1]
    return min(1.0, leaves_band(len(ranks), p, tail_probability(counts, len(ranks), p).min())[0])


def ecdf_band(n, p, level):
    """(lo, hi) counts at each point of p: the simultaneous band an ECDF of n uniform ranks leaves with
    probability ``level``: the largest T with ECDF p-value(T) < level, found by bisection on log T."""
    low, high = math.log(level) - 40, math.log(0.6)
    for _ in range(30):  # 45 nats / 2^30: far finer than one count changes T
        mid = (low + high) / 2
        low, high = (mid, high) if leaves_band(n, p, math.exp(mid))[0] < level else (low, mid)
    return leaves_band(n, p, math.exp(low))[1]


def bin_starts(num_draws, bins):
    """First rank and size of each of ``bins`` bins over 0..num_draws, as equal as the ranks allow."""
    sizes = np.array([len(g) for g in np.array_split(np.arange(num_draws + 1), bins)])
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes


def chi2_p_value(ranks, num_draws, bins):
    """p-value of the chi-square test of uniformity of ``ranks`` on ``bins`` bins (expected counts
    proportional to each bin's size)."""
    starts, sizes = bin_starts(num_draws, bins)
    observed = np.bincount(np.searchsorted(starts, ranks, side="right") - 1, minlength=bins)
    expected = len(ranks) * sizes / (num_draws + 1)
    return float(stats.chi2.sf(((observed - expected) ** 2 / expected).sum(), bins - 1))


def vsbc_p_value(ranks, num_draws):
    """p-value of VSBC's symmetry test: Kolmogorov-Smirnov of u = (r + ½) / (L + 1) against 1 - u, on the
    ranks themselves (r against L - r: the same comparison, without rounding)."""
    return float(stats.ks_2samp(np.asarray(ranks), num_draws - np.asarray(ranks)).pvalue)
