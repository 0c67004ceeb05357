"""Pointwise log-likelihood and posterior predictive draws of any Pyro model at posterior draws.

ArviZ's LOO, WAIC and model comparison need, for every posterior draw θ_s and every observation i of each
observed site x, the pointwise log-likelihood; its posterior predictive check needs replicated data:

    log_lik[s, i] = log p(x_i | θ_s) = log Σ_{z_i} p(z_i | θ_s) p(x_i | z_i, θ_s)
    x_rep[s] ~ p(x | θ_s)

θ_s holds every latent site the fit drew (set by ``poutine.condition``) and the fit's parameters
(``pyro.param`` sites, set by ``poutine.substitute``). Discrete sites the fit did not draw and Pyro can
enumerate (z above: a mixture's assignments) are summed out per observation: the model runs under
``poutine.enum``, and each observed site's log-density gets the factors of its enumerated ancestors added
before a logsumexp over their enumeration dims. A log-density is ``fn.log_prob(value)`` with the plate
(batch) dims kept, the event dims summed and masks applied, but never a site's scale, so the N/B of a
minibatch does not enter. Replicated data draw z ~ p(z | θ_s) first, then x.

All draws of a chunk run at once in a plate of draws left of the model's own plates (as Pyro's
``Predictive(parallel=True)``). Models need not be written for that (``X @ w`` with a batched w, or
``mu[z]`` indexing the draws instead of the components, give wrong numbers or fail), so two draws are first
replayed both ways and compared; where they differ, or the batched run fails, every draw runs on its own,
through a captured graph of one draw's tensor operations (:mod:`inference.capture`) where there are enough
draws to repay capturing it and it gives, at another draw, what the model gives.

The file runs just past 400 lines: the replay of a model at posterior draws, its batched and captured
variants and the checks between them are one piece.
"""

import inspect
import time
import warnings
from contextlib import nullcontext

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import config_enumerate
from pyro.poutine.util import site_is_subsample
from tqdm import tqdm

from .capture import CaptureError, capture
from .common import hide_progress, to_numpy
from .draws import seeded
from .errors import MODEL_ERRORS, InferenceError, InvalidInputError, model_error

DRAWS_PLATE = "_draws"
CHUNK_ELEMENTS = 2**20  # draws per batched pass times log-densities per draw: bounds [enum, draws, data]
CHECK_RTOL = 1e-4  # batched vs single log-densities: the same float32 arithmetic in another order
CAPTURE_SECONDS = 1.0  # one draw at a time: capture the replay when the other draws would take longer than
TIMED_DRAWS = 10  # ... this, as timed over this many first draws


