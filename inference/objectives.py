"""The training objectives of SVI by name, and the minibatch scaling they share.

    trace, meanfield, tracegraph, enum    the ELBO, E_q[log p(x, z) − log q(z)], by Pyro's estimators
                                          (meanfield: closed-form KL terms; tracegraph: score-function terms
                                          with baselines for non-reparameterised sites; enum: discrete sites
                                          summed out)
    renyi, iwae                           Rényi's α bound with K = num_particles draws; iwae is α = 0

"jit-<name>" is the same objective with its step compiled by TorchScript, the name older scripts used.
"""

import math

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from .errors import InvalidInputError, check_choice, check_positive


class RenyiELBO(pyro.infer.RenyiELBO):
    """Rényi's α bound (Li & Turner 2016); at α = 0 the importance-weighted bound (Burda et al. 2016).

    With K draws z_k ~ q and log weights ℓ_k = log p(x, z_k) − log q(z_k), the estimate is

        L_α = 1/(1 − α) log( (1/K) Σ_k exp((1 − α) ℓ_k) )          (α >= 0, α != 1)

    and ``loss`` is −L_α. In expectation it is a lower bound on log p(x): the ELBO at K = 1 (or α → 1),
    rising with K, for α < 1, towards log p(x) − D_α(q ‖ p(z | x)), which is log p(x) itself at α = 0.
    Its gradient for reparameterised draws is Σ_k w_k ∇ℓ_k / K with the self-normalised weights
    w_k = exp((1 − α) ℓ_k) / mean_j exp((1 − α) ℓ_j), which autograd gives from L_α directly.

    Where it differs from Pyro's ``RenyiELBO``, which it extends:

    * one bound per element of the plates that hold every site (a VAE's data plate): K draws per data
      point, the log-mean-exp over the draws of each, then the sum (Burda et al.); sites in the other
      plates are summed inside the weights, so a model with global latents has one joint bound;
    * the minibatch scale of those plates (``scale_plate``, a subsampled ``pyro.plate``) multiplies the
      bounds outside the log-mean-exp, so a step estimates the full-data sum of per-datapoint bounds
      without bias (Pyro's scales the weights inside, another objective: α' = 1 − (1 − α) N/B);
    * ``differentiable_loss``, which the compiled step (:mod:`inference.capture`) captures;
    * guide sites without reparameterised draws are refused: Pyro's estimator gives their parameters
      no score-function term (none at all at α = 0), so they would not train.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """−L_α as a tensor; its gradient is −∇L_α."""
        log_w, scale = [], 1.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sites = [s for t in (model_trace, guide_trace) for s in t.nodes.values() if s["type"] == "sample"]
            sum_dims = pyro.infer.util.get_dependent_plate_dims(sites)  # plates not holding every site
            scale = _common_plate_scale(sites)
            particle = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    particle = particle + pyro.infer.util.torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not site["fn"].has_rsample:
                        raise InvalidInputError(
                            f"the Rényi and IWAE bounds need reparameterised guide "
                            f"sites; {name!r} ({type(site['fn']).__name__}) is not: use "
                            f"elbo='tracegraph'"
                        )
                    particle = particle - pyro.infer.util.torch_sum(site["log_prob"], sum_dims)
            log_w.append(torch.as_tensor(particle) / scale)
        log_w = log_w[0] if self.vectorize_particles and self.num_particles > 1 else torch.stack(log_w)
        a = 1.0 - self.alpha
        bounds = (torch.logsumexp(a * log_w, dim=0) - math.log(self.num_particles)) / a  # one per plate element
        return -scale * bounds.sum()

    def loss(self, model, guide, *args, **kwargs):
        """−L_α as a float."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """−L_α as a float, with −∇L_α accumulated into the parameters' ``.grad``."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()


