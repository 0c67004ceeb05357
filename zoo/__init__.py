"""pyro-zoo's models: each a Pyro model/guide pair plus the helpers a user needs around it."""

from . import data, fep
from .gmm import BayesianGaussianMixture, GaussianMixture
from .vae import VAE, BetaVAE

__all__ = ["GaussianMixture", "BayesianGaussianMixture", "VAE", "BetaVAE", "fep", "data"]
