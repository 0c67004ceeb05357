"""`zoo`: the command line.

    zoo list                       the models and what each command does with them
    zoo compare gmm [...]          fit one mixture data set with every inference method, compare them
    zoo fit vae|beta-vae [...]     train a (beta-)VAE on built-in images, evaluate, write figures
    zoo simulate fep [...]         run the free-energy-principle thermostat agent
    zoo benchmark [...]            every inference method on every reference posterior, scored

Every command writes into an output folder (``--out``), exits 0 on success, and on bad input prints one
line ``zoo: error: ...`` and exits 2 (``--debug`` shows the traceback instead).
"""
import argparse
import sys

from inference.errors import ZooError


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except ZooError as e:
        if args.debug:
            raise
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted; files already written are complete", file=sys.stderr)
        return 130


def build_parser():
    parser = argparse.ArgumentParser(prog="zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("list", help="list the models and commands")
    p.set_defaults(run=_run_list)

    fit = commands.add_parser("fit", help="train a model on built-in or given data")
    fit_models = fit.add_subparsers(dest="model", required=True, metavar="MODEL")
    compare = commands.add_parser("compare", help="fit one data set with several inference methods")
    compare_models = compare.add_subparsers(dest="model", required=True, metavar="MODEL")
    simulate = commands.add_parser("simulate", help="run a simulation")
    simulate_models = simulate.add_subparsers(dest="model", required=True, metavar="MODEL")

    _add_compare_gmm(compare_models)
    _add_fit_vae(fit_models)
    _add_simulate_fep(simulate_models)
    _add_benchmark(commands)
    return parser


def _common(p, out):
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    # SUPPRESS: an absent leaf flag must not overwrite `zoo --debug ...` given before the command
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks on errors")


def _run_list(args):
    rows = [
        ("gmm", "zoo compare gmm",
         "Gaussian mixture: EM, variational EM, MAP/Bayesian SVI, Laplace, NUTS side by side"),
        ("vae", "zoo fit vae", "variational autoencoder on digits or shapes"),
        ("beta-vae", "zoo fit beta-vae", "beta-VAE (weighted KL) with disentanglement metrics on shapes"),
        ("fep", "zoo simulate fep", "free-energy-principle thermostat agent (Buckley et al. 2017)"),
        ("benchmark", "zoo benchmark", "every inference method on every reference posterior (zoo.posteriordb)"),
    ]
    for name, command, what in rows:
        print(f"{name:10s} {command:22s} {what}")


# ---- zoo compare gmm -----------------------------------------
def _add_compare_gmm(models):
    p = models.add_parser("gmm", help="compare inference methods on a Gaussian mixture",
                          description="Fit one mixture data set by EM, variational EM, MAP-SVI, Bayesian SVI, "
                                      "Laplace and NUTS; print a comparison table and write figures, the "
                                      "table (CSV) and every fit's InferenceData (netCDF) to --out.")
    _common(p, "zoo-out/gmm")
    p.add_argument("--csv", metavar="PATH", help="your data: a numeric CSV file (default: built-in synthetic data)")
    p.add_argument("--columns", help="comma list of CSV columns to use (default: all)")
    p.add_argument("--n-samples", type=int, default=300, help="points of the synthetic data (default: 300)")
    p.add_argument("--components", type=int, default=3, help="mixture components K (default: 3)")
    p.add_argument("--dims", type=int, default=2, help="dimensions of the synthetic data (default: 2)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data (default: 0)")
    p.add_argument("--covariance-type", default="full", choices=["full", "diag", "spherical"])
    p.add_argument("--methods", default="em,variational_em,map,svi,laplace,nuts",
                   help="comma list of methods (default: all six)")
    p.add_argument("--steps", type=int, default=1000, help="SVI steps for map and svi (default: 1000)")
    p.add_argument("--num-samples", type=int, default=200, help="NUTS draws (default: 200)")
    p.add_argument("--warmup", type=int, default=150, help="NUTS warm-up steps (default: 150)")
    p.set_defaults(run=_run_compare_gmm)


def _run_compare_gmm(args):
    import pandas as pd
    from inference.errors import InvalidInputError
    from zoo import data
    import torch
    from zoo.gmm import compare_methods, in_data_units
    for name in ("n_samples", "components", "dims", "steps", "num_samples"):
        if getattr(args, name) < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise InvalidInputError(f"--warmup must be >= 0, got {args.warmup}")
    truth, data_units = None, None
    if args.csv:
        columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
        raw = data.read_csv(args.csv, columns=columns)
        # fitted on standardised columns (priors and starting points assume unit scale); reported in the
        # CSV's own units
        sd = raw.std(0, correction=0)
        data_units = (raw.mean(0), torch.where(sd > 0, sd, torch.ones_like(sd)))
        X = (raw - data_units[0]) / data_units[1]
        source = (f"{args.csv}, {X.shape[0]} x {X.shape[1]} (fitted on standardised columns; means and scales "
                  f"reported in the CSV's own units)")
    else:
        mix = data.make_mixture(args.n_samples, args.components, args.dims, seed=args.data_seed)
        X, truth = mix.X, mix.means
        source = f"synthetic mixture, N={X.shape[0]}, D={X.shape[1]}, K={args.components}"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    print(f"zoo compare gmm: {source}; methods {', '.join(methods)}", flush=True)
    result = compare_methods(X, args.components, methods=methods, covariance_type=args.covariance_type,
                             out=args.out, steps=args.steps, num_samples=args.num_samples,
                             warmup_steps=args.warmup, seed=args.seed, truth=truth, progress=args.progress,
                             data_units=data_units)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 4):
        print("\nper method (log_lik: mean log predictive density per point; error in NUTS posterior sds)")
        print(result["summary"].to_string())
        table = in_data_units(result["table"], data_units, args.covariance_type)
        wide = (table.assign(value=[f"{m:.3f} ({s:.3f})" for m, s in zip(table["mean"], table["sd"])])
                .pivot(index="variable", columns="method", values="value"))
        print("\nposterior mean (sd) per parameter" +
              (", means and scales in the CSV's own units" if data_units is not None else ""))
        print(wide[[m for m in result["fits"]]].reindex(table["variable"].unique()).to_string())
    print(f"\nwrote {len(result['files'])} files to {args.out}")


