"""pyro-zoo's models: each a Pyro model/guide pair plus the helpers a user needs around it."""
from . import data
from .gmm import GaussianMixture
from .vae import VAE, BetaVAE
from . import fep

__all__ = ["GaussianMixture", "VAE", "BetaVAE", "fep", "data"]
