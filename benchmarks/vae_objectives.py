"""A VAE trained on the IWAE bound against one trained on the ELBO: the held-out IWAE bound each reaches.

The importance-weighted bound with K draws per data point (Burda et al. 2016),

    L_K(x) = E[ log (1/K) Σ_k p(x, z_k) / q(z_k | x) ],   z_k ~ q(z | x),

is the ELBO at K = 1 and rises with K towards log p(x); training on it (``elbo="iwae"``,
``num_particles=K``) maximises a tighter bound on the likelihood than the ELBO does. Every run trains
``zoo.VAE`` (the same networks, Adam, batch 128) on the 8x8 digits' training split and reports, on the
test split, the mean IWAE bound with ``--eval-k`` draws (nats per image: the closer to log p(x), the
better the model) and the ELBO. Objectives:

    elbo         the VAE's default: the ELBO with the closed-form KL, one draw per image ("jit-meanfield")
    elbo-K       the ELBO averaged over K draws per image ("meanfield", num_particles=K): the same draws
                 as iwae-K, so the difference is the objective, not the number of samples
    iwae-K       the IWAE bound with K draws per image (elbo="iwae", num_particles=K)
    elbo-time    "elbo" trained for as long as iwae-K took (more epochs; CPU time of this one-thread process,
                 the wall time of a quiet machine)

Same seeds for every objective (networks, minibatch order); the table gives the mean and sd over seeds, and
the per-seed (paired) difference to "elbo".

    OMP_NUM_THREADS=1 python benchmarks/vae_objectives.py [--epochs 100] [--seeds 4] [--k 5] [--eval-k 1000]
"""

import argparse
import time
import warnings

import numpy as np
import torch

import inference
from zoo import VAE
from zoo.data import digits


def train(x, objective, k, epochs, seed, latent_dim):
    """A VAE trained with ``objective``; (vae, wall seconds, CPU seconds of this process)."""
    settings = {
        "elbo": {},
        "elbo-k": {"elbo": "meanfield", "num_particles": k, "vectorize_particles": True, "max_plate_nesting": 1},
        "iwae-k": {"elbo": "iwae", "num_particles": k, "vectorize_particles": True, "max_plate_nesting": 1},
    }[objective]
    vae = VAE(latent_dim=latent_dim)
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", inference.ConvergenceWarning)  # judged here on held-out data
        vae.fit(x, epochs=epochs, batch_size=128, lr=1e-3, seed=seed, progress=False, **settings)
    return vae, time.perf_counter() - start, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--k", type=int, default=5, help="draws per image of the training objectives")
    parser.add_argument("--eval-k", type=int, default=1000, help="draws per image of the test IWAE bound")
    parser.add_argument("--latent-dim", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = digits()
    x_train, x_test = split.x_train, split.x_test
    names = ["elbo", f"elbo-{args.k}", f"iwae-{args.k}", "elbo-time"]
    rows = {name: {"epochs": [], "seconds": [], "cpu": [], "iwae": [], "elbo": []} for name in names}

    def record(name, vae, seconds, cpu, epochs, seed):
        row = rows[name]
        row["epochs"].append(epochs)
        row["seconds"].append(seconds)
        row["cpu"].append(cpu)
        row["iwae"].append(vae.iwae(x_test, k=args.eval_k, seed=0))
        row["elbo"].append(vae.elbo(x_test, num_samples=100, seed=0))
        print(
            f"  seed {seed}  {name:<10} {epochs:>5} epochs  {seconds:7.1f} s ({cpu:6.1f} s CPU)  "
            f"test IWAE({args.eval_k}) {row['iwae'][-1]:8.3f}  test ELBO {row['elbo'][-1]:8.3f}",
            flush=True,
        )

    for objective in ("elbo", "elbo-k", "iwae-k"):  # warm-up: the first fit of each pays one-off costs
        train(x_train, objective, args.k, 1, 0, args.latent_dim)
    for seed in range(args.seeds):
        for name, objective in zip(names[:3], ("elbo", "elbo-k", "iwae-k")):
            record(name, *train(x_train, objective, args.k, args.epochs, seed, args.latent_dim), args.epochs, seed)
        # The ELBO given the time the IWAE run took: epochs in proportion to the time per epoch. The time is
        # this process's CPU time (one thread), which is its wall time on a quiet machine and, unlike the
        # wall time, does not depend on what else a shared machine runs.
        budget = rows[names[2]]["cpu"][-1] / rows["elbo"]["cpu"][-1]
        epochs = max(args.epochs, round(args.epochs * budget))
        record("elbo-time", *train(x_train, "elbo", args.k, epochs, seed, args.latent_dim), epochs, seed)

    base = np.array(rows["elbo"]["iwae"])
    print(
        f"\nzoo.VAE on the 8x8 digits (train {len(x_train)}, test {len(x_test)}), latent {args.latent_dim}, "
        f"batch 128, Adam 1e-3, {args.epochs} epochs, {args.seeds} seeds; nats per image, mean ± sd over seeds"
    )
    header = (
        f"{'objective':<11} {'epochs':>7} {'CPU s':>7} {f'test IWAE({args.eval_k})':>18} "
        f"{'test ELBO':>16} {'IWAE − elbo, paired':>26} {'seeds better':>13}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        row = {key: np.array(value, dtype=float) for key, value in rows[name].items()}
        diff = row["iwae"] - base
        paired = (
            ""
            if name == "elbo"
            else (
                f"{diff.mean():+7.3f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.3f} "
                f"[{diff.min():+.2f}, {diff.max():+.2f}]"
            )
        )
        better = "" if name == "elbo" else f"{int((diff > 0).sum())}/{len(diff)}"
        print(
            f"{name:<11} {row['epochs'].mean():>7.0f} {row['cpu'].mean():>7.1f} "
            f"{row['iwae'].mean():>10.3f} ± {row['iwae'].std(ddof=1) if len(diff) > 1 else 0:.3f} "
            f"{row['elbo'].mean():>8.3f} ± {row['elbo'].std(ddof=1) if len(diff) > 1 else 0:.3f} "
            f"{paired:>26} {better:>13}"
        )


if __name__ == "__main__":
    main()
