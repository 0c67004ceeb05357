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

from inference.errors import InferenceError
from zoo.arguments import (
    comma_list,
    device,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_floats,
    positive_int,
)


class Parser(argparse.ArgumentParser):
    """argparse with the command's one-line error format: ``zoo: error: ...`` and exit status 2."""

    def error(self, message):
        print(f"zoo: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, already printed)
        return e.code
    try:
        return args.run(args) or 0
    except InferenceError as e:
        if args.debug:
            raise
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted; files already written are complete", file=sys.stderr)
        return 130


def build_parser():
    parser = Parser(prog="zoo", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")


def _run_list(args):
    rows = [
        (
            "gmm",
            "zoo compare gmm",
            "Gaussian mixture: EM, variational EM, MAP/Bayesian SVI, Laplace, Pathfinder, "
            "CAVI (--prior conjugate), NUTS side by side",
        ),
        ("vae", "zoo fit vae", "variational autoencoder on digits or shapes"),
        ("beta-vae", "zoo fit beta-vae", "beta-VAE (weighted KL) with disentanglement metrics on shapes"),
        ("fep", "zoo simulate fep", "free-energy-principle thermostat agent (Buckley et al. 2017)"),
        ("benchmark", "zoo benchmark", "every inference method on every reference posterior (zoo.posteriordb)"),
    ]
    for name, command, what in rows:
        print(f"{name:10s} {command:22s} {what}")


# ---- zoo compare gmm -----------------------------------------
def _add_compare_gmm(models):
    """`zoo compare gmm`: the parser; the job is ``zoo.jobs.compare_gmm``."""
    from zoo.jobs import compare_gmm

    p = models.add_parser(
        "gmm",
        help="compare inference methods on a Gaussian mixture",
        description="Fit one mixture data set by EM, variational EM, MAP-SVI, Bayesian SVI, "
        "Laplace, Pathfinder, CAVI (conjugate prior) and NUTS; print a comparison "
        "table and write figures, the table (CSV) and every fit's InferenceData "
        "(netCDF) to --out.",
    )
    _common(p, "zoo-out/gmm")
    p.add_argument("--csv", metavar="PATH", help="your data: a numeric CSV file (default: built-in synthetic data)")
    p.add_argument("--columns", type=comma_list(), help="comma list of CSV columns to use (default: all)")
    p.add_argument("--n-samples", type=positive_int, default=300, help="points of the synthetic data (default: 300)")
    p.add_argument("--components", type=positive_int, default=3, help="mixture components K (default: 3)")
    p.add_argument("--dims", type=positive_int, default=2, help="dimensions of the synthetic data (default: 2)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data (default: 0)")
    p.add_argument("--covariance-type", default="full", choices=["full", "diag", "spherical"])
    p.add_argument(
        "--prior",
        choices=list(compare_gmm.PRIORS),
        default=compare_gmm.DEFAULT_PRIOR,
        help="the Bayesian model: lkj (LogNormal scales, LKJ correlations) or conjugate "
        "(Normal-Wishart, scikit-learn's priors; full covariances; allows cavi) "
        f"(default: {compare_gmm.DEFAULT_PRIOR})",
    )
    p.add_argument(
        "--methods",
        type=comma_list(compare_gmm.METHODS),
        default=None,
        metavar="A,B",
        help=f"comma list of methods among {','.join(compare_gmm.METHODS)} (default: all the prior "
        "allows; cavi needs --prior conjugate)",
    )
    p.add_argument("--steps", type=positive_int, default=1000, help="SVI steps for map and svi (default: 1000)")
    p.add_argument("--num-samples", type=positive_int, default=200, help="NUTS draws (default: 200)")
    p.add_argument("--warmup", type=nonnegative_int, default=150, help="NUTS warm-up steps (default: 150)")
    p.set_defaults(run=compare_gmm.main)


# ---- zoo benchmark ---------------------------------------------------------
def _add_benchmark(commands):
    """`zoo benchmark`: the parser; the job is ``zoo.jobs.benchmark``."""
    from zoo.jobs import benchmark

    p = commands.add_parser(
        "benchmark",
        help="every inference method on every reference posterior",
        description="Fit every reference posterior of zoo.posteriordb with every inference "
        "method, score each fit's means and sds against the reference, and "
        "write results.csv (after every fit), heatmap.png and table.md to --out.",
    )
    _common(p, "zoo-out/benchmark")
    p.add_argument(
        "--posteriors",
        type=comma_list(benchmark.check_posteriors),
        default=None,
        metavar="A,B",
        help="comma list of posteriors (default: all of zoo.posteriordb)",
    )
    p.add_argument(
        "--methods",
        type=comma_list(benchmark.check_methods),
        default=None,
        metavar="A,B",
        help="comma list of methods: nuts, laplace, laplace+psis, svi-meanfield, svi-lowrank, "
        "svi-fullrank, svi-fullrank+psis, svi-flow (default: all but svi-flow)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the cells --out/results.csv already holds (status ok, same seed); run the rest",
    )
    p.set_defaults(run=benchmark.main)


# ---- zoo fit vae | beta-vae -----------------------------------------------
def _add_fit_vae(models):
    """`zoo fit vae|beta-vae`: the parser; the job is ``zoo.jobs.fit_vae``."""
    from zoo.jobs import fit_vae
    from zoo.vae.model import LIKELIHOODS
    from zoo.vae.networks import ARCHITECTURES

    for name, beta, data in (("vae", 1.0, "digits"), ("beta-vae", 4.0, "shapes")):
        p = models.add_parser(
            name,
            help=f"train a {name} and evaluate it (ELBO, IWAE, KL split, MIG)",
            description=f"Train a {name} on built-in images with minibatch SVI, then "
            f"write figures, summary.json, model.pt and a resumable "
            f"checkpoint.pt to --out.",
        )
        _common(p, f"zoo-out/{name}")
        p.add_argument(
            "--data",
            nargs="+",
            default=[data],
            metavar="KIND [PATH]",
            help=f"digits (8x8, scikit-learn), shapes (dSprites-like, with known factors) or "
            f"'mnist IMAGES_IDX [LABELS_IDX]' (default: {data})",
        )
        p.add_argument("--n", type=positive_int, default=6000, help="number of shapes images (default: 6000)")
        p.add_argument("--size", type=positive_int, default=32, help="shapes image size in pixels (default: 32)")
        p.add_argument("--epochs", type=positive_int, default=50, help="training epochs (default: 50)")
        p.add_argument("--batch-size", type=positive_int, default=128, help="minibatch size (default: 128)")
        p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
        p.add_argument("--latent-dim", type=positive_int, default=10, help="size of z (default: 10)")
        p.add_argument("--beta", type=positive_float, default=beta, help=f"KL weight (default: {beta:g})")
        p.add_argument(
            "--anneal-epochs",
            type=nonnegative_float,
            default=0,
            help="ramp the KL weight up from ~0 over this many epochs (default: 0, off)",
        )
        p.add_argument(
            "--likelihood",
            default="bernoulli",
            choices=LIKELIHOODS,
            help="bernoulli, continuous_bernoulli or gaussian (default: bernoulli)",
        )
        p.add_argument(
            "--architecture",
            default="auto",
            choices=ARCHITECTURES,
            help="auto, mlp or conv (default: auto: conv for images, mlp for flat digits)",
        )
        p.add_argument(
            "--patience",
            type=positive_int,
            default=10,
            help="stop after this many epochs without a better held-out ELBO (default: 10)",
        )
        p.add_argument("--iwae-k", type=positive_int, default=100, help="samples of the IWAE bound (default: 100)")
        p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        p.add_argument(
            "--nproc",
            type=positive_int,
            default=1,
            help="train in N local processes with data-parallel gradients (gloo on cpu; with "
            "--device cuda one GPU each); --batch-size is per process (default: 1; under "
            "torchrun the launcher's processes are used instead)",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue from --out/checkpoint.pt (same settings and --nproc, more --epochs to go on)",
        )
        p.set_defaults(run=fit_vae.main)


# ---- zoo simulate fep -----------------------------------------------------
def _add_simulate_fep(models):
    """`zoo simulate fep`: the parser; the job is ``zoo.jobs.simulate_fep``."""
    from zoo.jobs import simulate_fep

    p = models.add_parser(
        "fep",
        help="simulate the free-energy-principle thermostat agent",
        description="The thermostat agent of Buckley et al. 2017: perception and action as "
        "free-energy minimisation. Defaults are the paper's constants; writes "
        "trajectory.csv and trajectory.png (and sweep.csv, sweep.png with --sweep).",
    )
    _common(p, "zoo-out/fep")
    p.add_argument("--T-desire", type=float, default=4.0, help="desired temperature (default: 4)")
    p.add_argument("--sigma-z", type=positive_float, default=0.1, help="sensory variance, every order (default: 0.1)")
    p.add_argument("--sigma-w", type=positive_float, default=0.1, help="dynamics variance, every order (default: 0.1)")
    p.add_argument("--kappa-mu", type=nonnegative_float, default=0.1, help="perception rate (default: 0.1)")
    p.add_argument("--kappa-a", type=nonnegative_float, default=0.01, help="action rate (default: 0.01)")
    p.add_argument("--dt", type=positive_float, default=0.005, help="Euler step (default: 0.005)")
    p.add_argument("--t-end", type=positive_float, default=100.0, help="duration (default: 100)")
    p.add_argument(
        "--action-onset",
        type=nonnegative_float,
        default=25.0,
        help="act only after this time, at most --t-end (default: 25)",
    )
    p.add_argument("--x0", type=float, default=2.0, help="start position of the agent (default: 2)")
    p.add_argument("--T0", type=positive_float, default=100.0, help="temperature at x = 0 (default: 100)")
    p.add_argument("--order", type=positive_int, default=2, help="highest generalized order of beliefs (default: 2)")
    p.add_argument(
        "--noise",
        type=nonnegative_float,
        default=0.0,
        help="sd of the sensory noise (default: 0, deterministic; the paper's noisy run: 0.1)",
    )
    p.add_argument(
        "--record-every", type=positive_int, default=1, help="keep every k-th step in the table (default: 1)"
    )
    p.add_argument(
        "--sweep",
        type=positive_floats,
        nargs="?",
        const="0.01,0.1,1",
        default=None,
        metavar="VARIANCES",
        help="also run one agent per (sigma_z, sigma_w) pair of these comma-separated variances "
        "(default when given without values: 0.01,0.1,1)",
    )
    p.set_defaults(run=simulate_fep.main)


if __name__ == "__main__":
    sys.exit(main())
