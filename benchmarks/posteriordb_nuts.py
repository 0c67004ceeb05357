"""NUTS on the posteriordb suite: how close ``inference.nuts`` comes to each reference, and how fast.

    python benchmarks/posteriordb_nuts.py [--posteriors NAME ...] [--num-samples 1000] [--warmup 500]
                                          [--seed 0] [--threads 1]

For each posterior of ``zoo.posteriordb`` (all by default): one chain of ``inference.nuts`` with the
posterior's own settings (``p.nuts``), then per latent element

    error = (mean - mean_ref) / sd_ref,   sd_ratio = sd / sd_ref,

and one line: the largest |error|, the smallest and largest sd ratio, the smallest bulk ESS, the
divergences and the seconds. With ESS draws the Monte Carlo error of a mean is 1/sqrt(ESS) reference
sds (0.03 at ESS 1000), so |error| above ~4/sqrt(ESS) points at the sampler or the transcription, not
at chance. Runs in float64 (the GP's jitter needs it) on ``--threads`` torch threads: these models are
small, and more threads only add synchronisation.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from inference.diagnostics import flat_elements  # noqa: E402
from inference.mcmc import nuts  # noqa: E402
from zoo import posteriordb  # noqa: E402


def run(p, num_samples, warmup, seed, **extra):
    """One NUTS chain on posterior ``p``; returns a dict of the summary numbers."""
    start = time.perf_counter()
    fit = nuts(
        p.model, *p.data, num_samples=num_samples, warmup_steps=warmup, seed=seed, progress=False, **{**p.nuts, **extra}
    )
    seconds = time.perf_counter() - start
    draws = {k: v.double().numpy().reshape(-1, *v.shape[2:]) for k, v in fit.chains.items()}
    errors, ratios = [], []
    for label, x in flat_elements(draws, list(draws)):
        mean, sd = p.reference[label]
        errors.append((x.mean() - mean) / sd)
        ratios.append(x.std(ddof=1) / sd)
    ess = min(float(np.min(e)) for e in fit.diagnostics["ess_bulk"].values())
    return {
        "max_abs_error": float(np.max(np.abs(errors))),
        "min_sd_ratio": float(np.min(ratios)),
        "max_sd_ratio": float(np.max(ratios)),
        "min_ess": ess,
        "divergences": fit.diagnostics["num_divergences"],
        "seconds": seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriors", nargs="+", default=None, help="names (default: all)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    names = args.posteriors or posteriordb.names()
    posteriors = [posteriordb.load(name) for name in names]  # unknown names fail before any run

    header = f"{'posterior':34s} {'max|err|':>8s} {'sd ratio':>13s} {'min ESS':>7s} {'div':>4s} {'seconds':>8s}"
    print(header, flush=True)
    for p in posteriors:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = run(p, args.num_samples, args.warmup, args.seed)
        print(
            f"{p.name:34s} {r['max_abs_error']:8.3f} {r['min_sd_ratio']:6.2f}-{r['max_sd_ratio']:<6.2f} "
            f"{r['min_ess']:7.0f} {r['divergences']:4d} {r['seconds']:8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
