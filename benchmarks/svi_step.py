"""Steady-state cost of one SVI step: ``inference.svi``'s step paths against NumPyro on the same models.

Three models, each written in Pyro and in NumPyro with the same priors, guide family and optimizer
(Adam, lr 1e-2, one particle):

    regression   5-coefficient Bayesian linear regression, N = 100, full-rank Gaussian guide
    gmm          the Bayesian Gaussian mixture of ``zoo compare gmm`` (K = 3, D = 2, N = 300, full
                 covariances), MAP (Delta guide), the assignments summed out: Pyro enumerates them with
                 TraceEnum_ELBO; NumPyro writes the same sum as MixtureSameFamily
    hierarchical a 20-dimensional hierarchical normal model (18 groups, non-centred), mean-field guide

Ours: ``inference.SVI`` (the state ``svi`` loops over) with the default settings, timed over
``SVI.update`` calls after a warm-up; its step runs eager (compile=False), as the TorchScript graph
("torchscript") and as inductor's fused kernels ("inductor"). ``compile="auto"`` (the default) picks
TorchScript for short fits and inductor for long ones: the "default" rows name its pick for a 1000-step
and a 50000-step fit. NumPyro: ``SVI.run``'s default loop (a Python loop over the jitted ``SVI.update``; with
``progress_bar=False`` it is a ``lax.scan`` instead, one XLA program, also printed, timed after its
compile). The ratio is ours / NumPyro ``SVI.run``'s default loop, both timed in the same process, one
thread each. Compile times are printed
apart: they are paid once per fit (inductor's are cached on disk across runs).

    python benchmarks/svi_step.py [--steps 2000] [--models regression,gmm,hierarchical]

Needs the ``bench`` extra (NumPyro, JAX): ``pip install -c constraints.txt -e ".[bench]"``.
"""

import argparse
import os
import time
import warnings

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal  # noqa: E402

from inference.capture import AUTO_INDUCTOR_WORK  # noqa: E402
from inference.svi import SVI  # noqa: E402

torch.set_num_threads(1)


# ---- the models, in Pyro ------------------------------------------------------------------------------


def regression_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 5, generator=g)
    return X, X @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.5 * torch.randn(100, generator=g)


def regression(X, y):
    b = pyro.sample("b", dist.Normal(torch.zeros(5), 1.0).to_event(1))
    s = pyro.sample("s", dist.HalfNormal(1.0))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ b, s), obs=y)


SIGMA = torch.tensor(
    [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0, 12.0, 14.0, 8.0, 13.0, 10.0, 15.0, 9.0, 12.0, 17.0, 11.0]
)


def hierarchical_data():
    g = torch.Generator().manual_seed(1)
    return (8.0 + 5.0 * torch.randn(18, generator=g) + SIGMA * torch.randn(18, generator=g),)


def hierarchical(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("data", y.shape[0]):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * eta, SIGMA), obs=y)


def gmm_setup():
    from zoo import data
    from zoo.gmm import GaussianMixture

    gmm = GaussianMixture(3, covariance_type="full", n_init=5, seed=0, tol=1e-8, max_iter=500)
    X = gmm.as_data(data.make_mixture(300, 3, 2, seed=0).X).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gmm.fit(X)
    return gmm.to_pyro(X), X


def pyro_cases():
    gmm, X = gmm_setup()
    return {
        "regression": (regression, lambda: AutoMultivariateNormal(regression), regression_data(), "trace"),
        "gmm": (gmm.bayes_model, gmm.map_guide, (X,), "enum"),
        "hierarchical": (hierarchical, lambda: AutoNormal(hierarchical), hierarchical_data(), "trace"),
    }


