"""Guide families by name: ``inference.guide(model, "fullrank")``, so one comparison can show how the
family changes the answer.

    meanfield   AutoNormal                       q(u) = Π_i N(u_i; m_i, s_i²): no correlations
    lowrank     AutoLowRankMultivariateNormal    N(m, W Wᵀ + diag(s²)): correlations of rank ``rank``
    fullrank    AutoMultivariateNormal           N(m, L Lᵀ): every correlation
    flow        AutoIAFNormal                    a standard normal pushed through inverse-autoregressive
                                                 flows: skew and curved dependence
    map         AutoDelta                        a point (MAP), no density

All live on the unconstrained space of the model's latent sites (``biject_to`` of each support).
"""

from pyro.infer.autoguide import (
    AutoDelta,
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from .errors import check_choice

GUIDES = {
    "meanfield": AutoNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "fullrank": AutoMultivariateNormal,
    "flow": AutoIAFNormal,
    "map": AutoDelta,
}


def guide(model, name, **kwargs):
    """A Pyro autoguide of the family ``name`` (one of ``GUIDES``) for ``model``.

    Args:
        model: the Pyro model.
        name: "meanfield", "lowrank", "fullrank", "flow" or "map".
        **kwargs: passed to the autoguide (``rank`` for lowrank, ``hidden_dim``/``num_transforms`` for
            flow, ``init_loc_fn``, ``init_scale``).
    """
    check_choice("guide", name, GUIDES)
    return GUIDES[name](model, **kwargs)
