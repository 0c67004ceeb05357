"""The free-energy principle as Pyro inference: perception and action (Buckley et al. 2017; MATH.md §4).

An agent senses φ̃ = (φ, φ', ...) caused by a world it cannot see. Its generative density (G-density) in
generalized coordinates of motion, for beliefs μ̃ = (μ, μ', ..., μ^(order)) and local linearisations
g[n] = g'(μ) μ[n], f[n] = f'(μ) μ[n] (n ≥ 1), is (Normal(mean, variance) here)

    φ[n]   ~ Normal(g[n], σ_z[n])        n = 0 .. n_sensory - 1     (sensations)
    μ[n+1] ~ Normal(f[n], σ_w[n])        n = 0 .. order - 1         (dynamics: Dμ̃ = f̃ + w̃)
    μ[0]   ~ flat                                                   (the paper puts no prior on μ)

and its negative log joint is the Laplace-encoded energy

    E(μ̃, φ̃) = Σ_n ε_z[n]² / (2σ_z[n]) + ½ ln σ_z[n]  +  Σ_n ε_w[n]² / (2σ_w[n]) + ½ ln σ_w[n],
    ε_z[n] = φ[n] − g[n],   ε_w[n] = μ[n+1] − f[n],

up to the normalising constants (n_sensory + order)/2 · ln 2π that Pyro's Normal log-densities carry and
MATH.md's E leaves out. The recognition density (R-density) is a Delta at μ̃ while beliefs move, and the
Laplace Gaussian N(μ̃, ζ*) with ζ* = [∂²E/∂μ̃²]⁻¹ when the free energy F = E − ½ ln det(2π ζ*) is scored.

Perception: dμ̃/dt = Dμ̃ − κ_μ ∂E/∂μ̃.  Action: da/dt = −κ_a (∂φ̃/∂a) · ∂E/∂φ̃, where ∂φ̃/∂a is the world's
inverse model. :func:`simulate` runs the paper's thermostat agent (constants: MATH.md §4.1), many agents
at once along a batch dimension, with the appendix's Euler scheme.

    >>> table = simulate(progress=False)                      # the paper's run, no sensory noise
    >>> table[table.t <= 25]["mu"].iloc[-1]                   # ≈ 12: halfway between 20 sensed and 4 desired
"""
import math
import time

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from tqdm import tqdm

from inference.errors import InvalidInputError, NonFiniteError, check_positive

LOG_2PI = math.log(2 * math.pi)


# ---- the agent's functions ----------------------------------------------------------------------------

class Affine:
    """h(μ) = slope · μ + intercept, with its derivatives in closed form (fast in the time loop).

    ``slope`` and ``intercept`` are numbers or tensors broadcastable against the agents' batch shape.
    """

    def __init__(self, slope, intercept=0.0):
        self.slope, self.intercept = slope, intercept

    @property
    def batch_shape(self):
        return torch.broadcast_shapes(torch.as_tensor(self.slope).shape, torch.as_tensor(self.intercept).shape)

    def __call__(self, x):
        return self.slope * x + self.intercept

    def derivatives(self, x):
        """(h(x), h'(x), h''(x)) elementwise."""
        return self(x), self.slope, 0.0

    def __repr__(self):
        return f"Affine(slope={self.slope!r}, intercept={self.intercept!r})"


def derivatives(fn, x):
    """(fn(x), fn'(x), fn''(x)) for an elementwise function of a tensor ``x``.

    Uses ``fn.derivatives`` when the function has one (e.g. :class:`Affine`), else autograd with
    ``create_graph`` so that the results can be differentiated again (gradients, Hessians of E).
    """
    if hasattr(fn, "derivatives"):
        return fn.derivatives(x)
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        value = fn(xg)
        (d1,) = torch.autograd.grad(value.sum(), xg, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), xg, create_graph=True, allow_unused=True) \
            if d1.requires_grad else (None,)
    d2 = torch.zeros_like(x) if d2 is None else d2
    if not x.requires_grad:
        value, d1, d2 = value.detach(), d1.detach(), d2.detach()
    return value, d1, d2


# ---- the G-density ------------------------------------------------------------------------------------

