"""Small helpers every module shares, each written once: the ArviZ import, seeded generators, the rule for
progress bars, drawing from pooled MCMC chains, tensors to numpy, and the usable CPU cores.
"""

import os
import warnings

import numpy as np
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor on import
    import arviz as az  # noqa: F401  (re-exported: ``from inference.common import az``)


def generator(seed, device=None):
    """A torch.Generator seeded with ``seed`` (an int), or from fresh entropy when ``seed`` is None.

    Args:
        seed: int or None.
        device: where the generator draws (None: CPU).
    """
    gen = torch.Generator(device=device or "cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def hide_progress(progress):
    """The one rule for progress bars, as tqdm's ``disable=`` argument for a ``progress`` setting: True shows
    the bar, False hides it, None leaves it to tqdm (shown on a terminal, hidden when the output is not one)."""
    return None if progress is None else not progress


def resample(pooled, num_samples, seed=0):
    """``num_samples`` rows of pooled draws: without replacement when there are enough, else with.

    Args:
        pooled: {site: tensor [total, *site_shape]}, every site with the same number of rows.
        num_samples: rows to return.
        seed: seeds the choice of rows.

    Returns:
        {site: tensor [num_samples, *site_shape]}, the same rows for every site.
    """
    total = next(iter(pooled.values())).shape[0]
    gen = generator(seed)
    if num_samples <= total:
        idx = torch.randperm(total, generator=gen)[:num_samples]
    else:
        idx = torch.randint(total, (num_samples,), generator=gen)
    return {k: v[idx] for k, v in pooled.items()}


def to_numpy(x):
    """A tensor (detached, on the CPU) or array-like as a numpy array."""
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def cpu_count():
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
