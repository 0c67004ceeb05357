"""`zoo fit vae | beta-vae`: train a (beta-)VAE on built-in or given images, evaluate it, write its files.

The job runs in one process; in ``--nproc`` local processes that form one torch.distributed group
(:func:`inference.distributed.spawn`); or, under torchrun, as this process's rank of the launcher's group.
This launching code holds the distributed plumbing, as nanoGPT's train.py does: it joins the group, gives
each rank its shard of the training and validation data (``--batch-size`` is per process), and lets rank 0
alone evaluate on the whole test set and write files. ``VAE.fit(distributed=True)`` does the rest
(:func:`inference.distributed.svi_settings`: the same steps on every rank, averaged gradients).

Files in ``--out``: summary.json (settings, data sizes, steps, test ELBO and its parts, IWAE, the KL split
and, on shapes, MIG and the FactorVAE score), reconstructions.png, samples.png, traversals.png,
kl_per_dim.png, losses.png, model.pt (``VAE.load``) and checkpoint.pt (``--resume`` continues from it).

The argparse ``type=`` validators of the command's own arguments live here too (``device``, ...).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.multiprocessing import ProcessExitedException

from inference import distributed
from inference.common import generator
from inference.errors import InferenceError, InvalidInputError
from inference.files import atomic_write_text
from inference.plots import save_figure
from zoo import data, metrics
from zoo.vae import (
    VAE,
    BetaVAE,
    format_kl_split,
    plot_kl_per_dim,
    plot_losses,
    plot_reconstructions,
    plot_samples,
    plot_traversals,
)

FIGURES = ("reconstructions.png", "samples.png", "traversals.png", "kl_per_dim.png", "losses.png")


# ---- launching: one process, local processes, or a torchrun rank -------------------------------------------
def main(args):
    """`zoo fit vae|beta-vae` with the parsed command-line ``args`` (an argparse Namespace).

    Args:
        args: the Namespace of ``zoo fit vae``'s parser (zoo.cli).

    Returns:
        None on success, or the exit status of a spawned process that failed.
    """
    if distributed.launched():  # torchrun started this process as one rank of its group
        device = distributed.setup(device=args.device.type)
        try:
            return fit(args, device)
        finally:
            distributed.teardown()
    if args.nproc == 1:
        return fit(args, args.device)
    if args.device.type == "cuda" and args.nproc > torch.cuda.device_count():
        raise InvalidInputError(
            f"--nproc {args.nproc} with --device cuda needs {args.nproc} GPUs; {torch.cuda.device_count()} visible"
        )
    load_data(args)  # bad --data fails here, once, before any process starts
    try:
        distributed.spawn(run_rank, args.nproc, args, device=args.device.type)
    except ProcessExitedException as e:  # a rank reported a InferenceError and exited
        return e.exit_code


def run_rank(args):
    """One spawned rank: an error of the user's input is printed (by rank 0) and ends the process with 2."""
    try:
        fit(args, distributed.setup(device=args.device.type))
    except InferenceError as e:
        if distributed.is_writer():
            print(f"zoo: error: {e}", file=sys.stderr)
        sys.exit(2)