# ---- zoo benchmark ---------------------------------------------------------
def _add_benchmark(commands):
    """`zoo benchmark`: the parser; the job is ``zoo.jobs.benchmark``."""
    from zoo.jobs import benchmark

    def comma_list(check):
        def parse(text):   # argparse prints an ArgumentTypeError's message and exits with status 2
            try:
                return check([name.strip() for name in text.split(",") if name.strip()])
            except ZooError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return parse

    p = commands.add_parser("benchmark", help="every inference method on every reference posterior",
                            description="Fit every reference posterior of zoo.posteriordb with every inference "
                                        "method, score each fit's means and sds against the reference, and "
                                        "write results.csv (after every fit), heatmap.png and table.md to --out.")
    _common(p, "zoo-out/benchmark")
    p.add_argument("--posteriors", type=comma_list(benchmark.check_posteriors), default=None, metavar="A,B",
                   help="comma list of posteriors (default: all of zoo.posteriordb)")
    p.add_argument("--methods", type=comma_list(benchmark.check_methods), default=None, metavar="A,B",
                   help="comma list of methods: nuts, laplace, laplace+psis, svi-meanfield, svi-lowrank, "
                        "svi-fullrank, svi-fullrank+psis, svi-flow (default: all but svi-flow)")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells --out/results.csv already holds (status ok, same seed); run the rest")
    p.set_defaults(run=benchmark.main)


