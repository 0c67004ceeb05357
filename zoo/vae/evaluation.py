"""Evaluating a fitted VAE (β = 1 throughout, nats per data point): the ELBO and its parts, the
importance-weighted bound, the split of the average KL, and the codes the disentanglement metrics score.

The functions that take a ``vae`` are also its methods (``vae.elbo(x)`` is ``elbo(vae, x)``); the others
work on tensors: :func:`iwae_bound` on log weights, :func:`kl_decomposition` on the encoder's outputs.
"""

import math

import pyro.distributions as dist
import torch
from torch.distributions import Normal, kl_divergence

from inference.common import generator
from inference.errors import InvalidInputError, check_positive


def kl_std_normal(loc, scale):
    """KL(N(loc, scale²) ‖ N(0, 1)) = ½ (loc² + scale² − 1) − log scale, elementwise (closed form).

    Args:
        loc: means, any shape.
        scale: sds, the same shape.

    Returns:
        tensor of that shape (nats).
    """
    return kl_divergence(Normal(loc, scale, validate_args=False), Normal(0.0, 1.0, validate_args=False))


def log_likelihood(vae, x, z):
    """log p(x | z) of each data point under each code.

    Args:
        vae: a VAE with networks.
        x: data [b, *item].
        z: codes [s, b, latent_dim], s draws per data point.

    Returns:
        tensor [s, b].
    """
    s, b = z.shape[:2]
    params = vae.decoder_(z.reshape(s * b, -1))
    return vae.observation(params).log_prob(x.repeat(s, *[1] * (x.dim() - 1))).reshape(s, b)


@torch.no_grad()
def elbo_parts(vae, x, num_samples=1, seed=0, batch_size=1024):
    """The two parts of the ELBO of each data point, ELBO = reconstruction − KL:

        reconstruction = E_q log p(x | z)      (Monte Carlo, ``num_samples`` draws z ~ q(z | x))
        KL             = KL(q(z | x) ‖ p(z))   (closed form)

    Args:
        vae: a VAE with networks.
        x: data [n, *item].
        num_samples: draws of z per data point.
        seed: seeds the draws.
        batch_size: data points per forward pass.

    Returns:
        (reconstruction, kl), two tensors [n].
    """
    x = vae.check_data(x)
    check_positive("num_samples", num_samples, integer=True)
    gen = generator(seed, x.device)
    recs, kls = [], []
    for xb in x.split(batch_size):
        loc, scale = vae.encode(xb)
        kls.append(kl_std_normal(loc, scale).sum(-1))
        z = loc + scale * torch.randn((num_samples, *loc.shape), generator=gen, device=x.device)
        recs.append(log_likelihood(vae, xb, z).mean(0))
    return torch.cat(recs), torch.cat(kls)


def elbo(vae, x, num_samples=1, seed=0):
    """Mean ELBO per data point, E_q[log p(x | z)] − KL(q(z | x) ‖ p(z)), a lower bound on log p(x).

    Args:
        vae: a VAE with networks.
        x: data [n, *item].
        num_samples: draws of z per data point for the reconstruction term.
        seed: seeds the draws.

    Returns:
        float (nats per data point).
    """
    rec, kl = elbo_parts(vae, x, num_samples, seed)
    return (rec - kl).mean().item()


