"""The compiled SVI step: one step's loss and gradients captured once as a graph of tensor operations,
then replayed.

Pyro evaluates an ELBO in Python: every ``pyro.sample`` and ``pyro.param`` statement travels through the
effect-handler stack, two traces are recorded and their log-densities summed, and autograd walks the
result back. On a model of a few dozen parameters that bookkeeping, not the arithmetic, is the cost of a
step. But where the model's structure does not change from step to step, each step runs the same tensor
operations on new values. So one step is run under ``torch.fx``'s ``make_fx``, which records the ATen
operations it executes — the forward pass, the backward pass that ``torch.autograd.grad`` runs, and the
random draws — as a graph from (parameter tensors, data tensors) to (loss, gradient norm, gradients).
``make_fx`` knows a tensor by its identity, so parameters reached through the param store, a
``PyroModule`` or an ``nn.Module`` alike become the graph's inputs. Later steps call the graph:

    torchscript   the graph traced into TorchScript, whose interpreter runs the operations without
                  Python; built in milliseconds.
    inductor      the graph compiled by ``torch.compile``'s inductor into fused C++ (CPU) or Triton (CUDA)
                  kernels: the fastest step, after a compile of seconds to tens of seconds (cached on
                  disk across runs), so it pays on long fits.

The random draws are the same ATen calls on the same generator (inductor is told to keep them:
``fallback_random``), so a replayed step draws the numbers the eager step would, and a fit gives the
eager fit's losses for the same seed.

:func:`capture` refuses — and the caller falls back to the eager step with a one-line notice — when the
graph cannot stand for the step: data-dependent control flow (a Python ``if`` on a sampled value, an
``.item()``), state changed outside the parameters (a batch-norm buffer), a parameter the graph reaches
as a constant, or a replay that does not reproduce the captured step. Python-level state that changes
between steps without touching a tensor (a step counter in the model) cannot be seen; such models need
``compile=False``.
"""

import contextlib
import importlib
import warnings
from typing import Callable, NamedTuple

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx

BACKENDS = ("auto", "torchscript", "inductor")
# "auto" compiles with inductor when the operations it saves outweigh its compile: TorchScript spends about
# a microsecond per operation per call, inductor tens of seconds compiling a graph it has not cached, so
# it pays beyond this many operation-calls (graph size x calls).
AUTO_INDUCTOR_WORK = 2e7
# Pyro's ELBOs turn tensors into Python floats (``torch_item``) and test them for NaN (``warn_if_nan``)
# as they go; a graph cannot hold either. While capturing, the floats stay tensors (detached, which is
# what ``torch_item`` does to the gradient) and the NaN check is left to the caller, which checks the
# loss and the gradient norm of every step. These are the only Pyro internals this module relies on;
# tests/test_capture.py fails loudly if Pyro renames them.
PATCHED_MODULES = (
    "pyro.infer.trace_elbo",
    "pyro.infer.trace_mean_field_elbo",
    "pyro.infer.tracegraph_elbo",
    "pyro.infer.traceenum_elbo",
)


class CaptureError(Exception):
    """The step cannot be captured as a graph; the message says why (for the fallback notice)."""


def loss_and_surrogate(elbo, model, guide, args):
    """(loss, surrogate): the negative ELBO estimate and the tensor whose gradient is its gradient estimate
    (they differ where score-function terms enter: non-reparameterised sites)."""
    if hasattr(elbo, "_loss_and_surrogate_loss"):  # TraceGraph_ELBO has no differentiable_loss
        elbo_value, surrogate = elbo._loss_and_surrogate_loss(model, guide, args, {})
        return -elbo_value, surrogate
    loss = elbo.differentiable_loss(model, guide, *args)  # value = loss, gradient = the surrogate's
    return loss, loss


@contextlib.contextmanager
def _tensors_stay_tensors():
    detach = lambda x: x.detach() if torch.is_tensor(x) else x  # noqa: E731
    keep = lambda value, *args, **kwargs: value  # noqa: E731
    saved = []
    for name in PATCHED_MODULES:
        module = importlib.import_module(name)
        for attr, replacement in (("torch_item", detach), ("warn_if_nan", keep)):
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, replacement)
    # Pyro takes its trace-safe paths (no data-dependent checks such as ``if not mask.all()``) when
    # ``torch._C._get_tracing_state()`` is set, as under its own jit ELBOs; say so while capturing.
    get_tracing_state = torch._C._get_tracing_state
    torch._C._get_tracing_state = _capturing
    try:
        yield
    finally:
        torch._C._get_tracing_state = get_tracing_state
        for module, attr, original in saved:
            setattr(module, attr, original)


