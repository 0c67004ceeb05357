"""How the guide family changes the answer: SVI with each family on a correlated Gaussian posterior.

The target is z ~ N(m, Σ) with correlation ``--rho`` (a model without data, so the posterior is the prior).
For each family (``inference.guide(model, name)``) it prints the fitted sds over the exact marginal sds and
the fitted correlation, and draws each family's draws over the exact 2-sd ellipse. For the mean-field
family the KL(q ‖ p) optimum has sds 1/sqrt(Λ_ii) = sqrt(1 - ρ²) times the marginal ones, printed beside.

    python benchmarks/guide_families.py --out /tmp/guides     # writes guide_families.png
"""

import argparse
import math
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure

import inference
from inference.plots import save_figure

FAMILIES = ("meanfield", "lowrank", "fullrank", "flow")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rho", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="guide-families")
    args = parser.parse_args()
    sd = torch.tensor([1.0, 3.0])
    cov = torch.diag(sd) @ torch.tensor([[1.0, args.rho], [args.rho, 1.0]]) @ torch.diag(sd)

    def model():
        pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), cov))

    fig = Figure(figsize=(3.2 * len(FAMILIES), 3.4))
    t = np.linspace(0, 2 * np.pi, 200)
    vals, vecs = np.linalg.eigh(cov.numpy())
    ellipse = (vecs * 2 * np.sqrt(vals)) @ np.stack([np.cos(t), np.sin(t)])
    print(
        f"exact sds {sd.tolist()}, correlation {args.rho}; mean-field optimum sds / marginal sds: "
        f"{math.sqrt(1 - args.rho**2):.3f}"
    )
    for i, name in enumerate(FAMILIES):
        with warnings.catch_warnings(record=True) as heard:
            warnings.simplefilter("always", inference.ConvergenceWarning)
            fit = inference.svi(
                model, inference.guide(model, name), steps=args.steps, lr=0.02, num_particles=4, progress=False, seed=0
            )
        z = fit.samples(4000, seed=1)["z"]
        ratio = (z.std(0) / sd).tolist()
        corr = float(torch.corrcoef(z.T)[0, 1])
        warned = any(issubclass(w.category, inference.ConvergenceWarning) for w in heard)
        print(
            f"{name:10s} sd ratios {ratio[0]:.3f} {ratio[1]:.3f}  correlation {corr:+.3f}  "
            f"k-hat {fit.diagnostics.get('khat', float('nan')):.2f}  warned {warned}  {fit.seconds:.1f} s"
        )
        ax = fig.add_subplot(1, len(FAMILIES), i + 1)
        ax.scatter(z[:800, 0], z[:800, 1], s=3, alpha=0.4, color=f"C{i}")
        ax.plot(*ellipse, color="k", lw=1)
        ax.set_title(f"{name}: sd ratio {min(ratio):.2f}{' (warned)' if warned else ''}", fontsize=9)
        ax.set_xlim(-4, 4)
        ax.set_ylim(-10, 10)
    fig.suptitle(f"SVI with each guide family on a Gaussian with correlation {args.rho} (black: exact 2-sd)")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("wrote", save_figure(fig, out / "guide_families.png"))


if __name__ == "__main__":
    main()
