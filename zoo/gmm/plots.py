"""Figures of a fitted mixture."""

import numpy as np
import torch
from matplotlib.figure import Figure

from .covariance import COVARIANCES

MARKERS = "os^DvpP*"


def plot_clusters(X, fits, gmm, truth=None):
    """The data (first two coordinates) coloured by EM's assignment, EM's 2-sd ellipses, and each fit's
    posterior-mean means.

    Args:
        X: data [N, D].
        fits: {name: Fit} with a "means" site [K, D].
        gmm: the fitted ``GaussianMixture``.
        truth: optional true means [K, D], marked with "+".
    """
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot()
    x = X.double().cpu().numpy()
    y = x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))
    ax.scatter(x[:, 0], y, c=gmm.predict(X).cpu().numpy(), cmap="tab10", s=8, alpha=0.5, vmin=0, vmax=9)
    if x.shape[1] > 1:
        cov = COVARIANCES[gmm.covariance_type].matrix(gmm.covariances_.double().cpu(), x.shape[1])
        t = np.linspace(0, 2 * np.pi, 100)
        for k in range(gmm.n_components):
            vals, vecs = np.linalg.eigh(cov[k, :2, :2].numpy())
            ellipse = (vecs * 2 * np.sqrt(vals)) @ np.stack([np.cos(t), np.sin(t)])
            ax.plot(*(gmm.means_[k, :2].double().cpu().numpy()[:, None] + ellipse), color="k", lw=0.8)
    for i, (name, fit) in enumerate(fits.items()):
        m = fit.samples(200)["means"].double().mean(0).cpu().numpy()
        ax.scatter(
            m[:, 0],
            m[:, 1] if m.shape[1] > 1 else np.zeros(len(m)),
            marker=MARKERS[i % len(MARKERS)],
            s=60,
            facecolors="none",
            edgecolors=f"C{i}",
            linewidths=1.5,
            label=name,
        )
    if truth is not None:
        t_ = np.asarray(torch.as_tensor(truth).cpu(), dtype=float)
        ax.scatter(
            t_[:, 0], t_[:, 1] if t_.shape[1] > 1 else np.zeros(len(t_)), marker="+", s=120, color="k", label="truth"
        )
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]" if x.shape[1] > 1 else "")
    ax.set_title(f"{gmm.n_components}-component mixture, EM clusters (2-sd ellipses) and each method's means")
    return fig
