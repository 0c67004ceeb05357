"""`zoo simulate fep`: the free-energy-principle thermostat agent of Buckley et al. 2017 (``zoo.fep``).

Runs :func:`zoo.fep.simulate` with the given settings (the defaults are the paper's constants, MATH.md
§4.1) and, when asked, :func:`zoo.fep.sweep` over a grid of precisions.

Files in ``out``: trajectory.csv (the run's table, one row per recorded step) and trajectory.png
(:func:`zoo.fep.plot_trajectories`); with a sweep also sweep.csv (one row per recorded step and agent)
and sweep.png (:func:`zoo.fep.plot_sweep`). Every file is written atomically.
"""

from pathlib import Path

from inference.files import atomic_write_text
from inference.plots import save_figure
from zoo import fep


def run_simulation(out, *, sweep=None, sigma_z=0.1, sigma_w=0.1, T_desire=4.0, action_onset=25.0, **settings):
    """Simulate the thermostat agent and write its table and figure (and the sweep's) into ``out``.

    Args:
        out: the output folder (created if missing).
        sweep: variances for a grid of agents, one per (sigma_z, sigma_w) pair of them; None: no sweep.
        sigma_z: the single run's sensory variance (every order).
        sigma_w: the single run's dynamics variance (every order).
        T_desire: the desired temperature.
        action_onset: the agents act only after this time.
        **settings: the other arguments of :func:`zoo.fep.simulate`, shared by the run and the sweep.

    Returns:
        dict: ``table`` (the run's), ``grid`` (the sweep's table, or None) and ``files`` (the paths written).
    """
    out = Path(out)
    settings.update(T_desire=T_desire, action_onset=action_onset)
    table = fep.simulate(sigma_z=sigma_z, sigma_w=sigma_w, **settings)
    files = [
        atomic_write_text(out / "trajectory.csv", table.to_csv(index=False)),
        save_figure(fep.plot_trajectories(table, action_onset=action_onset), out / "trajectory.png"),
    ]
    grid = None
    if sweep is not None:
        grid = fep.sweep(sweep, sweep, **settings)
        files += [
            atomic_write_text(out / "sweep.csv", grid.to_csv(index=False)),
            save_figure(fep.plot_sweep(grid, T_desire=T_desire), out / "sweep.png"),
        ]
    return {"table": table, "grid": grid, "files": files}


def main(args):
    """`zoo simulate fep` with parsed command-line ``args``: run, print what the agent did, name the files."""
    result = run_simulation(
        args.out,
        sweep=args.sweep,
        sigma_z=args.sigma_z,
        sigma_w=args.sigma_w,
        T_desire=args.T_desire,
        kappa_mu=args.kappa_mu,
        kappa_a=args.kappa_a,
        dt=args.dt,
        t_end=args.t_end,
        action_onset=args.action_onset,
        x0=args.x0,
        T0=args.T0,
        order=args.order,
        noise=args.noise,
        seed=args.seed,
        record_every=args.record_every,
        progress=args.progress,
    )
    table = result["table"]
    before, end = table[table["t"] <= args.action_onset], table.iloc[-1]
    print(
        f"perception alone: mu -> {before['mu'].iloc[-1]:.4g} at t = {before['t'].iloc[-1]:g}; "
        f"F {table['F'].iloc[0]:.4g} -> {before['F'].iloc[-1]:.4g}"
    )
    print(
        f"at t = {end['t']:g}: T = {end['T']:.4g} (desired {args.T_desire:g}), position {end['position']:.4g}, "
        f"F = {end['F']:.4g}"
    )
    if args.sweep is not None:
        print(f"sweep: {len(args.sweep) ** 2} agents over sigma_z, sigma_w in {list(args.sweep)}")
    print("wrote " + ", ".join(str(p) for p in result["files"]))
