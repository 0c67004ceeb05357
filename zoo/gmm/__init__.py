"""Gaussian mixtures: closed-form EM and the Pyro models every other inference method runs on.

    covariance.py   the three covariance structures, one class each, dispatched from one table
    em.py           EM on sufficient statistics: features, E-step, M-step, k-means++ seeding
    mixture.py      GaussianMixture, the scikit-learn-style estimator fitted by EM
    models.py       PyroMixture: the classic and Bayesian Pyro models and their guides
    labels.py       undoing label switching between fits
    variational.py  BayesianGaussianMixture: variational Bayes (CAVI) as scikit-learn's, its formulas in cavi.py
    conjugate.py    the same Bayesian model in Pyro (Normal-Wishart by Bartlett's decomposition), q as a Fit

The comparison of every method on one data set (`zoo compare gmm`) is the job ``zoo.jobs.compare_gmm``.
"""

from .conjugate import ConjugateMixture
from .covariance import COVARIANCES
from .em import cholesky, e_step, features, m_step, natural_parameters, sufficient_statistics
from .labels import align_fit, match_components, permute_components
from .mixture import INITS, DegenerateComponentWarning, GaussianMixture
from .models import COMPONENT_SITES, PyroMixture, component_sites, log_predictive
from .variational import BayesianGaussianMixture

COVARIANCE_TYPES = tuple(COVARIANCES)

__all__ = [
    "GaussianMixture",
    "BayesianGaussianMixture",
    "PyroMixture",
    "ConjugateMixture",
    "DegenerateComponentWarning",
    "COVARIANCE_TYPES",
    "INITS",
    "COMPONENT_SITES",
    "features",
    "natural_parameters",
    "e_step",
    "sufficient_statistics",
    "m_step",
    "cholesky",
    "match_components",
    "permute_components",
    "align_fit",
    "component_sites",
    "log_predictive",
]
