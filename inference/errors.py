"""The project's error types and the input checks every entry point shares.

Every failure a user can cause raises a subclass of :class:`InferenceError`, with a message that names the
argument and what was expected, instead of a traceback from deep inside torch or Pyro.
"""

import math

import numpy as np
import torch


class InferenceError(Exception):
    """Base of every error the inference package (and the models built on it) raises on purpose."""


ZooError = InferenceError  # the name before the inference package had its own; kept for old code


class InvalidInputError(InferenceError, ValueError):
    """An argument has the wrong shape, dtype, value or name."""


class NonFiniteError(InferenceError, FloatingPointError):
    """A loss, parameter or state became NaN or infinite during a fit."""


class CheckpointError(InferenceError, OSError):
    """A checkpoint file is missing, truncated, tampered with or from another run."""


class ConvergenceWarning(UserWarning):
    """A fit finished but cannot be trusted: the loss had not settled, the approximation is far from the
    posterior (PSIS k-hat), or the sampler did not mix. Silence it the standard way,
    ``warnings.simplefilter("ignore", inference.ConvergenceWarning)``."""


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``, else raise naming the valid ones."""
    if value not in choices:
        try:
            valid = sorted(choices)
        except TypeError:  # choices without an order, e.g. torch dtypes
            valid = list(choices)
        raise InvalidInputError(f"{name}={value!r} is not one of {valid}")
    return value


def check_positive(name, value, *, allow_zero=False, integer=False):
    """Return ``value`` if it is a finite number > 0 (>= 0 with ``allow_zero``)."""
    ok_type = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, ok_type)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        kind = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(f"{name} must be {kind} {bound}, got {value!r}")
    return value


def check_data(args, what="data argument"):
    """Raise if a tensor among ``args`` is empty or holds NaN or inf; returns ``args`` unchanged.

    Integer and boolean tensors are always finite and are only checked for emptiness.
    """
    for i, a in enumerate(args):
        if not torch.is_tensor(a):
            continue
        if a.numel() == 0:
            raise InvalidInputError(f"{what} {i} is empty (shape {tuple(a.shape)})")
        if a.is_floating_point() and not torch.isfinite(a).all():
            bad = (~torch.isfinite(a)).sum().item()
            raise InvalidInputError(f"{what} {i} contains {bad} NaN or infinite value(s) (shape {tuple(a.shape)})")
    return args


# What a mistake in a model or guide raises from inside Pyro or torch: a value outside a support
# (ValueError), a shape mismatch (RuntimeError), a sample from an improper prior or an unsupported
# construct (NotImplementedError), a wrong argument (TypeError), a missing site or parameter (KeyError).
MODEL_ERRORS = (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError, IndexError)


def model_error(e, where):
    """Wrap an exception raised inside a model or guide (a shape mismatch, a value outside a
    distribution's support) as the project's error, keeping Pyro's message, which names the site."""
    if isinstance(e, InferenceError):
        return e
    message = str(e).strip() or type(e).__name__
    return InvalidInputError(f"the model or guide failed {where}: {type(e).__name__}: {message}")


def check_matrix(X, name="X", dtype=None, device=None):
    """``X`` as a finite real tensor [N, D] (converted from any array-like), or a clear error.

    Args:
        X: array-like or tensor, one row per data point.
        name: how the error messages call it.
        dtype, device: of the returned tensor (None: keep X's, float64 for non-tensors).

    Raises:
        InvalidInputError: not numeric, not 2-D, empty, or holding NaN/inf (the first bad row named).
    """
    return check_array(X, name, ndim=2, dtype=dtype, device=device)


def check_array(X, name="X", ndim=None, dtype=None, device=None):
    """``X`` as a finite, non-empty real tensor with ``ndim`` dimensions (None: any), or a clear error.

    Args:
        X: array-like or tensor.
        name: how the error messages call it.
        ndim: the number of dimensions required (2: one row per data point).
        dtype, device: of the returned tensor (None: keep X's, float64 for non-tensors).
    """
    try:
        X = X.detach() if torch.is_tensor(X) else torch.as_tensor(np.asarray(X, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{name} must be a numeric array: {e}") from None
    if X.is_complex() or X.dtype == torch.bool:
        raise InvalidInputError(f"{name} must be a real array, got dtype {X.dtype}")
    X = X.to(dtype=dtype or (X.dtype if X.is_floating_point() else torch.float64), device=device)
    if ndim is not None and X.ndim != ndim:
        hint = " (one feature: use X.reshape(-1, 1))" if ndim == 2 and X.ndim == 1 else ""
        shape = " [N, D]" if ndim == 2 else ""
        raise InvalidInputError(f"{name} must be {ndim}-D{shape}, got shape {tuple(X.shape)}{hint}")
    if X.numel() == 0:
        raise InvalidInputError(f"{name} is empty (shape {tuple(X.shape)})")
    bad = ~torch.isfinite(X)
    if bad.any():
        rows = bad.reshape(X.shape[0], -1).any(1).nonzero()[:, 0] if X.ndim else torch.zeros(1, dtype=torch.long)
        raise InvalidInputError(
            f"{name} contains {int(bad.sum())} NaN or infinite value(s), in "
            f"{rows.numel()} row(s), the first row {int(rows[0])}"
        )
    return X
