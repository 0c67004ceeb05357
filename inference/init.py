"""Where a fit starts: models whose priors cannot be sampled, and Gaussian guides started from Laplace.

Improper priors. Pyro's initialisation strategies (``init_to_median``, ``init_to_feasible``,
``init_to_uniform``, the autoguides' prototype trace) draw from each site's prior, and an improper prior
(``dist.ImproperUniform``, what Stan uses where a model writes no prior) has no draws. Inside
:func:`improper_priors_start_at_zero` such a prior "draws" the point that is 0 on its unconstrained space
(Stan's ``init=0``): 0 for a real, 1 for a positive, 1/2 on the unit interval, an evenly spread simplex. The
strategies then work as usual (``init_to_uniform`` takes only the shape from it and jitters on the
unconstrained space); nothing else changes, and the densities are untouched.

Laplace start. :func:`start_from_laplace` sets a Gaussian autoguide's parameters from a Laplace fit
q(u) = N(u*, H⁻¹) on the same unconstrained space the autoguides use (``biject_to(support)``):

    AutoMultivariateNormal   loc = u*, scale_tril = chol(H⁻¹)  (split into Pyro's scale and unit tril)
    AutoLowRankMVN           loc = u*, diagonal scale = 1/sqrt(diag H) (its low-rank factor learns)
    AutoDiagonalNormal,      loc = u*, scale = 1/sqrt(diag H): the mean-field optimum for a Gaussian
    AutoNormal               posterior, KL(q‖p) minimised by the conditional sds
    AutoDelta                the mode itself

and returns, per loc parameter, the Laplace sd of each element: SVI uses it to take the guide's mean in
steps of posterior sds rather than of the raw unconstrained units, so a posterior with sds of 1e-3 and
one with sds of 1e4 train alike (:mod:`inference.svi`).
"""

from contextlib import contextmanager

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import biject_to, transform_to
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)


@contextmanager
def improper_priors_start_at_zero():
    """Inside the block, ``ImproperUniform.sample`` returns the point at 0 on its unconstrained space."""
    original = dist.ImproperUniform.sample

    def sample(self, sample_shape=torch.Size()):
        transform = biject_to(self.support)
        shape = transform.inverse_shape(torch.Size(sample_shape) + self.shape())
        return transform(torch.zeros(shape, dtype=torch.get_default_dtype()))

    dist.ImproperUniform.sample = sample
    try:
        yield
    finally:
        dist.ImproperUniform.sample = original


def guide_start(guide):
    """``{site: constrained value}``: where an autoguide starts (its prototype trace), or None."""
    trace = getattr(guide, "prototype_trace", None)
    if trace is None:
        return None
    return {name: site["value"].detach() for name, site in trace.iter_stochastic_nodes()}


def can_start_from_laplace(guide):
    """Whether :func:`start_from_laplace` knows how to set this guide's parameters."""
    return _setter(guide) is not None


def start_from_laplace(guide, laplace_fit):
    """Set the guide's parameters from ``laplace_fit`` (in place); return {loc tensor: Laplace sds}.

    Args:
        guide: an autoguide already set up (its first call done), one of the classes in ``_SETTERS``.
        laplace_fit: ``inference.laplace`` of the same model and data.

    Returns:
        dict mapping each unconstrained loc parameter tensor of the guide to a tensor of its shape holding
        the Laplace marginal sd of each element (for per-element step sizes); empty for AutoDelta.
    """
    d = laplace_fit.diagnostics
    sites, loc, cov, precision = d["sites"], d["loc"], d["covariance"], d["hessian"]
    order = _guide_order(guide, sites)
    u = loc[order]
    cov = cov[order][:, order]
    conditional_sd = precision.diagonal()[order].rsqrt()
    return _setter(guide)(guide, u, cov, conditional_sd, laplace_fit)


def _guide_order(guide, sites):
    """Indices into Laplace's flat vector, in the guide's order of sites."""
    index = []
    for name, _ in guide.prototype_trace.iter_stochastic_nodes():
        if name not in sites:
            raise KeyError(f"site {name!r} of the guide is not a continuous latent site of the model")
        s = sites[name]
        index.extend(range(s.start, s.stop))
    return torch.tensor(index, dtype=torch.long)


def _copy(param, value, constraint=None):
    """Write a constrained value into the unconstrained tensor behind a guide parameter, in place."""
    with torch.no_grad():
        value = value.to(param.dtype)
        if constraint is not None:  # first: an unconstrained space may be smaller (a Cholesky factor's)
            value = transform_to(constraint).inv(value)
        param.copy_(value.reshape(param.shape))
    return param


def _params(guide):
    """{name: the unconstrained tensor the param store trains} for each of the guide's parameters. (An
    attribute read goes through the param store, whose constrained value links back to that tensor;
    ``named_pyro_params`` gives the module's own copy for constrained parameters.)"""
    out = {}
    for name, _ in guide.named_pyro_params():
        value = guide
        for part in name.split("."):
            value = getattr(value, part)
        out[name] = value.unconstrained()
    return out


def _set_multivariate(guide, u, cov, conditional_sd, fit):
    p = _params(guide)
    L = torch.linalg.cholesky(cov)
    scale = L.diagonal()
    _copy(p["loc"], u)
    _copy(p["scale"], scale, guide.scale_constraint)
    _copy(p["scale_tril"], L / scale[:, None], dist.constraints.unit_lower_cholesky)
    return {p["loc"]: cov.diagonal().sqrt().to(p["loc"].dtype)}


def _set_lowrank(guide, u, cov, conditional_sd, fit):
    p = _params(guide)
    _copy(p["loc"], u)
    _copy(p["scale"], conditional_sd, guide.scale_constraint)
    return {p["loc"]: cov.diagonal().sqrt().to(p["loc"].dtype)}


def _set_diagonal(guide, u, cov, conditional_sd, fit):
    p = _params(guide)
    _copy(p["loc"], u)
    _copy(p["scale"], conditional_sd, guide.scale_constraint)
    return {p["loc"]: conditional_sd.to(p["loc"].dtype)}


def _set_normal(guide, u, cov, conditional_sd, fit):
    p, sds, pos = _params(guide), {}, 0
    for name, _ in guide.prototype_trace.iter_stochastic_nodes():
        loc = p[f"locs.{name}"]
        part = slice(pos, pos + loc.numel())
        _copy(loc, u[part])
        _copy(p[f"scales.{name}"], conditional_sd[part], guide.scale_constraint)
        sds[loc] = conditional_sd[part].reshape(loc.shape).to(loc.dtype)
        pos += loc.numel()
    return sds


def _set_delta(guide, u, cov, conditional_sd, fit):
    p = _params(guide)
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        _copy(p[name], fit.params[name], site["fn"].support)
    return {}


# Most specific class first: AutoDiagonalNormal and AutoMultivariateNormal share a base.
_SETTERS = [
    (AutoMultivariateNormal, _set_multivariate),
    (AutoLowRankMultivariateNormal, _set_lowrank),
    (AutoDiagonalNormal, _set_diagonal),
    (AutoNormal, _set_normal),
    (AutoDelta, _set_delta),
]


def _setter(guide):
    return next((fn for cls, fn in _SETTERS if isinstance(guide, cls)), None)
