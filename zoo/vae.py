"""VAE and beta-VAE as a Pyro model/guide pair, with their evaluation (MATH.md §3).

Model p_θ(x, z) = N(z; 0, I) p_θ(x | z), a decoder network giving the likelihood's parameters; guide
q_φ(z | x) = N(μ_φ(x), diag σ_φ(x)²), an encoder network. Training maximises, per data point,

    L_β(x) = E_q[ log p_θ(x | z) ] − β KL( q_φ(z | x) || p(z) )

β multiplies the z site's log-densities in the model *and* the guide (``poutine.scale``), so β = 1 is
exactly the VAE's ELBO and β > 1 the beta-VAE (Higgins et al. 2017). ``BetaVAE`` is ``VAE`` with β = 4.

Evaluation (β = 1 throughout, nats per data point): the ELBO with its reconstruction and KL parts, the
importance-weighted bound (IWAE, Burda et al. 2016), and the split of the average KL (Hoffman & Johnson
2016; Chen et al. 2018)

    E_pdata KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z))
                               = I_q(x; z) + TC(z) + Σ_j KL(q(z_j) || p(z_j)),

estimated exactly over a data set: the aggregate posterior q(z) = (1/N) Σ_m q(z | x_m) is a log-mean-exp
over the data.

    vae = zoo.VAE(latent_dim=10).fit(x_train, x_val=x_test, epochs=50)
    vae.elbo(x_test), vae.iwae(x_test, k=100), vae.kl_split(x_test)
"""
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import nn

import inference
from inference import distributed as dist_
from inference.checkpoint import load_checkpoint, save_checkpoint
from inference.errors import CheckpointError, InvalidInputError, check_choice, check_positive

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
ARCHITECTURES = ("auto", "mlp", "conv")
DEFAULT_HIDDEN = {"mlp": (256,), "conv": (32, 32, 64)}
DEFAULT_ELBO = "jit-meanfield"   # compiled step with the closed-form KL: the fastest (benchmarks/vae_step.py)


# ---- networks ----------------------------------------------------------------------------------------

class MLPEncoder(nn.Module):
    """x [n, *item] -> (loc, scale) [n, latent]: flatten, ReLU layers of widths ``hidden``, linear head."""

    def __init__(self, item_shape, latent_dim, hidden):
        super().__init__()
        sizes = [math.prod(item_shape), *hidden]
        layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.body = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(sizes[-1], 2 * latent_dim)

    def forward(self, x):
        loc, raw = self.head(self.body(x)).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-6


class MLPDecoder(nn.Module):
    """z [n, latent] -> likelihood parameters [n, *item] (logits, or the Gaussian mean)."""

    def __init__(self, item_shape, latent_dim, hidden):
        super().__init__()
        sizes = [latent_dim, *reversed(hidden)]
        layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], math.prod(item_shape)),
                                 nn.Unflatten(-1, tuple(item_shape)))

    def forward(self, z):
        return self.net(z)


def _conv_sizes(height, width, layers):
    """Spatial sizes after each stride-2 conv (k=4, p=1 halves, rounding down): [(H, W), ...]."""
    sizes = [(height, width)]
    for _ in range(layers):
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2))
    return sizes


class ConvEncoder(nn.Module):
    """x [n, C, H, W] -> (loc, scale): stride-2 4x4 convolutions with ``channels``, a dense layer, a head."""

    def __init__(self, item_shape, latent_dim, channels, dense=256):
        super().__init__()
        c, h, w = item_shape
        sizes = _conv_sizes(h, w, len(channels))
        chans = [c, *channels]
        convs = [m for a, b in zip(chans, chans[1:]) for m in (nn.Conv2d(a, b, 4, 2, 1), nn.ReLU())]
        flat = chans[-1] * sizes[-1][0] * sizes[-1][1]
        self.body = nn.Sequential(*convs, nn.Flatten(), nn.Linear(flat, dense), nn.ReLU())
        self.head = nn.Linear(dense, 2 * latent_dim)

    def forward(self, x):
        loc, raw = self.head(self.body(x)).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-6


