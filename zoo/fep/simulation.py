"""Agents in a world over time: the Euler scheme of the paper's appendix (MATH.md §4.1), batched over agents.

:func:`integrate` runs any :class:`GenerativeModel` in any world and returns tensors;
:func:`simulate` runs the paper's thermostat agent and returns a table; :func:`sweep` runs a grid of
precisions as one batch of agents.
"""

import math
import time

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from inference.common import generator, hide_progress
from inference.errors import InvalidInputError, NonFiniteError, check_positive

from .model import GenerativeModel
from .world import ThermostatWorld


def integrate(
    model,
    world,
    *,
    kappa_mu=0.1,
    kappa_a=0.01,
    dt=0.005,
    t_end=100.0,
    action_onset=25.0,
    noise=0.0,
    seed=0,
    mu0=0.0,
    record_every=1,
    progress=None,
    check_every=250,
):
    """Run agents (one per element of the batch) in a world with the Euler scheme of the paper's appendix.

    Step i (t_i = i dt) uses the previous step's beliefs, action and sensations::

        world:       x'_i = a_{i−1};  x_i = x_{i−1} + dt x'_i;  φ̃_i = sense(world_i) + noise z_i
        perception:  μ̃_i = μ̃_{i−1} + dt (Dμ̃_{i−1} − κ_μ ∂E/∂μ̃(μ̃_{i−1}, φ̃_{i−1}))
        action:      a_i = a_{i−1} − dt κ_a (∂φ̃/∂a)(world_i) · ∂E/∂φ̃(μ̃_{i−1}, φ̃_{i−1})   if t_i > action_onset,
                     a_i = 0 otherwise;

    with φ̃_0 noise-free, μ̃_0 = ``mu0`` and a_0 = 0. The whole batch moves in each step's tensor operations;
    only time is a Python loop.

    Args:
        model: the agents' :class:`GenerativeModel`.
        world: the world they live in (see :class:`ThermostatWorld` for what a world provides).
        kappa_mu: perception rate κ_μ >= 0, a number or a tensor [n_agents].
        kappa_a: action rate κ_a >= 0, a number or a tensor [n_agents].
        dt: the Euler step, > 0.
        t_end: the duration, > 0 (steps 0 .. floor(t_end / dt)).
        action_onset: the agents act only for t > action_onset (0 .. t_end).
        noise: the sensory noise sd >= 0 on every order of φ̃, a number or a tensor [n_agents].
        seed: seeds the sensory noise.
        mu0: the beliefs' start, a number or a tensor [order + 1] or [n_agents, order + 1].
        record_every: keep every k-th step (from step 0).
        progress: show a progress bar (True/False; None: only on a terminal).
        check_every: look for NaN/inf every this many steps; on a divergence the last stretch is replayed
            to name the first non-finite step.

    Returns:
        dict of tensors, one row per recorded step: ``t`` [R], ``mu`` [R, n_agents, order + 1], ``phi``
        [R, n_agents, n_sensory], ``a`` [R, n_agents], the world's observables (e.g. ``position``, ``T``)
        [R, n_agents], and ``F`` [R, n_agents], the paper's free energy ½ Σ ε²/σ at the row's μ̃, φ̃.
    """
    _check_times(dt=dt, t_end=t_end, action_onset=action_onset, record_every=record_every, check_every=check_every)
    kappa_mu, kappa_a, noise, mu_start, n_agents = _per_agent_settings(model, world, kappa_mu, kappa_a, noise, mu0)
    dtype, k, n_sensory = model.dtype, model.order + 1, model.n_sensory
    n_steps = math.floor(t_end / dt + 1e-9) + 1
    perceive = _perception(model, kappa_mu, dt)
    act_rate = -dt * kappa_a
    noisy, gen = bool((noise > 0).any()), generator(seed)

    def step(i, world_state, s, a, z):
        """Euler step i: (world state, s = (μ̃, φ̃) [K + n_sensory, n_agents], a [n_agents]) from step i − 1."""
        mu_next, d_phi = perceive(s)
        world_state = world.step(world_state, a, dt)
        phi = world.sense(world_state) if z is None else world.sense(world_state) + z
        if i * dt > action_onset:  # before the onset a stays at its start, 0 (the appendix's a(i) = 0)
            a = torch.addcmul(a, act_rate, world.inverse_model(world_state, d_phi))
        return world_state, torch.cat([mu_next, phi]), a

    # the agents' state, orders first and agents last (each order a contiguous row)
    world_state = world.initial_state(n_agents, dtype)
    s = torch.cat([mu_start.expand(n_agents, k).T, world.sense(world_state)])
    a = torch.zeros(n_agents, dtype=dtype)

    # the records: ordinary tensors allocated here, written in place inside the loop's inference mode
    t_rows = torch.arange(0, n_steps, record_every)
    records = {name: torch.empty(len(t_rows), n_agents, dtype=dtype) for name in ["a", *world.observe(world_state)]}
    records["s"] = torch.empty(len(t_rows), k + n_sensory, n_agents, dtype=dtype)

    def record(i, world_state, s, a):
        row = i // record_every
        records["s"][row], records["a"][row] = s, a
        for name, value in world.observe(world_state).items():
            records[name][row] = value

    record(0, world_state, s, a)
    bar = tqdm(total=n_steps - 1, disable=hide_progress(progress), desc="fep", dynamic_ncols=True, leave=False)
    # an affine model's step needs no autograd, so none of its bookkeeping in the time loop; a general f or g
    # takes its derivatives by autograd
    with bar, torch.inference_mode(model.is_affine):
        for start in range(1, n_steps, check_every):
            stretch = range(start, min(start + check_every, n_steps))
            noises = [None] * len(stretch)
            if noisy:
                noises = torch.randn(len(stretch), n_sensory, n_agents, generator=gen, dtype=dtype) * noise
            before = (world_state, s, a)
            for i in stretch:
                world_state, s, a = step(i, world_state, s, a, noises[i - start])
                if i % record_every == 0:
                    record(i, world_state, s, a)
            if not _all_finite(world_state, s, a):
                state = before  # replay the stretch to name its first non-finite step
                for i in stretch:
                    state = step(i, *state, noises[i - start])
                    if not _all_finite(*state):
                        raise NonFiniteError(
                            f"the simulation diverged at step {i} (t = {i * dt:.6g}): beliefs, action or world state "
                            f"became NaN or infinite; lower kappa_mu (now {_show(kappa_mu)}), kappa_a (now "
                            f"{_show(kappa_a)}) or dt (now {dt})"
                        )
            bar.update(len(stretch))
            bar.set_postfix(F=f"{float(model.energy(s[:k].T, s[k:].T, constants=False).mean()):.4g}")

    mu, phi = records.pop("s").split([k, n_sensory], 1)
    mu, phi = mu.transpose(1, 2), phi.transpose(1, 2)
    return {"t": t_rows.to(dtype) * dt, "mu": mu, "phi": phi, **records, "F": model.energy(mu, phi, constants=False)}


