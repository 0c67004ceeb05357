"""`zoo compare gmm`: one mixture data set fitted by every inference method, aligned and compared.

Every method starts from the EM fit's parameters, and every fit's components are relabelled to match
EM's means (``zoo.gmm.align_fit``), then ``inference.compare`` scores each against NUTS (the reference):

    em              closed-form EM (``GaussianMixture.fit``), the maximum-likelihood point estimate
    variational_em  exact E-step by enumeration, numerical M-step, on the classic Pyro model: EM written generically
    map             SVI with a Delta guide on the Bayesian model (the posterior mode)
    svi             SVI with a full-rank Gaussian guide on the Bayesian model
    laplace         a Gaussian at the Bayesian model's mode, exact Hessian
    pathfinder      normals along L-BFGS paths on the Bayesian model, importance-resampled
    cavi            closed-form variational Bayes (``BayesianGaussianMixture``), "conjugate" prior only
    nuts            the reference posterior; samples in a worker process while the others fit

The Bayesian model is one of ``PRIORS``: "lkj" (``PyroMixture.bayes_model``: LogNormal scales, LKJ
correlations; any covariance type; compared on weights, means, scales) or "conjugate"
(``ConjugateMixture``: Dirichlet weights and Normal-Wishart means and precisions with scikit-learn's
default priors, the model CAVI fits exactly; "full" only; compared on weights, means, precisions, which
every fit gets: from the Bartlett sites, or as EM's inverse covariances).

Files in ``out``: losses.png, posteriors.png, clusters.png, comparison.csv (one row per method and
parameter element), summary.csv (one row per method) and every fit's InferenceData (``<method>.nc``).

The file runs past 400 lines because the two priors' tables, the methods, the comparison, the files in the
data's units and ``main`` are one job, read top to bottom; about a third of it is docstrings.
"""

import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from inference.diagnostics import compare, summarize
from inference.em import variational_em
from inference.errors import ConvergenceWarning, InvalidInputError, check_choice
from inference.files import atomic_output, atomic_write_text
from inference.laplace import laplace
from inference.mcmc import nuts
from inference.pathfinder import pathfinder
from inference.plots import plot_losses, plot_posteriors, save_figure
from inference.result import Fit, point_mass_draw
from inference.svi import svi
from zoo.gmm import GaussianMixture, align_fit, component_sites, log_predictive
from zoo.gmm.conjugate import ConjugateMixture, precisions_from_sites
from zoo.gmm.plots import plot_clusters
from zoo.gmm.variational import BayesianGaussianMixture


@dataclasses.dataclass
class Setup:
    """What every method's fit needs: the data, the EM fit, its Pyro models and the settings.

    ``pyro`` is the EM fit's ``PyroMixture`` (its classic model is variational EM's); ``bayesian`` the
    Bayesian model of the prior (``pyro`` itself for "lkj", a ``ConjugateMixture`` for "conjugate").
    """

    X: torch.Tensor
    gmm: GaussianMixture
    em_seconds: float
    pyro: object
    bayesian: object
    steps: int
    lr: float
    seed: int
    progress: object

    @property
    def bayes(self):
        # a cosine-annealed rate: the constant-rate noise of the guide's parameters would otherwise show up
        # as posterior error in the comparison
        return dict(
            elbo="enum",
            steps=self.steps,
            lr=self.lr,
            schedule="cosine",
            seed=self.seed,
            progress=self.progress,
            max_plate_nesting=1,
        )


def fit_em(s):
    sites = component_sites(*_factor_sites(s.pyro.start, s.gmm.covariance_type))
    return Fit(
        method="em",
        losses=-s.X.shape[0] * s.gmm.log_likelihood_trace_,
        seconds=s.em_seconds,
        params=dict(s.pyro.start),
        draw=point_mass_draw(sites),
        diagnostics={"n_iter": s.gmm.n_iter_, "converged": s.gmm.converged_},
    )


def fit_variational_em(s):
    f = variational_em(
        s.pyro.model, None, s.X, max_iter=200, tol=1e-10, max_plate_nesting=1, progress=s.progress, seed=s.seed
    )
    sites = component_sites(*_factor_sites(f.params, s.gmm.covariance_type))
    return dataclasses.replace(f, draw=point_mass_draw(sites))