@torch.no_grad()
def log_weights(vae, x, k=100, seed=0, max_items=4096):
    """Importance log weights log w = log p(x, z_k) − log q(z_k | x) at k draws z_k ~ q(z | x) per data point.

    Args:
        vae: a VAE with networks.
        x: data [n, *item].
        k: draws per data point.
        seed: seeds the draws.
        max_items: at most this many (draw, data point) pairs per forward pass.

    Returns:
        tensor [k, n].
    """
    x = vae.check_data(x)
    check_positive("k", k, integer=True)
    gen = generator(seed, x.device)
    out = []
    for xb in x.split(max(1, max_items // k)):
        loc, scale = vae.encode(xb)
        z = loc + scale * torch.randn((k, *loc.shape), generator=gen, device=x.device)
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
        log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        out.append(log_likelihood(vae, xb, z) + log_p - log_q)
    return torch.cat(out, dim=1)


def iwae_bound(log_weights):
    """The importance-weighted bound of each data point, log (1/K) Σ_k w_k (a log-mean-exp over the draws).

    Args:
        log_weights: tensor [K, n].

    Returns:
        tensor [n].
    """
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def iwae(vae, x, k=100, seed=0):
    """Mean importance-weighted bound per data point (Burda et al. 2016),

        log p(x) ≥ E[ log (1/K) Σ_k p(x, z_k) / q(z_k | x) ],

    equal to the ELBO at K = 1 and non-decreasing in K, tending to log p(x).

    Args:
        vae: a VAE with networks.
        x: data [n, *item].
        k: draws per data point (K).
        seed: seeds the draws.

    Returns:
        float (nats per data point).
    """
    return iwae_bound(log_weights(vae, x, k, seed)).mean().item()


def codes(vae, x, batch_size=2048):
    """Posterior means μ(x), the representation the disentanglement metrics (:mod:`zoo.metrics`) score.

    Args:
        vae: a VAE with networks.
        x: data [n, *item].
        batch_size: data points per forward pass.

    Returns:
        tensor [n, latent_dim].
    """
    return torch.cat([vae.encode(xb)[0] for xb in vae.check_data(x, values=False).split(batch_size)])


def kl_split(vae, x, seed=0):
    """The average KL over the data set x and its parts, :func:`kl_decomposition` of the encoder's outputs.

    Args:
        vae: a VAE with networks.
        x: data [n, *item].
        seed: seeds the one draw z ~ q(z | x) per data point.

    Returns:
        dict, see :func:`kl_decomposition`.
    """
    loc, scale = vae.encode(vae.check_data(x))
    return kl_decomposition(loc, scale, seed=seed)


@torch.no_grad()
def kl_decomposition(loc, scale, seed=0, chunk=256):
    """Split the average KL of N Gaussian posteriors q(z | x_n) = N(loc_n, diag scale_n²) from N(0, I).

    With one draw z_n ~ q(z | x_n) per data point and the aggregate posterior of the data set,
    q(z) = (1/N) Σ_m q(z | x_m) (exact for the empirical data distribution; Chen et al. 2018), each
    expectation is a mean over n of

        kl                 log q(z_n | x_n) − log p(z_n)                    E_pdata KL(q(z|x) ‖ p(z))
        mutual_info        log q(z_n | x_n) − log q(z_n)                    I_q(x; z), in [0, log N]
        marginal_kl        log q(z_n) − log p(z_n)                          KL(q(z) ‖ p(z))
        total_correlation  log q(z_n) − Σ_j log q(z_nj)                     KL(q(z) ‖ Π_j q(z_j))
        dimwise_kl         Σ_j [log q(z_nj) − log p(z_nj)]                  Σ_j KL(q(z_j) ‖ p(z_j))

    so kl = mutual_info + marginal_kl and marginal_kl = total_correlation + dimwise_kl, term by term.
    ``kl_exact`` is the closed-form average KL (what ``kl`` estimates) and ``kl_per_dim`` its split over
    dimensions. Cost O(N² D), in chunks of ``chunk`` rows.

    Args:
        loc: posterior means [N, D].
        scale: posterior sds [N, D].
        seed: seeds the draws z_n.
        chunk: rows of z per pass over the N posteriors.

    Returns:
        dict of floats (nats) plus ``kl_per_dim`` (list of D floats) and ``n`` (N).
    """
    if loc.dim() != 2 or loc.shape != scale.shape:
        raise InvalidInputError(f"loc and scale must both be [N, D]; got {tuple(loc.shape)} and {tuple(scale.shape)}")
    n = loc.shape[0]
    z = loc + scale * torch.randn(loc.shape, generator=generator(seed, loc.device), device=loc.device)
    log_n = math.log(n)
    log_q_cond = dist.Normal(loc, scale).log_prob(z).sum(-1)  # log q(z_n | x_n)
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)  # log p(z_n)
    log_q_agg, log_q_dims = [], []
    for zc in z.split(chunk):
        lq = dist.Normal(loc[None], scale[None]).log_prob(zc[:, None])  # [c, N, D]
        log_q_agg.append(torch.logsumexp(lq.sum(-1), dim=1) - log_n)  # log q(z_c)
        log_q_dims.append((torch.logsumexp(lq, dim=1) - log_n).sum(-1))  # Σ_j log q(z_cj)
    log_q_agg, log_q_dims = torch.cat(log_q_agg), torch.cat(log_q_dims)
    per_dim = kl_std_normal(loc, scale).mean(0)
    return {
        "kl": (log_q_cond - log_p).mean().item(),
        "mutual_info": (log_q_cond - log_q_agg).mean().item(),
        "marginal_kl": (log_q_agg - log_p).mean().item(),
        "total_correlation": (log_q_agg - log_q_dims).mean().item(),
        "dimwise_kl": (log_q_dims - log_p).mean().item(),
        "kl_exact": per_dim.sum().item(),
        "kl_per_dim": per_dim.tolist(),
        "n": n,
    }


def format_kl_split(split, digits=3):
    """One line for a :func:`kl_decomposition` result whose numbers add up as printed.

    The Monte Carlo estimate ``kl`` is the sum of its three parts, term by term; the closed-form
    ``kl_exact`` is what it estimates, and differs from it by the estimator's error, so it is shown apart::

        KL estimate 2.974 = I(x;z) 2.614 + TC 0.290 + dim-wise 0.070 (exact KL 2.790)

    The parts are rounded to ``digits`` decimals and the estimate printed is the sum of the rounded parts
    (within 1.5 units of the last digit of ``split["kl"]``), so the line adds up exactly.

    Args:
        split: a :func:`kl_decomposition` result.
        digits: decimals printed.

    Returns:
        str.
    """
    scale = 10**digits
    parts = [round(split[k] * scale) for k in ("mutual_info", "total_correlation", "dimwise_kl")]
    mi, tc, dw = (f"{p / scale:.{digits}f}" for p in parts)
    return (
        f"KL estimate {sum(parts) / scale:.{digits}f} = I(x;z) {mi} + TC {tc} + dim-wise {dw} "
        f"(exact KL {split['kl_exact']:.{digits}f})"
    )
