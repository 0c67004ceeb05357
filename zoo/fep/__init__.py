"""The free-energy principle as Pyro inference: perception and action (Buckley et al. 2017; MATH.md §4).

An agent senses φ̃ = (φ, φ', ...) caused by a world it cannot see. Its generative density (G-density) in
generalized coordinates of motion is a Pyro model (:class:`GenerativeModel`) whose negative log joint is the
Laplace-encoded energy

    E(μ̃, φ̃) = Σ_n ε_z[n]² / (2σ_z[n]) + ½ ln σ_z[n]  +  Σ_n ε_w[n]² / (2σ_w[n]) + ½ ln σ_w[n],
    ε_z[n] = φ[n] − g[n],   ε_w[n] = μ[n+1] − f[n],

up to the normalising constants (n_sensory + order)/2 · ln 2π that Pyro's Normal log-densities carry and
MATH.md's E leaves out. The recognition density (R-density) is a Delta at the beliefs μ̃ while they move, and
the Laplace Gaussian N(μ̃, ζ*) with ζ* = [∂²E/∂μ̃²]⁻¹ when the free energy F = E − ½ ln det(2π ζ*) is scored.

Perception: dμ̃/dt = Dμ̃ − κ_μ ∂E/∂μ̃. Action: da/dt = −κ_a (∂φ̃/∂a) · ∂E/∂φ̃, where ∂φ̃/∂a is the agent's
inverse model of the world. :func:`simulate` runs the paper's thermostat agent (constants: MATH.md §4.1),
many agents at once along a batch dimension, with the appendix's Euler scheme.

    >>> table = simulate(progress=False)                      # the paper's run, no sensory noise
    >>> table[table.t <= 25]["mu"].iloc[-1]                   # ≈ 12: halfway between 20 sensed and 4 desired

The package: ``model`` (the G-density, its energy, gradient, Hessian and Laplace free energy), ``world``
(the generative process the agent senses and acts on), ``simulation`` (the Euler scheme over time and the
tables) and ``plots`` (the figures). Everything public is importable from ``zoo.fep`` itself.
"""

from .model import Affine, GenerativeModel, derivatives
from .plots import plot_sweep, plot_trajectories
from .simulation import integrate, simulate, sweep, to_table
from .world import ThermostatWorld

__all__ = [
    "Affine",
    "GenerativeModel",
    "ThermostatWorld",
    "derivatives",
    "integrate",
    "plot_sweep",
    "plot_trajectories",
    "simulate",
    "sweep",
    "to_table",
]
