"""Does the beta-VAE disentangle better than the VAE, and reconstruct worse? (MATH.md §3)

Trains a VAE (beta = 1) and a beta-VAE (beta = --beta) with the same data, networks, epochs and seeds on
procedural shapes with known factors, and prints per seed and on average: MIG, the FactorVAE score,
the held-out reconstruction term E log p(x|z) and KL, and the ratio of the beta-VAE's MIG to the VAE's.
Too slow and too seed-dependent for the test suite (Locatello et al. 2019 find the seed matters as much
as beta), so it lives here; the test suite checks the reconstruction side and the metrics themselves.

    OMP_NUM_THREADS=1 python benchmarks/vae_disentanglement.py [--seeds 3] [--epochs 10] [--n 3000]
"""
import argparse
import time

import numpy as np

from zoo.data import shapes
from zoo.metrics import factorvae_score, mig
from zoo.vae import VAE


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--latent-dim", type=int, default=6)
    ap.add_argument("--all-factors", action="store_true",
                    help="all five factors (default: squares, upright: scale, x and y only)")
    args = ap.parse_args()

    grid = None if args.all_factors else {"shape": 1, "orientation": 1}
    x, _ = shapes(args.n, size=args.size, grid=grid, seed=0)
    x_test, f_test = shapes(2000, size=args.size, grid=grid, seed=1)
    print(f"shapes {args.size}x{args.size}, factors {'all' if grid is None else 'scale, x, y'}: "
          f"{args.n} train / 2000 test, latent {args.latent_dim}, {args.epochs} epochs, {args.seeds} seeds")
    print(f"{'model':10s} {'seed':>4s} {'MIG':>6s} {'FactorVAE':>9s} {'E log p(x|z)':>12s} {'KL':>6s} {'s':>5s}")
    results = {1.0: [], args.beta: []}
    for seed in range(args.seeds):
        for beta in results:
            t0 = time.perf_counter()
            vae = VAE(latent_dim=args.latent_dim, beta=beta).fit(x, epochs=args.epochs, batch_size=64,
                                                                  lr=1e-3, seed=seed, progress=False)
            codes = vae.codes(x_test)
            rec, kl = vae.elbo_parts(x_test, num_samples=5)
            row = (mig(codes, f_test), factorvae_score(codes, f_test, seed=seed), rec.mean().item(),
                   kl.mean().item())
            results[beta].append(row)
            print(f"beta={beta:<5g} {seed:4d} {row[0]:6.3f} {row[1]:9.3f} {row[2]:12.2f} {row[3]:6.2f} "
                  f"{time.perf_counter() - t0:5.1f}", flush=True)
    (v_mig, v_fv, v_rec, _), (b_mig, b_fv, b_rec, _) = (np.mean(results[b], axis=0) for b in results)
    wins = sum(b[0] > v[0] for v, b in zip(results[1.0], results[args.beta]))
    print(f"mean MIG: VAE {v_mig:.3f}, beta-VAE {b_mig:.3f} (ratio {b_mig / max(v_mig, 1e-12):.2f}; "
          f"beta-VAE higher in {wins}/{args.seeds} seeds); FactorVAE {v_fv:.3f} vs {b_fv:.3f}; "
          f"reconstruction {v_rec:.2f} vs {b_rec:.2f} nats")


if __name__ == "__main__":
    main()