def fit_map(s):
    return svi(s.bayesian.bayes_model, s.bayesian.map_guide(), s.X, **s.bayes)


def fit_svi(s):
    return svi(s.bayesian.bayes_model, s.bayesian.bayes_guide(), s.X, **s.bayes)


def fit_laplace(s):
    return laplace(s.bayesian.bayes_model, s.X, init=s.bayesian.bayes_init, max_plate_nesting=1, seed=s.seed)


def fit_pathfinder(s):
    # one path, from the EM fit as every method here starts (more paths from the same start would retrace
    # it); its normal is importance-resampled, and k-hat says whether that can be trusted
    return pathfinder(
        s.bayesian.bayes_model,
        s.X,
        init=s.bayesian.bayes_init,
        num_paths=1,
        max_plate_nesting=1,
        seed=s.seed,
        progress=s.progress,
    )


def fit_cavi(s):
    # from EM's responsibilities; reg_covar=0: the exact CAVI of the conjugate model the others run on
    bgm = BayesianGaussianMixture(
        s.gmm.n_components,
        weight_concentration_prior_type="dirichlet_distribution",
        reg_covar=0.0,
        tol=1e-10,
        max_iter=1000,
        resp_init=s.gmm.predict_proba(s.X).double(),
    )
    return bgm.fit(s.X).to_fit(s.X, seed=s.seed)


# the methods fitted here, in order; NUTS samples in a worker process meanwhile (started in compare_methods)
FITS = {
    "em": fit_em,
    "variational_em": fit_variational_em,
    "map": fit_map,
    "svi": fit_svi,
    "laplace": fit_laplace,
    "pathfinder": fit_pathfinder,
    "cavi": fit_cavi,
}
METHODS = (*FITS, "nuts")


def lkj_mixture(X, gmm, pyro):
    """The "lkj" prior's Bayesian model: the EM fit's ``PyroMixture`` itself."""
    return pyro


def conjugate_mixture(X, gmm, pyro):
    """The "conjugate" prior's Bayesian model: scikit-learn's default priors on X, starting at the EM fit."""
    if gmm.covariance_type != "full":
        raise InvalidInputError(
            f"the conjugate prior (a Wishart on each precision matrix) needs covariance_type "
            f"'full', got {gmm.covariance_type!r}; use --prior lkj"
        )
    priors = BayesianGaussianMixture(
        gmm.n_components,
        weight_concentration_prior_type="dirichlet_distribution",
    ).priors(X)
    return ConjugateMixture(X, gmm.n_components, priors, (gmm.weights_, gmm.means_, gmm.covariances_))


def _lkj_sites(sites, bayesian):
    """The "lkj" fits already share their sites (weights, means, scales, corr_chol)."""
    return sites


def _conjugate_sites(sites, bayesian):
    """``sites`` with "precisions" (from the Bartlett sites, or inverse covariances of a point estimate) and
    the "scales" and "corr_chol" of their inverses (for ``log_predictive``), any leading dimensions."""
    out = dict(sites)
    if "precisions" not in out and "bartlett_chi2" in out:
        out["precisions"] = precisions_from_sites(out, bayesian.priors)
    if "precisions" not in out:
        factor = (
            out["scales"].unsqueeze(-1) * out["corr_chol"] if "corr_chol" in out else torch.diag_embed(out["scales"])
        )
        out["precisions"] = torch.cholesky_inverse(factor)
    cov = torch.linalg.inv(out["precisions"])
    out["scales"] = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    out["corr_chol"] = torch.linalg.cholesky(cov) / out["scales"].unsqueeze(-1)
    return out


# --prior -> the Bayesian model, the sites every fit gets and is compared on, the methods it allows
PRIORS = {
    "lkj": {
        "model": lkj_mixture,
        "sites": _lkj_sites,
        "var_names": ["weights", "means", "scales"],
        "methods": tuple(m for m in METHODS if m != "cavi"),
    },
    "conjugate": {
        "model": conjugate_mixture,
        "sites": _conjugate_sites,
        "var_names": ["weights", "means", "precisions"],
        "methods": METHODS,
    },
}
# "lkj": any covariance type, and the default run is no slower; "conjugate" (which adds the cavi row) is "full"
# only and brings scikit-learn's data-dependent priors, so it is asked for by name
DEFAULT_PRIOR = "lkj"


