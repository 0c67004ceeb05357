"""A Pyro model's potential and its gradient on one flat unconstrained vector, optionally compiled.

NUTS needs, hundreds of times per draw, the potential energy on the unconstrained space

    U(z) = -log p(x, T⁻¹(z)) - log |det J_{T⁻¹}(z)|,   z = (z_1, ..., z_S) laid end to end (trace order),

where T_s = biject_to(support of site s), and its gradient dU/dz. Pyro computes U by running the model
under its effect handlers (``poutine.condition`` + ``poutine.trace``, then summing each site's log_prob)
and the gradient by autograd: most of that time is Python bookkeeping, not arithmetic, and it is the
same at every call. :class:`FlatPotential` therefore captures, once, the whole computation z -> (U, dU/dz)
as a graph of tensor operations:

:func:`inference.capture.capture` runs Pyro's potential and ``torch.autograd.grad`` on a real starting
point under ``make_fx``, which records every ATen operation, the backward pass included (the Python of the
model and of Pyro disappears: only the arithmetic is left), and runs that graph as TorchScript, in C++
without a Python call per operation — the same capture as the compiled SVI step.

A recorded graph replays the operations seen at the starting point, so Python control flow that depends
on the *values* of the latent variables (``if sigma > 1:``, ``int(x.item())``) must not be frozen into
it. Capture refuses to read a value out of a traced tensor (it raises, and the model falls back); and the
graph is checked against Pyro's own potential at the start and at perturbed points. Where capture fails or
the values differ, the eager potential (Pyro + autograd at every call) is used and the reason kept in
``note``. Pass ``compile=False`` for models whose results depend on latent values in ways neither
reveals (a value read through a path the tracer cannot see).
"""

import contextlib

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median, init_to_value
from pyro.infer.mcmc.util import initialize_model

from .capture import CaptureError, capture
from .common import generator
from .errors import InvalidInputError
from .init import improper_priors_start_at_zero

# How far the compiled graph may differ from Pyro's own potential (relative, both U and dU/dz): rounding
# of the same operations in another order, far below any frozen-branch difference.
_CHECK_RTOL = {torch.float64: 1e-7, torch.float32: 1e-3}
_CHECK_POINTS = 3  # perturbed points besides the start
_CHECK_SCALE = 0.3  # their distance from the start, per unconstrained coordinate


def _is_linalg_failure(e):
    """A singular or non-positive-definite matrix inside the model: a point where the density is not
    defined, which NUTS treats as infinite energy (as Pyro's integrator does)."""
    message = str(e)
    return isinstance(e, RuntimeError) and ("singular" in message or "positive-definite" in message)