def _common_plate_scale(sites):
    """The minibatch scale of the vectorised plates that hold every site: N / B of a subsampled
    ``pyro.plate``, times the scale of each active ``scale_plate`` on one of them (1.0 if none)."""
    common = set.intersection(*(set(s["cond_indep_stack"]) for s in sites)) if sites else set()
    common = [f for f in common if f.vectorized]
    scale = 1.0
    for frame in common:
        if frame.full_size is not None and frame.full_size != frame.size:
            scale = scale * frame.full_size / frame.size
    names = {f.name for f in common}
    for handler in scale_plate.active:
        if handler.name in names:
            scale = scale * handler.scale
    return scale


# The ELBO estimators by name. "jit-<name>" is the same estimator with its step compiled by TorchScript
# (compile="torchscript"), the name older scripts used for a compiled step. "renyi" and "iwae" train on
# Rényi's α bound (α = ``alpha``; "iwae" is α = 0) with K = ``num_particles`` draws; their loss is −L_α.
ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "tracegraph": TraceGraph_ELBO,
    "enum": TraceEnum_ELBO,
    "renyi": RenyiELBO,
    "iwae": RenyiELBO,
}
ELBO_NAMES = (*ELBOS, *(f"jit-{name}" for name in ELBOS))


def make_elbo(name, *, num_particles=1, max_plate_nesting=None, vectorize_particles=False, alpha=None):
    """A Pyro ELBO by name (one of ``ELBO_NAMES``; "jit-" names give the same estimator).

    Args:
        name: "trace", "meanfield", "tracegraph", "enum" (the ELBO, estimated four ways), "renyi" (Rényi's
            α bound, :class:`RenyiELBO`) or "iwae" (the importance-weighted bound, "renyi" at α = 0).
        num_particles: draws of the guide per estimate: the K of the "renyi" and "iwae" bounds (at K = 1
            both are the ELBO).
        max_plate_nesting: Pyro's bound on nested plates (None: Pyro finds it).
        vectorize_particles: draw the particles in one vectorised pass.
        alpha: the order of "renyi", >= 0 and != 1 (α → 1 is the ELBO); None for the other names.

    Returns:
        the Pyro ELBO instance.
    """
    check_choice("elbo", name, ELBO_NAMES)
    check_positive("num_particles", num_particles, integer=True)
    base = name.removeprefix("jit-")
    kwargs = dict(num_particles=num_particles, vectorize_particles=vectorize_particles)
    if max_plate_nesting is not None:
        kwargs["max_plate_nesting"] = max_plate_nesting
    if base in ("renyi", "iwae"):
        kwargs["alpha"] = _renyi_alpha(base, alpha)
    elif alpha is not None:
        raise InvalidInputError(f"alpha is the order of elbo='renyi'; elbo={name!r} takes none")
    return ELBOS[base](**kwargs)


def _renyi_alpha(name, alpha):
    """The α of "renyi" or "iwae", checked."""
    if name == "iwae":
        if alpha is not None and (isinstance(alpha, bool) or alpha != 0):
            raise InvalidInputError(
                f"elbo='iwae' is the Rényi bound at alpha=0, got alpha={alpha!r}: use elbo='renyi' for another order"
            )
        return 0.0
    if alpha is None:
        raise InvalidInputError("elbo='renyi' needs alpha, the order of the bound (>= 0, != 1; 0 is the IWAE bound)")
    check_positive("alpha", alpha, allow_zero=True)
    if alpha == 1:
        raise InvalidInputError("alpha=1 is the ELBO itself (the Rényi bound's limit at alpha -> 1): use elbo='trace'")
    return float(alpha)


class scale_plate(Messenger):
    """Multiply the log-density of every sample site inside the plate named ``name`` by ``scale``.

    Records in ``self.hit`` whether any site was inside that plate, so a misnamed plate is caught; the
    handlers entered and not yet left are ``scale_plate.active`` (the Rényi bound scales outside its
    log-mean-exp by them).
    """

    active = []

    def __init__(self, name, scale):
        super().__init__()
        self.name, self.scale, self.hit = name, scale, False

    def __enter__(self):
        scale_plate.active.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        scale_plate.active.remove(self)
        return super().__exit__(*exc)

    def _process_message(self, msg):
        if msg["type"] == "sample" and any(f.name == self.name for f in msg["cond_indep_stack"]):
            msg["scale"] = self.scale * msg["scale"]
            self.hit = True
