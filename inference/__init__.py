"""Inference for any Pyro model: SVI, variational EM, Laplace, Pathfinder, NUTS; one `Fit` result for all.

This package knows nothing of the models in ``zoo``: every function takes plain Pyro callables.

    fit = inference.svi(model, guide, *data, steps=2000, optimizer="adam", lr=1e-2, elbo="trace")
    fit = inference.svi(model, inference.guide(model, "fullrank"), *data)   # guide families by name
    fit = inference.svi(model, guide, *data, elbo="iwae", num_particles=5)   # or "renyi" with alpha=
    fit = inference.variational_em(model, guide_or_None, *data)
    fit = inference.laplace(model, *data)
    fit = inference.pathfinder(model, *data, num_paths=4)
    fit = inference.nuts(model, *data, num_samples=1000, warmup_steps=500, num_chains=2)
    run = inference.SVI(model, guide); state = run.init(*data, steps=1000); run.update(state)  # one step
    fit.diagnostics["converged"]     # the fit's verdict; inference.ConvergenceWarning when it is False
    fit.samples(1000, reweight=True) # Laplace/SVI draws corrected by Pareto-smoothed importance sampling
    idata = fit.to_inference_data()  # posterior, log_likelihood, posterior_predictive: az.loo, az.compare
    table = inference.compare({"svi": f1, "laplace": f2, "nuts": f3}, reference="nuts")
    check = inference.sbc(model, "laplace", 200, args=(X,), observed=("y",))   # is the method calibrated?
    fig = inference.plot_losses({...}); fig = inference.plot_posteriors({...})
"""

from .diagnostics import compare, summarize
from .em import variational_em
from .errors import CheckpointError, ConvergenceWarning, InferenceError, InvalidInputError, NonFiniteError, ZooError
from .guides import GUIDES, guide
from .laplace import laplace
from .mcmc import nuts
from .pathfinder import pathfinder
from .plots import plot_losses, plot_posteriors
from .result import Fit, point_mass_draw
from .sbc import SBCResult, sbc
from .svi import SVI, CompileNotice, SVIState, svi

__all__ = [
    "svi",
    "SVI",
    "SVIState",
    "CompileNotice",
    "variational_em",
    "laplace",
    "pathfinder",
    "nuts",
    "sbc",
    "SBCResult",
    "guide",
    "GUIDES",
    "compare",
    "summarize",
    "plot_losses",
    "plot_posteriors",
    "Fit",
    "point_mass_draw",
    "InferenceError",
    "ZooError",
    "InvalidInputError",
    "NonFiniteError",
    "CheckpointError",
    "ConvergenceWarning",
]