class FlatPotential:
    """z [d] -> (U(z), dU/dz) for a Pyro potential over named unconstrained sites.

    Args:
        potential_fn: Pyro's potential, {site: unconstrained tensor} -> U (from
            ``pyro.infer.mcmc.util.initialize_model``).
        transforms: {site: T_s}, constrained -> unconstrained (same source).
        start: {site: unconstrained tensor}, a point where U is finite (traced there when compiling).
        order: site names in the order of the flat vector.
        compile: capture z -> (U, dU/dz) as one TorchScript graph (else Pyro + autograd at every call).

    Attributes:
        names, shapes, slices, dim, dtype: the flat layout.
        compiled: whether the captured graph is in use.
        note: why it is not (capture failed, or it disagreed with Pyro), or how it runs if not as
            TorchScript; "" for a TorchScript graph.
    """

    def __init__(self, potential_fn, transforms, start, order, compile=True):
        self.potential_fn, self.transforms = potential_fn, transforms
        self.names = list(order)
        self.shapes = {n: start[n].shape for n in self.names}
        self.slices, pos = {}, 0
        for n in self.names:
            self.slices[n] = slice(pos, pos + start[n].numel())
            pos += start[n].numel()
        self.dim = pos
        # the flat vector takes the dtype of U where that is wider than the latents' (float64 data with
        # float32 latents): integrating in float32 would round each step to the coarser grid
        with pyro.validation_enabled(False), torch.no_grad():
            dtype_U = potential_fn(start).dtype
        self.dtype = torch.promote_types(start[self.names[0]].dtype, dtype_U)
        self.compiled, self.note = False, "compile=False" if not compile else ""
        self._fn, self._start = self._eager, self.flatten(start)
        if compile:
            self.compile()

    def flatten(self, params):
        """{site: unconstrained tensor} -> flat tensor [d]."""
        return torch.cat([params[n].detach().reshape(-1).to(self.dtype) for n in self.names])

    def unflatten(self, z):
        """Flat z [..., d] -> {site: tensor [..., *shape]}."""
        batch = z.shape[:-1]
        return {n: z[..., s].reshape(batch + self.shapes[n]) for n, s in self.slices.items()}

    def constrain(self, z):
        """Flat unconstrained draws z [..., d] -> {site: constrained values [..., *site_shape]}."""
        return {n: self.transforms[n].inv(v) for n, v in self.unflatten(z).items()}

    def _eager(self, z):
        with torch.enable_grad():  # callers may hold no_grad: the gradient is the point here
            z = z.detach().requires_grad_(True)
            U = self.potential_fn(self.unflatten(z))
            (grad,) = torch.autograd.grad(U, z)
        return U.detach(), grad

    def compile(self):
        """Capture z -> (U, dU/dz) at the start point and use the graph where it agrees with Pyro's
        potential (else ``note`` says why not); for a potential built with compile=False that turns out
        to be called often."""
        if self.compiled:
            return
        z0 = self._start
        try:
            graph = capture(self._eager, (z0,))  # z -> (U, dU/dz), forward and backward as one graph
        except CaptureError as e:  # any failure to capture only costs speed: fall back, say why
            self.note = f"not compiled, capture failed: {e}"
            return

        def fn(z):
            with torch.no_grad():
                return graph.run(z)

        disagreement = self._check(fn, z0)
        if disagreement:
            self.note = f"not compiled: the captured graph differs from Pyro's potential {disagreement}"
            return
        self._fn, self.compiled = fn, True

    def _check(self, fn, z0):
        """Where the graph and Pyro's potential differ, as text ("" where they agree at every point)."""
        g = generator(0)
        points = [z0] + [
            z0 + _CHECK_SCALE * torch.randn(z0.shape, generator=g, dtype=z0.dtype) for _ in range(_CHECK_POINTS)
        ]
        rtol = _CHECK_RTOL.get(self.dtype, 1e-3)
        for i, z in enumerate(points):
            try:
                with pyro.validation_enabled(False):
                    want = self._eager(z)
            except Exception:  # outside the density's domain (a singular matrix): nothing to compare
                continue
            try:
                got = fn(z)
            except Exception as e:
                return f"(it fails at {'the start' if i == 0 else 'a perturbed point'}: {type(e).__name__})"
            for a, b, what in [(got[0], want[0], "U"), (got[1], want[1], "dU/dz")]:
                if not torch.isfinite(b).all():
                    continue
                scale = b.abs().max().clamp_min(1.0)
                if not torch.allclose(a, b, rtol=rtol, atol=rtol * float(scale), equal_nan=True):
                    return f"in {what} at {'the start' if i == 0 else 'a perturbed point'}"
        return ""

    def value_and_grad(self, z):
        """U(z) and dU/dz as tensors, for z a tensor [d] of ``dtype`` (no autograd graph is kept)."""
        return self._fn(z)

    def __call__(self, z):
        """U and dU/dz at z (numpy float64 [d]) as (float, numpy float64 [d]); (inf, zeros) where the
        model's matrices are singular there (a point outside the density's domain)."""
        try:
            U, grad = self._fn(torch.from_numpy(z).to(self.dtype))
        except RuntimeError as e:
            if _is_linalg_failure(e):
                return np.inf, np.zeros_like(z)
            raise
        return float(U), grad.detach().to(torch.float64).numpy()


