"""Batched FEP agents against a loop of single agents in plain NumPy.

A sweep of 1 000 thermostat agents (Buckley et al. 2017; MATH.md §4.1) over sensory and model variances,
20 000 Euler steps each: ``zoo.fep.simulate`` moves all agents in each step's tensor operations; the
baseline runs the same update equations for one agent at a time in NumPy (timed on a few agents and scaled
to all of them). Both runs are checked to give the same trajectories on the timed agents. Prints both
times and the speed-up.

    OMP_NUM_THREADS=1 python benchmarks/fep_sweep.py [--agents 1000] [--baseline-agents 10] [--t-end 100]
"""

import argparse
import math
import time

import numpy as np
import torch

from zoo import fep


def numpy_agent(
    sigma_z,
    sigma_w,
    *,
    T_desire=4.0,
    kappa_mu=0.1,
    kappa_a=0.01,
    dt=0.005,
    t_end=100.0,
    action_onset=25.0,
    x0=2.0,
    T0=100.0,
):
    """One agent, noise-free, the appendix's loop in NumPy; returns the final (x, T, mu[3], a)."""
    n = math.floor(t_end / dt + 1e-9) + 1
    sz0, sz1 = sigma_z
    sw0, sw1 = sigma_w
    x = np.zeros(n)
    T = np.zeros(n)
    rho0 = np.zeros(n)
    rho1 = np.zeros(n)
    mu0 = np.zeros(n)
    mu1 = np.zeros(n)
    mu2 = np.zeros(n)
    a = np.zeros(n)
    x[0] = x0
    T[0] = T0 / (x0**2 + 1)
    rho0[0] = T[0]
    for i in range(1, n):
        x_dot = a[i - 1]
        x[i] = x[i - 1] + dt * x_dot
        T[i] = T0 / (x[i] ** 2 + 1)
        Tx = -2 * T0 * x[i] / (x[i] ** 2 + 1) ** 2
        rho0[i] = T[i]
        rho1[i] = Tx * x_dot
        ez0 = rho0[i - 1] - mu0[i - 1]
        ez1 = rho1[i - 1] - mu1[i - 1]
        ew0 = mu1[i - 1] + mu0[i - 1] - T_desire
        ew1 = mu2[i - 1] + mu1[i - 1]
        mu0[i] = mu0[i - 1] + dt * (mu1[i - 1] - kappa_mu * (-ez0 / sz0 + ew0 / sw0))
        mu1[i] = mu1[i - 1] + dt * (mu2[i - 1] - kappa_mu * (-ez1 / sz1 + ew0 / sw0 + ew1 / sw1))
        mu2[i] = mu2[i - 1] + dt * (-kappa_mu * ew1 / sw1)
        a[i] = a[i - 1] + dt * (-kappa_a * Tx * ez1 / sz1) if i * dt > action_onset else 0.0
    return np.array([x[-1], T[-1], mu0[-1], mu1[-1], mu2[-1], a[-1]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--baseline-agents", type=int, default=10)
    p.add_argument("--t-end", type=float, default=100.0)
    args = p.parse_args(argv)

    # the sweep: sensory and model variances log-spaced over [0.05, 0.5] (all these runs are stable)
    side = math.ceil(math.sqrt(args.agents))
    grid = torch.logspace(math.log10(0.05), math.log10(0.5), side, dtype=torch.float64)
    sz, sw = (g.reshape(-1)[: args.agents] for g in torch.meshgrid(grid, grid, indexing="ij"))
    sigma_z, sigma_w = sz.unsqueeze(-1).expand(-1, 2), sw.unsqueeze(-1).expand(-1, 2)
    steps = round(args.t_end / 0.005)
    onset = args.t_end / 4

    fep.simulate(t_end=1.0, action_onset=0.5, progress=False)  # warm-up: torch's lazy imports
    t0 = time.perf_counter()
    table = fep.simulate(
        sigma_z=sigma_z,
        sigma_w=sigma_w,
        t_end=args.t_end,
        action_onset=onset,
        record_every=steps,
        laplace=False,
        progress=False,
    )
    batched = time.perf_counter() - t0
    last = table[table["t"] == table["t"].max()].sort_values("agent")

    picks = np.linspace(0, args.agents - 1, args.baseline_agents).round().astype(int)
    t0 = time.perf_counter()
    finals = [
        numpy_agent(sigma_z[k].tolist(), sigma_w[k].tolist(), t_end=args.t_end, action_onset=onset) for k in picks
    ]
    loop = (time.perf_counter() - t0) / len(picks) * args.agents
    ours = last[["position", "T", "mu", "mu'", "mu''", "a"]].to_numpy()[picks]
    err = np.abs(ours - np.array(finals)).max()

    print(f"{args.agents} agents x {steps} steps (torch {torch.__version__}, {torch.get_num_threads()} thread(s))")
    print(f"batched zoo.fep.simulate:        {batched:9.2f} s")
    print(f"NumPy loop of single agents:     {loop:9.2f} s  (timed {len(picks)} agents, scaled)")
    print(f"speed-up:                        {loop / batched:9.1f}x")
    print(f"max |difference| of final states on the timed agents: {err:.2e}")


if __name__ == "__main__":
    main()