def simulate(
    *,
    T_desire=4.0,
    sigma_z=0.1,
    sigma_w=0.1,
    kappa_mu=0.1,
    kappa_a=0.01,
    dt=0.005,
    t_end=100.0,
    action_onset=25.0,
    x0=2.0,
    T0=100.0,
    noise=0.0,
    seed=0,
    order=2,
    mu0=0.0,
    record_every=1,
    laplace=True,
    world=None,
    progress=None,
):
    """The thermostat agent of Buckley et al. 2017 (MATH.md §4.1); the defaults are the paper's constants.

    T_desire, kappa_mu, kappa_a, x0 and noise may also be tensors [n_agents], the variances tensors
    [n_agents, orders]; all batch shapes broadcast (see :func:`sweep` for a grid of precisions).

    Args:
        T_desire: the desired temperature (the agent's prior f(μ) = −μ + T_desire).
        sigma_z: sensory variances: a number, a per-order sequence [2] or a tensor [n_agents, 2].
        sigma_w: dynamics variances: a number, a per-order sequence [order] or a tensor [n_agents, order].
        kappa_mu: perception rate.
        kappa_a: action rate.
        dt: the Euler step.
        t_end: the duration.
        action_onset: the agent acts only for t > action_onset.
        x0: the agent's start position.
        T0: the temperature at x = 0.
        noise: sd of the sensory noise on φ and φ' (0: deterministic; the paper's noisy run uses 0.1).
        seed: seeds the sensory noise.
        order: the highest generalized order of the beliefs (the paper: 2).
        mu0: the beliefs' start.
        record_every: keep every k-th step in the table.
        laplace: add the Laplace free energy column ``F_laplace``.
        world: a world other than :class:`ThermostatWorld` (then x0 and T0 are unused).
        progress: show a progress bar (True/False; None: only on a terminal).

    Returns:
        pandas DataFrame, one row per (recorded step, agent): ``agent``, ``t``, the world's observables
        (``position``, ``T``), sensations ``phi``, ``phi'``, beliefs ``mu``, ``mu'``, ``mu''`` (more primes
        for higher orders), action ``a``, ``F`` (the paper's free energy: ½ Σ precision-weighted squared
        errors, E without its constant ln σ terms) and ``F_laplace`` = E − ½ ln det(2π ζ*) (MATH.md §4).
        ``attrs["seconds"]`` is the run's wall time.

    Raises:
        InvalidInputError: a setting is out of range or the per-agent settings disagree in size.
        NonFiniteError: the run diverged (the message names the first non-finite step).
    """
    n_sensory = ThermostatWorld.n_sensory if world is None else world.n_sensory
    model = GenerativeModel.thermostat(
        _finite_number("T_desire", T_desire), sigma_z=sigma_z, sigma_w=sigma_w, order=order, n_sensory=n_sensory
    )
    if world is None:
        check_positive("T0", T0)
        world = ThermostatWorld(T0=T0, x0=_finite_number("x0", x0))
    t0 = time.perf_counter()
    out = integrate(
        model,
        world,
        kappa_mu=kappa_mu,
        kappa_a=kappa_a,
        dt=dt,
        t_end=t_end,
        action_onset=action_onset,
        noise=noise,
        seed=seed,
        mu0=mu0,
        record_every=record_every,
        progress=progress,
    )
    table = to_table(out, model if laplace else None)
    table.attrs["seconds"] = time.perf_counter() - t0
    return table


