"""Optimizers, learning-rate schedules and gradient clipping by name (MATH.md §5).

The SVI loop builds a plain ``torch.optim`` optimizer over the unconstrained parameter tensors of the param
store, so every optimizer, schedule and clipping rule here is the standard PyTorch one:

    sgd            θ ← θ − η g
    momentum       v ← μ v + g;              θ ← θ − η v               (heavy ball)
    nesterov       v ← μ v + g;              θ ← θ − η (g + μ v)       (gradient at the look-ahead point)
    rmsprop        s ← ρ s + (1 − ρ) g²;     θ ← θ − η g / (√s + ε)
    adam           Adam's bias-corrected first and second moments
    clipped-adam   Pyro's ClippedAdam: Adam with element-wise gradient clipping at ``clip_norm``

Gradient-norm clipping rescales the whole gradient when ‖g‖₂ > c, so the step length is at most η c
(the cure for cliffs and exploding gradients).
"""

import torch
from pyro.optim.clipped_adam import ClippedAdam

from .errors import InvalidInputError, check_choice, check_positive

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "clipped-adam")
SCHEDULES = ("constant", "exponential", "step", "cosine")


def make_optimizer(name, params, *, lr, momentum=0.9, betas=(0.9, 0.999), weight_decay=0.0):
    """A ``torch.optim.Optimizer`` over ``params`` chosen by ``name`` (one of ``OPTIMIZERS``)."""
    check_choice("optimizer", name, OPTIMIZERS)
    check_positive("lr", lr)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    if name in ("momentum", "nesterov") and not 0 < momentum < 1:
        raise InvalidInputError(f"momentum must be in (0, 1), got {momentum!r}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=_fusable(params))
    return ClippedAdam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _fusable(params):
    # The fused Adam kernel (one pass over each tensor) is faster than the per-op one (benchmarks/vae_step.py).
    return all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)


def make_schedule(schedule, optimizer, *, steps, lr_min=None):
    """A learning-rate scheduler stepped once per optimisation step, or None for a constant rate.

    ``schedule`` is a name or a callable ``optimizer -> torch.optim.lr_scheduler.LRScheduler``:

        exponential   η_t = η_0 (η_min/η_0)^(t/steps)         (geometric decay to lr_min)
        cosine        η_t = η_min + ½ (η_0 − η_min)(1 + cos(π t/steps))
        step          η divided by 10 at 50% and again at 75% of the steps

    ``lr_min`` defaults to η_0 / 100.
    """
    if schedule is None or schedule == "constant":
        return None
    if callable(schedule):
        return schedule(optimizer)
    check_choice("schedule", schedule, SCHEDULES)
    lr0 = optimizer.param_groups[0]["lr"]
    lr_min = lr0 / 100 if lr_min is None else check_positive("lr_min", lr_min)
    steps = max(int(steps), 1)
    if schedule == "exponential":
        gamma = (lr_min / lr0) ** (1.0 / steps)
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr_min)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[steps // 2, (3 * steps) // 4], gamma=0.1)


def grad_norm(params):
    """Euclidean norm of all gradients together (a 0-d tensor; inf/nan if any gradient is)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if len({(g.device, g.dtype) for g in grads}) > 1:
        return torch.nn.utils.get_total_norm(grads)
    # One kernel over all tensors; this runs every step, and get_total_norm's grouping costs as much again.
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_grad_norm(params, max_norm, total_norm):
    """Rescale the gradients in place so that their joint norm is at most ``max_norm``."""
    torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total_norm)