class _CaptureState:
    """Stands in for a tracing state: truthy, and records no scopes."""

    def push_scope(self, name):
        pass

    def pop_scope(self):
        pass


_CAPTURE_STATE = _CaptureState()


def _capturing():
    return _CAPTURE_STATE


class Graph(NamedTuple):
    """A captured function: ``run(*inputs) -> tuple of tensors`` (call it under ``torch.no_grad()``; it
    draws from the generators the function drew from, in the same order), the backend that runs it, and
    the number of operations in the graph."""

    run: Callable
    backend: str
    ops: int


def capture(fn, inputs, *, backend="torchscript", calls=1, context=contextlib.nullcontext):
    """Capture ``fn(*inputs) -> tuple of tensors`` as a graph (:class:`Graph`).

    Args:
        fn: a function of tensors whose Python control flow does not depend on their values; it may run
            Pyro models and ELBOs and call ``torch.autograd.grad``.
        inputs: example input tensors; the graph takes tensors of the same shapes, dtypes and devices.
            Tensors ``fn`` reaches in other ways (closures, modules) are fixed in the graph.
        backend: "torchscript", "inductor", or "auto": inductor when ops x ``calls`` >= AUTO_INDUCTOR_WORK.
            Where inductor cannot compile the graph (an operation whose output shape depends on values),
            TorchScript runs it and ``Graph.backend`` says why.
        calls: how many times the graph will be called (for "auto").
        context: a callable returning a context manager active while capturing (the replay runs without
            it: whatever it changes must be fixed in the graph, like a minibatch scale).

    Returns:
        Graph.

    Raises:
        CaptureError when the graph cannot stand for ``fn`` (see the module docstring).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    rng = _rng_state(inputs)
    try:
        with _fork_rng(inputs), context(), _tensors_stay_tensors(), _quiet(), pyro.validation_enabled(False):
            _set_rng_state(rng)
            with _one_fake_mode():
                graph = make_fx(lambda *args: fn(*args))(*inputs)  # (a bound method's self: not an input)
            _set_rng_state(rng)
            with torch.no_grad():
                captured = [t.detach().clone() for t in graph(*inputs)]
    except (RuntimeError, TypeError, ValueError, NotImplementedError, AssertionError) as e:
        raise CaptureError(_first_line(e)) from e
    _check_constants(graph)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    ops = sum(node.op == "call_function" for node in graph.graph.nodes)
    if backend == "auto":
        backend = "inductor" if ops * calls >= AUTO_INDUCTOR_WORK else "torchscript"
    if backend == "inductor":
        try:
            replay = _inductor(graph, inputs)
            _check_replay(replay, inputs, rng, captured)
            return Graph(replay, backend, ops)
        except Exception as e:  # noqa: BLE001  (any compiler failure or mismatch: TorchScript still runs)
            backend = f"torchscript (inductor: {_first_line(e)})"
    try:
        with torch.no_grad(), _quiet(), _fork_rng(inputs):  # tracing runs the graph: not on our draws
            replay = _torchscript(torch.jit.trace(graph, tuple(inputs), check_trace=False), inputs)
    except RuntimeError as e:  # an operation TorchScript cannot hold: the graph runs op by op instead
        replay, backend = graph, f"fx graph (TorchScript: {_first_line(e)})"
    _check_replay(replay, inputs, rng, captured)
    return Graph(replay, backend, ops)


def _check_replay(replay, inputs, rng, captured):
    """CaptureError unless the replay, from the random state of the capture, gives what was captured."""
    with _fork_rng(inputs), torch.no_grad():
        _set_rng_state(rng)
        replayed = replay(*inputs)
    for a, b in zip(captured, replayed, strict=True):
        size = float(a.abs().nan_to_num(0.0, 0.0, 0.0).max()) if a.numel() else 0.0
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + size), equal_nan=True):
            raise CaptureError(
                "the replayed graph does not reproduce the step it was captured from "
                "(state or control flow outside the tensors)"
            )


def _torchscript(traced, inputs):
    """The traced graph, run without TorchScript's profiling optimiser on CPU: its specialised graphs run
    the same operations slower here (benchmarks/vae_step.py); on CUDA its fusion of elementwise kernels
    is kept."""
    optimise = any(t.device.type != "cpu" for t in inputs)

    def run(*args):
        with torch.jit.optimized_execution(optimise):
            return traced(*args)

    return run


def _inductor(graph, inputs):
    """The graph compiled by inductor. Called on the FX graph directly (``compile_fx``), not through
    ``torch.compile``: the graph is already captured, so dynamo has nothing to add but guards to check on
    every call. Where that entry point is missing, ``torch.compile``."""
    import torch._inductor.config as inductor_config

    # fallback_random: ATen's random functions, so the compiled graph draws what the eager step draws
    with inductor_config.patch(fallback_random=True), torch.no_grad(), _fork_rng(inputs), _quiet():
        try:
            from torch._inductor.compile_fx import compile_fx

            compiled = compile_fx(graph, list(inputs))
        except ImportError:
            compiled = torch.compile(graph, backend="inductor", fullgraph=True, dynamic=False)
        compiled(*inputs)  # compile now, not at the first step
    return compiled


class CapturedStep:
    """A captured SVI step: ``step(batch) -> tensor [loss, gradient norm]``, with each parameter's
    ``.grad`` set to its gradient (None where the loss does not depend on it, as after ``backward``).

    Args:
        elbo: an (eager) Pyro ELBO instance.
        model, guide: the Pyro callables, called with the batch's arguments.
        params: the unconstrained parameter tensors (leaves requiring grad), in the optimizer's order.
        batch: example arguments: tensors become graph inputs (a later batch must have the same shapes),
            other values are fixed in the graph.
        backend, calls, context: see :func:`capture`.

    Raises:
        CaptureError when the graph cannot stand for the step (see the module docstring).
    """

    def __init__(
        self, elbo, model, guide, params, batch, backend="torchscript", calls=1, context=contextlib.nullcontext
    ):
        self.params = list(params)
        self.where = [i for i, a in enumerate(batch) if torch.is_tensor(a)]
        self.shapes = [batch[i].shape for i in self.where]
        self.used = [True] * len(self.params)
        n = len(self.params)

        def step(*inputs):
            args = list(batch)
            for i, t in zip(self.where, inputs[n:]):
                args[i] = t
            loss, surrogate = loss_and_surrogate(elbo, model, guide, tuple(args))
            grads = torch.autograd.grad(surrogate, inputs[:n], allow_unused=True)
            self.used = [g is not None for g in grads]  # the graph returns only these gradients
            used = [g for g in grads if g is not None]
            norm = (
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in used]))
                if used
                else torch.zeros((), device=loss.device)
            )
            return (torch.stack([loss.detach(), norm.to(loss.dtype)]), *used)  # one read per step

        self.graph = capture(
            step, (*self.params, *(batch[i] for i in self.where)), backend=backend, calls=calls, context=context
        )
        self.backend = self.graph.backend

    def __call__(self, batch):
        tensors = [batch[i] for i in self.where]
        if [t.shape for t in tensors] != self.shapes:
            raise CaptureError(
                f"batch shapes {[tuple(t.shape) for t in tensors]} differ from the captured "
                f"{[tuple(s) for s in self.shapes]}"
            )
        with torch.no_grad():
            loss_and_norm, *grads = self.graph.run(*self.params, *tensors)
        grads = iter(grads)
        for p, used in zip(self.params, self.used):
            p.grad = next(grads) if used else None
        return loss_and_norm


def _one_fake_mode():
    """One fake-tensor mode for the whole capture: ``make_fx`` records each operation's output metadata
    with a fake tensor, and without an ambient mode it builds a new mode per operation (most of the
    capture's time). Optional: where torch's internals differ, capture runs without it."""
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode

        return tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True)))
    except (ImportError, AttributeError, TypeError):
        return contextlib.nullcontext()


def _check_constants(graph):
    """Refuse a graph that writes into a tensor it does not take as an input (a module's running statistics,
    a cache): replaying it would change that tensor where the eager step changes another."""
    for node in graph.graph.nodes:
        target = node.target
        mutable = node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable
        if mutable and node.args and getattr(node.args[0], "op", None) == "get_attr":
            raise CaptureError(
                f"the step writes into a tensor that is not a parameter ({target.__name__} "
                f"on a constant): a buffer such as batch-norm statistics"
            )


def _cuda_devices(tensors):
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def _fork_rng(tensors):
    """Save the generators the step draws from (CPU, and the CUDA devices of ``tensors``); restore after."""
    return torch.random.fork_rng(devices=_cuda_devices(tensors))


def _rng_state(tensors):
    return torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in _cuda_devices(tensors)}


def _set_rng_state(state):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for device, s in cuda.items():
        torch.cuda.set_rng_state(s, device)


@contextlib.contextmanager
def _quiet():
    # Tracing warns about Python values it fixes in the graph: that is the point of capturing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