def default_methods(prior=DEFAULT_PRIOR):
    """The methods ``zoo compare gmm`` runs when none are named: all that ``prior`` allows."""
    return PRIORS[check_choice("prior", prior, PRIORS)]["methods"]


def with_sites(fit, derive, bayesian):
    """A copy of ``fit`` whose draws (and MCMC chains) carry the sites ``derive(sites, bayesian)`` adds."""
    chains = None if fit.chains is None else derive(fit.chains, bayesian)
    return dataclasses.replace(fit, draw=lambda n, seed: derive(fit.draw(n, seed), bayesian), chains=chains)


def _factor_sites(params, covariance_type):
    factor = params["scale_tril"] if covariance_type == "full" else params["scales"]
    return params["weights"], params["means"], factor, covariance_type


def compare_methods(
    X,
    n_components=3,
    *,
    methods=None,
    prior=DEFAULT_PRIOR,
    covariance_type="full",
    out=None,
    steps=1000,
    lr=0.05,
    num_samples=300,
    warmup_steps=200,
    n_init=5,
    seed=0,
    truth=None,
    progress=False,
    data_units=None,
):
    """Fit one data set by every method, align their labels, and compare them.

    Args:
        X: data [N, D].
        n_components: K.
        methods: which of ``METHODS`` to run (None: ``default_methods(prior)``).
        prior: the Bayesian model, a key of ``PRIORS``: "lkj" or "conjugate" (needed by "cavi").
        covariance_type: "full", "diag" or "spherical" ("conjugate": "full" only).
        out: folder for the files (None: write nothing).
        steps: SVI steps (map and svi).
        lr: SVI learning rate.
        num_samples: NUTS draws.
        warmup_steps: NUTS warm-up.
        n_init: EM restarts.
        seed: seeds every method.
        truth: optional true means [K, D], marked on the cluster plot.
        progress: progress bars (None: when on a terminal).
        data_units: ``(center, scale)`` [D] each when X is the caller's data standardised as
            (data - center) / scale: the files written then report means, scales and precisions in the
            data's own units (:func:`in_data_units`); the fits stay standardised.

    Returns:
        dict: "fits" {method: Fit (aligned)}, "table" (``inference.compare``: one row per method and
        parameter element), "summary" (one row per method: log_lik, seconds, max abs error vs NUTS, k-hat),
        "model" (the fitted GaussianMixture), "files" (paths written).
    """
    spec = PRIORS[check_choice("prior", prior, PRIORS)]
    methods = default_methods(prior) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidInputError(f"methods {unknown or list(methods)} are not among {list(METHODS)}")
    refused = [m for m in methods if m not in spec["methods"]]
    if refused:
        raise InvalidInputError(
            f"method(s) {refused} need the conjugate prior (the model CAVI fits): add "
            f"--prior conjugate (prior={prior!r} now)"
        )
    gmm = GaussianMixture(
        n_components, covariance_type=covariance_type, n_init=n_init, seed=seed, tol=1e-8, max_iter=500
    )
    X = gmm.as_data(X)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(X)
    em_seconds = time.perf_counter() - t0
    pyro = gmm.to_pyro(X)
    setup = Setup(X, gmm, em_seconds, pyro, spec["model"](X, gmm, pyro), steps, lr, seed, progress)
    # NUTS, the slowest, samples in a worker process while the other methods fit here, one torch thread
    # each (the tensors are small; two processes on two threads each would fight over the cores)
    threads = torch.get_num_threads()
    fits, pending = {}, None
    try:
        if "nuts" in methods:
            torch.set_num_threads(1)
            pending = nuts(
                setup.bayesian.bayes_model,
                X,
                num_samples=num_samples,
                warmup_steps=warmup_steps,
                init=setup.bayesian.bayes_init,
                max_plate_nesting=1,
                seed=seed,
                progress=progress,
                background=True,
            )
        fits = {name: fit(setup) for name, fit in FITS.items() if name in methods}
        if pending is not None:
            fits["nuts"] = pending.result()
    finally:
        torch.set_num_threads(threads)
    fits = {k: align_fit(with_sites(f, spec["sites"], setup.bayesian), gmm.means_.double()) for k, f in fits.items()}

    var_names = spec["var_names"]
    table = compare(fits, reference="nuts" if "nuts" in fits else None, var_names=var_names, num_samples=500, seed=seed)
    summary = summarize(table)
    summary.insert(0, "log_lik", [log_predictive(X, f.samples(200, seed), covariance_type) for f in fits.values()])
    result = {"fits": fits, "table": table, "summary": summary, "model": gmm, "files": []}
    if out is not None:
        result["files"] = write_comparison(out, X, fits, table, summary, gmm, truth, data_units, var_names)
    return result


