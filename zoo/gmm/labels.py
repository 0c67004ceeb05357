"""Label switching: a mixture's likelihood is the same under any permutation of its components, so fits
(and MCMC chains) may number the same components differently. These helpers relabel them to match a
reference by the Hungarian algorithm on the distances between means."""

import dataclasses

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from inference.common import resample
from inference.errors import InvalidInputError

from .models import COMPONENT_SITES


def match_components(means, reference):
    """The permutation ``perm`` [K] with ``means[perm]`` closest to ``reference`` (both [K, D]), minimising
    the summed squared distances between matched means."""
    a, b = (np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, dtype=float) for v in (reference, means))
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidInputError(f"means {b.shape} and reference {a.shape} must both be [K, D]")
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return linear_sum_assignment(cost)[1]


def permute_components(sites, perm, axis=1):
    """``sites`` with ``perm`` applied along the component axis of the component-indexed sites.

    Args:
        sites: {site: tensor}; sites not in ``COMPONENT_SITES`` are returned unchanged.
        perm: [K] permutation.
        axis: the component axis (1 for draws [S, K, ...], 2 for chains [C, S, K, ...]).
    """
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    return {k: (v.index_select(axis, perm.to(v.device)) if k in COMPONENT_SITES else v) for k, v in sites.items()}


def align_fit(fit, reference, num_samples=200):
    """A copy of ``fit`` whose components are relabelled to match ``reference`` means [K, D].

    MCMC chains are matched one by one (each chain may have settled in a different labelling).
    """
    if fit.chains is None:
        perm = match_components(fit.samples(num_samples)["means"].mean(0), reference)
        return dataclasses.replace(fit, draw=lambda n, seed: permute_components(fit.draw(n, seed), perm))
    perms = [match_components(means.mean(0), reference) for means in fit.chains["means"]]
    chains = {
        k: torch.stack([permute_components({k: v[c]}, p, axis=1)[k] for c, p in enumerate(perms)])
        for k, v in fit.chains.items()
    }
    pooled = {k: v.reshape(-1, *v.shape[2:]) for k, v in chains.items()}
    return dataclasses.replace(fit, chains=chains, draw=lambda n, seed: resample(pooled, n, seed))
