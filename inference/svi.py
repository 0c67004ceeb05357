"""Stochastic variational inference for any Pyro model/guide pair.

``svi(model, guide, *data, ...)`` maximises the ELBO (MATH.md §1)

    F(q, θ) = E_q[ log p(x, z; θ) − log q(z) ]  ≤  log p(x; θ)

by stochastic gradient steps on the model's and guide's parameters, and returns a :class:`Fit`.

Minibatches: with ``batch_size=B`` every tensor argument is cut along dim 0 into batches of B rows
(a fresh permutation each epoch), and the log-densities of the sites inside the model's (and guide's)
``pyro.plate(subsample_plate, ...)`` are scaled by N/B, so every step's loss and gradient are unbiased
estimates of the full-data ones — what ``pyro.plate(..., subsample_size=B)`` does, without the model
having to know B. Global sites outside that plate are not scaled.

Each call trains in its own param-store scope, so fits of different models (or of the same model by
different methods) never share parameters; ``nn.Module`` parameters registered with ``pyro.module`` are
trained in place.

Defaults that converge. Adam moves every parameter by about ``lr`` per step whatever the posterior's
scale, so a guide started far away, or a posterior with sds of 1e-3, is out of reach of a fixed number of
steps, and a constant rate leaves the last iterate jittering. So, unless told otherwise, a Gaussian or
Delta autoguide on the full data starts from the Laplace fit (``init="auto"``), its mean then moves in
steps of the Laplace posterior sds (so ``lr`` is a fraction of a posterior sd, on every scale), and the
rate anneals to ``lr / 100`` on a cosine (``schedule="cosine"``). The fit ends with its verdict
(:mod:`inference.verdict`): the loss must have settled, and the guide's PSIS k-hat must not exceed 0.7.
"""
import math
import time
import warnings
from contextlib import contextmanager

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.infer.importance import vectorized_importance_weights
from pyro.infer import (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO,
                        Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO)
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from tqdm import tqdm

from . import distributed as _dist
from . import optim as _optim
from .checkpoint import load_checkpoint, save_checkpoint
from . import verdict
from .errors import (MODEL_ERRORS, CheckpointError, InvalidInputError, NonFiniteError, ZooError,
                     check_choice, check_data, check_positive, model_error)
from .init import (can_start_from_laplace, guide_start, improper_priors_start_at_zero,
                   start_from_laplace)
from .result import Fit

INITS = ("auto", "laplace", "guide")
KHAT_DRAWS = 4000     # draws behind the verdict's k-hat (its Pareto fit uses the largest ~190 weights)
LOOP_KHAT_DRAWS = 1000  # ... where the draws cannot be vectorised and are taken one at a time
WEIGHT_CHUNK = 500      # draws per vectorised pass
MEANFIELD_LIMIT = 0.75  # smallest ratio of a mean-field sd to the marginal sd it stands for