def in_data_units(table, data_units=None, covariance_type="full"):
    """The comparison table with a ``units`` column, its means, scales and precisions in the data's own units.

    A mean μ_kd becomes center_d + scale_d μ_kd, a scale σ_kd becomes scale_d σ_kd, a precision Λ_kde becomes
    Λ_kde / (scale_d scale_e), and their posterior sds scale by the same factor; ``error`` and ``sd_ratio``
    are ratios of quantities in the same units, so they do not change. ``units`` says what each row is in:
    "data" (means, scales, precisions), "none" (weights, correlations), or "standardised" (a spherical
    scale shared by columns of different sds, which has no single value in the data's units).

    Args:
        table: ``inference.compare``'s table.
        data_units: ``(center, scale)`` [D] of a standardisation x_std = (x - center) / scale (None: the data
            were not standardised).
        covariance_type: of the mixture.
    """
    table = table.copy()
    kind = table["variable"].str.extract(r"^(\w+)(?:\[(.*)\])?$")
    table["units"] = np.where(kind[0].isin(list(_IN_DATA_UNITS)), "data", "none")
    if data_units is None:
        return table
    center, scale = (np.asarray(torch.as_tensor(v, dtype=torch.float64).cpu(), dtype=float) for v in data_units)
    for i, (site, index) in kind.iterrows():
        if site not in _IN_DATA_UNITS:
            continue
        idx = [int(j) for j in str(index).split(",")] if isinstance(index, str) else []
        factor_shift = _IN_DATA_UNITS[site](idx, center, scale)
        if factor_shift is None:
            table.loc[i, "units"] = "standardised"
            continue
        factor, shift = factor_shift
        table.loc[i, "mean"] = shift + factor * table.loc[i, "mean"]
        table.loc[i, "sd"] = factor * table.loc[i, "sd"]
    return table


def _scale_units(idx, center, scale):
    if len(idx) == 2:
        return scale[idx[1]], 0.0
    return (scale[0], 0.0) if np.allclose(scale, scale[0]) else None  # spherical: one scale per component


# site -> (element index, center [D], scale [D]) -> (factor, shift) into the data's units, None: no such units
_IN_DATA_UNITS = {
    "means": lambda idx, center, scale: (scale[idx[1]], center[idx[1]]),
    "scales": _scale_units,
    "precisions": lambda idx, center, scale: (1.0 / (scale[idx[1]] * scale[idx[2]]), 0.0),
}


def _idata_in_data_units(idata, data_units):
    """An InferenceData of a fit to standardised data x_std = (x - center) / scale, in the data's own units.

    The posterior's ``means``, per-dimension ``scales`` and ``precisions``, the ``observed_data`` and
    ``posterior_predictive`` points x, and the pointwise ``log_likelihood`` of x: log p(x) = log p(x_std) -
    Σ_d log scale_d (the Jacobian of the standardisation), so ``az.loo`` on the file is in the data's units.
    """
    if data_units is None:
        return idata
    center, scale = (np.asarray(torch.as_tensor(v, dtype=torch.float64).cpu(), dtype=float) for v in data_units)
    for group in ("observed_data", "posterior_predictive"):
        if group in idata.groups() and "x" in idata[group]:
            idata[group]["x"] = idata[group]["x"].copy(data=idata[group]["x"].values * scale + center)
    if "log_likelihood" in idata.groups() and "x" in idata.log_likelihood:
        ll = idata.log_likelihood["x"]
        idata.log_likelihood["x"] = ll.copy(data=ll.values - np.log(scale).sum())
    post = idata.posterior
    if "means" in post:
        post["means"] = post["means"].copy(data=post["means"].values * scale + center)
    if "scales" in post and post["scales"].ndim == 4:  # chain, draw, K, D
        post["scales"] = post["scales"].copy(data=post["scales"].values * scale)
    if "precisions" in post:  # chain, draw, K, D, D
        post["precisions"] = post["precisions"].copy(data=post["precisions"].values / np.outer(scale, scale))
    return idata


