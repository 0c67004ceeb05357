"""`zoo`: the command line.

    zoo list                       the models and what each command does with them
    zoo compare gmm [...]          fit one mixture data set with every inference method, compare them
    zoo fit vae|beta-vae [...]     train a (beta-)VAE on built-in images, evaluate, write figures
    zoo simulate fep [...]         run the free-energy-principle thermostat agent
    zoo benchmark [...]            every inference method on every reference posterior, scored

Every command writes into an output folder (``--out``), exits 0 on success, and on bad input prints one
line ``zoo: error: ...`` and exits 2 (``--debug`` shows the traceback instead). Each command's options are
a table of (flag, type, default, help, extra argparse settings); its job is ``zoo.jobs.<name>.main``.
"""

import argparse
import sys

from inference.errors import InferenceError
from zoo.arguments import comma_list, device, nonnegative_float, nonnegative_int, positive_float, positive_floats
from zoo.arguments import positive_int as count

# fmt: off  (the option tables read as tables: one row per line)
LIST = [
    (
        "gmm",
        "zoo compare gmm",
        "Gaussian mixture: EM, variational EM, MAP/Bayesian SVI, Laplace, Pathfinder, CAVI "
        "(--prior conjugate), NUTS side by side",
    ),
    ("vae", "zoo fit vae", "variational autoencoder on digits or shapes"),
    ("beta-vae", "zoo fit beta-vae", "beta-VAE (weighted KL) with disentanglement metrics on shapes"),
    ("fep", "zoo simulate fep", "free-energy-principle thermostat agent (Buckley et al. 2017)"),
    ("benchmark", "zoo benchmark", "every inference method on every reference posterior (zoo.posteriordb)"),
]
# fmt: on


