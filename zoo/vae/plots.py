"""Figures of a fitted VAE: reconstructions, prior samples, latent traversals, the KL per latent dimension
and the training curves. Each function returns a matplotlib Figure (pyplot is imported on first use).
"""

import math

import numpy as np
import torch

from inference.errors import InvalidInputError

from .evaluation import format_kl_split


def _images(t):
    """Data items as images for imshow: [n, *item] -> numpy [n, H, W] (or [n, H, W, 3] for colour).

    Args:
        t: tensor [n, C, H, W], [n, H, W] or [n, D] with D a square number (flat square images).
    """
    t = t.detach().cpu()
    if t.dim() == 2:
        side = math.isqrt(t.shape[1])
        if side * side != t.shape[1]:
            raise InvalidInputError(f"items of {t.shape[1]} values are not square images; cannot draw them")
        return t.reshape(-1, side, side).numpy()
    if t.dim() == 4 and t.shape[1] == 3:
        return t.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    return t[:, 0].numpy()


def _grid(rows, titles=None, row_labels=None, scale=1.0):
    """A figure of grey images in rows, without axes.

    Args:
        rows: list of rows, each a sequence of images [H, W] with values in [0, 1].
        titles: the figure's title.
        row_labels: one label per row, left of it.
        scale: inches per image.
    """
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j], cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
    if titles:
        fig.suptitle(titles)
    return fig


def plot_reconstructions(vae, x, n=10):
    """Top row: data; bottom row: their reconstructions E[x | z = μ(x)].

    Args:
        vae: a fitted VAE.
        x: data [n, *item] (images, or flat square images).
        n: how many of them to draw.
    """
    x = x[:n]
    return _grid(
        [_images(x), _images(vae.reconstruct(x))], "data (top) and reconstructions (bottom)", ["data", "recon."]
    )


def plot_samples(vae, n=64, seed=0):
    """E[x | z] at draws z ~ N(0, I), in a square grid.

    Args:
        vae: a fitted VAE.
        n: number of draws.
        seed: seeds the draws.
    """
    imgs = _images(vae.sample(n, seed))
    side = math.ceil(math.sqrt(n))
    return _grid([imgs[i : i + side] for i in range(0, n, side)], "samples from the prior")


def plot_traversals(vae, x, n_steps=9, span=3.0):
    """Latent traversals: one row per latent dimension j, decoding μ(x) with z_j swept over [-span, span].

    Args:
        vae: a fitted VAE.
        x: one data point, [1, *item] (further rows are ignored).
        n_steps: values of z_j per row.
        span: the sweep's end, in prior sds.
    """
    loc = vae.encode(x[:1])[0][0]
    values = torch.linspace(-span, span, n_steps)
    rows, labels = [], []
    for j in range(vae.latent_dim):
        z = loc.repeat(n_steps, 1)
        z[:, j] = values.to(z.device)
        rows.append(_images(vae.decode(z)))
        labels.append(f"z{j}")
    return _grid(rows, f"latent traversals, z_j from {-span:g} to {span:g}", labels)


def plot_kl_per_dim(split):
    """Bars of the average KL(q(z_j | x) ‖ p(z_j)) of each latent dimension j, titled with the KL split.

    Args:
        split: a :func:`zoo.vae.kl_decomposition` result (``vae.kl_split(x)``).
    """
    import matplotlib.pyplot as plt

    kl = split["kl_per_dim"]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(kl) + 2), 3))
    ax.bar(range(len(kl)), kl, color="C0")
    ax.set_xticks(range(len(kl)))
    ax.set_xlabel("latent dimension j")
    ax.set_ylabel("KL (nats per data point)")
    ax.set_title(
        f"KL per dimension (bars: the exact KL, total {split['kl_exact']:.2f})\n" + format_kl_split(split, digits=2),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def plot_losses(vae):
    """Left: the training loss (−β-ELBO per data point) per step; right: per epoch, the held-out (or
    training-subset) reconstruction term −E log p(x|z) and KL, nats per data point.

    Args:
        vae: a fitted VAE (reads ``losses_``, ``n_train_`` and ``history_``).
    """
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(np.asarray(vae.losses_) / vae.n_train_, lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("loss per data point (nats)")
    a.set_title("training loss (−β-ELBO)")
    h = vae.history_
    b.plot(h["epoch"], [-r for r in h["reconstruction"]], label="reconstruction −E log p(x|z)")
    b.plot(h["epoch"], h["kl"], label="KL(q(z|x) || p(z))")
    b.plot(h["epoch"], [-e for e in h["elbo"]], label="−ELBO", color="k", lw=1)
    b.set_xlabel("epoch")
    b.set_ylabel("nats per data point")
    b.set_title("ELBO parts (β = 1)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
