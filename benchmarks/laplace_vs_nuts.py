"""Laplace against NUTS on a Bayesian logistic regression: how much faster, and how close.

    python benchmarks/laplace_vs_nuts.py [--seed 0] [--repeats 5]

Model: 10 features and an intercept, standard-normal priors, y_n ~ Bernoulli(sigmoid(x_n·w + b)),
500 synthetic points. Baseline: NUTS (1000 draws after 500 warm-up steps, one chain), timed in the same
run. Laplace's time is the median of ``--repeats`` calls after one warm-up call (the first torch
optimiser of a process lazily imports torch's compiler, a one-time cost of a few seconds that is
printed separately). Accuracy: the largest |Laplace mean - NUTS mean| / NUTS sd over the 11
coefficients, where Laplace's mean is its mode (exactly the mean of its Gaussian).

Targets: Laplace at least 100x faster, every mean within 0.1 NUTS sd. Exits with status 1 if either
is missed. To tell the approximation's own error from Monte-Carlo noise, the script also reweights
Laplace draws by PSIS (importance weights p(x, z) / q(z)) and compares that mean with NUTS: where
they agree, the gap is the distance between the posterior's mode and its mean (skewness).
"""

import argparse
import statistics
import sys
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor on import
    import arviz as az
from inference.diagnostics import compare, summarize
from inference.laplace import laplace
from inference.mcmc import nuts

NUM_POINTS, NUM_FEATURES = 500, 10
SPEEDUP_TARGET, ERROR_TARGET = 100.0, 0.1


def logistic_regression(X, y):
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)


def make_data(seed, coef_scale):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(NUM_POINTS, NUM_FEATURES, generator=g)
    w = coef_scale * torch.randn(NUM_FEATURES, generator=g)
    y = torch.bernoulli(torch.sigmoid(X @ w - 0.3), generator=g)
    return X, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed Laplace calls (median reported)")
    parser.add_argument("--coef-scale", type=float, default=0.5, help="sd of the true coefficients")
    args = parser.parse_args(argv)
    X, y = make_data(args.seed, args.coef_scale)

    start = time.perf_counter()
    laplace(logistic_regression, X, y, seed=args.seed)
    cold = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        fit_laplace = laplace(logistic_regression, X, y, seed=args.seed)
        times.append(fit_laplace.seconds)
    laplace_seconds = statistics.median(times)

    fit_nuts = nuts(logistic_regression, X, y, num_samples=1000, warmup_steps=500, num_chains=1, seed=args.seed)
    nuts_draws = {k: v.reshape(-1, *v.shape[2:]).double() for k, v in fit_nuts.chains.items()}
    worst = _largest_error(fit_laplace.params, nuts_draws)

    # PSIS-reweighted Laplace draws estimate the exact posterior mean
    draws = fit_laplace.samples(4000, seed=args.seed + 1)
    log_weights, khat = az.psislw(fit_laplace.log_weights(4000, seed=args.seed + 1))
    weights = torch.as_tensor(np.exp(log_weights))
    reweighted = {k: torch.einsum("n,n...->...", weights, v.double()) for k, v in draws.items()}
    worst_reweighted = _largest_error(reweighted, nuts_draws)
    ratio = fit_nuts.seconds / laplace_seconds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = compare({"laplace": fit_laplace, "nuts": fit_nuts}, reference="nuts", seed=args.seed)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    print(summarize(table).to_string(float_format=lambda v: f"{v:.4g}"))
    print()
    print(f"data: {NUM_POINTS} points, {NUM_FEATURES} features + intercept (seed {args.seed})")
    print(
        f"NUTS: {fit_nuts.diagnostics['num_divergences']} divergences, min bulk ESS "
        f"{min(float(v.min()) for v in fit_nuts.diagnostics['ess_bulk'].values()):.0f}"
    )
    print(
        f"Laplace wall time: {laplace_seconds * 1e3:.1f} ms (median of {args.repeats}; first call in this "
        f"process {cold:.2f} s)"
    )
    print(f"NUTS wall time (1000 draws, 500 warm-up, 1 chain): {fit_nuts.seconds:.2f} s")
    print(f"speed-up NUTS / Laplace: {ratio:.0f}x (target >= {SPEEDUP_TARGET:.0f}x)")
    print(f"largest |Laplace mean - NUTS mean| / NUTS sd: {worst:.3f} (target < {ERROR_TARGET})")
    print(f"  Laplace + PSIS reweighting (k-hat {khat:.2f}), same measure: {worst_reweighted:.3f}")
    missed = [
        name for name, ok in [("speed-up", ratio >= SPEEDUP_TARGET), ("accuracy", worst < ERROR_TARGET)] if not ok
    ]
    print("targets met" if not missed else f"targets missed: {', '.join(missed)}")
    return 1 if missed else 0


def _largest_error(means, reference_draws):
    """max over elements of |mean - reference mean| / reference sd."""
    return max(float(((means[k].double() - x.mean(0)) / x.std(0)).abs().max()) for k, x in reference_draws.items())


if __name__ == "__main__":
    sys.exit(main())
