"""Pathfinder on the posteriordb suite: how close to each reference, how fast next to NUTS.

    python benchmarks/pathfinder.py [--posteriors NAME ...] [--quick] [--no-nuts] [--num-paths 4]
                                    [--seed 0] [--threads 1]

For each posterior of ``zoo.posteriordb`` (all by default): multi-path ``inference.pathfinder`` with its
defaults, 4000 of its PSIS-resampled draws, and per latent element

    error = (mean - mean_ref) / sd_ref,   sd_ratio = sd / sd_ref;

one line per posterior: the largest abs(error), the smallest and largest sd ratio, the PSIS k-hat,
whether the fit's own verdict trusts it, Pathfinder's seconds, and the seconds of one NUTS chain (1000
draws after 500 warm-up steps, the posterior's own settings ``p.nuts``) run in the same process, with
their ratio. The last line gives the geometric mean of the time ratios. With 4000 resampled draws of
effective size ESS, the Monte Carlo error of a mean is about 1/sqrt(ESS) reference sds: an error well above
that is the approximation's, not chance. ``--quick`` runs the posteriors whose NUTS run is cheap (see
``Posterior.cheap``) plus the two small posteriordb regressions. A first untimed Pathfinder call on a
small model pays the one-time imports of the potential's capture.
"""

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from inference.diagnostics import flat_elements  # noqa: E402
from inference.mcmc import nuts  # noqa: E402
from inference.pathfinder import pathfinder  # noqa: E402
from zoo import posteriordb  # noqa: E402

QUICK_EXTRA = ["earnings-logearn_interaction_z", "kilpisjarvi_mod-kilpisjarvi"]
NUM_DRAWS = 4000


def errors(p, draws):
    """Largest abs(error) in reference sds and the smallest and largest sd ratio over the elements."""
    draws = {k: v.double().numpy() for k, v in draws.items()}
    errs, ratios = [], []
    for label, x in flat_elements(draws, list(draws)):
        mean, sd = p.reference[label]
        errs.append((x.mean() - mean) / sd)
        ratios.append(x.std(ddof=1) / sd)
    return float(np.max(np.abs(errs))), float(np.min(ratios)), float(np.max(ratios))


def run(p, num_paths, seed, with_nuts):
    """Pathfinder (and NUTS) on posterior ``p``; a dict of the summary numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the verdict is reported in the table instead
        fit = pathfinder(p.model, *p.data, num_paths=num_paths, seed=seed, progress=False)
    err, lo, hi = errors(p, fit.draw(NUM_DRAWS, seed))
    row = {
        "max_abs_error": err,
        "min_sd_ratio": lo,
        "max_sd_ratio": hi,
        "khat": fit.diagnostics["khat"],
        "ess": fit.diagnostics["ess"],
        "trusted": fit.diagnostics["converged"],
        "seconds": fit.seconds,
        "nuts_seconds": math.nan,
    }
    if with_nuts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            nuts(p.model, *p.data, num_samples=1000, warmup_steps=500, seed=seed, progress=False, **p.nuts)
            row["nuts_seconds"] = time.perf_counter() - start
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriors", nargs="+", default=None, help="names (default: all)")
    parser.add_argument("--quick", action="store_true", help="only the posteriors cheap for NUTS")
    parser.add_argument("--no-nuts", action="store_true", help="skip the NUTS timing")
    parser.add_argument("--num-paths", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    names = args.posteriors or posteriordb.names()
    if args.quick and not args.posteriors:
        names = [n for n in names if posteriordb.load(n).cheap or n in QUICK_EXTRA]
    posteriors = [posteriordb.load(name) for name in names]  # unknown names fail before any run

    warm = posteriordb.load("conjugate-normal-mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pathfinder(warm.model, *warm.data, progress=False)

    print(
        f"{'posterior':32s} {'max|err|':>8s} {'sd ratio':>11s} {'k-hat':>5s} {'ESS':>5s} {'trust':>5s} "
        f"{'pf s':>6s} {'nuts s':>6s} {'nuts/pf':>7s}",
        flush=True,
    )
    ratios = []
    for p in posteriors:
        r = run(p, args.num_paths, args.seed, not args.no_nuts)
        ratio = r["nuts_seconds"] / r["seconds"]
        if math.isfinite(ratio):
            ratios.append(ratio)
        print(
            f"{p.name:32s} {r['max_abs_error']:8.3f} {r['min_sd_ratio']:5.2f}-{r['max_sd_ratio']:<5.2f} "
            f"{r['khat']:5.2f} {r['ess']:5.0f} {'yes' if r['trusted'] else 'no':>5s} {r['seconds']:6.1f} "
            f"{r['nuts_seconds']:6.1f} {ratio:7.1f}",
            flush=True,
        )
    if ratios:
        print(
            f"NUTS time / Pathfinder time, geometric mean over {len(ratios)} posteriors: "
            f"{math.exp(np.mean(np.log(ratios))):.1f}x"
        )


if __name__ == "__main__":
    main()
