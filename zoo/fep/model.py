"""The agent's generative density (G-density) in generalized coordinates of motion (MATH.md §4).

For beliefs μ̃ [..., order + 1], sensations φ̃ [..., n_sensory] and local linearisations g[n] = g'(μ) μ[n],
f[n] = f'(μ) μ[n] (n ≥ 1), with Normal(mean, variance):

    φ[n]   ~ Normal(g[n], σ_z[n])        n = 0 .. n_sensory - 1     (sensations)
    μ[n+1] ~ Normal(f[n], σ_w[n])        n = 0 .. order - 1         (dynamics: Dμ̃ = f̃ + w̃)
    μ[0]   ~ flat                                                   (the paper puts no prior on μ)

Its negative log joint is the Laplace-encoded energy E(μ̃, φ̃) plus (n_sensory + order)/2 · ln 2π.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints

from inference.errors import InvalidInputError

LOG_2PI = math.log(2 * math.pi)


class Affine:
    """h(μ) = slope · μ + intercept, with its derivatives in closed form (fast in the time loop).

    Args:
        slope: a number or a tensor broadcastable against the agents' batch shape.
        intercept: a number or a tensor broadcastable against the agents' batch shape.
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
    """(fn(x), fn'(x), fn''(x)) for an elementwise function of a tensor.

    Uses ``fn.derivatives`` when the function has one (e.g. :class:`Affine`), else autograd with
    ``create_graph`` so that the results can be differentiated again (gradients, Hessians of E).

    Args:
        fn: an elementwise function of a tensor.
        x: tensor [...].

    Returns:
        (value, first derivative, second derivative), each a tensor [...] (or a number, from ``fn.derivatives``).
    """
    if hasattr(fn, "derivatives"):
        return fn.derivatives(x)
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        value = fn(xg)
        (d1,) = torch.autograd.grad(value.sum(), xg, create_graph=True)
        d2 = None
        if d1.requires_grad:  # d1 is a constant (no graph) when fn is linear
            (d2,) = torch.autograd.grad(d1.sum(), xg, create_graph=True, allow_unused=True)
    d2 = torch.zeros_like(x) if d2 is None else d2
    if not x.requires_grad:
        value, d1, d2 = value.detach(), d1.detach(), d2.detach()
    return value, d1, d2


