"""NUTS wall time against NumPyro on the same models, and accuracy against posteriordb's reference draws.

    nice env OMP_NUM_THREADS=1 python benchmarks/nuts.py [--posteriors NAME ...] [--num-samples 1000]
        [--warmup 500] [--seed 0] [--chains 1] [--pyro] [--gmm]

Needs the ``bench`` extra (NumPyro and JAX): ``pip install -e ".[bench]"``.

For each posterior (default: a regression, ``earnings-logearn_interaction_z``, and a time series,
``arma-arma11``), one run of warm-up + draws per sampler, timed from the call to the returned draws
(NumPyro's JIT compilation and our graph capture included: both are paid once per model and data):

- **numpyro**: the same model written in NumPyro below (same densities, same priors, the ARMA recursion
  by the same triangular solve), ``numpyro.infer.NUTS`` with the posterior's own settings (dense mass,
  target acceptance), float64 (``jax_enable_x64``, as the posteriordb data are float64); with
  ``--chains`` > 1 its chains run in parallel on as many XLA CPU devices;
- **ours**: ``inference.nuts`` on the Pyro transcription in ``zoo.posteriordb`` (float64, one thread
  per chain; several chains in parallel worker processes);
- **pyro** (with ``--pyro``): Pyro's own ``MCMC(NUTS(model))``, what ``inference.nuts`` used to run.

Printed side by side: seconds as "wall (CPU)" (CPU: all threads of the process and its finished worker
processes; on a shared machine the wall time depends on the other jobs, the CPU time much less), the ratio
ours / numpyro of each (the target is <= 2), and per sampler the accuracy, max over elements of |mean -
mean_ref| / sd_ref, with the smallest bulk ESS. The Monte Carlo error of a mean is about 1/sqrt(ESS) reference
sds (0.03 at ESS 1000), so accuracies below ~4/sqrt(ESS) are all equally right. ``--gmm``: the NUTS call of
``zoo compare gmm`` (the Bayesian mixture with its assignments enumerated, CLI defaults: 150 warm-up steps,
200 draws) with ours and Pyro's (NumPyro has no transcription of it here); the ratio there is ours / Pyro's.
Nothing is asserted: the numbers depend on the machine and its load (run it with ``nice`` and
``OMP_NUM_THREADS=1`` beside other jobs).
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from inference.diagnostics import flat_elements  # noqa: E402
from inference.mcmc import nuts  # noqa: E402
from zoo import posteriordb  # noqa: E402

DEFAULT_POSTERIORS = ["earnings-logearn_interaction_z", "arma-arma11"]


# ---- the same models in NumPyro ------------------------------------------------------------------------
def numpyro_models():
    """{posterior name: NumPyro model}, each the density of its ``zoo.posteriordb.models`` twin."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax.scipy.linalg import solve_triangular
    from numpyro.distributions import constraints

    def flat(name, support, shape=()):
        return numpyro.sample(name, dist.ImproperUniform(support, (), shape))

    def linear_recursion(rate, a):
        T = a.shape[0]
        system = jnp.eye(T) - rate * jnp.diag(jnp.ones(T - 1), -1)
        return solve_triangular(system, a, lower=True)

    def logearn_interaction_z(log_earn, z_height, male, inter):
        beta = flat("beta", constraints.real, (4,))
        sigma = flat("sigma", constraints.positive)
        mean = beta[0] + beta[1] * z_height + beta[2] * male + beta[3] * inter
        with numpyro.plate("data", log_earn.shape[0]):
            numpyro.sample("log_earn", dist.Normal(mean, sigma), obs=log_earn)

    def earn_height(earn, height):
        beta = flat("beta", constraints.real, (2,))
        sigma = flat("sigma", constraints.positive)
        with numpyro.plate("data", earn.shape[0]):
            numpyro.sample("earn", dist.Normal(beta[0] + beta[1] * height, sigma), obs=earn)

    def kilpisjarvi(x, y, pmualpha, psalpha, pmubeta, psbeta):
        alpha = numpyro.sample("alpha", dist.Normal(pmualpha, psalpha))
        beta = numpyro.sample("beta", dist.Normal(pmubeta, psbeta))
        sigma = flat("sigma", constraints.positive)
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)

    def arma11(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        phi = numpyro.sample("phi", dist.Normal(0.0, 2.0))
        theta = numpyro.sample("theta", dist.Normal(0.0, 2.0))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
        a = jnp.concatenate([(y[0] - mu - phi * mu)[None], y[1:] - mu - phi * y[:-1]])
        err = linear_recursion(-theta, a)
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("err", dist.Normal(0.0, sigma), obs=err)

    def garch11(y, sigma1):
        mu = flat("mu", constraints.real)
        alpha0 = flat("alpha0", constraints.positive)
        alpha1 = flat("alpha1", constraints.unit_interval)
        beta1_raw = flat("beta1_raw", constraints.unit_interval)
        numpyro.factor("beta1_jacobian", jnp.log1p(-alpha1))
        beta1 = numpyro.deterministic("beta1", (1 - alpha1) * beta1_raw)
        c = jnp.concatenate([jnp.reshape(sigma1**2, (1,)), alpha0 + alpha1 * (y[:-1] - mu) ** 2])
        variance = linear_recursion(beta1, c)
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, jnp.sqrt(variance)), obs=y)

    return {
        "earnings-logearn_interaction_z": logearn_interaction_z,
        "earnings-earn_height": earn_height,
        "kilpisjarvi_mod-kilpisjarvi": kilpisjarvi,
        "arma-arma11": arma11,
        "garch-garch11": garch11,
    }


