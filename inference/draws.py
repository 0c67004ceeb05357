"""Draws from a fitted guide, and their importance weights against the model.

``guide_sampler`` gives ``Fit.draw``: samples of the guide's latent sites. ``importance_weights`` gives
``Fit.importance``: draws z ~ q and log w = log p(x, z) − log q(z), which PSIS (:mod:`inference.verdict`)
smooths into k-hat and reweighted draws. Both draw all samples in one vectorised pass where the model
allows it, and one at a time otherwise; the one-at-a-time weights replay a captured graph
(:mod:`inference.capture`) where they can, so that the verdict of an enumerated model costs seconds.
"""

from contextlib import contextmanager

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.util import site_is_subsample

from .capture import CaptureError, capture, loss_and_surrogate
from .errors import MODEL_ERRORS

WEIGHT_CHUNK = 500  # draws per vectorised pass: bounds the memory of [draws, data] tensors


@contextmanager
def seeded(seed):
    """Seed torch's generator (the one Pyro samples from) inside the block; the outer state is restored
    after, so drawing from a fit never disturbs the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def guide_sampler(guide, data, state):
    """``draw(num_samples, seed)``: samples of the guide's latent sites, {site: [num_samples, *shape]}.

    Vectorised over a plate outside the guide's own plates when the guide allows it, else a loop.
    """

    def draw(num_samples, seed):
        with pyro.get_param_store().scope(state), torch.no_grad(), seeded(seed):
            one = poutine.trace(guide).get_trace(*data)
            sites = {n: s for n, s in one.nodes.items() if is_latent(s)}
            nesting = max(
                [-f.dim for s in sites.values() for f in s["cond_indep_stack"] if f.vectorized and f.dim is not None],
                default=0,
            )
            try:
                with pyro.plate("_draws", num_samples, dim=-(nesting + 1)):
                    many = poutine.trace(guide).get_trace(*data)
                return {n: many.nodes[n]["value"].reshape(num_samples, *s["value"].shape) for n, s in sites.items()}
            except (RuntimeError, ValueError, NotImplementedError):  # guide not vectorisable: loop
                traces = [poutine.trace(guide).get_trace(*data) for _ in range(num_samples)]
                return {n: torch.stack([t.nodes[n]["value"] for t in traces]) for n in sites}

    return draw


def importance_weights(model, guide, data, state, elbo_name, max_plate_nesting=None):
    """``importance(num_samples, seed)``: draws z ~ q of the guide's latent sites, {site: [n, *shape]}, and
    log p(x, z) − log q(z) at each (array [n]).

    All draws at once in a plate outside the model's plates (Pyro's ``vectorized_importance_weights``)
    where the model allows it; otherwise one draw at a time, its weight a one-particle ELBO of the guide
    replayed at that draw, which is exactly the log weight (discrete sites enumerated by the model summed
    out by TraceEnum_ELBO). Results are cached: the verdict and ``compare`` ask for the same draws.
    """
    enumerated = "enum" in elbo_name  # meanfield's analytic KL is not a weight: other ELBOs weigh as "trace"
    cache = {}

    def importance(num_samples, seed):
        if (num_samples, seed) not in cache:
            with pyro.get_param_store().scope(state), torch.no_grad(), seeded(seed):
                result = None if enumerated else _vectorized_weights(model, guide, data, num_samples)
                loss_fn = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting) if enumerated else Trace_ELBO()
                cache[num_samples, seed] = result or _weights_one_by_one(model, guide, data, num_samples, loss_fn)
        return cache[num_samples, seed]

    return importance


def _vectorized_weights(model, guide, data, num_samples):
    """(draws, log weights) for ``num_samples`` draws in one pass, or None where the model or guide
    cannot be vectorised (an unbatched site, Python control flow on a sample)."""
    guide_trace = poutine.trace(guide).get_trace(*data)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*data)
    shapes = {n: s["value"].shape for n, s in guide_trace.nodes.items() if is_latent(s)}
    nesting = max(
        [
            -f.dim
            for tr in (guide_trace, model_trace)
            for s in tr.nodes.values()
            if s["type"] == "sample"
            for f in s["cond_indep_stack"]
            if f.vectorized
        ],
        default=0,
    )
    parts = []
    for start in range(0, num_samples, WEIGHT_CHUNK):  # chunks bound the memory of [draws, data] tensors
        n = min(WEIGHT_CHUNK, num_samples - start)
        try:
            log_w, _, many = vectorized_importance_weights(
                model, guide, *data, num_samples=n, max_plate_nesting=nesting, normalized=False
            )
            draws = {k: many.nodes[k]["value"].reshape(n, *shape) for k, shape in shapes.items()}
        except (*MODEL_ERRORS, AssertionError):
            return None
        if log_w.shape != (n,):
            return None
        parts.append((draws, log_w.detach().double().cpu().numpy()))
    return ({k: torch.cat([d[k] for d, _ in parts]) for k in shapes}, np.concatenate([w for _, w in parts]))


def _weights_one_by_one(model, guide, data, num_samples, loss_fn):
    """(draws, log weights): each draw's weight is the one-particle ELBO of the guide replayed there.

    One draw's computation is captured as a graph and replayed ``num_samples`` times where it can be
    (:mod:`inference.capture`): the same draws and weights as the Python loop, without Pyro's per-draw
    bookkeeping."""

    def one():
        trace = poutine.trace(guide).get_trace(*data)
        with torch.enable_grad():  # TraceEnum_ELBO's differentiable loss refuses a loss without gradients
            loss, _ = loss_and_surrogate(loss_fn, model, poutine.replay(guide, trace=trace), data)
        return (-loss.detach(), *(s["value"] for s in trace.nodes.values() if is_latent(s)))

    with torch.random.fork_rng(devices=[]), poutine.block(), poutine.trace() as names:
        guide(*data)  # the site names, without using up the draws
    sites = [n for n, s in names.trace.nodes.items() if is_latent(s)]
    try:
        replay = capture(one, (), calls=num_samples).run
    except CaptureError:
        replay = None
    rows = []
    for _ in range(num_samples):
        if replay is not None:
            rows.append(list(replay()))
        else:
            trace = poutine.trace(guide).get_trace(*data)
            log_w = -loss_fn.loss(model, poutine.replay(guide, trace=trace), *data)
            rows.append([torch.as_tensor(log_w), *(trace.nodes[n]["value"] for n in sites)])
    log_w = np.array([float(r[0]) for r in rows])
    return {n: torch.stack([r[i + 1] for r in rows]) for i, n in enumerate(sites)}, log_w


def can_vectorize(model, guide, data, state, elbo_name):
    """Whether the importance weights of this model and guide can be drawn in one vectorised pass."""
    if "enum" in elbo_name:
        return False
    with pyro.get_param_store().scope(state), torch.no_grad(), seeded(0):
        return _vectorized_weights(model, guide, data, 2) is not None


def local_latents(guide, data, state, plate):
    """Why k-hat is skipped for a guide with latent sites inside ``plate`` (local, often amortised), or
    None when all its latent sites are global."""
    with pyro.get_param_store().scope(state), torch.no_grad():
        trace = poutine.trace(guide).get_trace(*data)
    local = [n for n, s in trace.nodes.items() if is_latent(s) and any(f.name == plate for f in s["cond_indep_stack"])]
    if local:
        return (
            f"the guide has local latent sites {local} in plate {plate!r}: the importance weights of "
            "the whole data set do not judge each local fit"
        )
    return None


def has_point_masses(guide, data, state):
    """Whether the guide puts a Delta on some latent site (MAP): importance weights then mean nothing.

    Guides that draw an auxiliary variable and place the model's sites as Deltas of it (AutoContinuous
    guides such as AutoMultivariateNormal) do have a density, carried by the auxiliary site.
    """
    with pyro.get_param_store().scope(state), torch.no_grad():
        trace = poutine.trace(guide).get_trace(*data)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    if any(s["infer"].get("is_auxiliary", False) for s in sites):
        return False
    for site in filter(is_latent, sites):
        fn = site["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if isinstance(fn, pyro.distributions.Delta):
            return True
    return False


def is_latent(site):
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary", False)
        and not site["infer"].get("_do_not_trace", False)
    )