class Replay:
    """A model replayed at posterior draws: its observed sites, their pointwise log-likelihood and
    replicated values.

    Args:
        model: the Pyro model.
        data: tuple, the model's positional arguments.
        draws: {site: tensor [S, *site_shape]}, S posterior draws of latent sites (keys that are not sites
            of the model are ignored).
        params: {name: constrained value} of ``pyro.param`` sites (a fit's ``params``); parameters not in
            it keep their values in the param store.
        num_draws: S (needed when ``draws`` is empty: every unknown of the model is a parameter).

    Attributes:
        observed: {site: observed value} (empty for a model whose density is all ``pyro.factor``).
        dims: {site: a name per dim of the value, the plate's name where the dim is a plate's}.
        shapes: {site: shape of its pointwise log-likelihood (the value's batch shape)}.
        batched: whether the draws run in one plate (False: one at a time).

    Raises:
        InvalidInputError: the model fails at the first draw, has a latent site that is neither drawn nor
            discrete and enumerable, or observes a site in a subsampled plate.
    """

    def __init__(self, model, data, draws, params=None, num_draws=None):
        self.model, self.data, params = model, tuple(data), dict(params or {})
        self.num_draws = num_draws or (next(iter(draws.values())).shape[0] if draws else 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # substitute warns about fit params that are not the model's
            trace = self._run("when replayed at the first posterior draw", params, {k: v[0] for k, v in draws.items()})
        self.params = {n: params[n] for n, s in trace.nodes.items() if s["type"] == "param" and n in params}
        sites = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}
        self.draws = {n: torch.as_tensor(v) for n, v in draws.items() if n in sites}
        observed = {
            n: s
            for n, s in sites.items()
            if s["is_observed"]
            and n not in self.draws
            and not s["infer"].get("_deterministic")
            and not s["infer"].get("is_auxiliary")
        }
        missing = [
            n
            for n, s in sites.items()
            if not s["is_observed"]
            and n not in self.draws
            and not (
                getattr(s["fn"], "has_enumerate_support", False) and s["infer"].get("enumerate") in (None, "parallel")
            )
        ]
        if missing:
            raise InvalidInputError(
                f"the model's latent site(s) {missing} are neither among the fit's draws "
                "nor discrete sites that can be summed out: the likelihood at the draws "
                "is not defined"
            )
        for n, s in observed.items():
            cut = [f.name for f in s["cond_indep_stack"] if f.full_size not in (None, f.size)]
            if cut:
                raise InvalidInputError(
                    f"observed site {n!r} lies in subsampled plate(s) {cut}: a replay sees "
                    "only a random subsample of the data"
                )
        self.nesting = max([-f.dim for s in sites.values() for f in s["cond_indep_stack"] if f.vectorized], default=0)
        # per sample site: (value shape, number of batch dims of the value)
        self._shape = {n: (s["value"].shape, s["value"].dim() - s["fn"].event_dim) for n, s in sites.items()}
        self.observed = {n: s["value"].detach() for n, s in observed.items()}
        self.shapes = {n: _log_prob(s).shape for n, s in observed.items()}
        self.dims = _dim_names(observed, set(sites))
        self.batched = bool(observed) and self._batches_correctly(sorted({0, self.num_draws - 1}))

    # ---- the two quantities, over all draws ----------------------------------------------------------
    def log_likelihood(self, progress=None):
        """Pointwise log-likelihood: {observed site: tensor [S, *shapes[site]]}, enumerated sites summed out.

        A point estimate (every draw the same θ, as EM, MAP and variational EM give) is replayed once."""
        if self.num_draws > 1 and all(bool((v == v[:1]).all()) for v in self.draws.values()):
            first = self._log_lik(self._single(0), 0, "at the point estimate")
            return {n: v.expand(self.num_draws, *v.shape) for n, v in first.items()}
        return self._over_draws(self._log_lik, progress, "log-likelihood")

    def posterior_predictive(self, seed=0, progress=None):
        """Replicated data: {observed site: tensor [S, *value_shape]}, one draw of p(x | θ_s) per draw s."""
        with seeded(seed):
            return self._over_draws(self._replicate, progress, "posterior predictive")

    def _over_draws(self, fn, progress, what):
        S = self.num_draws
        if self.batched:
            elements = sum(int(np.prod(s)) for s in self.shapes.values()) or 1
            step = max(1, CHUNK_ELEMENTS // elements)
            try:
                parts = [fn(self._batch(range(a, min(S, a + step))), min(step, S - a)) for a in range(0, S, step)]
                return {n: torch.cat([p[n] for p in parts]) for n in self.observed}
            except (*MODEL_ERRORS, AssertionError):
                self.batched = False  # a later draw the batched run cannot take: all one at a time
        parts, run, start = [], None, time.perf_counter()
        for s in tqdm(range(S), disable=hide_progress(progress), desc=what, leave=False):
            if s == TIMED_DRAWS and (S - s) * (time.perf_counter() - start) / s > CAPTURE_SECONDS:
                # a captured replay costs a fraction of a second to build (seconds the first time in a
                # process), and repays it only over many slow draws
                run = self._captured(fn)
            parts.append(run(s) if run else fn(self._single(s), 0, where=f"at posterior draw {s}"))
        return {n: torch.stack([p[n] for p in parts]) for n in self.observed}

    def _captured(self, fn):
        """``run(s) -> fn at draw s``, from one draw's run captured as a graph of tensor operations
        (:mod:`inference.capture`; it draws the same random numbers), or None where it cannot be captured
        or does not give, at the last draw, what the model gives there."""
        names, sites = list(self.draws), list(self.observed)

        def one(*values):
            out = fn(dict(zip(names, values)), 0)
            return tuple(out[n] for n in sites)

        def run(s):
            with torch.no_grad():
                return dict(zip(sites, graph.run(*[self.draws[n][s] for n in names])))

        try:
            graph = capture(one, [self.draws[n][0] for n in names], calls=self.num_draws)
            last, state = self.num_draws - 1, torch.get_rng_state()
            replayed = run(last)
            torch.set_rng_state(state)
            direct = fn(self._single(last), 0)
            torch.set_rng_state(state)  # the check must not use up the draws' random numbers
        except (CaptureError, *MODEL_ERRORS, AssertionError):
            return None
        return run if all(_close(replayed[n], direct[n]) for n in sites) else None

    def _log_lik(self, values, batch, where="in a batch of draws"):
        trace = self._run(where, self.params, values, batch=batch, enum=True)
        return {
            n: self._reshape(self._pointwise(trace, n, batch), batch, self.shapes[n], len(self.shapes[n]))
            for n in self.observed
        }

    def _replicate(self, values, batch, where="in a batch of draws"):
        trace = self._run(where, self.params, values, batch=batch, resample=True)
        return {n: self._reshape(trace.nodes[n]["value"], batch, *self._shape[n]) for n in self.observed}

    # ---- running the model ----------------------------------------------------------------------------
    def _run(self, where, params, values, batch=0, enum=False, resample=False):
        """Trace of the model with ``params`` substituted and latent sites fixed at ``values``; ``batch`` > 0
        runs it in a plate of that many draws; ``enum`` sums out the discrete sites that are not fixed (they
        take the dims left of the plates); ``resample`` draws the observed sites afresh."""
        fn = poutine.substitute(self.model, data=params) if params else self.model
        if resample:
            fn = poutine.uncondition(fn)
        # condition sits innermost, so that enum and config_enumerate see the fixed sites as observed
        fn = poutine.condition(fn, data=values)
        if enum:
            fn = poutine.enum(config_enumerate(fn), first_available_dim=-(self.nesting + 1 + bool(batch)))
        plate = pyro.plate(DRAWS_PLATE, batch, dim=-(self.nesting + 1)) if batch else nullcontext()
        try:
            with torch.no_grad(), plate:
                return poutine.trace(fn).get_trace(*self.data)
        except MODEL_ERRORS as e:
            if batch:
                raise
            raise model_error(e, where) from e

    def _single(self, s):
        return {n: v[s] for n, v in self.draws.items()}

    def _batch(self, rows):
        """The draws of ``rows``, each shaped [len(rows), 1, ..., *site_shape] to sit in the plate of draws."""
        rows = torch.as_tensor(list(rows))
        out = {}
        for n, v in self.draws.items():
            shape, batch_dims = self._shape[n]
            out[n] = v[rows].reshape(len(rows), *(1,) * max(0, self.nesting - batch_dims), *shape)
        return out

    def _reshape(self, t, batch, shape, batch_dims):
        """A batched run's tensor [batch, 1, ..., *shape] (or a single run's [1, ..., *shape]) as
        [batch, *shape] ([*shape]); raises RuntimeError where it does not fit."""
        lead = (batch,) if batch else ()
        full = lead + (1,) * max(0, self.nesting - batch_dims) + tuple(shape)
        while t.dim() > len(full) and t.shape[0] == 1:
            t = t[0]
        return t.expand(full).reshape(*lead, *shape)

    def _pointwise(self, trace, name, batch):
        """log p(x | draws) of observed site ``name``, its enumerated ancestors summed out: [..., plates]."""
        first = -(self.nesting + 1 + bool(batch))  # the rightmost enumeration dim
        enumerated = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and "_enumerate_dim" in s["infer"]}
        owners = {}
        for n, s in enumerated.items():
            owners.setdefault(s["infer"]["_enumerate_dim"], []).append(n)
        plates = _plates(trace.nodes[name])
        total = _log_prob(trace.nodes[name])
        done, todo = set(), _enum_dims(total, first)
        while todo:  # the ancestors: the sites whose enumeration dims the factors so far depend on
            d = todo.pop()
            done.add(d)
            if len(owners.get(d, [])) != 1:
                raise InvalidInputError(
                    f"observed site {name!r} depends on enumeration dim {d}, which sites "
                    f"{owners.get(d, [])} share (pyro.markov): its pointwise "
                    "log-likelihood cannot be separated"
                )
            site = enumerated[owners[d][0]]
            if _plates(site) != plates:
                raise InvalidInputError(
                    f"observed site {name!r} depends on the enumerated site "
                    f"{site['name']!r}, which is not local to its plates {sorted(plates)}: "
                    "given the draws its observations are not independent, so there is "
                    "no pointwise log-likelihood"
                )
            factor = _log_prob(site)
            total = total + factor
            todo |= _enum_dims(factor, first) - done
        n_enum = total.dim() + first + 1  # dims left of the plates (and of the plate of draws)
        if n_enum > 0:
            total = total.reshape(-1, *total.shape[n_enum:]).logsumexp(0)
        return total

    # ---- is the batched run the same model? ------------------------------------------------------------
    def _batches_correctly(self, rows):
        """Whether the draws of ``rows``, run batched, give the single runs' log-likelihoods, and replicated
        data whose every sampled site has, in a single run, the log-density it had batched."""
        try:
            values, batch = self._batch(rows), len(rows)
            batched = self._log_lik(values, batch)
            for i, r in enumerate(rows):
                single = self._log_lik(self._single(r), 0)
                if not all(_close(batched[n][i], single[n]) for n in self.observed):
                    return False
            with seeded(0):
                trace = self._run("", self.params, values, batch=batch, resample=True)
            sampled = [
                n
                for n, s in trace.nodes.items()
                if s["type"] == "sample" and n in self._shape and n not in self.draws and not site_is_subsample(s)
            ]
            for i, r in enumerate(rows):
                fixed = {n: self._reshape(trace.nodes[n]["value"], batch, *self._shape[n])[i] for n in sampled}
                single = self._run("", self.params, {**self._single(r), **fixed})
                for n in sampled:
                    lp = _log_prob(single.nodes[n])
                    if not _close(self._reshape(_log_prob(trace.nodes[n]), batch, lp.shape, len(lp.shape))[i], lp):
                        return False
            return True
        except (*MODEL_ERRORS, AssertionError, InferenceError):
            return False


