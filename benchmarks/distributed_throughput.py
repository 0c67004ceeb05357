"""Throughput of data-parallel VAE training: 1 process vs N processes (gradients averaged over gloo).

The baseline is one process training zoo.vae's VAE on the 8x8 digits with the plain ELBO ("trace", the
estimator the distributed path uses) and batch B; the distributed run uses N processes of batch B each
(a step sees N x B images), every process on cpu_count // N threads. Both are timed over the steps after
the first epoch (start-up and the first collectives excluded). The single process is timed on one
thread and on all cores. Prints images per second for each and the ratios (ideal: N against one thread,
if the machine has N free cores and communication were free).

    python benchmarks/distributed_throughput.py [--nproc 2] [--epochs 4] [--batch-size 128] [--hidden 256]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from inference import distributed
from zoo.data import digits
from zoo.vae import VAE


def train(x, epochs, batch_size, hidden, dist_on):
    """Images per second over the steps after the first epoch, summed over processes."""
    stamps = []
    vae = VAE(latent_dim=10, hidden=(hidden,))
    vae.fit(
        x,
        epochs=epochs,
        batch_size=batch_size,
        elbo="trace",
        progress=False,
        distributed=dist_on,
        grad_hook=lambda params: stamps.append(time.perf_counter()),
    )
    per_epoch = len(stamps) // epochs
    seconds = stamps[-1] - stamps[per_epoch - 1]
    steps = len(stamps) - per_epoch
    return steps * batch_size * distributed.world_size() / seconds, seconds / steps


def _rank(x, epochs, batch_size, hidden, out):
    rate, step = train(distributed.shard(x), epochs, batch_size, hidden, True)
    if distributed.rank() == 0:
        np.save(out, np.array([rate, step]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128, help="per process")
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args()
    x = digits()[0]
    x = x.repeat(4, 1)  # 5748 images: enough steps per epoch for N processes to be timed
    print(
        f"VAE (mlp {args.hidden}, latent 10) on {len(x)} digits, batch {args.batch_size} per process, "
        f"{os.cpu_count()} CPU cores"
    )

    base = {}
    for threads in sorted({1, os.cpu_count() or 1}):  # the single process on one core and on all of them
        torch.set_num_threads(threads)
        base[threads], step = train(x, args.epochs, args.batch_size, args.hidden, False)
        print(f"1 process, {threads} thread(s): {base[threads]:9.0f} images/s  ({1e3 * step:.2f} ms/step)")

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rate.npy")
        distributed.spawn(_rank, args.nproc, x, args.epochs, args.batch_size, args.hidden, out)
        rate, step = np.load(out)
    print(
        f"{args.nproc} processes: {rate:9.0f} images/s  ({1e3 * step:.2f} ms/step of {args.nproc} x "
        f"{args.batch_size} images)"
    )
    for threads, b in base.items():
        print(f"ratio {args.nproc} processes / 1 process with {threads} thread(s): {rate / b:.2f}x")


if __name__ == "__main__":
    main()