def write_comparison(
    out, X, fits, table, summary, gmm, truth=None, data_units=None, var_names=("weights", "means", "scales")
):
    """Write the figures (PNG), the tables (CSV) and every fit's InferenceData (netCDF), each atomically.

    With ``data_units`` (the caller standardised its data), ``comparison.csv`` and the InferenceData report
    means, scales and precisions in the data's own units, and ``comparison.csv``'s ``units`` column says so
    per row. ``var_names``: the sites plotted (those compared). Returns the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "losses.png": plot_losses(fits, title="Negative log-likelihood / ELBO / potential per step"),
        "posteriors.png": plot_posteriors(fits, var_names=list(var_names)),
        "clusters.png": plot_clusters(X, fits, gmm, truth),
    }
    written = [save_figure(fig, out / name) for name, fig in figures.items()]
    written.append(
        atomic_write_text(
            out / "comparison.csv", in_data_units(table, data_units, gmm.covariance_type).to_csv(index=False)
        )
    )
    written.append(atomic_write_text(out / "summary.csv", summary.to_csv()))
    for name, fit in fits.items():
        with atomic_output(out / f"{name}.nc") as tmp:
            _idata_in_data_units(fit.to_inference_data(num_samples=500), data_units).to_netcdf(tmp, engine="h5netcdf")
        written.append(out / f"{name}.nc")
    return written


def main(args):
    """`zoo compare gmm` with parsed command-line ``args``: load or make the data, compare, print, write."""
    import pandas as pd

    from zoo import data

    truth, data_units = None, None
    if args.csv:
        raw = data.read_csv(args.csv, columns=args.columns)
        # fitted on standardised columns (priors and starting points assume unit scale); reported in the
        # CSV's own units
        sd = raw.std(0, correction=0)
        data_units = (raw.mean(0), torch.where(sd > 0, sd, torch.ones_like(sd)))
        X = (raw - data_units[0]) / data_units[1]
        source = (
            f"{args.csv}, {X.shape[0]} x {X.shape[1]} (fitted on standardised columns; means and scales "
            f"reported in the CSV's own units)"
        )
    else:
        mix = data.make_mixture(args.n_samples, args.components, args.dims, seed=args.data_seed)
        X, truth = mix.X, mix.means
        source = f"synthetic mixture, N={X.shape[0]}, D={X.shape[1]}, K={args.components}"
    methods = args.methods or default_methods(args.prior)
    print(f"zoo compare gmm: {source}; {args.prior} prior; methods {', '.join(methods)}", flush=True)
    result = compare_methods(
        X,
        args.components,
        methods=methods,
        prior=args.prior,
        covariance_type=args.covariance_type,
        out=args.out,
        steps=args.steps,
        num_samples=args.num_samples,
        warmup_steps=args.warmup,
        seed=args.seed,
        truth=truth,
        progress=args.progress,
        data_units=data_units,
    )
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 4):
        print("\nper method (log_lik: mean log predictive density per point; error in NUTS posterior sds)")
        print(result["summary"].to_string())
        table = in_data_units(result["table"], data_units, args.covariance_type)
        wide = table.assign(value=[f"{m:.3f} ({s:.3f})" for m, s in zip(table["mean"], table["sd"])]).pivot(
            index="variable", columns="method", values="value"
        )
        print(
            "\nposterior mean (sd) per parameter"
            + (", means and scales in the CSV's own units" if data_units is not None else "")
        )
        print(wide[list(result["fits"])].reindex(table["variable"].unique()).to_string())
    print(f"\nwrote {len(result['files'])} files to {args.out}")