class Parser(argparse.ArgumentParser):
    """argparse with the command's one-line error format: ``zoo: error: ...`` and exit status 2."""

    def error(self, message):
        print(f"zoo: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
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


# fmt: off
def build_parser():
    from zoo.jobs import benchmark, compare_gmm, fit_vae, simulate_fep

    parser = Parser(prog="zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="list the models and commands").set_defaults(run=_run_list)
    groups = {}
    for group, text in (("fit", "train a model on built-in or given data"), ("compare", "fit one data set with "
                        "several inference methods"), ("simulate", "run a simulation")):
        groups[group] = commands.add_parser(group, help=text).add_subparsers(dest="model", required=True,
                                                                             metavar="MODEL")
    _command(groups["compare"], "gmm", "zoo-out/gmm", compare_gmm.main, _gmm_options(compare_gmm),
             "compare inference methods on a Gaussian mixture",
             "Fit one mixture data set by EM, variational EM, MAP-SVI, Bayesian SVI, Laplace, Pathfinder, CAVI "
             "(conjugate prior) and NUTS; print a comparison table and write figures, the table (CSV) and every "
             "fit's InferenceData (netCDF) to --out.")
    for name, beta, data in (("vae", 1.0, "digits"), ("beta-vae", 4.0, "shapes")):
        _command(groups["fit"], name, f"zoo-out/{name}", fit_vae.main, _vae_options(beta, data),
                 f"train a {name} and evaluate it (ELBO, IWAE, KL split, MIG)",
                 f"Train a {name} on built-in images with minibatch SVI, then write figures, summary.json, "
                 "model.pt and a resumable checkpoint.pt to --out.")
    _command(groups["simulate"], "fep", "zoo-out/fep", simulate_fep.main, FEP_OPTIONS,
             "simulate the free-energy-principle thermostat agent",
             "The thermostat agent of Buckley et al. 2017: perception and action as free-energy minimisation. "
             "Defaults are the paper's constants; writes trajectory.csv and trajectory.png (and sweep.csv, "
             "sweep.png with --sweep).")
    _command(commands, "benchmark", "zoo-out/benchmark", benchmark.main, _benchmark_options(benchmark),
             "every inference method on every reference posterior",
             "Fit every reference posterior of zoo.posteriordb with every inference method, score each fit's "
             "means and sds against the reference, and write results.csv (after every fit), heatmap.png and "
             "table.md to --out.")
    return parser
# fmt: on


def _command(commands, name, out, run, options, summary, description):
    """One command: its parser, the options every command has, its own ``options`` table, and its job."""
    p = commands.add_parser(name, help=summary, description=description)
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    # SUPPRESS: an absent leaf flag must not overwrite `zoo --debug ...` given before the command
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    for flag, kind, default, text, *extra in options:
        shown = f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
        if default is None or default is False or "(default" in text:
            shown = ""
        settings = {"type": kind} if kind is not None else {}
        p.add_argument(flag, default=default, help=text + shown, **settings, **(extra[0] if extra else {}))
    p.set_defaults(run=run)


def _run_list(args):
    for name, command, what in LIST:
        print(f"{name:10s} {command:22s} {what}")


# fmt: off
def _gmm_options(job):
    methods = ",".join(job.METHODS)
    return [
        ("--csv", None, None, "your data: a numeric CSV file (default: built-in synthetic data)", {"metavar": "PATH"}),
        ("--columns", comma_list(), None, "comma list of CSV columns to use (default: all)"),
        ("--n-samples", count, 300, "points of the synthetic data"),
        ("--components", count, 3, "mixture components K"),
        ("--dims", count, 2, "dimensions of the synthetic data"),
        ("--data-seed", int, 0, "seed of the synthetic data"),
        ("--covariance-type", None, "full", "full, diag or spherical", {"choices": ["full", "diag", "spherical"]}),
        ("--prior", None, job.DEFAULT_PRIOR, "the Bayesian model: lkj (LogNormal scales, LKJ correlations) or "
         "conjugate (Normal-Wishart, scikit-learn's priors; full covariances; allows cavi)",
         {"choices": list(job.PRIORS)}),
        ("--methods", comma_list(job.METHODS), None, f"comma list of methods among {methods} (default: all the "
         "prior allows; cavi needs --prior conjugate)", {"metavar": "A,B"}),
        ("--steps", count, 1000, "SVI steps for map and svi"),
        ("--num-samples", count, 200, "NUTS draws"),
        ("--warmup", nonnegative_int, 150, "NUTS warm-up steps"),
    ]


def _vae_options(beta, data):
    from zoo.vae.model import LIKELIHOODS
    from zoo.vae.networks import ARCHITECTURES

    return [
        ("--data", None, [data], f"digits (8x8, scikit-learn), shapes (dSprites-like, with known factors) or "
         f"'mnist IMAGES_IDX [LABELS_IDX]' (default: {data})", {"nargs": "+", "metavar": "KIND [PATH]"}),
        ("--n", count, 6000, "number of shapes images"),
        ("--size", count, 32, "shapes image size in pixels"),
        ("--epochs", count, 50, "training epochs"),
        ("--batch-size", count, 128, "minibatch size"),
        ("--lr", positive_float, 1e-3, "Adam learning rate"),
        ("--latent-dim", count, 10, "size of z"),
        ("--beta", positive_float, beta, "KL weight"),
        ("--anneal-epochs", nonnegative_float, 0.0, "ramp the KL weight up from ~0 over this many epochs (0: off)"),
        ("--likelihood", None, "bernoulli", "bernoulli, continuous_bernoulli or gaussian", {"choices": LIKELIHOODS}),
        ("--architecture", None, "auto", "auto (conv for images, mlp for flat digits), mlp or conv",
         {"choices": ARCHITECTURES}),
        ("--patience", count, 10, "stop after this many epochs without a better held-out ELBO"),
        ("--iwae-k", count, 100, "samples of the IWAE bound"),
        ("--device", device, "cpu", "cpu, cuda, cuda:N or auto"),
        ("--nproc", count, 1, "train in N local processes with data-parallel gradients (gloo on cpu; with --device "
         "cuda one GPU each); --batch-size is per process (under torchrun the launcher's processes are used)"),
        ("--resume", None, False, "continue from --out/checkpoint.pt (same settings and --nproc, more --epochs to "
         "go on)", {"action": "store_true"}),
    ]


FEP_OPTIONS = [
    ("--T-desire", float, 4.0, "desired temperature"),
    ("--sigma-z", positive_float, 0.1, "sensory variance, every order"),
    ("--sigma-w", positive_float, 0.1, "dynamics variance, every order"),
    ("--kappa-mu", nonnegative_float, 0.1, "perception rate"),
    ("--kappa-a", nonnegative_float, 0.01, "action rate"),
    ("--dt", positive_float, 0.005, "Euler step"),
    ("--t-end", positive_float, 100.0, "duration"),
    ("--action-onset", nonnegative_float, 25.0, "act only after this time, at most --t-end"),
    ("--x0", float, 2.0, "start position of the agent"),
    ("--T0", positive_float, 100.0, "temperature at x = 0"),
    ("--order", count, 2, "highest generalized order of beliefs"),
    ("--noise", nonnegative_float, 0.0, "sd of the sensory noise (0: deterministic; the paper's noisy run: 0.1)"),
    ("--record-every", count, 1, "keep every k-th step in the table"),
    ("--sweep", positive_floats, None, "also run one agent per (sigma_z, sigma_w) pair of these comma-separated "
     "variances (without values: 0.01,0.1,1)", {"nargs": "?", "const": "0.01,0.1,1", "metavar": "VARIANCES"}),
]


def _benchmark_options(job):
    return [
        ("--posteriors", comma_list(job.check_posteriors), None, "comma list of posteriors (default: all of "
         "zoo.posteriordb)", {"metavar": "A,B"}),
        ("--methods", comma_list(job.check_methods), None, f"comma list of methods: {', '.join(job.METHODS)} "
         "(default: all but svi-flow)", {"metavar": "A,B"}),
        ("--resume", None, False, "keep the cells --out/results.csv already holds (status ok, same seed); run the "
         "rest", {"action": "store_true"}),
    ]


# fmt: on


if __name__ == "__main__":
    sys.exit(main())