def inference_groups(
    model, data, draws, params, shape, *, log_likelihood=True, posterior_predictive=True, seed=0, progress=None
):
    """The InferenceData groups of a model at posterior draws, for ``arviz.from_dict``.

    Args:
        model, data: the Pyro model and its positional arguments.
        draws: {site: tensor [chain * draw, *site_shape]}.
        params: {name: constrained value} of the model's ``pyro.param`` sites.
        shape: (chain, draw).
        log_likelihood, posterior_predictive: whether to compute these groups.
        seed: seeds the replicated data. progress: a bar when draws run one at a time.

    Returns:
        (groups, dims): groups is {"log_likelihood": {site: [chain, draw, *batch_shape]},
        "posterior_predictive": {site: [chain, draw, *value_shape]}, "observed_data": {site: value},
        "constant_data": {argument: value}} (numpy; a group that cannot be computed is left out with a
        warning saying why), dims is {site: dim names of the value}.
    """
    try:
        replay = Replay(model, data, draws, params, num_draws=shape[0] * shape[1])
    except InferenceError as e:
        warnings.warn(f"no log_likelihood or posterior_predictive groups: {e}", stacklevel=3)
        return {}, None
    if not replay.observed:  # a model without observed sites (a density given by factors): no likelihood
        return {}, None
    groups = {
        "observed_data": {n: to_numpy(v) for n, v in replay.observed.items()},
        "constant_data": constant_data(model, data, replay.observed),
    }
    wanted = [
        ("log_likelihood", log_likelihood, lambda: replay.log_likelihood(progress)),
        ("posterior_predictive", posterior_predictive, lambda: replay.posterior_predictive(seed, progress)),
    ]
    for group, want, compute in wanted:
        if not want:
            continue
        try:
            values = compute()
        except InferenceError as e:
            warnings.warn(f"no {group} group: {e}", stacklevel=3)
            continue
        # log-likelihoods in float64 for ArviZ's PSIS; replicated data keep their dtype (integer counts)
        groups[group] = {
            n: to_numpy(v.double() if group == "log_likelihood" else v).reshape(*shape, *v.shape[1:])
            for n, v in values.items()
        }
    return {k: v for k, v in groups.items() if v}, replay.dims