# ---- one run of each sampler ---------------------------------------------------------------------------
class Timer:
    """Wall seconds and CPU seconds (this process's threads and its finished child processes) of a block:
    on a shared machine the wall time depends on the other jobs, the CPU time much less."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def accuracy(p, draws):
    """max over elements of |mean - mean_ref| / sd_ref, for draws {site: array [n, *shape]}."""
    labels = [label for label, _ in flat_elements(draws, list(draws)) if label in p.reference]
    values = dict(flat_elements(draws, list(draws)))
    return max(abs(values[k].mean() - p.reference[k][0]) / p.reference[k][1] for k in labels)


def run_ours(p, args):
    with Timer() as seconds:
        fit = nuts(
            p.model,
            *p.data,
            num_samples=args.num_samples,
            warmup_steps=args.warmup,
            seed=args.seed,
            num_chains=args.chains,
            progress=False,
            **p.nuts,
        )
    draws = {k: v.double().numpy().reshape(-1, *v.shape[2:]) for k, v in fit.chains.items()}
    ess = min(float(np.min(e)) for e in fit.diagnostics["ess_bulk"].values())
    return seconds, accuracy(p, draws), ess, fit.diagnostics["potential"]


def run_numpyro(p, model, args):
    import jax
    import jax.numpy as jnp
    import numpyro.diagnostics
    from numpyro.infer import MCMC, NUTS

    data = [jnp.asarray(x.numpy()) for x in p.data]
    with Timer() as seconds:
        kernel = NUTS(
            model, target_accept_prob=p.nuts.get("target_accept_prob", 0.8), dense_mass=p.nuts.get("dense_mass", False)
        )
        mcmc = MCMC(
            kernel,
            num_warmup=args.warmup,
            num_samples=args.num_samples,
            num_chains=args.chains,
            chain_method="parallel" if args.chains > 1 else "sequential",
            progress_bar=False,
        )
        mcmc.run(jax.random.PRNGKey(args.seed), *data)
        samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    latent = [k for k in samples if k in {label.split("[")[0] for label in p.reference}]
    draws = {k: np.asarray(samples[k]).reshape(-1, *samples[k].shape[2:]) for k in latent}
    ess = min(float(np.min(numpyro.diagnostics.effective_sample_size(np.asarray(samples[k])))) for k in latent)
    return seconds, accuracy(p, draws), ess


def run_pyro(model, data, num_samples, warmup, seed, init=None, max_plate_nesting=None, **settings):
    """Pyro's own NUTS, as ``inference.nuts`` ran it before: one chain, seconds and the draws."""
    import pyro
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_uniform, init_to_value

    from inference.init import improper_priors_start_at_zero

    pyro.set_rng_seed(seed)
    strategy = init_to_value(values=init) if init else init_to_uniform
    with Timer() as seconds:
        kernel = NUTS(
            model,
            target_accept_prob=settings.get("target_accept_prob", 0.8),
            full_mass=settings.get("dense_mass", False),
            max_plate_nesting=max_plate_nesting,
            init_strategy=strategy,
        )
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, disable_progbar=True)
        with improper_priors_start_at_zero():
            mcmc.run(*data)
    draws = {k: v.double().numpy() for k, v in mcmc.get_samples().items()}
    return seconds, draws