# ---- zoo fit vae | beta-vae -----------------------------------------------
def _add_fit_vae(models):
    for name, beta, data in (("vae", 1.0, "digits"), ("beta-vae", 4.0, "shapes")):
        p = models.add_parser(name, help=f"train a {name} and evaluate it (ELBO, IWAE, KL split, MIG)",
                              description=f"Train a {name} on built-in images with minibatch SVI, then "
                                          f"write figures, summary.json, model.pt and a resumable "
                                          f"checkpoint.pt to --out.")
        _common(p, f"zoo-out/{name}")
        p.add_argument("--data", nargs="+", default=[data], metavar="KIND [PATH]",
                       help=f"digits (8x8, scikit-learn), shapes (dSprites-like, with known factors) or "
                            f"'mnist IMAGES_IDX [LABELS_IDX]' (default: {data})")
        p.add_argument("--n", type=int, default=6000, help="number of shapes images (default: 6000)")
        p.add_argument("--size", type=int, default=32, help="shapes image size in pixels (default: 32)")
        p.add_argument("--epochs", type=int, default=50, help="training epochs (default: 50)")
        p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default: 128)")
        p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
        p.add_argument("--latent-dim", type=int, default=10, help="size of z (default: 10)")
        p.add_argument("--beta", type=float, default=beta, help=f"KL weight (default: {beta:g})")
        p.add_argument("--anneal-epochs", type=float, default=0,
                       help="ramp the KL weight up from ~0 over this many epochs (default: 0, off)")
        p.add_argument("--likelihood", default="bernoulli",
                       help="bernoulli, continuous_bernoulli or gaussian (default: bernoulli)")
        p.add_argument("--architecture", default="auto", help="auto, mlp or conv (default: auto: conv for "
                                                              "images, mlp for flat digits)")
        p.add_argument("--patience", type=int, default=10,
                       help="stop after this many epochs without a better held-out ELBO (default: 10)")
        p.add_argument("--iwae-k", type=int, default=100, help="samples of the IWAE bound (default: 100)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        p.add_argument("--nproc", type=int, default=1,
                       help="train in N local processes with DistributedDataParallel (gloo on cpu; with "
                            "--device cuda one GPU each); --batch-size is per process (default: 1; under "
                            "torchrun the launcher's processes are used instead)")
        p.add_argument("--resume", action="store_true",
                       help="continue from --out/checkpoint.pt (same settings and --nproc, more --epochs "
                            "to go on)")
        p.set_defaults(run=_run_fit_vae)


def _vae_data(args):
    """(x_train, x_val, x_test, factors_test or None) for --data; the validation split is 10% of train."""
    import torch

    from inference.errors import InvalidInputError
    from zoo import data

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
        raise InvalidInputError(f"--data must be 'digits', 'shapes' or 'mnist IMAGES_IDX [LABELS_IDX]', "
                                f"got {' '.join(args.data)!r}")
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))
    n_val = max(1, len(x_train) // 10)
    return x_train[perm[n_val:]], x_train[perm[:n_val]], x_test, factors


def _device(name):
    import torch

    from inference.errors import InvalidInputError
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"--device {name!r} is not a device name (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {name!r}: no CUDA GPU is available here; use --device cpu")
    return device


def _run_fit_vae(args):
    """One process; or --nproc N local processes; or, under torchrun, this rank of the launcher's group."""
    import torch
    from torch.multiprocessing import ProcessExitedException

    from inference import distributed
    from inference.errors import InvalidInputError

    device = _device(args.device)
    if distributed.launched():
        device = distributed.setup(device=device.type)
        try:
            return _fit_vae(args, device)
        finally:
            distributed.teardown()
    if args.nproc < 1:
        raise InvalidInputError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc == 1:
        return _fit_vae(args, device)
    if device.type == "cuda" and args.nproc > torch.cuda.device_count():
        raise InvalidInputError(f"--nproc {args.nproc} with --device cuda needs {args.nproc} GPUs; "
                                f"{torch.cuda.device_count()} visible")
    _vae_data(args)   # bad --data fails here, once, before any process starts
    try:
        distributed.spawn(_fit_vae_rank, args.nproc, args, device=device.type)
    except ProcessExitedException as e:   # a rank reported a ZooError and exited
        return e.exit_code


def _fit_vae_rank(args):
    """One spawned rank: errors of the user's input are printed (by rank 0) and end the process with 2."""
    from inference import distributed
    try:
        _fit_vae(args, distributed.setup(device=_device(args.device).type))
    except ZooError as e:
        if distributed.is_writer():
            print(f"zoo: error: {e}", file=sys.stderr)
        sys.exit(2)


