"""The project's error types and the input checks every entry point shares.

Every failure a user can cause raises a subclass of :class:`ZooError`, with a message that names the
argument and what was expected, instead of a traceback from deep inside torch or Pyro.
"""
import math

import torch


class ZooError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidInputError(ZooError, ValueError):
    """An argument has the wrong shape, dtype, value or name."""


class NonFiniteError(ZooError, FloatingPointError):
    """A loss, parameter or state became NaN or infinite during a fit."""


class CheckpointError(ZooError, OSError):
    """A checkpoint file is missing, truncated, tampered with or from another run."""


class ConvergenceWarning(UserWarning):
    """A fit finished but cannot be trusted: the loss had not settled, the approximation is far from the
    posterior (PSIS k-hat), or the sampler did not mix. Silence it the standard way,
    ``warnings.simplefilter("ignore", inference.ConvergenceWarning)``."""


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``, else raise naming the valid ones."""
    if value not in choices:
        raise InvalidInputError(f"{name}={value!r} is not one of {sorted(choices)}")
    return value


def check_positive(name, value, *, allow_zero=False, integer=False):
    """Return ``value`` if it is a finite number > 0 (>= 0 with ``allow_zero``)."""
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
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
            raise InvalidInputError(f"{what} {i} contains {bad} NaN or infinite value(s) "
                                    f"(shape {tuple(a.shape)})")
    return args


# What a mistake in a model or guide raises from inside Pyro or torch: a value outside a support
# (ValueError), a shape mismatch (RuntimeError), a sample from an improper prior or an unsupported
# construct (NotImplementedError), a wrong argument (TypeError), a missing site or parameter (KeyError).
MODEL_ERRORS = (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError, IndexError)


def model_error(e, where):
    """Wrap an exception raised inside a model or guide (a shape mismatch, a value outside a
    distribution's support) as the project's error, keeping Pyro's message, which names the site."""
    if isinstance(e, ZooError):
        return e
    message = str(e).strip() or type(e).__name__
    return InvalidInputError(f"the model or guide failed {where}: {type(e).__name__}: {message}")