def gmm_call():
    """``zoo compare gmm``'s data, fitted mixture and NUTS arguments (CLI defaults)."""
    from zoo import data
    from zoo.gmm import GaussianMixture

    gmm = GaussianMixture(3, covariance_type="full", n_init=5, seed=0, tol=1e-8, max_iter=500)
    X = gmm.as_data(data.make_mixture(300, 3, 2, seed=0).X)
    models = gmm.fit(X).to_pyro(X)
    return models, X, dict(num_samples=200, warmup_steps=150, init=models.bayes_init, max_plate_nesting=1, seed=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriors", nargs="+", default=DEFAULT_POSTERIORS, help="posteriordb names")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=1, help="chains (ours in parallel processes)")
    parser.add_argument("--pyro", action="store_true", help="also time Pyro's own NUTS (slow)")
    parser.add_argument("--gmm", action="store_true", help="also time the NUTS call of zoo compare gmm")
    args = parser.parse_args(argv)
    import numpyro

    numpyro.set_host_device_count(args.chains)  # NumPyro's parallel chains: one XLA CPU device each
    import jax

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    models = numpyro_models()
    unknown = [n for n in args.posteriors if n not in models]
    if unknown:
        parser.error(f"no NumPyro transcription of {unknown}; choose among {sorted(models)}")
    warnings.simplefilter("ignore")  # convergence warnings: the accuracy column judges instead

    print(
        f"NUTS, {args.warmup} warm-up + {args.num_samples} draws, {args.chains} chain(s), seed {args.seed}; "
        "seconds: wall (CPU); accuracy: max |mean - ref| / ref sd (min bulk ESS)",
        flush=True,
    )
    header = (
        f"{'posterior':32s} {'numpyro s':>11s} {'ours s':>11s} {'ours/numpyro':>12s} {'numpyro acc':>14s} "
        f"{'ours acc':>14s}" + (f" {'pyro s':>11s} {'pyro acc':>8s}" if args.pyro else "")
    )
    print(header, flush=True)
    for name in args.posteriors:
        p = posteriordb.load(name)
        np_time, np_acc, np_ess = run_numpyro(p, models[name], args)
        ours, acc, ess, how = run_ours(p, args)
        line = (
            f"{name:32s} {np_time.wall:5.1f} ({np_time.cpu:4.1f}) {ours.wall:5.1f} ({ours.cpu:4.1f}) "
            f"{ours.wall / np_time.wall:5.2f} ({ours.cpu / np_time.cpu:4.2f}) "
            f"{np_acc:6.3f} ({np_ess:5.0f}) {acc:6.3f} ({ess:5.0f})"
        )
        if args.pyro:
            py_time, draws = run_pyro(p.model, p.data, args.num_samples, args.warmup, args.seed, **p.nuts)
            line += f" {py_time.wall:5.1f} ({py_time.cpu:4.1f}) {accuracy(p, draws):8.3f}"
        print(line + ("" if how == "compiled" else f"  [ours: {how} potential]"), flush=True)

    if args.gmm:
        torch.set_default_dtype(torch.float32)  # as the CLI runs it
        gmm, X, call = gmm_call()
        with Timer() as ours:
            fit = nuts(gmm.bayes_model, X, progress=False, **call)
        py_time, draws = run_pyro(
            gmm.bayes_model,
            (X,),
            call["num_samples"],
            call["warmup_steps"],
            call["seed"],
            init=call["init"],
            max_plate_nesting=1,
        )
        means = fit.chains["means"].double().reshape(-1, *fit.chains["means"].shape[2:])
        reference = torch.as_tensor(draws["means"])
        gap = (means.mean(0) - reference.mean(0)).abs().max() / reference.std(0).min()
        print(
            f"\nzoo compare gmm's NUTS call ({call['warmup_steps']} warm-up + {call['num_samples']} draws, "
            f"z enumerated), wall (CPU) seconds: pyro {py_time.wall:.1f} ({py_time.cpu:.1f}), ours "
            f"{ours.wall:.1f} ({ours.cpu:.1f}) with the {fit.diagnostics['potential']} potential, ratio "
            f"{ours.wall / py_time.wall:.2f}; max |difference of the means' means| {float(gap):.2f} pyro sds",
            flush=True,
        )


if __name__ == "__main__":
    main()