class _JitTraceMeanField_ELBO(TraceMeanField_ELBO):
    """TraceMeanField_ELBO with its loss traced once by ``torch.jit.trace`` as a function of the parameter
    and data tensors (one graph per data shape), then called with those tensors directly on every step.

    Replaces Pyro 1.9's JitTraceMeanField_ELBO, which stores its compiled loss under one attribute and looks
    for it under another (so it compiled again on every step) and looks every parameter up through the
    effect stack on each call (0.06 ms of a 1.3 ms VAE step). Non-tensor arguments are fixed at
    compilation, as in every traced graph; so is the minibatch scale.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._graphs = {}

    def loss_and_grads(self, model, guide, *args):
        tensors = [a for a in args if torch.is_tensor(a)]
        key = (_identity(model), _identity(guide), *((t.shape, t.dtype, t.device) for t in tensors))
        if key not in self._graphs:
            self._graphs[key] = self._compile(model, guide, args)
        graph, params = self._graphs[key]
        loss = graph(*params, *tensors)
        loss.backward()
        return loss.item()

    def _compile(self, model, guide, args):
        with poutine.block(), poutine.trace(param_only=True) as capture:
            self.differentiable_loss(model, guide, *args)        # creates the parameters
        params = [pyro.param(name).unconstrained() for name in capture.trace.nodes]
        where = [i for i, a in enumerate(args) if torch.is_tensor(a)]

        def loss(*inputs):
            full = list(args)
            for i, t in zip(where, inputs[len(params):]):
                full[i] = t
            # The particle loop of differentiable_loss without its float() of the loss, which a trace
            # would freeze into a constant.
            total = 0.0
            for model_trace, guide_trace in self._get_traces(model, guide, full, {}):
                total = total + self._differentiable_loss_particle(model_trace, guide_trace)[1]
            return total / self.num_particles

        # Shape-dependent Python (sizes, validation checks) is fixed for this shape: that is the point.
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            graph = torch.jit.trace(loss, (*params, *(args[i] for i in where)), check_trace=False)
        return graph, params


def _identity(fn):
    # A bound method (vae.model) is a new object each time it is fetched: key on its function and instance,
    # which the cached graph keeps alive, so their ids cannot be reused by other objects.
    return id(getattr(fn, "__func__", fn)), id(getattr(fn, "__self__", None))


ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "tracegraph": TraceGraph_ELBO,
    "enum": TraceEnum_ELBO,
    "jit-trace": JitTrace_ELBO,
    "jit-meanfield": _JitTraceMeanField_ELBO,
    "jit-tracegraph": JitTraceGraph_ELBO,
    "jit-enum": JitTraceEnum_ELBO,
}


def make_elbo(name, *, num_particles=1, max_plate_nesting=None, vectorize_particles=False):
    """A Pyro ELBO by name (one of ``ELBOS``)."""
    check_choice("elbo", name, ELBOS)
    check_positive("num_particles", num_particles, integer=True)
    kwargs = dict(num_particles=num_particles, vectorize_particles=vectorize_particles)
    if max_plate_nesting is not None:
        kwargs["max_plate_nesting"] = max_plate_nesting
    if name.startswith("jit-"):
        kwargs["ignore_jit_warnings"] = True
    return ELBOS[name](**kwargs)


class scale_plate(Messenger):
    """Multiply the log-density of every sample site inside the plate named ``name`` by ``scale``.

    Records in ``self.hit`` whether any site was inside that plate, so a misnamed plate is caught.
    """

    def __init__(self, name, scale):
        super().__init__()
        self.name, self.scale, self.hit = name, scale, False

    def _process_message(self, msg):
        if msg["type"] == "sample" and any(f.name == self.name for f in msg["cond_indep_stack"]):
            msg["scale"] = self.scale * msg["scale"]
            self.hit = True


def svi(model, guide, *data, steps=1000, epochs=None, optimizer="adam", lr=1e-2, elbo="trace",
        num_particles=1, vectorize_particles=False, momentum=0.9, weight_decay=0.0, clip_norm=None,
        schedule="cosine", lr_min=None, init="auto", batch_size=None, subsample_plate="data", data_size=None,
        validation_data=None, eval_every=None, patience=None, min_delta=1e-4,
        max_plate_nesting=None, seed=0, progress=None, callback=None, grad_hook=None,
        checkpoint=None, checkpoint_every=None, resume=False, distributed=False):
    """Fit ``guide`` to ``model`` by stochastic gradient ascent on the ELBO.

    Args:
        model, guide: Pyro callables taking ``*data``.
        *data: the model's positional arguments. Tensors must be finite; with ``batch_size`` every tensor
            argument is a data set of N rows (dim 0) that is cut into minibatches.
        steps: number of optimisation steps; ``epochs`` (with ``batch_size``) sets steps = epochs x N // B.
        optimizer, lr, momentum, weight_decay: see :mod:`inference.optim` (sgd, momentum, nesterov,
            rmsprop, adam, clipped-adam).
        elbo, num_particles, vectorize_particles, max_plate_nesting: the ELBO estimator (trace,
            meanfield, tracegraph, enum and their jit- variants).
        clip_norm: rescale the joint gradient to this Euclidean norm when it is larger.
        schedule, lr_min: learning-rate schedule (constant or None, exponential, step, cosine, or a
            callable); the default anneals on a cosine from lr to lr_min (lr / 100).
        init: where the guide starts. "guide": its own ``init_loc_fn``; "laplace": the Laplace fit of the
            model (from the guide's own start), for AutoMultivariateNormal, AutoLowRankMultivariateNormal,
            AutoDiagonalNormal, AutoNormal and AutoDelta, whose mean then steps in units of the Laplace
            posterior sds; "auto" (default): "laplace" for those guides when there are no minibatches and
            the Laplace fit succeeds, else "guide" (``diagnostics["init"]`` says which, and why).
        batch_size, subsample_plate, data_size: minibatching; sites in the plate named
            ``subsample_plate`` are scaled by data_size / B (data_size defaults to N; a process that holds
            one shard of a larger data set passes the full size).
        validation_data: a tuple of held-out arguments; its loss (on the training data's scale) is
            evaluated every ``eval_every`` steps (default: once per epoch, or every 100 steps).
        patience, min_delta: early stopping after ``patience`` evaluations without a relative improvement
            of ``min_delta`` in the held-out loss (or the mean training loss of the last window without
            validation data). With validation data the best parameters are restored at the end.
        seed: seeds Pyro, torch and the minibatch order. progress: show a tqdm bar (default: on a TTY).
        callback: ``callback(step, loss)`` after every step; returning True stops training.
        grad_hook: ``grad_hook(params)`` after each backward pass (e.g. an all-reduce of the gradients).
        checkpoint, checkpoint_every, resume: path of an atomically written checkpoint saved every
            ``checkpoint_every`` steps and at the end; ``resume=True`` continues from it, reproducing the
            uninterrupted run with the same seed.
        distributed: True when this process is one rank of a torch.distributed group training the same
            parameters on its own shard of the data (gradients averaged by DistributedDataParallel or
            ``grad_hook``; pass data_size = the full N). Each step's loss and the held-out loss are then
            averaged over the ranks, so every rank records the same values and takes the same early-stopping
            decisions; only rank 0 shows progress and writes the checkpoint, which holds every rank's
            minibatch and random-number state; on resume rank 0 reads it and sends it to all ranks.

    Returns:
        Fit with method "svi": losses [steps] (negative ELBO on the full-data scale), params (constrained
        values), draw (samples of the guide's latent sites), importance (draws with their log weights, for PSIS), diagnostics
        (validation losses, stop step, best step, init, and the verdict: "converged", "warnings",
        "khat" — NaN with "khat_skipped" saying why where it is not computed: point-mass guides, and
        guides with latent sites in ``subsample_plate``, i.e. local or amortised ones like a VAE's,
        whose joint weights over the whole data set say nothing about each local fit).

    Warns:
        ConvergenceWarning when the loss had not settled or k-hat > 0.7 (:mod:`inference.verdict`).

    Raises:
        InvalidInputError for bad settings or data; NonFiniteError when the loss or a gradient becomes NaN
        or infinite, naming the step and the sites (the parameters keep their last finite values).
    """
    check_data(data)
    loss_fn = make_elbo(elbo, num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                        vectorize_particles=vectorize_particles)
    # Jit ELBOs recompile for every new input shape, so held-out batches use the plain estimator.
    eval_fn = make_elbo(elbo.removeprefix("jit-"), num_particles=num_particles,
                        max_plate_nesting=max_plate_nesting, vectorize_particles=vectorize_particles)
    batches = _Batches(data, batch_size, seed, data_size)
    if epochs is not None:
        if batch_size is None:
            raise InvalidInputError("epochs needs batch_size; without minibatches use steps")
        steps = check_positive("epochs", epochs, integer=True) * batches.per_epoch
    check_positive("steps", steps, integer=True)
    if validation_data is not None:
        validation_data = tuple(validation_data) if isinstance(validation_data, (tuple, list)) \
            else (validation_data,)
        check_data(validation_data, "validation_data argument")
    if eval_every is None:
        eval_every = batches.per_epoch if batch_size else 100
    check_positive("eval_every", eval_every, integer=True)
    if patience is not None:
        check_positive("patience", patience, integer=True)
    if clip_norm is not None:
        check_positive("clip_norm", clip_norm)
    if checkpoint_every is not None:
        check_positive("checkpoint_every", checkpoint_every, integer=True)
    if resume and checkpoint is None:
        raise InvalidInputError("resume=True needs a checkpoint path")
    check_choice("init", init, INITS)

    store = pyro.get_param_store()
    with store.scope() as state:
        pyro.set_rng_seed(seed)
        # The first pass creates the parameters (Pyro creates them lazily), so the optimizer can own them.
        try:
            with poutine.trace(param_only=True) as capture, improper_priors_start_at_zero():
                with batches.scaled(subsample_plate) as scaler:
                    eval_fn.loss(model, guide, *batches.first())
        except MODEL_ERRORS as e:
            raise model_error(e, "on the data") from e
        if batch_size is not None and not scaler.hit:
            raise InvalidInputError(f"batch_size was given, but no sample site of the model or guide is "
                                    f"inside a pyro.plate named {subsample_plate!r} (subsample_plate)")
        names = sorted(capture.trace.nodes)
        if not names:
            raise InvalidInputError("neither the model nor the guide has parameters: there is nothing "
                                    "for SVI to fit")
        params = [store.get_param(n).unconstrained() for n in names]
        step_sds, started = _start(init, model, guide, data, batch_size, distributed, max_plate_nesting,
                                   seed)
        opt = _optim.make_optimizer(optimizer, params, lr=lr, momentum=momentum,
                                    weight_decay=weight_decay)
        sched = _optim.make_schedule(schedule, opt, steps=steps, lr_min=lr_min)

        losses, val_losses = [], []
        tracker = _EarlyStopping(patience, min_delta)
        start = 0
        if resume and checkpoint is not None:
            saved = _dist.on_rank0(lambda: load_checkpoint(checkpoint) if _exists(checkpoint) else None) \
                if distributed else (load_checkpoint(checkpoint) if _exists(checkpoint) else None)
            if saved is not None:
                start = _restore(saved, checkpoint, names, params, opt, sched, batches, losses, val_losses,
                                 tracker, distributed)

        if elbo.startswith("jit-") and start < steps:
            # Compile now, outside the run's random stream: compiling draws random numbers, and a
            # resumed run compiles at a different step than the uninterrupted one.
            with torch.random.fork_rng(devices=[]), batches.scaled(subsample_plate), _graph_mode(params):
                loss_fn.loss_and_grads(model, guide, *batches.first())
            opt.zero_grad(set_to_none=True)

        quiet = distributed and _dist.rank() != 0
        bar = tqdm(total=steps, initial=start, disable=quiet or _no_progress(progress), desc="svi",
                   dynamic_ncols=True, leave=False)
        t0 = time.perf_counter()
        stopped = None
        for step in range(start, steps):
            batch = batches.next()
            try:
                with batches.scaled(subsample_plate), _graph_mode(params):
                    loss = loss_fn.loss_and_grads(model, guide, *batch)
            except MODEL_ERRORS as e:  # e.g. a parameter left a distribution's support
                raise model_error(e, f"at step {step}") from e
            if distributed:
                loss = _dist.mean(loss)
            if grad_hook is not None:
                grad_hook(params)
            norm = _optim.grad_norm(params)
            if not (math.isfinite(loss) and math.isfinite(norm)):
                opt.zero_grad(set_to_none=True)
                raise NonFiniteError(_nonfinite_message(step, loss, norm, model, guide, batch, names,
                                                        params, batches, subsample_plate))
            if clip_norm is not None:
                _optim.clip_grad_norm(params, clip_norm, norm)
            before = [p.detach().clone() for p in step_sds]
            opt.step()
            if step_sds:
                with torch.no_grad():   # the mean's step, lr x (Adam's unit step), in posterior sds
                    for (p, sd), b in zip(step_sds.items(), before):
                        p.sub_(b).mul_(sd).add_(b)
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
            losses.append(loss)
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss:.5g}", refresh=False)
            bar.update(1)

            done = bool(callback(step, loss)) if callback is not None else False
            if (step + 1) % eval_every == 0:
                if validation_data is not None:
                    val = _heldout_loss(eval_fn, model, guide, validation_data, batches, subsample_plate)
                    if distributed:
                        val = _dist.mean(val)
                    val_losses.append((step + 1, val))
                    bar.set_postfix(loss=f"{loss:.5g}", heldout=f"{val:.5g}", refresh=False)
                else:
                    val = float(np.mean(losses[-eval_every:]))
                done = tracker.update(step + 1, val, params, keep_best=validation_data is not None) or done
            if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                _save(checkpoint, step + 1, names, params, opt, sched, batches, losses, val_losses, tracker,
                      distributed)
            if done:
                stopped = step + 1
                break
        bar.close()
        if validation_data is not None and tracker.best_params is not None:
            with torch.no_grad():
                for p, best in zip(params, tracker.best_params):
                    p.copy_(best)
        if checkpoint is not None:
            _save(checkpoint, len(losses), names, params, opt, sched, batches, losses, val_losses, tracker,
                  distributed)
        seconds = time.perf_counter() - t0
        constrained = {n: store[n].detach().clone() for n in names}

    point_mass = _has_point_masses(guide, data, state)
    skipped = ("the guide is a point estimate (Delta): it has no density to weigh" if point_mass else
               _local_latents(guide, data, state, subsample_plate))
    fit = Fit(
        method="svi", losses=np.asarray(losses), seconds=seconds, params=constrained,
        diagnostics={"stopped_at": stopped, "best_step": tracker.best_step, **started,
                     "vectorized_weights": not point_mass and _can_vectorize(model, guide, data, state, elbo),
                     "validation_losses": val_losses, "elbo": elbo, "optimizer": optimizer},
        draw=guide_sampler(guide, data, state),
        importance=None if point_mass else importance_weights(model, guide, data, state, elbo, max_plate_nesting),
    )
    return judge(fit, skipped)


def judge(fit, khat_skipped=None):
    """The verdict of a variational fit (SVI, variational EM): has the loss settled, and is k-hat <= 0.7?

    Args:
        fit: the Fit; its diagnostics get "khat" and the verdict (:func:`inference.verdict.deliver`).
        khat_skipped: why k-hat is not computed for this guide, or None to compute it from
            ``fit.importance`` with KHAT_DRAWS draws.
    """
    settled, reason = verdict.loss_settled(fit.losses)
    khat = np.nan
    if khat_skipped is None and fit.importance is not None:
        # one draw at a time where they cannot be vectorised: fewer keep the verdict affordable
        n = KHAT_DRAWS if fit.diagnostics.get("vectorized_weights") else LOOP_KHAT_DRAWS
        draws, log_weights = fit.importance(n, 0)
        _, khat, _ = verdict.psis(log_weights)
    else:
        fit.diagnostics["khat_skipped"] = khat_skipped
    fit.diagnostics["khat"] = khat
    reasons = [reason, verdict.khat_reason(khat, "the guide", reweightable=fit.importance is not None),
               _meanfield_reason(fit.diagnostics.get("meanfield_sd_ratio"))]
    if np.isfinite(khat) and khat <= verdict.KHAT_LIMIT:
        reasons.append(verdict.shift_reason(draws, log_weights, "the guide"))
    verdict.deliver(fit.method, fit.diagnostics, reasons, stacklevel=3)
    return fit


def _meanfield_reason(ratio):
    """A mean-field guide cannot hold the posterior's correlations: at the Laplace fit, its best sds are
    1/sqrt(H_ii) against the marginal sds sqrt((H⁻¹)_ii) (MATH.md §1); too small a ratio is a warning."""
    if ratio is not None and ratio < MEANFIELD_LIMIT:
        return (f"the posterior's correlations shrink a mean-field guide's sds to {ratio:.2f} of the marginal "
                "sds (at the Laplace fit): use a fullrank or lowrank guide")
    return None


def _start(init, model, guide, data, batch_size, distributed, max_plate_nesting, seed):
    """Start the guide from the Laplace fit where ``init`` asks for it: ({loc tensor: sds}, diagnostics:
    "init" says where it started; "meanfield_sd_ratio", for diagonal guides, is the smallest ratio
    1/sqrt(H_ii) / sqrt((H⁻¹)_ii) of a mean-field sd to the marginal sd at the Laplace fit)."""
    if init == "guide":
        return {}, {"init": "guide"}
    reason = ("minibatches: Laplace would need the full data" if batch_size is not None else
              "distributed: each process holds a shard of the data" if distributed else
              None if can_start_from_laplace(guide) else
              f"{type(guide).__name__} is not a guide that starts from Laplace")
    if reason is None:
        from .laplace import laplace   # laplace builds on svi's helpers: import here, not at the top
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", verdict.ConvergenceWarning)  # judged again after SVI
                fit = laplace(model, *data, init=guide_start(guide), max_plate_nesting=max_plate_nesting,
                              seed=seed, check=False)
            start = {"init": "laplace"}
            if isinstance(guide, (AutoNormal, AutoDiagonalNormal)):
                H, cov = fit.diagnostics["hessian"], fit.diagnostics["covariance"]
                start["meanfield_sd_ratio"] = float((H.diagonal() * cov.diagonal()).rsqrt().min())
            return start_from_laplace(guide, fit), start
        except (ZooError, *MODEL_ERRORS) as e:
            reason = f"the Laplace fit failed: {e}"
    if init == "laplace":
        raise InvalidInputError(f"init='laplace' cannot be used: {reason}")
    return {}, {"init": f"guide ({reason})"}


def _can_vectorize(model, guide, data, state, elbo_name):
    """Whether the importance weights of this model and guide can be drawn in one vectorised pass."""
    if "enum" in elbo_name:
        return False
    with pyro.get_param_store().scope(state), torch.no_grad(), seeded(0):
        return _vectorized_weights(model, guide, data, 2) is not None


def _local_latents(guide, data, state, plate):
    """Why k-hat is skipped for a guide with latent sites inside ``plate`` (local, often amortised), or
    None when all its latent sites are global."""
    with pyro.get_param_store().scope(state), torch.no_grad():
        trace = poutine.trace(guide).get_trace(*data)
    local = [n for n, s in trace.nodes.items() if _is_latent(s)
             and any(f.name == plate for f in s["cond_indep_stack"])]
    if local:
        return (f"the guide has local latent sites {local} in plate {plate!r}: the importance weights of "
                "the whole data set do not judge each local fit")
    return None


def guide_sampler(guide, data, state):
    """``draw(num_samples, seed)``: samples of the guide's latent sites, {site: [num_samples, *shape]}.

    Vectorised over a plate outside the guide's own plates when the guide allows it, else a loop.
    """
    def draw(num_samples, seed):
        with pyro.get_param_store().scope(state), torch.no_grad(), seeded(seed):
            one = poutine.trace(guide).get_trace(*data)
            sites = {n: s for n, s in one.nodes.items() if _is_latent(s)}
            nesting = max([-f.dim for s in sites.values() for f in s["cond_indep_stack"]
                           if f.vectorized and f.dim is not None], default=0)
            try:
                with pyro.plate("_draws", num_samples, dim=-(nesting + 1)):
                    many = poutine.trace(guide).get_trace(*data)
                return {n: many.nodes[n]["value"].reshape(num_samples, *s["value"].shape)
                        for n, s in sites.items()}
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
    name = "enum" if "enum" in elbo_name else "trace"   # meanfield's analytic KL is not a weight
    cache = {}

    def importance(num_samples, seed):
        if (num_samples, seed) not in cache:
            with pyro.get_param_store().scope(state), torch.no_grad(), seeded(seed):
                result = _vectorized_weights(model, guide, data, num_samples) if name == "trace" else None
                cache[num_samples, seed] = result or _weights_one_by_one(
                    model, guide, data, num_samples, make_elbo(name, max_plate_nesting=max_plate_nesting))
        return cache[num_samples, seed]
    return importance


def _vectorized_weights(model, guide, data, num_samples):
    """(draws, log weights) for ``num_samples`` draws in one pass, or None where the model or guide
    cannot be vectorised (an unbatched site, Python control flow on a sample)."""
    guide_trace = poutine.trace(guide).get_trace(*data)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*data)
    shapes = {n: s["value"].shape for n, s in guide_trace.nodes.items() if _is_latent(s)}
    nesting = max([-f.dim for tr in (guide_trace, model_trace) for s in tr.nodes.values()
                   if s["type"] == "sample" for f in s["cond_indep_stack"] if f.vectorized], default=0)
    parts = []
    for start in range(0, num_samples, WEIGHT_CHUNK):   # chunks bound the memory of [draws, data] tensors
        n = min(WEIGHT_CHUNK, num_samples - start)
        try:
            log_w, _, many = vectorized_importance_weights(model, guide, *data, num_samples=n,
                                                            max_plate_nesting=nesting, normalized=False)
            draws = {k: many.nodes[k]["value"].reshape(n, *shape) for k, shape in shapes.items()}
        except (*MODEL_ERRORS, AssertionError):
            return None
        if log_w.shape != (n,):
            return None
        parts.append((draws, log_w.detach().double().cpu().numpy()))
    return ({k: torch.cat([d[k] for d, _ in parts]) for k in shapes},
            np.concatenate([w for _, w in parts]))


def _weights_one_by_one(model, guide, data, num_samples, loss_fn):
    """(draws, log weights): each draw's weight is the one-particle ELBO of the guide replayed there."""
    draws, log_w = [], []
    for _ in range(num_samples):
        trace = poutine.trace(guide).get_trace(*data)
        log_w.append(-loss_fn.loss(model, poutine.replay(guide, trace=trace), *data))
        draws.append({n: s["value"] for n, s in trace.nodes.items() if _is_latent(s)})
    return {n: torch.stack([d[n] for d in draws]) for n in draws[0]}, np.array(log_w)


# ---- internals -------------------------------------------------------------------------------------

class _Batches:
    """Epoch-wise shuffled minibatches of the tensor arguments (or the whole data when batch_size=None).

    ``total`` is the full data-set size the plate's sites stand for (None when the arguments have no
    common number of rows); ``scale`` = total / batch size is the factor applied to those sites.
    """

    def __init__(self, data, batch_size, seed, data_size):
        self.data, self.batch_size = data, batch_size
        sizes = {a.shape[0] if a.dim() else None for a in data if torch.is_tensor(a)}
        self.n = sizes.pop() if len(sizes) == 1 else None
        self.total = self.n if data_size is None else check_positive("data_size", data_size, integer=True)
        self.per_epoch, self.scale = 1, 1.0
        if batch_size is None:
            return
        check_positive("batch_size", batch_size, integer=True)
        if self.n is None:
            raise InvalidInputError(f"with batch_size every tensor data argument must have the same "
                                    f"number of rows (dim 0); got sizes {sorted(map(str, sizes))}"
                                    if sizes else "batch_size needs a tensor data argument to cut")
        if self.n == 0:
            raise InvalidInputError("the data are empty (0 rows)")
        self.batch_size = min(batch_size, self.n)
        self.per_epoch = self.n // self.batch_size   # drop the ragged last batch: constant shapes for jit
        self.scale = self.total / self.batch_size
        self.device = next(a for a in data if torch.is_tensor(a)).device
        self.generator = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, self.per_epoch

    def first(self):
        return self.data if self.batch_size is None else \
            self._slice(torch.arange(self.batch_size, device=self.device))

    def next(self):
        if self.batch_size is None:
            return self.data
        if self.pos >= self.per_epoch:
            self.perm = torch.randperm(self.n, generator=self.generator).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos * self.batch_size:(self.pos + 1) * self.batch_size]
        self.pos += 1
        return self._slice(idx)

    def _slice(self, idx):
        return tuple(a[idx] if torch.is_tensor(a) else a for a in self.data)

    def scaled(self, plate_name, scale=None):
        return scale_plate(plate_name, self.scale if scale is None else scale)

    def state(self):
        if self.batch_size is None:
            return {}
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, state):
        if self.batch_size is not None:
            self.generator.set_state(state["generator"])
            perm = state["perm"]
            self.perm, self.pos = (None if perm is None else perm.to(self.device)), state["pos"]


class _EarlyStopping:
    """Stop after ``patience`` evaluations without a relative improvement of ``min_delta``."""

    def __init__(self, patience, min_delta):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_step, self.best_params, self.bad = math.inf, None, None, 0

    def update(self, step, value, params, keep_best):
        if value < self.best - self.min_delta * abs(self.best if math.isfinite(self.best) else value):
            self.best, self.best_step, self.bad = value, step, 0
            if keep_best:
                self.best_params = [p.detach().clone() for p in params]
        else:
            self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def state(self):
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad,
                "best_params": self.best_params}

    def load(self, s):
        self.best, self.best_step, self.bad, self.best_params = \
            s["best"], s["best_step"], s["bad"], s["best_params"]


