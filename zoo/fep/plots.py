"""Figures of a simulation's table (:func:`simulate`, :func:`sweep`)."""

import numpy as np


def plot_trajectories(table, *, agent=0, action_onset=None):
    """The paper's figure: world (T, position), beliefs, sensations, action and free energy over time.

    Args:
        table: the table of :func:`simulate`.
        agent: which agent of a batch to draw.
        action_onset: draws a dotted line at this time when given.

    Returns:
        matplotlib Figure with 5 rows of axes.
    """
    import matplotlib.pyplot as plt

    d = table[table["agent"] == agent]
    fig, axes = plt.subplots(5, 1, figsize=(7, 10), sharex=True)
    panels = [
        (["T", "position"], "world"),
        ([c for c in d.columns if c.startswith("mu")], "beliefs"),
        ([c for c in d.columns if c.startswith("phi")], "sensations"),
        (["a"], "action"),
        (["F"], "free energy"),
    ]
    for ax, (cols, label) in zip(axes, panels):
        for c in cols:
            ax.plot(d["t"], d[c], label=c, lw=1)
        ax.set_ylabel(label)
        ax.legend(loc="upper right", fontsize=8)
        if action_onset is not None:
            ax.axvline(action_onset, color="0.7", ls=":", lw=1)
    axes[-1].set_yscale("log")
    axes[-1].set_xlabel("time")
    fig.suptitle("FEP thermostat agent (Buckley et al. 2017)")
    fig.tight_layout()
    return fig


def plot_sweep(table, *, T_desire=4.0):
    """How precisions change behaviour: temperature and belief μ over time for each (σ_z, σ_w) pair, and the
    belief μ reached just before action as a heat map over the grid.

    Args:
        table: the table of :func:`sweep`.
        T_desire: the desired temperature, drawn as a dotted line.

    Returns:
        matplotlib Figure with 3 panels.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    agents = table.drop_duplicates("agent")[["agent", "sigma_z", "sigma_w"]]
    cmap = plt.get_cmap("viridis")
    ratios = np.log10(agents["sigma_w"].to_numpy() / agents["sigma_z"].to_numpy())
    span = max(np.ptp(ratios), 1e-12)
    for (_, row), r in zip(agents.iterrows(), ratios):
        d = table[table["agent"] == row["agent"]]
        color = cmap((r - ratios.min()) / span)
        label = f"σz={row['sigma_z']:g}, σw={row['sigma_w']:g}"
        axes[0].plot(d["t"], d["T"], color=color, lw=1, label=label)
        axes[1].plot(d["t"], d["mu"], color=color, lw=1)
    axes[0].axhline(T_desire, color="k", ls=":", lw=1)
    axes[0].set(xlabel="time", ylabel="temperature T", title="world temperature")
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].set(xlabel="time", ylabel="belief μ", title="belief (colour: log10 σw/σz)")
    onset = table.loc[table["a"] != 0, "t"].min()
    before = table[table["t"] < onset] if np.isfinite(onset) else table  # strictly before acting
    settled = before[before["t"] == before["t"].max()].pivot(index="sigma_z", columns="sigma_w", values="mu")
    im = axes[2].imshow(settled.to_numpy(), origin="lower", cmap="magma")
    axes[2].set_xticks(range(settled.shape[1]), [f"{v:g}" for v in settled.columns])
    axes[2].set_yticks(range(settled.shape[0]), [f"{v:g}" for v in settled.index])
    axes[2].set(xlabel="σ_w (model variance)", ylabel="σ_z (sensory variance)", title="μ before action")
    low, high = np.nanmin(settled.to_numpy()), np.nanmax(settled.to_numpy())
    for (i, j), v in np.ndenumerate(settled.to_numpy()):
        light = high > low and (v - low) / (high - low) > 0.6
        axes[2].text(j, i, f"{v:.1f}", ha="center", va="center", color="k" if light else "w", fontsize=8)
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    return fig