def _variances(name, value, size, dtype):
    """A tensor [..., size] of positive variances from a number, a sequence [size] or a tensor [..., size]."""
    v = torch.as_tensor(value, dtype=dtype)
    if v.dim() == 0:
        v = v.expand(size)
    if v.shape[-1] != size:
        raise InvalidInputError(f"{name} must have {size} entries in its last dimension (one per order), "
                                f"got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all() or (v <= 0).any():
        raise InvalidInputError(f"{name} must hold finite variances > 0, got {v.tolist()}")
    return v


class GenerativeModel:
    """The G-density of MATH.md §4 in generalized coordinates, as a Pyro model with a Delta guide.

    Args:
        f: the believed dynamics μ' = f(μ), an elementwise function (default: the thermostat's
            f(μ) = −μ + T_desire, via :meth:`thermostat`).
        g: the believed sensory mapping φ = g(μ), elementwise (default identity).
        sigma_z: sensory variances σ_z[n], a number (same for every order), a sequence [n_sensory] or a
            tensor [..., n_sensory] (one row per agent).
        sigma_w: dynamics variances σ_w[n], a number, a sequence [order] or a tensor [..., order].
        order: the highest generalized order of the beliefs (μ̃ has order + 1 entries); ≥ 1.
        n_sensory: how many orders of sensations (1 .. order + 1; default: sigma_z's length, or order).

    Beliefs ``mu`` are tensors [..., order + 1] and sensations ``phi`` tensors [..., n_sensory].
    """

    def __init__(self, f=None, g=None, *, sigma_z=0.1, sigma_w=0.1, order=2, n_sensory=None,
                 dtype=torch.float64):
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise InvalidInputError(f"order must be an integer >= 1, got {order!r}")
        if n_sensory is None:
            n_sensory = torch.as_tensor(sigma_z).shape[-1] if torch.as_tensor(sigma_z).dim() else order
        if isinstance(n_sensory, bool) or not isinstance(n_sensory, int) or not 1 <= n_sensory <= order + 1:
            raise InvalidInputError(f"n_sensory must be an integer in 1..order+1 = 1..{order + 1}, "
                                    f"got {n_sensory!r}")
        self.order, self.n_sensory, self.dtype = order, n_sensory, dtype
        self.f = f if f is not None else Affine(-1.0, 4.0)
        self.g = g if g is not None else Affine(1.0, 0.0)
        self.sigma_z = _variances("sigma_z", sigma_z, n_sensory, dtype)
        self.sigma_w = _variances("sigma_w", sigma_w, order, dtype)

    @classmethod
    def thermostat(cls, T_desire=4.0, **kwargs):
        """The paper's agent: f(μ) = −μ + T_desire (it believes temperature relaxes to what it desires),
        g(μ) = μ (it senses the temperature it believes in). ``T_desire``: a number or a tensor of agents."""
        return cls(Affine(-1.0, T_desire), Affine(1.0, 0.0), **kwargs)

    @property
    def batch_shape(self):
        return torch.broadcast_shapes(self.sigma_z.shape[:-1], self.sigma_w.shape[:-1],
                                      getattr(self.f, "batch_shape", ()), getattr(self.g, "batch_shape", ()))

    # -- the energy, its gradient, the free energy --------------------------------------------------------
    def errors(self, mu, phi):
        """Prediction errors ε_z [..., n_sensory] = φ̃ − g̃(μ̃) and ε_w [..., order] = μ̃[1:] − f̃(μ̃)."""
        eps_z, eps_w, _ = self._errors(mu, phi)
        return eps_z, eps_w

    def _errors(self, mu, phi):
        mu0 = mu[..., 0]
        g0, dg, ddg = derivatives(self.g, mu0)
        f0, df, ddf = derivatives(self.f, mu0)
        g0, f0 = torch.as_tensor(g0, dtype=mu.dtype), torch.as_tensor(f0, dtype=mu.dtype)
        g_tilde = _prepend(g0, _col(dg) * mu[..., 1:self.n_sensory])
        f_tilde = _prepend(f0, _col(df) * mu[..., 1:self.order])
        return phi - g_tilde, mu[..., 1:] - f_tilde, (dg, ddg, df, ddf)

    def energy(self, mu, phi, *, constants=True):
        """E(μ̃, φ̃) [...], MATH.md §4 (ln σ terms included; with ``constants=False`` only the
        precision-weighted squared errors, the quantity the paper's appendix plots as its VFE)."""
        eps_z, eps_w = self.errors(mu, phi)
        e = 0.5 * ((eps_z ** 2 / self.sigma_z).sum(-1) + (eps_w ** 2 / self.sigma_w).sum(-1))
        if constants:
            e = e + 0.5 * (self.sigma_z.log().sum(-1) + self.sigma_w.log().sum(-1))
        return e

    def gradients(self, mu, phi, *, method="closed-form"):
        """(∂E/∂μ̃ [..., order + 1], ∂E/∂φ̃ [..., n_sensory]).

        ``method="closed-form"`` differentiates the prediction errors by hand (cheap: a few tensor
        operations per time step); ``"autograd"`` differentiates the Pyro model's log joint
        (``poutine.trace(...).log_prob_sum()``) and gives the same numbers, slower.
        """
        if method == "autograd":
            mu_, phi_ = mu.detach().requires_grad_(True), phi.detach().requires_grad_(True)
            with torch.enable_grad():
                return torch.autograd.grad(-self.log_joint(mu_, phi_), (mu_, phi_))
        if method != "closed-form":
            raise InvalidInputError(f"method={method!r} is not one of ['autograd', 'closed-form']")
        eps_z, eps_w, (dg, ddg, df, ddf) = self._errors(mu, phi)
        xi_z, xi_w = eps_z / self.sigma_z, eps_w / self.sigma_w      # precision-weighted errors = ∂E/∂ε
        nz, order = self.n_sensory, self.order
        # ε_w[n] = μ[n+1] − f[n]:  +ξ_w[n] on μ[n+1], −ξ_w[n] f' on μ[n], and −ξ_w[n] f'' μ[n] on μ (n ≥ 1)
        xi_w_ = torch.nn.functional.pad(xi_w, (1, 1))
        grad = xi_w_[..., :-1] - xi_w_[..., 1:] * _col(df) \
            - torch.nn.functional.pad(xi_z * _col(dg), (0, order + 1 - nz))
        curvature = 0.0
        if not _is_zero(ddf) and order > 1:
            curvature = curvature + (xi_w[..., 1:] * mu[..., 1:order]).sum(-1) * ddf
        if not _is_zero(ddg) and nz > 1:
            curvature = curvature + (xi_z[..., 1:] * mu[..., 1:nz]).sum(-1) * ddg
        if not _is_zero(curvature):
            grad = grad - torch.nn.functional.pad(curvature.unsqueeze(-1), (0, order))
        return grad, xi_z

    @property
    def is_affine(self):
        """True when f and g are :class:`Affine`: E is then quadratic in (μ̃, φ̃)."""
        return isinstance(self.f, Affine) and isinstance(self.g, Affine)

    def gradient_operator(self):
        """For affine f and g: (W [..., K + nz, K + nz], b [..., K + nz]) with
        (∂E/∂μ̃, ∂E/∂φ̃) = W (μ̃, φ̃) + b exactly, read off :meth:`gradients` at 0 and the unit vectors."""
        if not self.is_affine:
            raise InvalidInputError("gradient_operator needs affine f and g (E quadratic)")
        k, n = self.order + 1, self.order + 1 + self.n_sensory
        points = torch.cat([torch.zeros(1, n, dtype=self.dtype), torch.eye(n, dtype=self.dtype)])
        points = points.reshape(n + 1, *[1] * len(self.batch_shape), n)
        grads = torch.cat(self.gradients(points[..., :k], points[..., k:]), -1)
        bias = grads[0]
        weight = (grads[1:] - bias).movedim(0, -1)        # [..., output, input]
        return weight, bias

    def hessian(self, mu, phi):
        """∂²E/∂μ̃² [..., order + 1, order + 1] by autograd, for any batch of (μ̃, φ̃) at once: each
        batch element's E depends on its own μ̃ only, so differentiating the summed gradient gives the
        per-element Hessians (order + 2 backward passes in all)."""
        with torch.enable_grad():
            m = mu.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(m, phi).sum(), m, create_graph=True)
            rows = [torch.autograd.grad(grad[..., k].sum(), m, retain_graph=True, allow_unused=True)[0]
                    for k in range(self.order + 1)]
        rows = [torch.zeros_like(mu) if r is None else r for r in rows]
        return torch.stack(rows, -2).detach()

    def free_energy(self, mu, phi):
        """F = E(μ̃, φ̃) − ½ ln det(2π ζ*), ζ* = [∂²E/∂μ̃²]⁻¹ (MATH.md §4), for a batch [...] of states.

        E is MATH.md's (no 2π constants); add (n_sensory + order)/2 · ln 2π for the free energy of the
        normalised density, i.e. −ELBO of the Laplace Gaussian (:meth:`laplace`). NaN where the Hessian is
        not positive definite (the Laplace approximation does not exist there).
        """
        k = self.order + 1
        chol, info = torch.linalg.cholesky_ex(self.hessian(mu, phi))
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        logdet = torch.where(info == 0, logdet, torch.full_like(logdet, float("nan")))
        return self.energy(mu, phi) - 0.5 * (k * LOG_2PI - logdet)

    # -- the Pyro model and guide -------------------------------------------------------------------------
    def model(self, phi=None):
        """The G-density p(μ̃, φ̃) as a Pyro model. Sites ``mu_0 .. mu_{order}`` (latent; μ[0] has a flat,
        improper prior) and ``phi_0 .. phi_{n_sensory-1}`` (observed when ``phi`` [..., n_sensory] is
        given). Returns μ̃ [..., order + 1]."""
        shape = self.batch_shape if phi is None else torch.broadcast_shapes(self.batch_shape, phi.shape[:-1])
        mu0 = pyro.sample("mu_0", dist.ImproperUniform(constraints.real, shape, ()))
        f0, df, _ = derivatives(self.f, mu0)
        g0, dg, _ = derivatives(self.g, mu0)
        mus = [mu0]
        for n in range(self.order):
            loc = f0 if n == 0 else df * mus[n]
            mus.append(pyro.sample(f"mu_{n + 1}", dist.Normal(loc, self.sigma_w[..., n].sqrt())))
        for n in range(self.n_sensory):
            loc = g0 if n == 0 else dg * mus[n]
            pyro.sample(f"phi_{n}", dist.Normal(loc, self.sigma_z[..., n].sqrt()),
                        obs=None if phi is None else phi[..., n])
        return torch.stack(torch.broadcast_tensors(*mus), -1)

    def guide(self, phi=None, mu_init=None):
        """The R-density during recognition: a Delta at the beliefs μ̃ (Pyro param ``mu``)."""
        shape = self.batch_shape if phi is None else torch.broadcast_shapes(self.batch_shape, phi.shape[:-1])
        init = torch.zeros(*shape, self.order + 1, dtype=self.dtype) if mu_init is None else mu_init
        mu = pyro.param("mu", init)
        for n in range(self.order + 1):
            pyro.sample(f"mu_{n}", dist.Delta(mu[..., n]))
        return mu

    def sites(self, mu):
        """{site name: value} of the beliefs μ̃ [..., order + 1]."""
        return {f"mu_{n}": mu[..., n] for n in range(self.order + 1)}

    def log_joint(self, mu, phi):
        """log p(μ̃, φ̃) as Pyro computes it: ``poutine.trace`` of the model with the beliefs as the latent
        sites' values, ``log_prob_sum()`` (summed over any batch of agents). Equals
        −E(μ̃, φ̃) − (n_sensory + order)/2 · ln 2π."""
        conditioned = poutine.condition(self.model, data=self.sites(mu))
        return poutine.trace(conditioned).get_trace(phi).log_prob_sum()

    def laplace(self, mu, phi):
        """The Laplace R-density at the beliefs μ̃ [order + 1] for sensations φ̃ [n_sensory] (one agent),
        from the foundation's Laplace code evaluated at μ̃ (no optimisation: perception puts μ̃ where it is).

        Returns a dict: ``zeta`` [order + 1, order + 1] = ζ* = [∂²E/∂μ̃²]⁻¹; ``potential`` = −log p(μ̃, φ̃);
        ``free_energy`` = −log p(μ̃, φ̃) − ½ ln det(2π ζ*), the −ELBO of q = N(μ̃, ζ*) to second order
        (= :meth:`free_energy` + (n_sensory + order)/2 · ln 2π).
        """
        if mu.dim() != 1 or phi.dim() != 1:
            raise InvalidInputError(f"laplace takes one agent: mu [order+1] and phi [n_sensory], got shapes "
                                    f"{tuple(mu.shape)} and {tuple(phi.shape)}")
        hessian, log_det, potential = _laplace_at(self.model, phi, self.sites(mu))
        zeta = torch.linalg.inv(hessian)
        k = self.order + 1
        return {"zeta": zeta, "potential": potential, "hessian": hessian,
                "free_energy": potential - 0.5 * (k * LOG_2PI - log_det)}


