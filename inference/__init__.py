"""Inference for any Pyro model: SVI, variational EM, Laplace, NUTS; one `Fit` result for all.

This package knows nothing of the models in ``zoo``: every function takes plain Pyro callables.
"""
from .em import variational_em
from .errors import CheckpointError, InvalidInputError, NonFiniteError, ZooError
from .result import Fit, point_mass_draw
from .svi import svi

__all__ = ["svi", "variational_em", "Fit", "point_mass_draw",
           "ZooError", "InvalidInputError", "NonFiniteError", "CheckpointError"]
