"""A suite of posteriors with trusted references, to check and benchmark inference on.

    from zoo import posteriordb
    posteriordb.names()                       # every posterior's name
    p = posteriordb.load("garch-garch11")
    fit = inference.nuts(p.model, *p.data, **p.nuts)
    p.reference                               # {"mu": (mean, sd), "alpha0": ..., ...}

Two kinds:

- nine posteriors of posteriordb (github.com/stan-dev/posteriordb, commit 28f8d3d; BSD-3, see
  ``data/LICENCE.md``), named as there ("earnings-earn_height"), transcribed from Stan to Pyro in
  :mod:`.models`; their reference is the mean and sd of posteriordb's 10,000 Stan draws (10 chains,
  checked for convergence), condensed into ``data/reference.json`` by
  ``benchmarks/make_posteriordb_reference.py``; ``exact`` is False, and ``reference_ess`` holds the
  reference's bulk ESS (its Monte Carlo error is sd / sqrt(ESS), about 0.01 sd);
- conjugate posteriors ("conjugate-normal-mean", ...) in :mod:`.conjugate`, whose means and sds are
  closed forms: ``exact`` is True, ``reference_ess`` infinite.

Reference labels are ArviZ-style and 0-based on the model's latent sample sites ("beta[0]", "sigma"),
as ``inference.diagnostics.flat_elements`` names them; Stan's ``beta[1]`` is ``beta[0]`` here.
"""

import functools
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from inference.errors import InvalidInputError

from . import conjugate, models

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Posterior:
    """One posterior of the suite.

    Attributes:
        name: its name in :func:`names`.
        model: a plain Pyro model, called as ``model(*data)``.
        data: the model's positional arguments (tensors, float64 where floats).
        reference: element label -> (mean, sd) of the posterior, labels on the latent sample sites.
        exact: True for closed-form references, False for Stan's reference draws.
        description: one line.
        nuts: extra keyword arguments for ``inference.nuts`` on this posterior (e.g. a higher
            ``target_accept_prob`` where Stan's reference needed one).
        cheap: True where NUTS with 500 warmup steps and 1000 draws took under about 20 s on one
            core of the development machine (for picking test cases).
        reference_ess: element label -> the reference's bulk ESS (inf for exact references).
    """

    name: str
    model: Callable
    data: tuple
    reference: dict
    exact: bool
    description: str
    nuts: dict = field(default_factory=dict)
    cheap: bool = False
    reference_ess: dict = field(default_factory=dict)