# ---- the job ------------------------------------------------------------------------------------------------
def load_data(args):
    """The data of ``--data``, split into training, validation (10% of training) and test images.

    Args:
        args: reads data, n, size, seed and architecture.

    Returns:
        (x_train, x_val, x_test, factors_test or None), images [n, *item] and factors [n_test, 5] (shapes only).
    """
    kind, paths = args.data[0], args.data[1:]
    factors = None
    if kind == "digits" and not paths:
        x_train, x_test, _, _ = data.digits(images=args.architecture == "conv")
    elif kind == "shapes" and not paths:
        x, f = data.shapes(args.n, size=args.size, seed=args.seed)
        n_test = max(1, args.n // 5)
        x_train, x_test, factors = x[n_test:], x[:n_test], f[:n_test]
    elif kind == "mnist" and 1 <= len(paths) <= 2:
        x = data.load_mnist(*paths)
        x = x[0] if isinstance(x, tuple) else x
        n_test = max(1, len(x) // 7)
        x_train, x_test = x[:-n_test], x[-n_test:]
        if args.architecture == "mlp":
            x_train, x_test = x_train.flatten(1), x_test.flatten(1)
    else:
        raise InvalidInputError(
            f"--data must be 'digits', 'shapes' or 'mnist IMAGES_IDX [LABELS_IDX]', got {' '.join(args.data)!r}"
        )
    perm = torch.randperm(len(x_train), generator=generator(args.seed))
    n_val = max(1, len(x_train) // 10)
    return x_train[perm[n_val:]], x_train[perm[:n_val]], x_test, factors


def fit(args, device):
    """Train on this process's data, then (rank 0) evaluate and write the files to ``--out``.

    Args:
        args: the command's Namespace.
        device: the torch.device this process computes on.
    """
    out = Path(args.out)
    x_train, x_val, x_test, factors = load_data(args)
    x_train, x_val, x_test = x_train.to(device), x_val.to(device), x_test.to(device)
    n_train, n_val, nproc = len(x_train), len(x_val), distributed.world_size()
    klass = BetaVAE if args.model == "beta-vae" else VAE
    model = klass(
        latent_dim=args.latent_dim,
        architecture=args.architecture,
        likelihood=args.likelihood,
        beta=args.beta,
        anneal_epochs=args.anneal_epochs,
    ).to(device)
    if distributed.is_writer():
        print(
            f"zoo fit {args.model}: {model!r} on {args.data[0]} ({n_train} train, {n_val} validation, "
            f"{len(x_test)} test, items {tuple(x_train.shape[1:])}) on {device}"
            + (f", {nproc} processes x batch {args.batch_size}" if nproc > 1 else ""),
            flush=True,
        )
    if nproc > 1:  # every rank trains on its shard; rank 0 alone evaluates on the whole test set and writes
        x_train, x_val = distributed.shard(x_train), distributed.shard(x_val)
    model.fit(
        x_train,
        x_val,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        checkpoint=out / "checkpoint.pt",
        resume=args.resume,
        seed=args.seed,
        progress=args.progress,
        distributed=nproc > 1,
    )
    if not distributed.is_writer():
        return
    summary = {
        "model": args.model,
        "settings": model.get_params(),
        "data": " ".join(args.data),
        "n_train": n_train,
        "n_validation": n_val,
        "n_test": len(x_test),
        "nproc": nproc,
        "steps": int(model.losses_.size),
        "seconds": round(model.fit_.seconds, 2),
        "stopped_at_step": model.fit_.diagnostics["stopped_at"],
        **evaluate(model, x_test, factors, args),
    }
    write_figures(model, x_test, summary["kl_split"], out, seed=args.seed)
    model.save(out / "model.pt")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(
        f"test ELBO {summary['test_elbo']:.3f}  IWAE(k={args.iwae_k}) {summary['test_iwae']:.3f}  "
        f"{format_kl_split(summary['kl_split'])}"
        + (f"  MIG {summary['mig']:.3f}  FactorVAE {summary['factorvae_score']:.3f}" if factors is not None else "")
    )
    print(f"wrote {', '.join(FIGURES)}, summary.json, model.pt, checkpoint.pt to {out}/")


def evaluate(model, x_test, factors, args):
    """The test-set numbers of summary.json: ELBO and its parts, IWAE, the KL split, MIG and FactorVAE.

    The ELBO uses the whole test set (10 draws per image); the KL split, whose cost is quadratic in the
    number of images, and the disentanglement scores use its first 2000; IWAE its first 1000.

    Args:
        model: the fitted VAE.
        x_test: test images [n, *item].
        factors: their generating factors [n, 5], or None.
        args: reads seed and iwae_k.

    Returns:
        dict of plain values (floats, lists, dicts).
    """
    x_eval = x_test[:2000]
    rec, kl = model.elbo_parts(x_test, num_samples=10, seed=args.seed)
    summary = {
        "test_elbo": (rec - kl).mean().item(),
        "test_reconstruction": rec.mean().item(),
        "test_kl": kl.mean().item(),
        "test_iwae": model.iwae(x_eval[:1000], k=args.iwae_k, seed=args.seed),
        "iwae_k": args.iwae_k,
        "kl_split": model.kl_split(x_eval, seed=args.seed),
    }
    if factors is not None:
        codes = model.codes(x_eval)
        f = factors[: len(x_eval)]
        score, gaps = metrics.mig(codes, f, per_factor=True)
        summary["mig"] = score
        summary["mig_per_factor"] = {
            name: (None if np.isnan(g) else float(g))  # NaN: a constant factor
            for name, g in zip(data.SHAPES_FACTORS, gaps)
        }
        summary["factorvae_score"] = metrics.factorvae_score(codes, f, seed=args.seed)
    return summary


def write_figures(model, x_test, split, out, seed=0):
    """Write the five figures (``FIGURES``) into ``out``.

    Args:
        model: the fitted VAE.
        x_test: test images [n, *item].
        split: the model's KL split on them.
        out: the output folder.
        seed: seeds the prior samples.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, whatever backend the environment asks for
    figures = {
        "reconstructions.png": lambda: plot_reconstructions(model, x_test),
        "samples.png": lambda: plot_samples(model, 64, seed=seed),
        "traversals.png": lambda: plot_traversals(model, x_test[:1]),
        "kl_per_dim.png": lambda: plot_kl_per_dim(split),
        "losses.png": lambda: plot_losses(model),
    }
    for name in FIGURES:
        save_figure(figures[name](), out / name, dpi=100)