class ConvDecoder(nn.Module):
    """z [n, latent] -> [n, C, H, W]: the encoder mirrored with transposed convolutions.

    ``output_padding`` restores the odd sizes the encoder rounded down (28 -> 14 -> 7 -> 3 -> 7 -> ...).
    """

    def __init__(self, item_shape, latent_dim, channels, dense=256):
        super().__init__()
        c, h, w = item_shape
        sizes = _conv_sizes(h, w, len(channels))
        chans = [c, *channels]
        h0, w0 = sizes[-1]
        layers = []
        for i in reversed(range(len(channels))):
            (hi, wi), (ho, wo) = sizes[i + 1], sizes[i]
            layers.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 4, 2, 1,
                                             output_padding=(ho - 2 * hi, wo - 2 * wi)))
            if i > 0:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(nn.Linear(latent_dim, dense), nn.ReLU(),
                                 nn.Linear(dense, chans[-1] * h0 * w0), nn.ReLU(),
                                 nn.Unflatten(-1, (chans[-1], h0, w0)), *layers)

    def forward(self, z):
        return self.net(z)


class Decoder(nn.Module):
    """A decoder network plus the learned observation scale of the Gaussian likelihood (one scalar)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, z):
        return self.net(z)


# ---- the model ---------------------------------------------------------------------------------------

class VAE:
    """Variational autoencoder (beta-VAE for ``beta != 1``): a Pyro model/guide pair and its evaluation.

    Args:
        latent_dim: size of z (>= 1).
        architecture: "mlp" (any data, flattened), "conv" (images ``[n, C, H, W]``, H and W at least
            2**len(hidden)), or "auto": conv for 4-D data, mlp otherwise.
        hidden: mlp: widths of the hidden layers (default (256,)); conv: channels of the stride-2
            convolutions (default (32, 32, 64)), followed by a dense layer of 256.
        likelihood: "bernoulli" (data in [0, 1]: the cross-entropy of grey levels), "continuous_bernoulli"
            (data in [0, 1], the normalised density of Loaiza-Ganem & Cunningham 2019), or "gaussian"
            (any real data, one learned scale).
        beta: weight of the KL term (> 0); 1 is the VAE.
        anneal_epochs: if > 0, the KL weight rises linearly from beta/steps to beta over this many epochs
            of training (Bowman et al. 2016), which helps avoid posterior collapse.

    Fitted attributes: ``fit_`` (the :class:`inference.Fit`), ``losses_`` (negative ELBO per step on the
    full-data scale), ``history_`` (per-epoch ELBO parts per data point), ``encoder_``, ``decoder_``.
    """

    def __init__(self, latent_dim=10, architecture="auto", hidden=None, likelihood="bernoulli", beta=1.0,
                 anneal_epochs=0):
        self.latent_dim = check_positive("latent_dim", latent_dim, integer=True)
        self.architecture = check_choice("architecture", architecture, ARCHITECTURES)
        if hidden is not None:
            hidden = tuple(hidden)
            if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
                raise InvalidInputError(f"hidden must be a sequence of positive integers, got {hidden!r}")
        self.hidden = hidden
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        self.beta = float(check_positive("beta", beta))
        self.anneal_epochs = check_positive("anneal_epochs", anneal_epochs, allow_zero=True)
        self.kl_weight = self.beta     # the weight in use; below beta only while annealing
        self.encoder_ = self.decoder_ = self.item_shape_ = None
        self.device = torch.device("cpu")
        self._ddp = None    # (encoder, decoder) in DistributedDataParallel during a distributed fit

    def __repr__(self):
        return (f"{type(self).__name__}(latent_dim={self.latent_dim}, architecture={self.architecture!r}, "
                f"hidden={self.hidden!r}, likelihood={self.likelihood!r}, beta={self.beta:g})")

    # -- networks and data checks --
    def _arch(self, x_dim):
        if self.architecture == "auto":
            return "conv" if x_dim == 4 else "mlp"
        return self.architecture

    def build(self, item_shape):
        """Create fresh encoder and decoder networks for data items of ``item_shape`` (e.g. (1, 32, 32))."""
        item_shape = tuple(int(s) for s in item_shape)
        arch = self._arch(len(item_shape) + 1)
        hidden = self.hidden if self.hidden is not None else DEFAULT_HIDDEN[arch]
        if arch == "conv":
            if len(item_shape) != 3:
                raise InvalidInputError(f"architecture='conv' needs images x of shape [n, channels, height, "
                                        f"width]; got items of shape {item_shape}")
            if min(item_shape[1:]) < 2 ** len(hidden):
                raise InvalidInputError(f"images of {item_shape[1]}x{item_shape[2]} pixels are too small for "
                                        f"{len(hidden)} stride-2 convolutions (hidden={hidden}); need at "
                                        f"least {2 ** len(hidden)} pixels a side: pass fewer channels")
            encoder = ConvEncoder(item_shape, self.latent_dim, hidden)
            net = ConvDecoder(item_shape, self.latent_dim, hidden)
        else:
            encoder = MLPEncoder(item_shape, self.latent_dim, hidden)
            net = MLPDecoder(item_shape, self.latent_dim, hidden)
        self.encoder_, self.decoder_ = encoder.to(self.device), Decoder(net).to(self.device)
        self.item_shape_ = item_shape
        return self

    def to(self, device):
        """Move the networks to ``device``; data given later must live there too."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:       # "cuda" means the current GPU, as x.device says
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        if self.encoder_ is not None:
            self.encoder_.to(self.device)
            self.decoder_.to(self.device)
        return self

    def check_data(self, x, name="x", values=True):
        """Return ``x`` as a float tensor on the networks' device after checking it fits this model.

        Checks: a tensor (or array) of floats with a batch dim, the item shape the networks were built
        for, finite values and, with ``values``, the likelihood's support ([0, 1] for the Bernoullis).
        """
        if not torch.is_tensor(x):
            try:
                x = torch.as_tensor(np.asarray(x, dtype=np.float32))
            except (TypeError, ValueError):
                raise InvalidInputError(f"{name} must be a tensor or array of numbers, got "
                                        f"{type(x).__name__}") from None
        if not x.is_floating_point():
            x = x.float()
        if x.dim() < 2 or x.numel() == 0:
            raise InvalidInputError(f"{name} must have shape [n, features] or [n, channels, height, width] "
                                    f"with every size >= 1; got {tuple(x.shape)}")
        if self._arch(x.dim()) == "conv" and x.dim() != 4:
            raise InvalidInputError(f"architecture='conv' needs {name} of shape [n, channels, height, width]; "
                                    f"got {tuple(x.shape)}" + (" (add a channel dim: x[:, None])"
                                                                if x.dim() == 3 else ""))
        if self.item_shape_ is not None and tuple(x.shape[1:]) != self.item_shape_:
            raise InvalidInputError(f"{name} has items of shape {tuple(x.shape[1:])}, but the networks were "
                                    f"built for {self.item_shape_}")
        if values:
            bad = (~torch.isfinite(x)).sum().item()
            if bad:
                raise InvalidInputError(f"{name} contains {bad} NaN or infinite value(s)")
            if self.likelihood != "gaussian":
                lo, hi = x.min().item(), x.max().item()
                if lo < 0 or hi > 1:
                    raise InvalidInputError(
                        f"likelihood={self.likelihood!r} needs {name} in [0, 1], but its values span "
                        f"[{lo:.4g}, {hi:.4g}]; rescale the data or use likelihood='gaussian'")
        return x.to(self.device)

    def _ready(self, x):
        if self.encoder_ is None:
            self.build(x.shape[1:])
        if x.device != self.device:
            raise InvalidInputError(f"x is on {x.device} but the networks are on {self.device}: move one of "
                                    f"them (vae.to(x.device) or x.to(vae.device))")
        return x

    # -- the Pyro pair --
    def observation(self, params):
        """p(x | z) as a Pyro distribution with event shape = item shape, from decoder outputs."""
        if self.likelihood == "bernoulli":
            d = dist.Bernoulli(logits=params, validate_args=False)   # grey levels: cross-entropy
        elif self.likelihood == "continuous_bernoulli":
            d = dist.ContinuousBernoulli(logits=params, validate_args=False)
        else:
            d = dist.Normal(params, self.decoder_.log_scale.exp())
        return d.to_event(len(self.item_shape_))

    def mean(self, params):
        """E[x | z] from decoder outputs (probabilities, the continuous Bernoulli mean, or the Gaussian mean)."""
        if self.likelihood == "gaussian":
            return params
        if self.likelihood == "bernoulli":
            return torch.sigmoid(params)
        return dist.ContinuousBernoulli(logits=params, validate_args=False).mean

    def model(self, x):
        """p(z) p(x | z) for a batch x [n, *item]; z [n, latent_dim]; the z site is scaled by the KL weight."""
        self._ready(x)
        pyro.module("decoder", self.decoder_)
        decoder = self.decoder_ if self._ddp is None else self._ddp[1]
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros((x.shape[0], self.latent_dim))
            with poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", dist.Normal(zeros, 1.0 + zeros).to_event(1))
            pyro.sample("x", self.observation(decoder(z)), obs=x)

    def guide(self, x):
        """q(z | x) = N(μ(x), diag σ(x)²), scaled by the KL weight like the model's z site."""
        self._ready(x)
        pyro.module("encoder", self.encoder_)
        encoder = self.encoder_ if self._ddp is None else self._ddp[0]
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            with poutine.scale(scale=self.kl_weight):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- training --
    def fit(self, x, x_val=None, *, epochs=50, batch_size=128, lr=1e-3, patience=None, elbo=None,
            checkpoint=None, checkpoint_every=None, resume=False, seed=0, progress=None, distributed=False,
            **svi_kwargs):
        """Train on x [n, *item] by minibatch SVI (:func:`inference.svi`, Adam) and return ``self``.

        The loss is the negative beta-ELBO on the full-data scale (each minibatch term x N/B). With
        ``x_val``, the held-out loss is evaluated once per epoch, training stops after ``patience`` epochs
        without improvement and the best networks are kept. ``checkpoint`` is written every
        ``checkpoint_every`` steps (default: every epoch) and at the end; ``resume=True`` continues from it.
        ``elbo`` defaults to "jit-meanfield" ("meanfield" while annealing, as the compiled step would
        freeze the changing weight). The rate is constant unless ``schedule`` is given. Further keyword
        arguments go to :func:`inference.svi`.

        ``distributed=True`` (inside a torch.distributed group, see :mod:`inference.distributed`): x and
        x_val are this process's shards (``distributed.shard(x)``) and ``batch_size`` is per process, so a
        step sees world_size x batch_size rows. The encoder and decoder run in DistributedDataParallel,
        which averages the gradients; the loss is scaled to the total N over all shards; each rank draws
        its own minibatches and noise (seed per rank); every rank takes the same number of steps (set by
        the smallest shard); only rank 0 writes the checkpoint, and all ranks resume from it. The
        compiled (jit-) ELBOs would skip DDP's gradient hooks, so the default is "trace" and jit- ELBOs
        are refused. ``history_`` is computed on rank 0's validation shard.
        """
        x = self.check_data(x, "x")
        if x_val is not None:
            x_val = self.check_data(x_val, "x_val")
            if x_val.shape[1:] != x.shape[1:]:
                raise InvalidInputError(f"x_val has items of shape {tuple(x_val.shape[1:])}, x has "
                                        f"{tuple(x.shape[1:])}")
        check_positive("epochs", epochs, integer=True)
        check_positive("batch_size", batch_size, integer=True)
        if distributed:
            dist_.require_group("VAE.fit(distributed=True)")
            if elbo is not None and elbo.startswith("jit-"):
                raise InvalidInputError(f"elbo={elbo!r} compiles the step, which skips the gradient averaging "
                                        f"of DistributedDataParallel; use elbo={elbo.removeprefix('jit-')!r} "
                                        f"with distributed=True")
            # Every rank must take the same number of steps (each step is a collective): the smallest shard sets it.
            n_min = dist_.total(x.shape[0], op="min")
            per_epoch = n_min // min(batch_size, n_min)
            svi_kwargs["data_size"] = dist_.total(x.shape[0])
            svi_kwargs["steps"], epochs_ = epochs * per_epoch, None
            svi_kwargs.setdefault("eval_every", per_epoch)   # held-out losses are averaged: same steps on all ranks
        else:
            per_epoch = x.shape[0] // min(batch_size, x.shape[0])
            epochs_ = epochs
        anneal_steps = round(self.anneal_epochs * per_epoch)
        if elbo is None:
            elbo = "meanfield" if anneal_steps else ("trace" if distributed else DEFAULT_ELBO)
        if anneal_steps and elbo.startswith("jit-"):
            raise InvalidInputError(f"elbo={elbo!r} compiles the KL weight into the step, so it cannot anneal; "
                                    f"use elbo={elbo.removeprefix('jit-')!r} with anneal_epochs > 0")
        if anneal_steps:   # the KL weight changes between steps: a captured step would hold it fixed
            svi_kwargs.setdefault("compile", False)
        pyro.set_rng_seed(seed)
        if not resume or self.encoder_ is None or self.item_shape_ != tuple(x.shape[1:]):
            self.build(x.shape[1:])
        self.to(x.device)
        monitor = x_val if x_val is not None else x[:1000]
        history = {"epoch": [], "elbo": [], "reconstruction": [], "kl": []}

        def callback(step, loss):
            if anneal_steps:
                self.kl_weight = self.beta * min(1.0, (step + 2) / anneal_steps)
            if (step + 1) % per_epoch == 0 and dist_.is_writer():
                rec, kl = self.elbo_parts(monitor, seed=step)
                history["epoch"].append((step + 1) / per_epoch)
                history["reconstruction"].append(rec.mean().item())
                history["kl"].append(kl.mean().item())
                history["elbo"].append((rec - kl).mean().item())
            return False

        self.kl_weight = self.beta * min(1.0, 1 / anneal_steps) if anneal_steps else self.beta
        svi_kwargs.setdefault("schedule", None)
        if distributed:
            seed = dist_.rank_seed(seed)
            # DDP waits for a gradient of every parameter it holds: leave out the unused Gaussian scale
            # (Decoder.forward is its net's forward, so calling the net alone is the same function).
            self._ddp = (dist_.wrap(self.encoder_),
                         dist_.wrap(self.decoder_ if self.likelihood == "gaussian" else self.decoder_.net))
        try:
            fit = inference.svi(self.model, self.guide, x, epochs=epochs_, batch_size=batch_size, lr=lr,
                                optimizer="adam", elbo=elbo, validation_data=None if x_val is None else (x_val,),
                                patience=patience, checkpoint=checkpoint,
                                checkpoint_every=checkpoint_every or (per_epoch if checkpoint else None),
                                resume=resume, seed=seed, progress=progress, callback=callback,
                                distributed=distributed, **svi_kwargs)
        finally:
            self.kl_weight = self.beta
            self._ddp = None
        self.fit_, self.losses_, self.history_ = fit, fit.losses, history
        self.n_train_ = svi_kwargs["data_size"] if distributed else x.shape[0]
        return self

    # -- encoding, decoding, sampling --
    @torch.no_grad()
    def encode(self, x):
        """(loc, scale) of q(z | x), each [n, latent_dim]."""
        x = self.check_data(x, values=False)
        self._ready(x)
        return self.encoder_(x)

    @torch.no_grad()
    def decode(self, z):
        """E[x | z] for z [n, latent_dim]: [n, *item]."""
        self._require_built()
        return self.mean(self.decoder_(torch.as_tensor(z, dtype=torch.float32, device=self.device)))

    def reconstruct(self, x):
        """E[x | z = μ(x)], the decoded posterior mean: [n, *item]."""
        return self.decode(self.encode(x)[0])

    def sample(self, n, seed=0):
        """E[x | z] at n draws z ~ p(z) = N(0, I): [n, *item]."""
        check_positive("n", n, integer=True)
        g = torch.Generator().manual_seed(seed)
        return self.decode(torch.randn(n, self.latent_dim, generator=g))

    def _require_built(self):
        if self.encoder_ is None:
            raise InvalidInputError(f"this {type(self).__name__} has no networks yet: call fit(x) (or build)")

    # -- evaluation (beta = 1: the true ELBO and bounds on log p(x), nats per data point) --
    @torch.no_grad()
    def elbo_parts(self, x, num_samples=1, seed=0, batch_size=1024):
        """Per data point: reconstruction E_q log p(x | z) (Monte Carlo, ``num_samples`` draws) and the
        analytic KL(q(z | x) || p(z)); two tensors [n]. ELBO = reconstruction − KL."""
        x = self.check_data(x)
        self._ready(x)
        check_positive("num_samples", num_samples, integer=True)
        g = _generator(seed, x.device)
        recs, kls = [], []
        for xb in x.split(batch_size):
            loc, scale = self.encoder_(xb)
            kls.append(_kl_std_normal(loc, scale).sum(-1))
            z = loc + scale * torch.randn((num_samples, *loc.shape), generator=g, device=x.device)
            recs.append(self._log_lik(xb, z).mean(0))
        return torch.cat(recs), torch.cat(kls)

    def elbo(self, x, num_samples=1, seed=0):
        """Mean ELBO per data point, E_q[log p(x | z)] − KL(q(z | x) || p(z)) (a lower bound on log p(x))."""
        rec, kl = self.elbo_parts(x, num_samples, seed)
        return (rec - kl).mean().item()

    @torch.no_grad()
    def log_weights(self, x, k=100, seed=0, max_items=4096):
        """log w = log p(x, z_k) − log q(z_k | x) at k draws z_k ~ q(z | x) per data point: [k, n]."""
        x = self.check_data(x)
        self._ready(x)
        check_positive("k", k, integer=True)
        g = _generator(seed, x.device)
        out = []
        for xb in x.split(max(1, max_items // k)):
            loc, scale = self.encoder_(xb)
            z = loc + scale * torch.randn((k, *loc.shape), generator=g, device=x.device)
            log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
            log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
            out.append(self._log_lik(xb, z) + log_p - log_q)
        return torch.cat(out, dim=1)

    def iwae(self, x, k=100, seed=0):
        """Mean importance-weighted bound per data point (Burda et al. 2016),

            log p(x) >= E[ log (1/K) Σ_k p(x, z_k) / q(z_k | x) ],

        equal to the ELBO at K = 1 and non-decreasing in K, tending to log p(x)."""
        return iwae_bound(self.log_weights(x, k, seed)).mean().item()

    def kl_split(self, x, seed=0):
        """The average KL and its parts over the data set x (see :func:`kl_decomposition`); adds
        ``kl_per_dim``, the analytic E KL(q(z_j | x) || p(z_j)) of each latent dimension [latent_dim]."""
        loc, scale = self.encode(self.check_data(x))
        return kl_decomposition(loc, scale, seed=seed)

    def codes(self, x, batch_size=2048):
        """Posterior means μ(x) [n, latent_dim] (the representation the disentanglement metrics score)."""
        return torch.cat([self.encode(xb)[0] for xb in self.check_data(x, values=False).split(batch_size)])

    def _log_lik(self, x, z):
        """log p(x | z) for x [b, *item] and z [s, b, latent] -> [s, b]."""
        s, b = z.shape[:2]
        params = self.decoder_(z.reshape(s * b, -1))
        return self.observation(params).log_prob(x.repeat(s, *[1] * (x.dim() - 1))).reshape(s, b)

    # -- saving --
    def save(self, path):
        """Write the settings and network weights to ``path`` atomically (tensors and plain data only)."""
        self._require_built()
        save_checkpoint(path, {"format": "pyro-zoo/vae/1", "class": type(self).__name__,
                               "settings": self.get_params(), "item_shape": list(self.item_shape_),
                               "encoder": self.encoder_.state_dict(), "decoder": self.decoder_.state_dict()})
        return path

    @classmethod
    def load(cls, path, device="cpu"):
        """A model saved by :meth:`save`, on ``device``."""
        state = load_checkpoint(path, map_location=device)
        if state.get("format") != "pyro-zoo/vae/1":
            raise CheckpointError(f"{str(path)!r} is not a pyro-zoo VAE file")
        try:
            klass = BetaVAE if state["class"] == "BetaVAE" else VAE
            vae = klass(**state["settings"]).to(device)
            vae.build(state["item_shape"])
            vae.encoder_.load_state_dict(state["encoder"])
            vae.decoder_.load_state_dict(state["decoder"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # edited or from another version
            raise CheckpointError(f"{str(path)!r} does not hold a consistent VAE "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        return vae

    def get_params(self):
        """The constructor's settings (as scikit-learn's ``get_params``)."""
        return {"latent_dim": self.latent_dim, "architecture": self.architecture,
                "hidden": None if self.hidden is None else list(self.hidden), "likelihood": self.likelihood,
                "beta": self.beta, "anneal_epochs": self.anneal_epochs}


class BetaVAE(VAE):
    """The beta-VAE (Higgins et al. 2017): :class:`VAE` with the KL weighted by ``beta`` (default 4)."""

    def __init__(self, latent_dim=10, architecture="auto", hidden=None, likelihood="bernoulli", beta=4.0,
                 anneal_epochs=0):
        super().__init__(latent_dim, architecture, hidden, likelihood, beta, anneal_epochs)


# ---- estimators on encoder outputs -------------------------------------------------------------------

def _generator(seed, device):
    return torch.Generator(device=device).manual_seed(int(seed))


def _kl_std_normal(loc, scale):
    """KL(N(loc, scale²) || N(0, 1)) per dimension."""
    return 0.5 * (loc ** 2 + scale ** 2 - 1) - torch.log(scale)


def iwae_bound(log_weights):
    """log (1/K) Σ_k w_k for log weights [K, n] -> [n] (a log-mean-exp over the K draws)."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


@torch.no_grad()
def kl_decomposition(loc, scale, seed=0, chunk=256):
    """Split the average KL of N Gaussian posteriors q(z | x_n) = N(loc_n, diag scale_n²) from N(0, I).

    With one draw z_n ~ q(z | x_n) per data point and the aggregate posterior of the data set,
    q(z) = (1/N) Σ_m q(z | x_m) (exact for the empirical data distribution; Chen et al. 2018), each
    expectation is a mean over n of

        kl                 log q(z_n | x_n) − log p(z_n)                    E_pdata KL(q(z|x) || p(z))
        mutual_info        log q(z_n | x_n) − log q(z_n)                    I_q(x; z), in [0, log N]
        marginal_kl        log q(z_n) − log p(z_n)                          KL(q(z) || p(z))
        total_correlation  log q(z_n) − Σ_j log q(z_nj)                     KL(q(z) || Π_j q(z_j))
        dimwise_kl         Σ_j [log q(z_nj) − log p(z_nj)]                  Σ_j KL(q(z_j) || p(z_j))

    so kl = mutual_info + marginal_kl and marginal_kl = total_correlation + dimwise_kl, term by term.
    ``kl_exact`` is the closed-form average KL (what ``kl`` estimates) and ``kl_per_dim`` its split over
    dimensions. Cost O(N² D), in chunks of ``chunk`` rows.

    Args:
        loc, scale: [N, D] tensors.
    Returns:
        dict of floats (nats) plus ``kl_per_dim`` (list of D floats) and ``n`` (N).
    """
    if loc.dim() != 2 or loc.shape != scale.shape:
        raise InvalidInputError(f"loc and scale must both be [N, D]; got {tuple(loc.shape)} and "
                                f"{tuple(scale.shape)}")
    n = loc.shape[0]
    g = _generator(seed, loc.device)
    z = loc + scale * torch.randn(loc.shape, generator=g, device=loc.device)
    log_n = math.log(n)
    q = dist.Normal(loc, scale)
    log_q_cond = q.log_prob(z).sum(-1)                       # log q(z_n | x_n)
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)        # log p(z_n)
    log_q_agg, log_q_dims = [], []
    for zc in z.split(chunk):
        lq = dist.Normal(loc[None], scale[None]).log_prob(zc[:, None])        # [c, N, D]
        log_q_agg.append(torch.logsumexp(lq.sum(-1), dim=1) - log_n)          # log q(z_c)
        log_q_dims.append((torch.logsumexp(lq, dim=1) - log_n).sum(-1))       # Σ_j log q(z_cj)
    log_q_agg, log_q_dims = torch.cat(log_q_agg), torch.cat(log_q_dims)
    per_dim = _kl_std_normal(loc, scale).mean(0)
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
    """
    scale = 10 ** digits
    parts = [round(split[k] * scale) for k in ("mutual_info", "total_correlation", "dimwise_kl")]
    mi, tc, dw = (f"{p / scale:.{digits}f}" for p in parts)
    return (f"KL estimate {sum(parts) / scale:.{digits}f} = I(x;z) {mi} + TC {tc} + dim-wise {dw} "
            f"(exact KL {split['kl_exact']:.{digits}f})")


# ---- figures -----------------------------------------------------------------------------------------

def _images(t):
    """[n, *item] -> numpy [n, H, W] (or [n, H, W, 3]) for imshow; flat items must be square images."""
    t = t.detach().cpu()
    if t.dim() == 2:
        side = math.isqrt(t.shape[1])
        if side * side != t.shape[1]:
            raise InvalidInputError(f"items of {t.shape[1]} values are not square images; cannot draw them")
        return t.reshape(-1, side, side).numpy()
    if t.dim() == 4 and t.shape[1] == 3:
        return t.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    return t[:, 0].numpy()


def _grid(rows, titles=None, row_labels=None, scale=1.0):
    import matplotlib.pyplot as plt
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j], cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
    if titles:
        fig.suptitle(titles)
    return fig


def plot_reconstructions(vae, x, n=10):
    """Top row: data; bottom row: E[x | z = μ(x)]."""
    x = x[:n]
    return _grid([_images(x), _images(vae.reconstruct(x))], "data (top) and reconstructions (bottom)",
                 ["data", "recon."])


def plot_samples(vae, n=64, seed=0):
    """E[x | z] at draws z ~ N(0, I), in a square grid."""
    imgs = _images(vae.sample(n, seed))
    side = math.ceil(math.sqrt(n))
    return _grid([imgs[i:i + side] for i in range(0, n, side)], "samples from the prior")


def plot_traversals(vae, x, n_steps=9, span=3.0):
    """Latent traversals: one row per latent dimension j, decoding μ(x) with z_j swept over [-span, span]
    (x: one data point, [1, *item]). Rows are labelled with the dimension and its average KL."""
    loc = vae.encode(x[:1])[0][0]
    values = torch.linspace(-span, span, n_steps)
    rows, labels = [], []
    for j in range(vae.latent_dim):
        z = loc.repeat(n_steps, 1)
        z[:, j] = values.to(z.device)
        rows.append(_images(vae.decode(z)))
        labels.append(f"z{j}")
    return _grid(rows, f"latent traversals, z_j from {-span:g} to {span:g}", labels)


def plot_kl_per_dim(split):
    """Bars of E KL(q(z_j | x) || p(z_j)) per latent dimension, from :meth:`VAE.kl_split`'s result."""
    import matplotlib.pyplot as plt
    kl = split["kl_per_dim"]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(kl) + 2), 3))
    ax.bar(range(len(kl)), kl, color="C0")
    ax.set_xticks(range(len(kl)))
    ax.set_xlabel("latent dimension j")
    ax.set_ylabel("KL (nats per data point)")
    ax.set_title(f"KL per dimension (bars: the exact KL, total {split['kl_exact']:.2f})\n"
                 + format_kl_split(split, digits=2), fontsize=9)
    fig.tight_layout()
    return fig


def plot_losses(vae):
    """Left: the training loss (−β-ELBO per data point) per step; right: per epoch, the held-out (or
    training-subset) reconstruction term −E log p(x|z) and KL, nats per data point."""
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(np.asarray(vae.losses_) / vae.n_train_, lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("loss per data point (nats)")
    a.set_title("training loss (−β-ELBO)")
    h = vae.history_
    b.plot(h["epoch"], [-r for r in h["reconstruction"]], label="reconstruction −E log p(x|z)")
    b.plot(h["epoch"], h["kl"], label="KL(q(z|x) || p(z))")
    b.plot(h["epoch"], [-e for e in h["elbo"]], label="−ELBO", color="k", lw=1)
    b.set_xlabel("epoch")
    b.set_ylabel("nats per data point")
    b.set_title("ELBO parts (β = 1)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
