"""The compiled SVI step (inference.capture): the same losses and gradients as Pyro's eager step for the
same seed, on every ELBO; a refusal, and the eager step with a notice, where a graph cannot stand for the
step; and the Pyro internals it relies on, checked by name so that a Pyro upgrade fails here first."""

import importlib
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_compiled_fit_is_the_eager_fit
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal

import inference
from inference.capture import PATCHED_MODULES, CapturedStep, CaptureError
from inference.objectives import make_elbo, scale_plate
from inference.svi import CompileNotice

N, D = 64, 3


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g)
    return X, X @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(N, generator=g)


def regression(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(D), 10.0).to_event(1))
    s = pyro.sample("s", dist.HalfNormal(2.0))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), s), obs=y)


def mixture(X, y):
    # a discrete site summed out by TraceEnum_ELBO: the step contains the enumeration's contraction
    locs = pyro.sample("locs", dist.Normal(torch.zeros(2), 5.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(locs[z.long()], 1.0), obs=y)


def nonreparameterised(X, y):
    # a Poisson latent, sampled without a reparameterisation: its gradient is a score-function estimate,
    # and the surrogate loss differentiated differs from the loss reported
    k = pyro.sample("k", dist.Poisson(3.0))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(0.0, 1.0 + k), obs=y)


def score_guide(X, y):
    rate = pyro.param("rate", torch.tensor(2.0), constraint=dist.constraints.positive)
    pyro.sample("k", dist.Poisson(rate))


CASES = {
    "trace": (regression, lambda: AutoMultivariateNormal(regression)),
    "meanfield": (regression, lambda: AutoNormal(regression)),
    "tracegraph": (nonreparameterised, lambda: score_guide),
    "enum": (mixture, lambda: AutoDelta(pyro.poutine.block(mixture, hide=["z"]))),
}


def eager_and_captured(elbo_name, scale=1.0):
    """(loss, {param: grad}) of one eager step and one captured step, from the same random state."""
    model, make_guide = CASES[elbo_name]
    X, y = data()
    out = []
    with pyro.get_param_store().scope():
        guide = make_guide()
        elbo = make_elbo(elbo_name, max_plate_nesting=1)
        with scale_plate("data", scale):
            elbo.loss(model, guide, X, y)  # creates the parameters
        store = pyro.get_param_store()
        params = [store[n].unconstrained() for n in sorted(store.keys())]
        step = CapturedStep(elbo, model, guide, params, (X, y), context=lambda: scale_plate("data", scale))
        for run in ("eager", "captured"):
            for p in params:
                p.grad = None
            pyro.set_rng_seed(7)
            if run == "eager":
                with scale_plate("data", scale):
                    loss = elbo.loss_and_grads(model, guide, X, y)
            else:
                loss = float(step((X, y))[0])
            out.append((loss, {n: p.grad.clone() for n, p in zip(sorted(store.keys()), params)}))
    return out


@pytest.mark.parametrize("elbo_name", list(CASES))
def test_captured_step_gives_the_eager_loss_and_gradients(elbo_name):
    (eager_loss, eager_grads), (loss, grads) = eager_and_captured(elbo_name, scale=4.0)
    # the same operations on the same draws: equal to float32 rounding (the eager loss sums in float64)
    assert loss == pytest.approx(eager_loss, rel=1e-6, abs=1e-4)
    for name, g in eager_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6)


def test_a_fit_with_the_compiled_step_is_the_eager_fit():
    assert_compiled_fit_is_the_eager_fit(regression, lambda: AutoMultivariateNormal(regression), *data())


def test_inductor_step_gives_the_eager_gradients():
    # inductor keeps ATen's random functions (fallback_random): the same draws as the eager step
    X, y = data()
    with pyro.get_param_store().scope():
        guide = AutoNormal(regression)
        elbo = make_elbo("trace")
        elbo.loss(regression, guide, X, y)
        store = pyro.get_param_store()
        params = [store[n].unconstrained() for n in sorted(store.keys())]
        step = CapturedStep(elbo, regression, guide, params, (X, y), backend="inductor")
        if step.backend != "inductor":  # no C++ compiler here: the TorchScript fallback is tested above
            pytest.skip(f"inductor cannot compile on this machine: {step.backend}")
        pyro.set_rng_seed(1)
        loss = float(step((X, y))[0])
        grads = [p.grad.clone() for p in params]
        pyro.set_rng_seed(1)
        for p in params:
            p.grad = None
        assert loss == pytest.approx(elbo.loss_and_grads(regression, guide, X, y), rel=1e-5)
        for p, g in zip(params, grads):
            # fused kernels reorder sums: float32 rounding of the order of the sums' size
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-4)


def branching(X, y):
    # Python control flow on a sampled value: no single graph stands for every step
    w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    scale = 1.0 if w[0] > 0 else 2.0
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), scale), obs=y)


class WithBatchNorm(pyro.nn.PyroModule):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(D)

    def forward(self, X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal((self.norm(X) * w).sum(-1), 1.0), obs=y)


@pytest.mark.parametrize("model, why", [(branching, "data-dependent"), (WithBatchNorm(), "not a parameter")])
def test_a_step_no_graph_stands_for_runs_eagerly_with_a_notice(model, why):
    X, y = data()
    with pytest.warns(CompileNotice, match="running the eager step"):
        fit = inference.svi(model, AutoNormal(model), X, y, steps=20, init="guide", progress=False)
    assert fit.diagnostics["step"].startswith("eager") and why in fit.diagnostics["step"]
    assert len(fit.losses) == 20


def test_compile_false_runs_eagerly_without_a_notice():
    X, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileNotice)
        fit = inference.svi(
            branching, AutoNormal(branching), X, y, steps=5, init="guide", compile=False, progress=False
        )
    assert fit.diagnostics["step"] == "eager"


def test_capture_refuses_a_function_with_data_dependent_control_flow():
    x = torch.randn(3)
    with pytest.raises(CaptureError, match="data-dependent"):
        from inference.capture import capture

        capture(lambda t: (t * 2 if t.sum() > 0 else t,), (x,))


def test_the_pyro_internals_the_capture_relies_on_exist():
    # If Pyro renames these, the captured ELBO would call .item() on a traced tensor: fail here, by name.
    for name in PATCHED_MODULES:
        module = importlib.import_module(name)
        assert hasattr(module, "warn_if_nan"), name
    for name in ("pyro.infer.trace_elbo", "pyro.infer.trace_mean_field_elbo", "pyro.infer.tracegraph_elbo"):
        assert hasattr(importlib.import_module(name), "torch_item"), name
    assert hasattr(pyro.infer.TraceGraph_ELBO, "_loss_and_surrogate_loss")
    assert callable(torch._C._get_tracing_state)
