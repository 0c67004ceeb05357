"""VAE and beta-VAE as a Pyro model/guide pair, with their evaluation (MATH.md §3).

Model p_θ(x, z) = N(z; 0, I) p_θ(x | z), a decoder network giving the likelihood's parameters; guide
q_φ(z | x) = N(μ_φ(x), diag σ_φ(x)²), an encoder network. Training maximises, per data point,

    L_β(x) = E_q[ log p_θ(x | z) ] − β KL( q_φ(z | x) ‖ p(z) )

β multiplies the z site's log-densities in the model *and* the guide (``poutine.scale``), so β = 1 is
exactly the VAE's ELBO and β > 1 the beta-VAE (Higgins et al. 2017). ``BetaVAE`` is ``VAE`` with β = 4.

Evaluation (β = 1 throughout, nats per data point): the ELBO with its reconstruction and KL parts, the
importance-weighted bound (IWAE, Burda et al. 2016), and the split of the average KL (Hoffman & Johnson
2016; Chen et al. 2018)

    E_pdata KL(q(z|x) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z))
                              = I_q(x; z) + TC(z) + Σ_j KL(q(z_j) ‖ p(z_j)),

estimated exactly over a data set: the aggregate posterior q(z) = (1/N) Σ_m q(z | x_m) is a log-mean-exp
over the data.

    vae = zoo.VAE(latent_dim=10).fit(x_train, x_val=x_test, epochs=50)
    vae.elbo(x_test), vae.iwae(x_test, k=100), vae.kl_split(x_test)

The package, read in this order: ``networks`` (encoders and decoders), ``model`` (the :class:`VAE`: the
Pyro pair, ``fit``, encoding, sampling, files), ``evaluation`` (ELBO parts, IWAE, the KL split),
``plots`` (figures). The command ``zoo fit vae`` is the job :mod:`zoo.jobs.fit_vae`.
"""

from .evaluation import format_kl_split, iwae_bound, kl_decomposition
from .model import VAE, BetaVAE
from .plots import plot_kl_per_dim, plot_losses, plot_reconstructions, plot_samples, plot_traversals

__all__ = [
    "VAE",
    "BetaVAE",
    "format_kl_split",
    "iwae_bound",
    "kl_decomposition",
    "plot_kl_per_dim",
    "plot_losses",
    "plot_reconstructions",
    "plot_samples",
    "plot_traversals",
]