def _laplace_at(model, phi, init):
    """(Hessian of −log p at ``init`` with rows in ``init``'s site order, its log-determinant, −log p),
    from ``inference.laplace`` without optimisation."""
    from inference.laplace import laplace

    # max_plate_nesting given: Pyro would otherwise guess it by sampling the model, and μ's flat prior
    # cannot be sampled; check=False: only the curvature at ``init`` is wanted here, not a verdict on a
    # Gaussian approximation at a point that is not the mode
    d = laplace(model, phi, init=init, optimize=False, max_plate_nesting=0, check=False).diagnostics
    order = torch.cat([torch.arange(d["sites"][name].start, d["sites"][name].stop) for name in init])
    h = torch.as_tensor(d["hessian"], dtype=phi.dtype)[order][:, order]
    return h, torch.as_tensor(d["log_det_hessian"], dtype=phi.dtype), torch.as_tensor(d["potential"],
                                                                                      dtype=phi.dtype)


def _prepend(first, rest):
    """cat([first [...], rest [..., n]], -1) with the batch dimensions broadcast."""
    shape = torch.broadcast_shapes(first.shape, rest.shape[:-1])
    return torch.cat([first.expand(shape).unsqueeze(-1), rest.expand(*shape, rest.shape[-1])], -1)


def _col(x):
    """A per-agent derivative [...] as a column [..., 1] against generalized coordinates; numbers as is."""
    return x.unsqueeze(-1) if torch.is_tensor(x) and x.dim() else x