def time_ours(model, make_guide, data, elbo, compile, steps):
    """(ms per SVI.update, seconds to set up: init + capture/compile, what ran)."""
    run = SVI(model, make_guide(), elbo=elbo, compile=compile, max_plate_nesting=1)
    store = pyro.get_param_store()
    with store.scope(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        state = run.init(*data, steps=10 * steps)
        setup = time.perf_counter() - t0
        with store.scope(state.store):
            for _ in range(50):
                run.update(state)
            t0 = time.perf_counter()
            for _ in range(steps):
                run.update(state)
            ms = (time.perf_counter() - t0) / steps * 1e3
    return ms, setup, state.info["step"]


# ---- the same models, in NumPyro ----------------------------------------------------------------------


def numpyro_cases():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer.autoguide import AutoDelta as NAutoDelta
    from numpyro.infer.autoguide import AutoMultivariateNormal as NAutoMVN
    from numpyro.infer.autoguide import AutoNormal as NAutoNormal

    X, y = (jnp.asarray(t.numpy()) for t in regression_data())

    def n_regression(X, y):
        b = numpyro.sample("b", nd.Normal(jnp.zeros(5), 1.0).to_event(1))
        s = numpyro.sample("s", nd.HalfNormal(1.0))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", nd.Normal(X @ b, s), obs=y)

    sigma = jnp.asarray(SIGMA.numpy())
    (yh,) = (jnp.asarray(t.numpy()) for t in hierarchical_data())

    def n_hierarchical(y):
        mu = numpyro.sample("mu", nd.Normal(0.0, 10.0))
        tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
        with numpyro.plate("data", y.shape[0]):
            eta = numpyro.sample("eta", nd.Normal(0.0, 1.0))
            numpyro.sample("y", nd.Normal(mu + tau * eta, sigma), obs=y)

    gmm, Xg = gmm_setup()
    prior = {
        "concentration": np.full(gmm.n_components, gmm.prior_concentration),
        "loc": gmm.data_loc.numpy(),
        "scale": (gmm.prior_scale * gmm.data_sd).numpy(),
        "log_sd": np.log(gmm.data_sd.numpy() / 2),
        "eta": gmm.lkj_concentration,
    }
    Xg = jnp.asarray(Xg.numpy())

    def n_gmm(X):
        K, D = 3, X.shape[1]
        weights = numpyro.sample("weights", nd.Dirichlet(jnp.asarray(prior["concentration"])))
        with numpyro.plate("components", K):
            means = numpyro.sample(
                "means", nd.Normal(jnp.asarray(prior["loc"]), jnp.asarray(prior["scale"])).to_event(1)
            )
            scales = numpyro.sample("scales", nd.LogNormal(jnp.asarray(prior["log_sd"]), 1.0).to_event(1))
            corr = numpyro.sample("corr_chol", nd.LKJCholesky(D, float(prior["eta"])))
        tril = scales[..., None] * corr
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample(
                "x", nd.MixtureSameFamily(nd.Categorical(weights), nd.MultivariateNormal(means, scale_tril=tril)), obs=X
            )

    return {
        "regression": (n_regression, NAutoMVN, (X, y)),
        "gmm": (n_gmm, NAutoDelta, (Xg,)),
        "hierarchical": (n_hierarchical, NAutoNormal, (yh,)),
    }


def time_numpyro(model, guide_class, data, steps):
    """(ms per step of a lax.scan over SVI.update, ms per step of a Python loop over the jitted
    SVI.update, which is what SVI.run runs by default)."""
    import jax
    from numpyro.infer import SVI as NSVI
    from numpyro.infer import Trace_ELBO as NTrace_ELBO
    from numpyro.optim import Adam as NAdam

    svi = NSVI(model, guide_class(model), NAdam(1e-2), NTrace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), *data)

    @jax.jit
    def run(state):  # what SVI.run(progress_bar=False) runs: the whole loop as one XLA program
        return jax.lax.scan(lambda s, _: svi.update(s, *data), state, None, length=steps)

    jax.block_until_ready(run(state))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(run(state))
    run_ms = (time.perf_counter() - t0) / steps * 1e3
    update = jax.jit(svi.update)
    state = svi.init(jax.random.PRNGKey(0), *data)
    for _ in range(50):
        state, loss = update(state, *data)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, loss = update(state, *data)
    jax.block_until_ready(loss)
    return run_ms, (time.perf_counter() - t0) / steps * 1e3


def default_pick(ops, steps):
    return "inductor" if ops * steps >= AUTO_INDUCTOR_WORK else "torchscript"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000, help="timed steps per path (default: 2000)")
    ap.add_argument("--models", default="regression,gmm,hierarchical")
    args = ap.parse_args()
    import numpyro

    print(f"torch {torch.__version__}, pyro {pyro.__version__}, numpyro {numpyro.__version__}; one thread each")
    ours, theirs = pyro_cases(), numpyro_cases()
    header = f"{'model':13s} {'path':34s} {'ms/step':>8s} {'x NumPyro':>9s} {'setup s':>8s}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        scan_ms, run_ms = time_numpyro(*theirs[name], args.steps)
        print(f"{name:13s} {'NumPyro SVI.run (jitted update loop)':34s} {run_ms:8.3f} {1.0:9.2f}")
        print(f"{name:13s} {'NumPyro lax.scan of update (XLA)':34s} {scan_ms:8.3f} {scan_ms / run_ms:9.2f}")
        results = {}
        for compile in (False, "torchscript", "inductor"):
            ms, setup, ran = time_ours(*ours[name], compile, args.steps)
            results[compile] = ms
            label = f"inference.SVI, compile={compile!r}"
            note = "" if ran == (compile or "eager") else f"  ran: {ran}"
            print(f"{name:13s} {label:34s} {ms:8.3f} {ms / run_ms:9.2f} {setup:8.1f}{note}")
        model, make_guide, data, elbo = ours[name]
        from inference.capture import CapturedStep

        with pyro.get_param_store().scope(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = SVI(model, make_guide(), elbo=elbo, compile=False, max_plate_nesting=1)
            state = run.init(*data, steps=1)
            ops = CapturedStep(run.loss_fn, model, run.guide, state.params, data).graph.ops
        for fit_steps in (1000, 50000):
            pick = default_pick(ops, fit_steps)
            print(
                f"{name:13s} {f'default, {fit_steps}-step fit: {pick}':34s} {results[pick]:8.3f} "
                f"{results[pick] / run_ms:9.2f}"
            )
        print()


if __name__ == "__main__":
    main()