def _fit_vae(args, device):
    import json
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg")

    from inference import distributed
    from inference.checkpoint import atomic_write_text
    from inference.plots import save_figure
    import numpy as np

    from zoo import metrics, vae as vae_mod
    from zoo.data import SHAPES_FACTORS

    out = Path(args.out)
    x_train, x_val, x_test, factors = _vae_data(args)
    x_train, x_val, x_test = x_train.to(device), x_val.to(device), x_test.to(device)
    n_train, n_val, nproc = len(x_train), len(x_val), distributed.world_size()
    klass = vae_mod.BetaVAE if args.model == "beta-vae" else vae_mod.VAE
    model = klass(latent_dim=args.latent_dim, architecture=args.architecture, likelihood=args.likelihood,
                  beta=args.beta, anneal_epochs=args.anneal_epochs).to(device)
    checkpoint = out / "checkpoint.pt"
    if distributed.is_writer():
        print(f"zoo fit {args.model}: {model!r} on {args.data[0]} ({n_train} train, {n_val} validation, "
              f"{len(x_test)} test, items {tuple(x_train.shape[1:])}) on {device}" +
              (f", {nproc} processes x batch {args.batch_size}" if nproc > 1 else ""), flush=True)
    if nproc > 1:   # every rank trains on its shard; rank 0 alone evaluates on the whole test set and writes
        x_train, x_val = distributed.shard(x_train), distributed.shard(x_val)
    model.fit(x_train, x_val, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              patience=args.patience, checkpoint=checkpoint, resume=args.resume, seed=args.seed,
              progress=args.progress, distributed=nproc > 1)
    if not distributed.is_writer():
        return

    x_eval = x_test[:2000]
    rec, kl = model.elbo_parts(x_test, num_samples=10, seed=args.seed)
    split = model.kl_split(x_eval, seed=args.seed)
    summary = {
        "model": args.model, "settings": model.get_params(), "data": " ".join(args.data),
        "n_train": n_train, "n_validation": n_val, "n_test": len(x_test), "nproc": nproc,
        "steps": int(model.losses_.size), "seconds": round(model.fit_.seconds, 2),
        "stopped_at_step": model.fit_.diagnostics["stopped_at"],
        "test_elbo": (rec - kl).mean().item(), "test_reconstruction": rec.mean().item(),
        "test_kl": kl.mean().item(),
        "test_iwae": model.iwae(x_eval[:1000], k=args.iwae_k, seed=args.seed), "iwae_k": args.iwae_k,
        "kl_split": split,
    }
    if factors is not None:
        codes = model.codes(x_eval)
        f = factors[:len(x_eval)]
        score, gaps = metrics.mig(codes, f, per_factor=True)
        summary["mig"] = score
        summary["mig_per_factor"] = {name: (None if np.isnan(g) else float(g))   # NaN: a constant factor
                                     for name, g in zip(SHAPES_FACTORS, gaps)}
        summary["factorvae_score"] = metrics.factorvae_score(codes, f, seed=args.seed)

    figures = {
        "reconstructions.png": lambda: vae_mod.plot_reconstructions(model, x_test),
        "samples.png": lambda: vae_mod.plot_samples(model, 64, seed=args.seed),
        "traversals.png": lambda: vae_mod.plot_traversals(model, x_test[:1]),
        "kl_per_dim.png": lambda: vae_mod.plot_kl_per_dim(split),
        "losses.png": lambda: vae_mod.plot_losses(model),
    }
    for name, make in figures.items():
        save_figure(make(), out / name, dpi=100)
    model.save(out / "model.pt")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"test ELBO {summary['test_elbo']:.3f}  IWAE(k={args.iwae_k}) {summary['test_iwae']:.3f}  "
          f"{vae_mod.format_kl_split(split)}" +
          (f"  MIG {summary['mig']:.3f}  FactorVAE {summary['factorvae_score']:.3f}" if factors is not None
           else ""))
    print(f"wrote {', '.join(figures)}, summary.json, model.pt, checkpoint.pt to {out}/")