def constant_data(model, data, observed):
    """{argument name: numpy value} of the model's tensor arguments that are not observed values (e.g. the
    covariates X of a regression); names from the model's signature, else "arg_<i>"."""
    try:
        names = [
            p.name
            for p in inspect.signature(model).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        names = []
    out = {}
    for i, a in enumerate(data):
        name = names[i] if i < len(names) else f"arg_{i}"
        if (
            not torch.is_tensor(a)
            or name in observed
            or any(a is v or (a.shape == v.shape and torch.equal(a, v)) for v in observed.values())
        ):
            continue
        out[name] = to_numpy(a)
    return out


def _log_prob(site):
    """log p(value) of a site, batch dims kept, mask applied, scale left out."""
    return scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])


def _plates(site):
    return {f.name for f in site["cond_indep_stack"] if f.vectorized and f.name != DRAWS_PLATE}


def _enum_dims(t, first):
    """The enumeration dims (first and left of it) along which ``t`` varies."""
    return {d for d in range(-t.dim(), first + 1) if t.shape[d] > 1}


def _close(a, b):
    a, b = a.double(), b.double()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=CHECK_RTOL, atol=CHECK_RTOL))


def _dim_names(observed, site_names):
    """{site: a name per dim of its value}: the plate's name for a plate's dim, else "<site>_dim_<i>" (as
    ArviZ names them); a plate name that would mean two sizes, or is a site's name or chain or draw, is
    not used."""
    names, sizes = {}, {}
    for n, s in observed.items():
        value, batch_dims = s["value"], s["value"].dim() - s["fn"].event_dim
        plates = {f.dim: f.name for f in s["cond_indep_stack"] if f.vectorized}
        names[n] = [
            plates.get(i - batch_dims, f"{n}_dim_{i}") if i < batch_dims else f"{n}_dim_{i}" for i in range(value.dim())
        ]
        for d, size in zip(names[n], value.shape):
            sizes.setdefault(d, set()).add(size)
    bad = {d for d, s in sizes.items() if len(s) > 1} | set(site_names) | {"chain", "draw"}
    return {n: [f"{n}_dim_{i}" if d in bad else d for i, d in enumerate(dims)] for n, dims in names.items()}