@contextlib.contextmanager
def default_dtype(dtype):
    """Within the block, torch's default dtype is ``dtype``."""
    # constants the model creates (torch.tensor(1.), dist.Normal(0., 1.)) must match the data's dtype
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class ModelPotential:
    """U(u) of ``model(*data)`` on one flat unconstrained vector u (sites end to end, in trace order),
    built the way Laplace and Pathfinder need it: data promoted to ``dtype``, a start at ``init`` or the
    prior median, and every failure to start named.

    Args:
        model: the Pyro model; discrete sites with enumerable support are summed out.
        data: tuple, the model's positional arguments.
        dtype: torch dtype of U's computation (float64 for curvature and line searches).
        init: optional {site: constrained value} start; other sites start at their prior median.
        max_plate_nesting: plates to leave for enumeration; None finds it from one run.
        seed: seeds Pyro's RNG for the prior-median start.

    Attributes:
        flat: the :class:`FlatPotential` (layout, compiled value and gradient).
        sites: {site: slice of u}; dim: d; start: u at the start [d]; init_missing: sites not in ``init``.
        potential_fn, transforms: Pyro's potential and the sites' transforms.
    """

    def __init__(self, model, data, dtype, init, max_plate_nesting, seed):
        self.dtype = dtype
        data = tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in data)
        values = {k: torch.as_tensor(v, dtype=dtype) for k, v in (init or {}).items()}
        strategy = _init_to_values_in_support(values) if values else init_to_median()
        where = f"init={sorted(values)}" if values else "the prior median"
        pyro.set_rng_seed(seed)
        with default_dtype(dtype), improper_priors_start_at_zero():
            try:
                if max_plate_nesting is None:
                    max_plate_nesting = _max_plate_nesting(model, data, strategy)
                params, self.potential_fn, self.transforms, trace = initialize_model(
                    model, data, max_plate_nesting=max_plate_nesting, init_strategy=strategy
                )
            except NotImplementedError as e:
                if "subsample" in str(e):
                    raise InvalidInputError(f"laplace needs the full data set: {e}") from None
                first_line = str(e).splitlines()[0]
                raise InvalidInputError(
                    f"the model cannot start at {where}: {first_line}; give "
                    "init={site: value} for sites whose prior cannot be sampled"
                ) from None
            except ValueError as e:
                if isinstance(e, InvalidInputError):
                    raise
                if "valid initial params" in str(e):
                    e = "its log density is not finite there"
                raise InvalidInputError(f"the model cannot be evaluated at {where}: {e}") from None
        names = [n for n, site in trace.nodes.items() if n in self.transforms]
        if not names:
            discrete = [
                n
                for n, s in trace.nodes.items()
                if s["type"] == "sample" and not s["is_observed"] and getattr(s["fn"], "has_enumerate_support", False)
            ]
            extra = f" (its only latent sites {discrete} are discrete and summed out)" if discrete else ""
            raise InvalidInputError(
                f"the model has no continuous latent sample sites{extra}: "
                "there is no posterior for laplace to approximate"
            )
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise InvalidInputError(
                f"init names {unknown}, which are not latent sites of the model (latent sites: {names})"
            )
        missing = [n for n in names if n not in values]
        self.init_missing = missing
        # the flat layout (and, for the k-hat draws, the compiled potential) of inference.potential
        with default_dtype(dtype):
            self.flat = FlatPotential(self.potential_fn, self.transforms, params, names, compile=False)
        self.sites, self.dim = self.flat.slices, self.flat.dim
        self.start = self.flat.flatten(params).to(dtype)

    def unflatten(self, u):
        """Flat u [..., d] -> {site: unconstrained tensor [..., *shape]}."""
        return self.flat.unflatten(u)

    def __call__(self, u):
        with default_dtype(self.dtype):
            return self.potential_fn(self.unflatten(u))

    def many(self, u):
        """U at each row of u [n, d] -> [n], without gradients; inf outside the density's domain (singular
        matrices, or U not a number there), so that such a draw gets zero importance weight. (A row at a
        time: Pyro's tracing reads ``tensor.data``, which torch.func.vmap forbids; the potential compiled on
        the first call makes a row cheap. L-BFGS's few dozen calls do not repay a capture.)"""
        with default_dtype(self.dtype), pyro.validation_enabled(False), torch.no_grad():
            self.flat.compile()
            values = torch.tensor([self.flat(x.detach().double().cpu().numpy())[0] for x in u], dtype=self.dtype)
        return torch.where(torch.isnan(values), torch.inf, values)

    def constrain(self, u):
        """Flat u [..., d] -> {site: constrained value [..., *site_shape]}."""
        return self.flat.constrain(u)

    def sites_where(self, mask):
        """Names of the sites whose slice of a boolean [d] mask has any True."""
        return [n for n, s in self.sites.items() if bool(mask[s].any())]


def _max_plate_nesting(model, data, strategy):
    """How many plates nest in ``model``, from one run at the initial point (as Pyro guesses it, but
    without sampling from the priors, which an improper prior cannot do)."""
    with poutine.block():
        trace = poutine.trace(InitMessenger(strategy)(model)).get_trace(*data)
    dims = [
        frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0


def _init_to_values_in_support(values):
    """Pyro init strategy: the given constrained values (checked against each site's support), else
    the prior median."""
    given = init_to_value(values=values, fallback=init_to_median())

    def strategy(site):
        name, support, shape = site["name"], site["fn"].support, site["fn"].shape()
        if name in values and values[name].shape != shape:
            raise InvalidInputError(
                f"init[{name!r}] has shape {tuple(values[name].shape)}, but site {name!r} has shape {tuple(shape)}"
            )
        if name in values and not bool(support.check(values[name]).all()):
            raise InvalidInputError(
                f"init[{name!r}] = {values[name].tolist()} lies outside the support {support} of site {name!r}"
            )
        return given(site)

    return strategy