def _is_zero(x):
    return isinstance(x, (int, float)) and x == 0


# ---- the world (generative process) -------------------------------------------------------------------

class ThermostatWorld:
    """The paper's generative process: position x, temperature T(x) = T0 / (x² + 1), velocity x' = a.

    Sensations (noise-free; :func:`integrate` adds sensory noise): φ = T(x), φ' = T_x(x) x' with
    T_x = dT/dx = −2 T0 x / (x² + 1)²; the inverse model is ∂φ̃/∂a = (0, T_x).

    A world is any object with ``n_sensory``, ``batch_shape`` (of its own per-agent settings),
    ``initial_state(n_agents, dtype)``, ``step(state, a, dt)``, ``sense(state)`` (a tensor
    [n_sensory, n_agents]: orders first, agents last, so that each order is a contiguous row),
    ``inverse_model(state, v)`` = Σ_n ∂φ[n]/∂a · v[n] [n_agents] for v [n_sensory, n_agents] (the agent's
    model of how action changes its sensations, applied to ∂E/∂φ̃), and ``observe(state)`` (named tensors
    [n_agents] for the table). ``a`` is a tensor [n_agents].
    """

    n_sensory = 2

    def __init__(self, T0=100.0, x0=2.0):
        self.T0, self.x0 = T0, x0
        self.batch_shape = torch.as_tensor(x0).shape      # x0 may be a tensor over agents

    def _state(self, x, x_dot):
        inv = x.square().add_(1).reciprocal_()             # 1 / (x² + 1); native ops only (fast per step)
        T = inv * self.T0
        return {"x": x, "x_dot": x_dot, "T": T, "T_x": torch.mul(x, inv).mul_(T).mul_(-2)}

    def initial_state(self, n_agents, dtype=torch.float64):
        x = torch.as_tensor(self.x0, dtype=dtype).expand(n_agents).clone()
        return self._state(x, torch.zeros_like(x))

    def step(self, state, a, dt):
        """One Euler step of x' = a (the appendix: x_dot(i) = a(i−1); x(i) = x(i−1) + dt x_dot(i))."""
        return self._state(torch.add(state["x"], a, alpha=dt), a)

    def sense(self, state):
        return torch.stack([state["T"], state["T_x"] * state["x_dot"]])

    def inverse_model(self, state, v):
        """(∂φ/∂a, ∂φ'/∂a) · v = (0, T_x) · v: only φ' = T_x x' = T_x a depends on the action."""
        return state["T_x"] * v[1]

    def observe(self, state):
        return {"position": state["x"], "T": state["T"]}