# ---- zoo simulate fep -----------------------------------------------------
def _add_simulate_fep(models):
    p = models.add_parser("fep", help="simulate the free-energy-principle thermostat agent",
                          description="The thermostat agent of Buckley et al. 2017: perception and action as "
                                      "free-energy minimisation. Defaults are the paper's constants; writes "
                                      "trajectory.csv and trajectory.png (and sweep.csv, sweep.png with --sweep).")
    _common(p, "zoo-out/fep")
    p.add_argument("--T-desire", type=float, default=4.0, help="desired temperature (default: 4)")
    p.add_argument("--sigma-z", type=float, default=0.1, help="sensory variance, every order (default: 0.1)")
    p.add_argument("--sigma-w", type=float, default=0.1, help="dynamics variance, every order (default: 0.1)")
    p.add_argument("--kappa-mu", type=float, default=0.1, help="perception rate (default: 0.1)")
    p.add_argument("--kappa-a", type=float, default=0.01, help="action rate (default: 0.01)")
    p.add_argument("--dt", type=float, default=0.005, help="Euler step (default: 0.005)")
    p.add_argument("--t-end", type=float, default=100.0, help="duration (default: 100)")
    p.add_argument("--action-onset", type=float, default=25.0, help="act only after this time (default: 25)")
    p.add_argument("--x0", type=float, default=2.0, help="start position of the agent (default: 2)")
    p.add_argument("--T0", type=float, default=100.0, help="temperature at x = 0 (default: 100)")
    p.add_argument("--order", type=int, default=2, help="highest generalized order of beliefs (default: 2)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="sd of the sensory noise (default: 0, deterministic; the paper's noisy run: 0.1)")
    p.add_argument("--record-every", type=int, default=1, help="keep every k-th step in the table (default: 1)")
    p.add_argument("--sweep", nargs="?", const="0.01,0.1,1", default=None, metavar="VARIANCES",
                   help="also run one agent per (sigma_z, sigma_w) pair of these comma-separated variances "
                        "(default when given without values: 0.01,0.1,1)")
    p.set_defaults(run=_run_simulate_fep)


def _run_simulate_fep(args):
    from pathlib import Path

    from inference.checkpoint import atomic_write_text
    from inference.plots import save_figure
    from inference.errors import InvalidInputError
    from zoo import fep

    settings = dict(T_desire=args.T_desire, kappa_mu=args.kappa_mu, kappa_a=args.kappa_a, dt=args.dt,
                    t_end=args.t_end, action_onset=args.action_onset, x0=args.x0, T0=args.T0, order=args.order,
                    noise=args.noise, seed=args.seed, record_every=args.record_every, progress=args.progress)
    out = Path(args.out)

    values = None
    if args.sweep is not None:
        try:
            values = [float(v) for v in args.sweep.split(",") if v.strip()]
        except ValueError:
            raise InvalidInputError(f"--sweep must be comma-separated numbers, got {args.sweep!r}") from None
        if not values:
            raise InvalidInputError("--sweep needs at least one variance")

    table = fep.simulate(sigma_z=args.sigma_z, sigma_w=args.sigma_w, **settings)
    written = [atomic_write_text(out / "trajectory.csv", table.to_csv(index=False)),
               save_figure(fep.plot_trajectories(table, action_onset=args.action_onset), out / "trajectory.png")]
    before = table[table["t"] <= args.action_onset]
    print(f"perception alone: mu -> {before['mu'].iloc[-1]:.4g} at t = {before['t'].iloc[-1]:g}; "
          f"F {table['F'].iloc[0]:.4g} -> {before['F'].iloc[-1]:.4g}")
    print(f"at t = {table['t'].iloc[-1]:g}: T = {table['T'].iloc[-1]:.4g} (desired {args.T_desire:g}), "
          f"position {table['position'].iloc[-1]:.4g}, F = {table['F'].iloc[-1]:.4g}")
    if values is not None:
        grid = fep.sweep(values, values, **settings)
        written += [atomic_write_text(out / "sweep.csv", grid.to_csv(index=False)),
                    save_figure(fep.plot_sweep(grid, T_desire=args.T_desire), out / "sweep.png")]
        print(f"sweep: {len(values) ** 2} agents over sigma_z, sigma_w in {values}")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    sys.exit(main())