def to_table(out, model=None):
    """The dict from :func:`integrate` as a long table, one row per recorded step and agent.

    Args:
        out: the dict :func:`integrate` returns.
        model: the run's model; when given, adds ``F_laplace`` (:meth:`GenerativeModel.free_energy`).

    Returns:
        pandas DataFrame with columns ``agent``, ``t``, the world's observables, ``phi``, ``phi'``, ...,
        ``mu``, ``mu'``, ..., ``a``, ``F`` (and ``F_laplace``).
    """
    n_rows = out["t"].shape[0]
    per_row = out["a"].reshape(n_rows, -1)
    n_agents = per_row.shape[1]
    cols = {"agent": np.tile(np.arange(n_agents), n_rows), "t": np.repeat(out["t"].numpy(), n_agents)}
    for name, v in out.items():
        if name not in {"t", "mu", "phi", "a", "F"}:
            cols[name] = v.reshape(-1).numpy()
    for name in ("phi", "mu"):
        v = out[name].reshape(n_rows * n_agents, -1)
        for n in range(v.shape[1]):
            cols[name + "'" * n] = v[:, n].numpy()
    cols["a"] = per_row.reshape(-1).numpy()
    cols["F"] = out["F"].reshape(-1).numpy()
    if model is not None:
        cols["F_laplace"] = model.free_energy(out["mu"], out["phi"]).reshape(-1).numpy()
    return pd.DataFrame(cols)


def sweep(sigma_z=(0.01, 0.1, 1.0), sigma_w=(0.01, 0.1, 1.0), **settings):
    """One thermostat agent per (σ_z, σ_w) pair of the grid, all in one batched run.

    Args:
        sigma_z: the sensory variances of the grid (the same at every order).
        sigma_w: the dynamics variances of the grid (the same at every order).
        **settings: the other arguments of :func:`simulate`.

    Returns:
        the table of :func:`simulate` with columns ``sigma_z`` and ``sigma_w`` added.
    """
    sz, sw = torch.meshgrid(
        torch.as_tensor(sigma_z, dtype=torch.float64).reshape(-1),
        torch.as_tensor(sigma_w, dtype=torch.float64).reshape(-1),
        indexing="ij",
    )
    sz, sw = sz.reshape(-1), sw.reshape(-1)
    order = settings.get("order", 2)
    table = simulate(
        sigma_z=sz.unsqueeze(-1).expand(-1, ThermostatWorld.n_sensory),
        sigma_w=sw.unsqueeze(-1).expand(-1, order),
        **settings,
    )
    table.insert(1, "sigma_z", sz.numpy()[table["agent"].to_numpy()])
    table.insert(2, "sigma_w", sw.numpy()[table["agent"].to_numpy()])
    return table