# ---- the simulation -----------------------------------------------------------------------------------

def integrate(model, world, *, kappa_mu=0.1, kappa_a=0.01, dt=0.005, t_end=100.0, action_onset=25.0,
              noise=0.0, seed=0, mu0=0.0, record_every=1, gradient="closed-form", progress=None,
              check_every=250):
    """Run agents (one per element of the batch) in a world with the Euler scheme of the paper's appendix.

    Step i (t_i = i dt) uses the previous step's beliefs, action and sensations:

        world:       x'_i = a_{i−1};  x_i = x_{i−1} + dt x'_i;  φ̃_i = sense(world_i) + noise z_i
        perception:  μ̃_i = μ̃_{i−1} + dt (Dμ̃_{i−1} − κ_μ ∂E/∂μ̃(μ̃_{i−1}, φ̃_{i−1}))
        action:      a_i = a_{i−1} − dt κ_a (∂φ̃/∂a)(world_i) · ∂E/∂φ̃(μ̃_{i−1}, φ̃_{i−1})   if t_i > action_onset,
                     a_i = 0 otherwise;

    φ̃_0 is noise-free, μ̃_0 = ``mu0``, a_0 = 0. Settings ``kappa_mu``, ``kappa_a``, ``noise`` (sensory noise
    sd) and ``mu0`` ([order + 1]) may be numbers or tensors over agents [n_agents] ([n_agents, order + 1]).
    The whole batch moves in each step's tensor operations; only time is a Python loop. The state is
    checked for NaN/inf every ``check_every`` steps; on a divergence the last stretch is replayed to name
    the first non-finite step.

    Returns a dict of tensors, one row per recorded step (every ``record_every``-th, from step 0):
    ``t`` [R], ``mu`` [R, n_agents, order + 1], ``phi`` [R, n_agents, n_sensory], ``a`` [R, n_agents], the
    world's observables (e.g. ``position``, ``T``) [R, n_agents], and ``F``, the paper's VFE
    (½ Σ ε²/σ at the row's μ̃, φ̃) [R, n_agents].
    """
    for name, value in (("dt", dt), ("t_end", t_end)):
        check_positive(name, value)
    check_positive("action_onset", action_onset, allow_zero=True)
    check_positive("record_every", record_every, integer=True)
    check_positive("check_every", check_every, integer=True)
    if action_onset > t_end:
        raise InvalidInputError(f"action_onset={action_onset} is beyond t_end={t_end}: the agent would never act")
    if gradient not in ("closed-form", "autograd"):
        raise InvalidInputError(f"gradient={gradient!r} is not one of ['autograd', 'closed-form']")
    if world.n_sensory != model.n_sensory:
        raise InvalidInputError(f"the world gives {world.n_sensory} orders of sensations but the model "
                                f"expects {model.n_sensory} (length of sigma_z)")
    dtype = model.dtype
    kappa_mu = _per_agent("kappa_mu", kappa_mu, dtype)
    kappa_a = _per_agent("kappa_a", kappa_a, dtype)
    noise = _per_agent("noise", noise, dtype)
    k = model.order + 1
    mu_start = torch.as_tensor(mu0, dtype=dtype)
    if not torch.isfinite(mu_start).all():
        raise InvalidInputError(f"mu0 must be finite, got {mu_start.tolist()}")
    if mu_start.dim() and mu_start.shape[-1] != k:
        raise InvalidInputError(f"mu0 must be a number or have {k} entries (order + 1) in its last dimension, "
                                f"got shape {tuple(mu_start.shape)}")
    n_steps = int(math.floor(t_end / dt + 1e-9)) + 1
    shapes = {"model variances (sigma_z, sigma_w)": model.batch_shape, "kappa_mu": kappa_mu.shape,
              "kappa_a": kappa_a.shape, "noise": noise.shape, "mu0": mu_start.shape[:-1],
              "the world's settings": getattr(world, "batch_shape", ())}
    try:
        batch = torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        raise InvalidInputError("per-agent settings disagree in the number of agents: " + ", ".join(
            f"{name} {tuple(shape)}" for name, shape in shapes.items() if len(shape))) from None
    if len(batch) > 1:
        raise InvalidInputError(f"per-agent settings must be 1-D over agents, got batch shape {tuple(batch)}")
    n_agents = batch[0] if batch else 1
    noisy = bool((noise > 0).any())
    gen = torch.Generator().manual_seed(int(seed))
    perceive = _perception(model, kappa_mu, dt, gradient, n_agents)
    act = -dt * kappa_a

    # the agents' state, orders first and agents last: s = (μ̃, φ̃) [K + n_sensory, n_agents], a [n_agents]
    state = world.initial_state(n_agents, dtype)
    s = torch.cat([mu_start.expand(n_agents, k).T, world.sense(state)])
    a = torch.zeros(n_agents, dtype=dtype)

    rows = list(range(0, n_steps, record_every))
    rec = {"s": torch.empty(len(rows), k + model.n_sensory, n_agents, dtype=dtype),
           "a": torch.empty(len(rows), n_agents, dtype=dtype)}
    observed = {name: torch.empty(len(rows), n_agents, dtype=dtype) for name in world.observe(state)}

    def record(slot, state, s, a):
        rec["s"][slot], rec["a"][slot] = s, a
        for name, v in world.observe(state).items():
            observed[name][slot] = v

    def step(i, state, s, a, z):
        mu_next, d_phi = perceive(s)
        state = world.step(state, a, dt)
        phi = world.sense(state) if z is None else world.sense(state) + z
        if i * dt > action_onset:     # before onset a stays at its start, 0 (the appendix's a(i) = 0)
            a = torch.addcmul(a, act, world.inverse_model(state, d_phi))
        return state, torch.cat([mu_next, phi]), a

    record(0, state, s, a)
    # no autograd bookkeeping in the time loop (it costs a third of a step); the records are ordinary
    # tensors allocated outside it, written in place
    no_grad = torch.inference_mode(gradient == "closed-form" and model.is_affine)
    bar = tqdm(total=n_steps - 1, disable=None if progress is None else not progress, desc="fep",
               dynamic_ncols=True, leave=False)
    try:
        with no_grad:
            for start in range(1, n_steps, check_every):
                stop = min(start + check_every, n_steps)
                z = torch.randn(stop - start, model.n_sensory, n_agents, generator=gen, dtype=dtype) * noise \
                    if noisy else None
                saved = (state, s, a)
                for i in range(start, stop):
                    state, s, a = step(i, state, s, a, None if z is None else z[i - start])
                    if i % record_every == 0:
                        record(i // record_every, state, s, a)
                if not _finite(state, s, a):
                    state, s, a = saved        # replay the stretch to find the first bad step
                    for i in range(start, stop):
                        state, s, a = step(i, state, s, a, None if z is None else z[i - start])
                        if not _finite(state, s, a):
                            raise NonFiniteError(
                                f"the simulation diverged at step {i} (t = {i * dt:.6g}): beliefs, action or world "
                                f"state became NaN or infinite; lower kappa_mu (now {_show(kappa_mu)}), kappa_a "
                                f"(now {_show(kappa_a)}) or dt (now {dt})")
                bar.update(stop - start)
                bar.set_postfix(F=f"{float(model.energy(s[:k].T, s[k:].T, constants=False).mean()):.4g}")
    finally:
        bar.close()
    out = {"t": torch.tensor(rows, dtype=dtype) * dt,
           "mu": rec["s"][:, :k].transpose(1, 2), "phi": rec["s"][:, k:].transpose(1, 2), "a": rec["a"],
           **observed}
    out["F"] = model.energy(out["mu"], out["phi"], constants=False)
    return out


def _perception(model, kappa_mu, dt, gradient, n_agents):
    """One Euler step of recognition: s = (μ̃, φ̃) [K + n_sensory, B] -> (μ̃ + dt (Dμ̃ − κ_μ ∂E/∂μ̃) [K, B],
    ∂E/∂φ̃ [n_sensory, B]).

    For affine f and g (the thermostat) E is quadratic, so the closed-form gradient is an affine map of
    s; the whole step then is s -> M s + c with M, c read off :meth:`GenerativeModel.gradients` once (one
    matrix product when all agents share M). Otherwise the gradient is evaluated every step. Why: autograd
    through the Pyro trace costs milliseconds per step (20 000 steps per run), autograd on the energy
    alone about 0.3 ms, this map a few tensor operations; the tests check all three give the same run.
    """
    k = model.order + 1
    kappa = kappa_mu.reshape(-1, 1, 1)
    if gradient == "closed-form" and model.is_affine:
        weight, bias = model.gradient_operator()           # [..., K + nz, K + nz], [..., K + nz]
        n = weight.shape[-1]
        weight, bias = weight.reshape(-1, n, n), bias.reshape(-1, n)      # [1 or B, ...]
        shift = torch.diag(torch.ones(k - 1, dtype=model.dtype), 1)      # D: (μ', μ'', ..., 0)
        eye = torch.nn.functional.pad(torch.eye(k, dtype=model.dtype) + dt * shift, (0, n - k))
        step_w = eye - dt * kappa * weight[:, :k]                         # [1 or B, K, K + nz]
        step_b = -dt * kappa[:, 0] * bias[:, :k]
        rows = max(step_w.shape[0], weight.shape[0])
        m = torch.cat([step_w.expand(rows, -1, -1), weight[:, k:].expand(rows, -1, -1)], 1)
        c = torch.cat([step_b.expand(rows, -1), bias[:, k:].expand(rows, -1)], 1).T      # [K + nz, 1 or B]
        if m.shape[0] == 1:                                 # shared by all agents: one matrix product
            m = m[0]
            return lambda s: _split(torch.addmm(c, m, s), k)
        m = m.permute(1, 2, 0).contiguous()                 # [K + nz, K + nz, B]
        return lambda s: _split(torch.add(c, (m * s).sum(1)), k)

    def perceive(s):
        mu, phi = s[:k].T, s[k:].T
        d_mu, d_phi = model.gradients(mu, phi, method=gradient)
        mu_next = mu + dt * (torch.nn.functional.pad(mu[..., 1:], (0, 1)) - kappa_mu.reshape(-1, 1) * d_mu)
        return mu_next.T, d_phi.T
    return perceive


def _split(out, k):
    return out[:k], out[k:]


def _per_agent(name, value, dtype):
    v = torch.as_tensor(value, dtype=dtype)
    if not torch.isfinite(v).all() or (v < 0).any():
        raise InvalidInputError(f"{name} must be finite and >= 0, got {v.tolist()}")
    return v


def _finite(state, s, a):
    return all(bool(torch.isfinite(v).all()) for v in (s, a, *state.values()))


def _show(v):
    return f"{v.item():g}" if v.numel() == 1 else f"{v.min().item():g}..{v.max().item():g}"


def simulate(*, T_desire=4.0, sigma_z=0.1, sigma_w=0.1, kappa_mu=0.1, kappa_a=0.01, dt=0.005, t_end=100.0,
             action_onset=25.0, x0=2.0, T0=100.0, noise=0.0, seed=0, order=2, mu0=0.0, record_every=1,
             laplace=True, gradient="closed-form", world=None, progress=None):
    """The thermostat agent of Buckley et al. 2017 (MATH.md §4.1); the defaults are the paper's constants.

    Args:
        T_desire: desired temperature (the agent's prior f(μ) = −μ + T_desire).
        sigma_z, sigma_w: sensory and dynamics variances (number, per-order sequence, or a tensor
            [n_agents, orders] for a batch of agents; see :func:`sweep` for a precision grid).
        kappa_mu, kappa_a: perception and action rates. dt, t_end: Euler step and duration.
        action_onset: the agent acts only for t > action_onset. x0, T0: world start and T(0).
        noise: sd of the sensory noise on φ and φ' (0: deterministic; the paper's noisy run uses 0.1),
            drawn from ``seed``. order: highest generalized order of the beliefs (the paper: 2).
        T_desire, kappa_mu, kappa_a, x0, noise may also be tensors [n_agents]; all batch shapes broadcast.
        record_every: keep every k-th step in the table. laplace: add the Laplace free energy column.
        gradient: "closed-form" (fast) or "autograd" (through the Pyro model; slow, same numbers).
        world: a generative process other than the thermostat (see :class:`ThermostatWorld`).

    Returns a pandas DataFrame, one row per (recorded step, agent): ``agent``, ``t``, the world's
    observables (``position``, ``T``), sensations ``phi``, ``phi'``, beliefs ``mu``, ``mu'``, ``mu''``
    (more primes for higher orders), action ``a``, ``F`` (the paper's VFE: ½ Σ precision-weighted squared
    errors, E without its constant ln σ terms) and ``F_laplace`` = E − ½ ln det(2π ζ*) (MATH.md §4).
    Raises InvalidInputError on bad settings and NonFiniteError, naming the step, if the run diverges.
    """
    model = GenerativeModel.thermostat(_per_agent_any("T_desire", T_desire), sigma_z=sigma_z,
                                       sigma_w=sigma_w, order=order,
                                       n_sensory=ThermostatWorld.n_sensory if world is None else world.n_sensory)
    if world is None:
        check_positive("T0", T0)
        world = ThermostatWorld(T0=T0, x0=_per_agent_any("x0", x0))
    t0 = time.perf_counter()
    out = integrate(model, world, kappa_mu=kappa_mu, kappa_a=kappa_a, dt=dt, t_end=t_end,
                    action_onset=action_onset, noise=noise, seed=seed, mu0=mu0, record_every=record_every,
                    gradient=gradient, progress=progress)
    table = to_table(out, model if laplace else None)
    table.attrs["seconds"] = time.perf_counter() - t0
    return table


def _per_agent_any(name, value):
    v = torch.as_tensor(value, dtype=torch.float64)
    if not torch.isfinite(v).all():
        raise InvalidInputError(f"{name} must be finite, got {v.tolist()}")
    return v if v.dim() else float(v)


def to_table(out, model=None):
    """The dict from :func:`integrate` as a long DataFrame (one row per recorded step and agent); with a
    ``model``, adds ``F_laplace`` (:meth:`GenerativeModel.free_energy`)."""
    n_rows = out["t"].shape[0]
    per_row = out["a"].reshape(n_rows, -1)
    n_agents = per_row.shape[1]
    cols = {"agent": np.tile(np.arange(n_agents), n_rows),
            "t": np.repeat(out["t"].numpy(), n_agents)}
    skip = {"t", "mu", "phi", "a", "F"}
    for name, v in out.items():
        if name not in skip:
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
    """Simulate one agent per (σ_z, σ_w) pair of the grid, all in one batched run (same variance at every
    order). Returns the table of :func:`simulate` with columns ``sigma_z`` and ``sigma_w`` added."""
    sz, sw = torch.meshgrid(torch.as_tensor(sigma_z, dtype=torch.float64).reshape(-1),
                            torch.as_tensor(sigma_w, dtype=torch.float64).reshape(-1), indexing="ij")
    sz, sw = sz.reshape(-1), sw.reshape(-1)
    order = settings.get("order", 2)
    table = simulate(sigma_z=sz.unsqueeze(-1).expand(-1, ThermostatWorld.n_sensory),
                     sigma_w=sw.unsqueeze(-1).expand(-1, order), **settings)
    table.insert(1, "sigma_z", sz.numpy()[table["agent"].to_numpy()])
    table.insert(2, "sigma_w", sw.numpy()[table["agent"].to_numpy()])
    return table


# ---- figures ------------------------------------------------------------------------------------------

def plot_trajectories(table, *, agent=0, action_onset=None):
    """The paper's figure: T and position, beliefs, sensations, action, free energy over time (5 rows)."""
    import matplotlib.pyplot as plt

    d = table[table["agent"] == agent]
    fig, axes = plt.subplots(5, 1, figsize=(7, 10), sharex=True)
    panels = [(["T", "position"], "world"), ([c for c in d.columns if c.startswith("mu")], "beliefs"),
              ([c for c in d.columns if c.startswith("phi")], "sensations"), (["a"], "action"),
              (["F"], "free energy")]
    for ax, (cols, label) in zip(axes, panels):
        for c in cols:
            ax.plot(d["t"], d[c], label=c, lw=1)
        ax.set_ylabel(label)
        ax.legend(loc="upper right", fontsize=8)
        if action_onset is not None:
            ax.axvline(action_onset, color="0.7", ls=":", lw=1)
    axes[-1].set_yscale("log")
    axes[-1].set_xlabel("time")
    fig.suptitle("FEP thermostat agent (Buckley et al. 2017)")
    fig.tight_layout()
    return fig


def plot_sweep(table, *, T_desire=4.0):
    """How precisions change behaviour: temperature and belief μ over time for each (σ_z, σ_w) pair, and
    the belief μ reached just before action as a heat map over the grid."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    agents = table.drop_duplicates("agent")[["agent", "sigma_z", "sigma_w"]]
    cmap = plt.get_cmap("viridis")
    ratios = np.log10(agents["sigma_w"].to_numpy() / agents["sigma_z"].to_numpy())
    span = max(np.ptp(ratios), 1e-12)
    for (_, row), r in zip(agents.iterrows(), ratios):
        d = table[table["agent"] == row["agent"]]
        color = cmap((r - ratios.min()) / span)
        label = f"σz={row['sigma_z']:g}, σw={row['sigma_w']:g}"
        axes[0].plot(d["t"], d["T"], color=color, lw=1, label=label)
        axes[1].plot(d["t"], d["mu"], color=color, lw=1)
    axes[0].axhline(T_desire, color="k", ls=":", lw=1)
    axes[0].set(xlabel="time", ylabel="temperature T", title="world temperature")
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].set(xlabel="time", ylabel="belief μ", title="belief (colour: log10 σw/σz)")
    onset = table.loc[table["a"] != 0, "t"].min()
    before = table[table["t"] < onset] if np.isfinite(onset) else table   # strictly before acting
    settled = before[before["t"] == before["t"].max()].pivot(index="sigma_z", columns="sigma_w", values="mu")
    im = axes[2].imshow(settled.to_numpy(), origin="lower", cmap="magma")
    axes[2].set_xticks(range(settled.shape[1]), [f"{v:g}" for v in settled.columns])
    axes[2].set_yticks(range(settled.shape[0]), [f"{v:g}" for v in settled.index])
    axes[2].set(xlabel="σ_w (model variance)", ylabel="σ_z (sensory variance)", title="μ before action")
    low, high = np.nanmin(settled.to_numpy()), np.nanmax(settled.to_numpy())
    for (i, j), v in np.ndenumerate(settled.to_numpy()):
        light = high > low and (v - low) / (high - low) > 0.6
        axes[2].text(j, i, f"{v:.1f}", ha="center", va="center", color="k" if light else "w", fontsize=8)
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    return fig