class GenerativeModel:
    """The G-density of MATH.md §4 in generalized coordinates, as a Pyro model with a Delta guide.

    Beliefs ``mu`` are tensors [..., order + 1] and sensations ``phi`` tensors [..., n_sensory]; the
    batch dimensions [...] are agents (or recorded steps of agents) and broadcast against the settings'.

    Args:
        f: the believed dynamics μ' = f(μ), an elementwise function (default: the thermostat's
            f(μ) = −μ + 4, see :meth:`thermostat`).
        g: the believed sensory mapping φ = g(μ), elementwise (default: the identity).
        sigma_z: sensory variances σ_z[n]: a number (every order), a sequence [n_sensory] or a tensor
            [..., n_sensory] (one row per agent).
        sigma_w: dynamics variances σ_w[n]: a number, a sequence [order] or a tensor [..., order].
        order: the highest generalized order of the beliefs (μ̃ has order + 1 entries), an integer >= 1.
        n_sensory: how many orders of sensations, 1 .. order + 1 (default: sigma_z's length, else order).
        dtype: the floating-point type of the variances and of the tensors the model creates.
    """

    def __init__(self, f=None, g=None, *, sigma_z=0.1, sigma_w=0.1, order=2, n_sensory=None, dtype=torch.float64):
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise InvalidInputError(f"order must be an integer >= 1, got {order!r}")
        if n_sensory is None:
            n_sensory = torch.as_tensor(sigma_z).shape[-1] if torch.as_tensor(sigma_z).dim() else order
        if isinstance(n_sensory, bool) or not isinstance(n_sensory, int) or not 1 <= n_sensory <= order + 1:
            raise InvalidInputError(f"n_sensory must be an integer in 1..order+1 = 1..{order + 1}, got {n_sensory!r}")
        self.order, self.n_sensory, self.dtype = order, n_sensory, dtype
        self.f = f if f is not None else Affine(-1.0, 4.0)
        self.g = g if g is not None else Affine(1.0, 0.0)
        self.sigma_z = _variances("sigma_z", sigma_z, n_sensory, dtype)
        self.sigma_w = _variances("sigma_w", sigma_w, order, dtype)

    @classmethod
    def thermostat(cls, T_desire=4.0, **kwargs):
        """The paper's agent: f(μ) = −μ + T_desire (it believes temperature relaxes to what it desires) and
        g(μ) = μ (it senses the temperature it believes in).

        Args:
            T_desire: the desired temperature, a number or a tensor [n_agents].
            **kwargs: the other arguments of :class:`GenerativeModel` (sigma_z, sigma_w, order, ...).
        """
        return cls(Affine(-1.0, T_desire), Affine(1.0, 0.0), **kwargs)

    @property
    def batch_shape(self):
        """The agents' batch shape of the settings (variances, f's and g's parameters)."""
        return torch.broadcast_shapes(
            self.sigma_z.shape[:-1],
            self.sigma_w.shape[:-1],
            getattr(self.f, "batch_shape", ()),
            getattr(self.g, "batch_shape", ()),
        )

    @property
    def is_affine(self):
        """True when f and g are :class:`Affine`: E is then quadratic in (μ̃, φ̃)."""
        return isinstance(self.f, Affine) and isinstance(self.g, Affine)

    # -- the energy and its derivatives ------------------------------------------------------------------
    def errors(self, mu, phi):
        """The prediction errors ε_z = φ̃ − g̃(μ̃) [..., n_sensory] and ε_w = μ̃[1:] − f̃(μ̃) [..., order].

        Args:
            mu: beliefs μ̃ [..., order + 1].
            phi: sensations φ̃ [..., n_sensory].
        """
        eps_z, eps_w, _ = self._errors_and_slopes(mu, phi)
        return eps_z, eps_w

    def energy(self, mu, phi, *, constants=True):
        """E(μ̃, φ̃) = Σ_n ε_z[n]² / (2σ_z[n]) + ½ ln σ_z[n]  +  Σ_n ε_w[n]² / (2σ_w[n]) + ½ ln σ_w[n] (MATH.md §4).

        Args:
            mu: beliefs μ̃ [..., order + 1].
            phi: sensations φ̃ [..., n_sensory].
            constants: include the ln σ terms; False gives only the precision-weighted squared errors, the
                quantity the paper's appendix plots as its free energy.

        Returns:
            E, tensor [...].
        """
        eps_z, eps_w = self.errors(mu, phi)
        e = 0.5 * ((eps_z**2 / self.sigma_z).sum(-1) + (eps_w**2 / self.sigma_w).sum(-1))
        if constants:
            e = e + 0.5 * (self.sigma_z.log().sum(-1) + self.sigma_w.log().sum(-1))
        return e

    def gradients(self, mu, phi):
        """(∂E/∂μ̃ [..., order + 1], ∂E/∂φ̃ [..., n_sensory]), differentiating the prediction errors by hand.

        With ξ = ε / σ the precision-weighted errors (ξ = ∂E/∂ε): ∂E/∂φ̃ = ξ_z, and ∂E/∂μ[n] collects
        +ξ_w[n−1] (from ε_w[n−1] = μ[n] − f[n−1]), −ξ_w[n] f' and −ξ_z[n] g' (from f[n] = f' μ[n],
        g[n] = g' μ[n]), and on μ[0] also −Σ_{n≥1} (ξ_w[n] f'' + ξ_z[n] g'') μ[n].

        Args:
            mu: beliefs μ̃ [..., order + 1].
            phi: sensations φ̃ [..., n_sensory].
        """
        eps_z, eps_w, (dg, ddg, df, ddf) = self._errors_and_slopes(mu, phi)
        xi_z, xi_w = eps_z / self.sigma_z, eps_w / self.sigma_w
        nz, order = self.n_sensory, self.order
        xi_w_ = torch.nn.functional.pad(xi_w, (1, 1))
        grad = (
            xi_w_[..., :-1]
            - xi_w_[..., 1:] * _column(df)
            - torch.nn.functional.pad(xi_z * _column(dg), (0, order + 1 - nz))
        )
        curvature = 0.0
        if not _is_zero(ddf) and order > 1:
            curvature = curvature + (xi_w[..., 1:] * mu[..., 1:order]).sum(-1) * ddf
        if not _is_zero(ddg) and nz > 1:
            curvature = curvature + (xi_z[..., 1:] * mu[..., 1:nz]).sum(-1) * ddg
        if not _is_zero(curvature):
            grad = grad - torch.nn.functional.pad(curvature.unsqueeze(-1), (0, order))
        return grad, xi_z

    def gradient_operator(self):
        """For affine f and g, E is quadratic and its gradient an affine map: (∂E/∂μ̃, ∂E/∂φ̃) = W (μ̃, φ̃) + b.

        W and b are read off :meth:`gradients` at 0 and at the unit vectors (exact, E being quadratic).

        Returns:
            (W [..., K + n_sensory, K + n_sensory], b [..., K + n_sensory]), K = order + 1.
        """
        if not self.is_affine:
            raise InvalidInputError("gradient_operator needs affine f and g (E quadratic)")
        k, n = self.order + 1, self.order + 1 + self.n_sensory
        points = torch.cat([torch.zeros(1, n, dtype=self.dtype), torch.eye(n, dtype=self.dtype)])
        points = points.reshape(n + 1, *[1] * len(self.batch_shape), n)
        grads = torch.cat(self.gradients(points[..., :k], points[..., k:]), -1)
        bias = grads[0]
        weight = (grads[1:] - bias).movedim(0, -1)  # [..., output, input]
        return weight, bias

    def hessian(self, mu, phi):
        """∂²E/∂μ̃² [..., order + 1, order + 1], by autograd for every batch element at once.

        Each batch element's E depends on its own μ̃ only, so differentiating the batch's summed gradient
        once per order gives every element's Hessian (order + 2 backward passes in all).

        Args:
            mu: beliefs μ̃ [..., order + 1].
            phi: sensations φ̃ [..., n_sensory].
        """
        with torch.enable_grad():
            m = mu.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(m, phi).sum(), m, create_graph=True)
            rows = [
                torch.autograd.grad(grad[..., k].sum(), m, retain_graph=True, allow_unused=True)[0]
                for k in range(self.order + 1)
            ]
        rows = [torch.zeros_like(m) if r is None else r for r in rows]
        return torch.stack(rows, -2).detach()

    # -- the Laplace R-density and the free energy --------------------------------------------------------
    def laplace(self, mu, phi):
        """The Laplace R-density q = N(μ̃, ζ*) at the beliefs, ζ* = [∂²E/∂μ̃²]⁻¹, and its free energy.

        No optimisation: perception puts μ̃ where it is. The free energy of the normalised density is
        −log p(μ̃, φ̃) − ½ ln det(2π ζ*), the −ELBO of q to second order (MATH.md §4); it is
        :meth:`free_energy` + (n_sensory + order)/2 · ln 2π. NaN where the Hessian is not positive definite
        (the Laplace approximation does not exist there).

        Args:
            mu: beliefs μ̃ [..., order + 1].
            phi: sensations φ̃ [..., n_sensory].

        Returns:
            dict: ``hessian`` and ``zeta`` (ζ*) [..., order + 1, order + 1], ``potential`` = −log p(μ̃, φ̃)
            [...] and ``free_energy`` [...].
        """
        hessian = self.hessian(mu, phi)
        chol, info = torch.linalg.cholesky_ex(hessian)
        positive_definite = info == 0
        nan = torch.tensor(float("nan"), dtype=hessian.dtype)
        log_det = torch.where(positive_definite, 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1), nan)
        zeta = torch.where(positive_definite[..., None, None], torch.cholesky_inverse(chol), nan)
        potential = self.energy(mu, phi) + (self.n_sensory + self.order) / 2 * LOG_2PI
        k = self.order + 1
        return {
            "hessian": hessian,
            "zeta": zeta,
            "potential": potential,
            "free_energy": potential - 0.5 * (k * LOG_2PI - log_det),
        }

    def free_energy(self, mu, phi):
        """F = E(μ̃, φ̃) − ½ ln det(2π ζ*), ζ* = [∂²E/∂μ̃²]⁻¹ (MATH.md §4), E without the 2π constants.

        Args:
            mu: beliefs μ̃ [..., order + 1].
            phi: sensations φ̃ [..., n_sensory].

        Returns:
            F, tensor [...]; NaN where the Hessian is not positive definite.
        """
        return self.laplace(mu, phi)["free_energy"] - (self.n_sensory + self.order) / 2 * LOG_2PI

    # -- the Pyro model and guide -------------------------------------------------------------------------
    def model(self, phi=None):
        """The G-density p(μ̃, φ̃) as a Pyro model.

        Sites ``mu_0 .. mu_{order}`` are latent (μ[0] has a flat, improper prior), ``phi_0 ..
        phi_{n_sensory-1}`` observed when ``phi`` is given.

        Args:
            phi: sensations φ̃ [..., n_sensory], or None to sample them.

        Returns:
            μ̃, tensor [..., order + 1].
        """
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
            pyro.sample(
                f"phi_{n}", dist.Normal(loc, self.sigma_z[..., n].sqrt()), obs=None if phi is None else phi[..., n]
            )
        return torch.stack(torch.broadcast_tensors(*mus), -1)

    def guide(self, phi=None, mu_init=None):
        """The R-density while beliefs move: a Delta at the beliefs μ̃ (Pyro param ``mu``).

        Args:
            phi: sensations φ̃ [..., n_sensory] (only their batch shape is used).
            mu_init: the beliefs' start [..., order + 1] (default zeros).
        """
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
        """log p(μ̃, φ̃) as Pyro computes it, = −E(μ̃, φ̃) − (n_sensory + order)/2 · ln 2π.

        ``poutine.trace`` of the model with the beliefs as the latent sites' values, ``log_prob_sum()``.

        Args:
            mu: beliefs μ̃ [..., order + 1].
            phi: sensations φ̃ [..., n_sensory].

        Returns:
            a scalar tensor, summed over any batch of agents.
        """
        conditioned = poutine.condition(self.model, data=self.sites(mu))
        return poutine.trace(conditioned).get_trace(phi).log_prob_sum()

    def _errors_and_slopes(self, mu, phi):
        """(ε_z, ε_w, (g', g'', f', f'') at μ[0]): the errors and the slopes that :meth:`gradients` needs."""
        mu0 = mu[..., 0]
        g0, dg, ddg = derivatives(self.g, mu0)
        f0, df, ddf = derivatives(self.f, mu0)
        g0, f0 = torch.as_tensor(g0, dtype=mu.dtype), torch.as_tensor(f0, dtype=mu.dtype)
        g_tilde = _prepend(g0, _column(dg) * mu[..., 1 : self.n_sensory])
        f_tilde = _prepend(f0, _column(df) * mu[..., 1 : self.order])
        return phi - g_tilde, mu[..., 1:] - f_tilde, (dg, ddg, df, ddf)


def _variances(name, value, size, dtype):
    """A tensor [..., size] of positive variances from a number, a sequence [size] or a tensor [..., size]."""
    v = torch.as_tensor(value, dtype=dtype)
    if v.dim() == 0:
        v = v.expand(size)
    if v.shape[-1] != size:
        raise InvalidInputError(
            f"{name} must have {size} entries in its last dimension (one per order), got shape {tuple(v.shape)}"
        )
    if not torch.isfinite(v).all() or (v <= 0).any():
        raise InvalidInputError(f"{name} must hold finite variances > 0, got {v.tolist()}")
    return v


def _prepend(first, rest):
    """cat([first [...], rest [..., n]], -1) with the batch dimensions broadcast."""
    shape = torch.broadcast_shapes(first.shape, rest.shape[:-1])
    return torch.cat([first.expand(shape).unsqueeze(-1), rest.expand(*shape, rest.shape[-1])], -1)


def _column(x):
    """A per-agent derivative [...] as a column [..., 1] against generalized coordinates; numbers as they are."""
    return x.unsqueeze(-1) if torch.is_tensor(x) and x.dim() else x


def _is_zero(x):
    return isinstance(x, (int, float)) and x == 0