def _perception(model, kappa_mu, dt):
    """One Euler step of recognition, s = (μ̃, φ̃) [K + n_sensory, B] -> (μ̃ + dt (Dμ̃ − κ_μ ∂E/∂μ̃) [K, B],
    ∂E/∂φ̃ [n_sensory, B]), K = order + 1.

    For affine f and g (the thermostat) E is quadratic, so its gradient is an affine map of s and so is the
    whole step: s -> M s + c, with M and c read off :meth:`GenerativeModel.gradient_operator` once (one
    matrix product when all agents share M). Otherwise :meth:`GenerativeModel.gradients` runs every step.
    """
    k = model.order + 1
    if not model.is_affine:

        def perceive(s):
            mu, phi = s[:k].T, s[k:].T
            d_mu, d_phi = model.gradients(mu, phi)
            mu_next = mu + dt * (torch.nn.functional.pad(mu[..., 1:], (0, 1)) - kappa_mu.reshape(-1, 1) * d_mu)
            return mu_next.T, d_phi.T

        return perceive

    kappa = kappa_mu.reshape(-1, 1, 1)
    weight, bias = model.gradient_operator()  # [..., K + nz, K + nz], [..., K + nz]
    n = weight.shape[-1]
    weight, bias = weight.reshape(-1, n, n), bias.reshape(-1, n)  # [1 or B, ...]
    shift = torch.diag(torch.ones(k - 1, dtype=model.dtype), 1)  # D: (μ', μ'', ..., 0)
    eye = torch.nn.functional.pad(torch.eye(k, dtype=model.dtype) + dt * shift, (0, n - k))
    step_w = eye - dt * kappa * weight[:, :k]  # [1 or B, K, K + nz]
    step_b = -dt * kappa[:, 0] * bias[:, :k]
    rows = max(step_w.shape[0], weight.shape[0])
    m = torch.cat([step_w.expand(rows, -1, -1), weight[:, k:].expand(rows, -1, -1)], 1)
    c = torch.cat([step_b.expand(rows, -1), bias[:, k:].expand(rows, -1)], 1).T  # [K + nz, 1 or B]
    if m.shape[0] == 1:  # shared by all agents: one matrix product
        m = m[0]
        return lambda s: _split(torch.addmm(c, m, s), k)
    m = m.permute(1, 2, 0).contiguous()  # [K + nz, K + nz, B]
    return lambda s: _split(torch.add(c, (m * s).sum(1)), k)


def _split(s, k):
    # slicing: Tensor.split costs more per call, and this runs once per time step
    return s[:k], s[k:]


def _check_times(**settings):
    for name in ("dt", "t_end"):
        check_positive(name, settings[name])
    check_positive("action_onset", settings["action_onset"], allow_zero=True)
    check_positive("record_every", settings["record_every"], integer=True)
    check_positive("check_every", settings["check_every"], integer=True)
    if settings["action_onset"] > settings["t_end"]:
        raise InvalidInputError(
            f"action_onset={settings['action_onset']} is beyond t_end={settings['t_end']}: the agent would never act"
        )


def _finite(name, value, dtype, *, non_negative=False):
    """``value`` as a tensor of ``dtype``, checked finite (and >= 0)."""
    v = torch.as_tensor(value, dtype=dtype)
    if not torch.isfinite(v).all() or (non_negative and (v < 0).any()):
        raise InvalidInputError(f"{name} must be finite{' and >= 0' if non_negative else ''}, got {v.tolist()}")
    return v


def _finite_number(name, value):
    """A finite per-agent setting: a float when it is one number, else a float64 tensor [n_agents]."""
    v = _finite(name, value, torch.float64)
    return v if v.dim() else float(v)


def _per_agent_settings(model, world, kappa_mu, kappa_a, noise, mu0):
    """(kappa_mu, kappa_a, noise, mu0) as checked tensors, and the number of agents that they, the model and the
    world agree on."""
    if world.n_sensory != model.n_sensory:
        raise InvalidInputError(
            f"the world gives {world.n_sensory} orders of sensations but the model expects "
            f"{model.n_sensory} (length of sigma_z)"
        )
    kappa_mu = _finite("kappa_mu", kappa_mu, model.dtype, non_negative=True)
    kappa_a = _finite("kappa_a", kappa_a, model.dtype, non_negative=True)
    noise = _finite("noise", noise, model.dtype, non_negative=True)
    mu0 = _finite("mu0", mu0, model.dtype)
    if mu0.dim() and mu0.shape[-1] != model.order + 1:
        raise InvalidInputError(
            f"mu0 must be a number or have {model.order + 1} entries (order + 1) in its last dimension, "
            f"got shape {tuple(mu0.shape)}"
        )
    shapes = {
        "model variances (sigma_z, sigma_w)": model.batch_shape,
        "kappa_mu": kappa_mu.shape,
        "kappa_a": kappa_a.shape,
        "noise": noise.shape,
        "mu0": mu0.shape[:-1],
        "the world's settings": getattr(world, "batch_shape", ()),
    }
    try:
        batch = torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        raise InvalidInputError(
            "per-agent settings disagree in the number of agents: "
            + ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items() if len(shape))
        ) from None
    if len(batch) > 1:
        raise InvalidInputError(f"per-agent settings must be 1-D over agents, got batch shape {tuple(batch)}")
    return kappa_mu, kappa_a, noise, mu0, batch[0] if batch else 1


def _all_finite(world_state, s, a):
    return all(bool(torch.isfinite(v).all()) for v in (s, a, *world_state.values()))


def _show(v):
    return f"{v.item():g}" if v.numel() == 1 else f"{v.min().item():g}..{v.max().item():g}"