def _heldout_loss(loss_fn, model, guide, data, batches, plate):
    """Negative ELBO of held-out data on the training data's scale (sites in ``plate`` x N_train/N_val),
    evaluated in chunks of the batch size so that memory stays bounded."""
    rows = {a.shape[0] for a in data if torch.is_tensor(a) and a.dim()}
    n_val = rows.pop() if len(rows) == 1 else None
    scale = batches.total / n_val if (batches.total and n_val) else 1.0
    chunk = batches.batch_size or n_val or 1
    loss = 0.0
    with torch.no_grad(), batches.scaled(plate, scale):
        if n_val is None:
            return loss_fn.loss(model, guide, *data)
        for i in range(0, n_val, chunk):
            loss += loss_fn.loss(model, guide, *(a[i:i + chunk] if torch.is_tensor(a) else a
                                                 for a in data))
    return loss


def _nonfinite_message(step, loss, norm, model, guide, batch, names, params, batches, plate):
    """Say at which step, and at which sites and parameters, the fit stopped being finite."""
    sites = []
    try:
        with torch.no_grad(), batches.scaled(plate):
            guide_tr = poutine.trace(guide).get_trace(*batch)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*batch)
            for where, tr in (("guide", guide_tr), ("model", model_tr)):
                tr.compute_log_prob()
                for name, site in tr.nodes.items():
                    if site["type"] == "sample" and not torch.isfinite(site["log_prob_sum"]):
                        sites.append(f"{name} ({where})")
    except Exception as e:  # the diagnosis must not hide the original problem
        sites.append(f"<could not trace: {type(e).__name__}>")
    grads = [n for n, p in zip(names, params) if p.grad is not None and not torch.isfinite(p.grad).all()]
    bad_params = [n for n, p in zip(names, params) if not torch.isfinite(p).all()]
    parts = [f"training stopped at step {step}: loss is {loss}, gradient norm is {float(norm)}"]
    if sites:
        parts.append(f"non-finite log-density at site(s) {', '.join(sites)}")
    if grads:
        parts.append(f"non-finite gradient of parameter(s) {', '.join(grads)}")
    if bad_params:
        parts.append(f"non-finite parameter(s) {', '.join(bad_params)}")
    parts.append("the parameters keep their last finite values; try a smaller lr or clip_norm")
    return "; ".join(parts)