# ---- data: posteriordb's data block -> the model's arguments (Stan's transformed data included) --------
def _float(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _earn_height_data(d):
    return _float(d["earn"]), _float(d["height"])


def _logearn_interaction_z_data(d):
    height, male = np.asarray(d["height"], dtype=np.float64), np.asarray(d["male"], dtype=np.float64)
    z_height = (height - height.mean()) / height.std(ddof=1)  # Stan's sd() divides by N - 1
    return _float(np.log(d["earn"])), _float(z_height), _float(male), _float(z_height * male)


def _nes_data(d):
    age = np.asarray(d["age_discrete"])
    return (
        _float(d["partyid7"]),
        _float(d["real_ideo"]),
        _float(d["race_adj"]),
        _float(age == 2),
        _float(age == 3),
        _float(age == 4),
        _float(d["educ1"]),
        _float(d["gender"]),
        _float(d["income"]),
    )


def _kilpisjarvi_data(d):
    return tuple(_float(d[k]) for k in ("x", "y", "pmualpha", "psalpha", "pmubeta", "psbeta"))


def _diamonds_data(d):
    X = np.asarray(d["X"], dtype=np.float64)[:, 1:]  # drop the intercept column
    return _float(d["Y"]), _float(X - X.mean(axis=0))


def _garch_data(d):
    return _float(d["y"]), _float(d["sigma1"])


def _arma_data(d):
    return (_float(d["y"]),)


def _gp_pois_regr_data(d):
    return _float(d["x"]), _float(d["k"])


def _hmm_data(d):
    if d["K"] != 2:
        raise InvalidInputError(f"hmm_example's Stan code fixes K = 2 states, the data have K = {d['K']}")
    return (_float(d["y"]),)


@dataclass(frozen=True)
class _Entry:
    model: Callable
    data_name: str
    make_data: Callable
    description: str
    nuts: dict
    cheap: bool


# NUTS settings: a dense mass matrix where the posterior is a narrow correlated ridge (uncentred
# predictors), which a diagonal one turns into trees of maximal depth at every draw; a higher target
# acceptance for the GP, where Stan's reference run needed adapt_delta 0.99.
_POSTERIORDB = {
    "earnings-earn_height": _Entry(
        models.earn_height,
        "earnings",
        _earn_height_data,
        "ARM: earnings on height, flat priors (3 dims, scales 1e2-1e4, intercept-slope correlation -1)",
        {"dense_mass": True},
        False,
    ),
    "earnings-logearn_interaction_z": _Entry(
        models.logearn_interaction_z,
        "earnings",
        _logearn_interaction_z_data,
        "ARM: log earnings on standardised height, sex and interaction, flat priors (5 dims)",
        {},
        False,
    ),
    "kilpisjarvi_mod-kilpisjarvi": _Entry(
        models.kilpisjarvi,
        "kilpisjarvi_mod",
        _kilpisjarvi_data,
        "temperature on uncentred year: intercept and slope correlate at ~-1 (3 dims)",
        {"dense_mass": True},
        False,
    ),
    "nes2000-nes": _Entry(
        models.nes, "nes2000", _nes_data, "ARM: party identification on 8 predictors, flat priors (10 dims)", {}, False
    ),
    "diamonds-diamonds": _Entry(
        models.diamonds,
        "diamonds",
        _diamonds_data,
        "diamond prices on 24 correlated predictors, brms priors: badly conditioned (26 dims)",
        {"dense_mass": True},
        False,
    ),
    "garch-garch11": _Entry(
        models.garch11,
        "garch",
        _garch_data,
        "GARCH(1,1) volatility, flat priors, beta1 < 1 - alpha1 through beta1_raw (4 dims)",
        {},
        False,
    ),
    "gp_pois_regr-gp_pois_regr": _Entry(
        models.gp_pois_regr,
        "gp_pois_regr",
        _gp_pois_regr_data,
        "Poisson regression on a non-centred squared-exponential GP, 11 points (13 dims)",
        {"target_accept_prob": 0.95},
        False,
    ),
    "arma-arma11": _Entry(
        models.arma11, "arma", _arma_data, "ARMA(1,1) time series, weakly informative priors (4 dims)", {}, True
    ),
    "hmm_example-hmm_example": _Entry(
        models.hmm_example,
        "hmm_example",
        _hmm_data,
        "two-state Gaussian HMM, states summed out by the forward algorithm, ordered means (6 dims)",
        {},
        False,
    ),
}


@functools.lru_cache(maxsize=None)
def _read_json_zip(data_name):
    """posteriordb's data set ``data_name``: the JSON object inside ``data/<data_name>.json.zip``."""
    with zipfile.ZipFile(DATA_DIR / f"{data_name}.json.zip") as z:
        return json.loads(z.read(f"{data_name}.json"))


@functools.lru_cache(maxsize=None)
def _read_reference():
    path = DATA_DIR / "reference.json"
    if not path.exists():
        raise InvalidInputError(f"{path} is missing: run benchmarks/make_posteriordb_reference.py")
    return json.loads(path.read_text())


def names():
    """Every posterior's name: posteriordb's, then the conjugate ones."""
    return list(_POSTERIORDB) + list(conjugate.CONJUGATES)


def load(name):
    """The posterior ``name`` (one of :func:`names`), with fresh data tensors.

    Raises:
        InvalidInputError: ``name`` is not one of :func:`names`.
    """
    if not isinstance(name, str) or name not in names():
        raise InvalidInputError(f"unknown posterior {name!r}; valid names: {', '.join(names())}")
    if name in conjugate.CONJUGATES:
        c = conjugate.CONJUGATES[name]()
        return Posterior(
            name=name,
            model=c.model,
            data=c.data,
            reference=dict(c.reference),
            exact=True,
            description=c.description,
            nuts={},
            cheap=name in conjugate.CHEAP,
            reference_ess={label: math.inf for label in c.reference},
        )
    entry = _POSTERIORDB[name]
    elements = _read_reference()["posteriors"][name]["elements"]
    return Posterior(
        name=name,
        model=entry.model,
        data=entry.make_data(_read_json_zip(entry.data_name)),
        reference={label: (e["mean"], e["sd"]) for label, e in elements.items()},
        exact=False,
        description=entry.description,
        nuts=dict(entry.nuts),
        cheap=entry.cheap,
        reference_ess={label: e["ess_bulk"] for label, e in elements.items()},
    )


__all__ = ["Posterior", "names", "load"]