def _has_point_masses(guide, data, state):
    """Whether the guide puts a Delta on some latent site (MAP): importance weights then mean nothing.

    Guides that draw an auxiliary variable and place the model's sites as Deltas of it (AutoContinuous
    guides such as AutoMultivariateNormal) do have a density, carried by the auxiliary site.
    """
    with pyro.get_param_store().scope(state), torch.no_grad():
        trace = poutine.trace(guide).get_trace(*data)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    if any(s["infer"].get("is_auxiliary", False) for s in sites):
        return False
    for site in filter(_is_latent, sites):
        fn = site["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if isinstance(fn, pyro.distributions.Delta):
            return True
    return False


def _is_latent(site):
    return (site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
            and not site["infer"].get("is_auxiliary", False)
            and not site["infer"].get("_do_not_trace", False))


def _graph_mode(params):
    """Run compiled (jit-) ELBOs without TorchScript's graph optimiser on CPU: the autodiff subgraphs it
    builds have a slower backward than eager autograd for the small tensors of a minibatch step (VAE on
    digits: 1.06 vs 1.15 ms per forward+backward, benchmarks/vae_step.py); the traced graph still skips
    Pyro's Python-level tracing. Elsewhere (CUDA) the optimiser's fusion is kept."""
    return torch.jit.optimized_execution(params[0].device.type != "cpu")


@contextmanager
def seeded(seed):
    """Seed torch's generator (the one Pyro samples from) inside the block; the outer state is restored
    after, so drawing from a fit never disturbs the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _no_progress(progress):
    return None if progress is None else not progress


def _exists(path):
    from pathlib import Path
    return Path(path).is_file()


def _save(path, step, names, params, opt, sched, batches, losses, val_losses, tracker, distributed=False):
    # A distributed run gathers every rank's random state (a collective: all ranks call this); rank 0 writes.
    ranks = _dist.gather_object(_rank_state(batches)) if distributed else None
    if distributed and _dist.rank() != 0:
        return
    save_checkpoint(path, {
        "format": "pyro-zoo/svi/1", "step": step, "names": names,
        "params": [p.detach().cpu() for p in params],
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
        "batches": batches.state(), "torch_rng": torch.get_rng_state(),
        "losses": torch.tensor(losses, dtype=torch.float64),
        "val_losses": [[s, v] for s, v in val_losses], "tracker": tracker.state(),
        **({"ranks": ranks} if ranks is not None else {}),
    })


def _rank_state(batches):
    return {"batches": {k: v.cpu() if torch.is_tensor(v) else v for k, v in batches.state().items()},
            "torch_rng": torch.get_rng_state()}


def _restore(state, path, names, params, opt, sched, batches, losses, val_losses, tracker, distributed=False):
    if state.get("format") != "pyro-zoo/svi/1" or state.get("names") != names:
        raise CheckpointError(f"checkpoint {str(path)!r} was written by a different model/guide "
                              f"(parameters {state.get('names')} != {names})")
    with torch.no_grad():
        for p, saved in zip(params, state["params"]):
            if p.shape != saved.shape:
                raise CheckpointError(f"checkpoint {str(path)!r}: parameter shapes differ "
                                      f"({tuple(saved.shape)} vs {tuple(p.shape)})")
            p.copy_(saved.to(p.device))
    opt.load_state_dict(state["optimizer"])
    if sched is not None and state["scheduler"] is not None:
        sched.load_state_dict(state["scheduler"])
    batches.load(state["batches"])
    torch.set_rng_state(state["torch_rng"])
    if distributed:
        ranks = state.get("ranks") or [None]
        if len(ranks) != _dist.world_size():
            raise CheckpointError(f"checkpoint {str(path)!r} was written by {len(ranks)} process(es); resume it "
                                  f"with the same number (now {_dist.world_size()})")
        batches.load(ranks[_dist.rank()]["batches"])
        torch.set_rng_state(ranks[_dist.rank()]["torch_rng"])
    losses.extend(state["losses"].tolist())
    val_losses.extend((int(s), float(v)) for s, v in state["val_losses"])
    tracker.load(state["tracker"])
    return int(state["step"])
