"""The VAE class: the Pyro model/guide pair, its training, encoding, decoding, sampling and files.

    p_θ(x, z) = N(z; 0, I) p_θ(x | z)            model: prior and decoder (``VAE.model``)
    q_φ(z | x) = N(μ_φ(x), diag σ_φ(x)²)          guide: encoder (``VAE.guide``)

Training (``VAE.fit``, minibatch SVI with :func:`inference.svi`) maximises per data point

    L_β(x) = E_q[ log p(x | z) ] − β KL( q(z | x) ‖ p(z) ),

where β scales the z site in the model and in the guide (``poutine.scale``). The evaluation methods
(``elbo``, ``iwae``, ``kl_split``, ...) are the functions of :mod:`zoo.vae.evaluation`.

The file runs past 400 lines because it is the one class, read top to bottom (networks and data checks,
the Pyro pair, ``fit``, encoding and sampling, files), and about half of its lines are docstrings.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

import inference
from inference.checkpoint import load_checkpoint, save_checkpoint
from inference.common import generator
from inference.distributed import svi_settings
from inference.errors import CheckpointError, InvalidInputError, check_array, check_choice, check_positive

from . import evaluation
from .networks import ARCHITECTURES, make_networks, pick_architecture

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
DEFAULT_ELBO = "jit-meanfield"  # the compiled step with the closed-form KL: the fastest (benchmarks/vae_step.py)
FILE_FORMAT = "pyro-zoo/vae/1"


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

    Fitted attributes: ``fit_`` (the :class:`inference.Fit`), ``losses_`` (negative β-ELBO per step on the
    full-data scale), ``history_`` (per-epoch ELBO parts per data point), ``n_train_`` (N), ``encoder_``,
    ``decoder_``, ``item_shape_``.
    """

    def __init__(
        self, latent_dim=10, *, architecture="auto", hidden=None, likelihood="bernoulli", beta=1.0, anneal_epochs=0
    ):
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
        self.kl_weight = self.beta  # the weight in use; below beta only while annealing
        self.encoder_ = self.decoder_ = self.item_shape_ = None
        self.device = torch.device("cpu")

    def __repr__(self):
        return (
            f"{type(self).__name__}(latent_dim={self.latent_dim}, architecture={self.architecture!r}, "
            f"hidden={self.hidden!r}, likelihood={self.likelihood!r}, beta={self.beta:g})"
        )

    # -- networks and data --
    def build(self, item_shape):
        """Create fresh encoder and decoder networks for data items of ``item_shape`` (e.g. (1, 32, 32)).

        Args:
            item_shape: shape of one data item.

        Returns:
            self.
        """
        encoder, decoder = make_networks(item_shape, self.latent_dim, self.architecture, self.hidden)
        self.encoder_, self.decoder_ = encoder.to(self.device), decoder.to(self.device)
        self.item_shape_ = tuple(int(s) for s in item_shape)
        return self

    def to(self, device):
        """Move the networks to ``device``; data given later must live there too.

        Args:
            device: a torch.device or its name.

        Returns:
            self.
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" means the current GPU, as x.device says
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        if self.encoder_ is not None:
            self.encoder_.to(self.device)
            self.decoder_.to(self.device)
        return self

    def check_data(self, x, name="x", values=True):
        """Return ``x`` as a float tensor on the networks' device after checking it fits this model.

        Checks: numbers, finite and not empty (``inference.errors.check_array``, the project's one data
        validator), a batch dim, the item shape the networks were built for and, with ``values``, the
        likelihood's support ([0, 1] for the Bernoullis).

        Args:
            x: data [n, *item], a tensor or array.
            name: the argument's name in error messages.
            values: also check that the values lie in the likelihood's support.

        Returns:
            float tensor [n, *item] on ``self.device``.
        """
        floating = torch.is_tensor(x) and x.is_floating_point()
        x = check_array(x, name, dtype=None if floating else torch.get_default_dtype())
        if x.dim() < 2 or x.numel() == 0:
            raise InvalidInputError(
                f"{name} must have shape [n, features] or [n, channels, height, width] "
                f"with every size >= 1; got {tuple(x.shape)}"
            )
        if pick_architecture(self.architecture, x.dim()) == "conv" and x.dim() != 4:
            hint = " (add a channel dim: x[:, None])" if x.dim() == 3 else ""
            raise InvalidInputError(
                f"architecture='conv' needs {name} of shape [n, channels, height, width]; got {tuple(x.shape)}{hint}"
            )
        if self.item_shape_ is not None and tuple(x.shape[1:]) != self.item_shape_:
            raise InvalidInputError(
                f"{name} has items of shape {tuple(x.shape[1:])}, but the networks were built for {self.item_shape_}"
            )
        if values and self.likelihood != "gaussian":
            lo, hi = x.min().item(), x.max().item()
            if lo < 0 or hi > 1:
                raise InvalidInputError(
                    f"likelihood={self.likelihood!r} needs {name} in [0, 1], but its values span "
                    f"[{lo:.4g}, {hi:.4g}]; rescale the data or use likelihood='gaussian'"
                )
        return x.to(self.device)

    def _ready(self, x):
        """Build the networks for x's items if there are none; x must be on their device."""
        if self.encoder_ is None:
            self.build(x.shape[1:])
        if x.device != self.device:
            raise InvalidInputError(
                f"x is on {x.device} but the networks are on {self.device}: move one of "
                f"them (vae.to(x.device) or x.to(vae.device))"
            )

    # -- the Pyro pair --
    def observation(self, params):
        """p(x | z) as a Pyro distribution whose event shape is the item shape.

        Args:
            params: decoder outputs [..., *item] (logits, or the Gaussian mean).
        """
        if self.likelihood == "bernoulli":
            d = dist.Bernoulli(logits=params, validate_args=False)  # grey levels: the cross-entropy
        elif self.likelihood == "continuous_bernoulli":
            d = dist.ContinuousBernoulli(logits=params, validate_args=False)
        else:
            d = dist.Normal(params, self.decoder_.log_scale.exp())
        return d.to_event(len(self.item_shape_))

    def mean(self, params):
        """E[x | z] from decoder outputs: the probabilities, the continuous Bernoulli mean or the Gaussian mean.

        Args:
            params: decoder outputs [..., *item].
        """
        if self.likelihood == "gaussian":
            return params
        if self.likelihood == "bernoulli":
            return torch.sigmoid(params)
        return dist.ContinuousBernoulli(logits=params, validate_args=False).mean

    def model(self, x):
        """p(z) p(x | z) for a batch x [n, *item], z [n, latent_dim]; the z site is scaled by the KL weight."""
        self._ready(x)
        pyro.module("decoder", self.decoder_)
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros((x.shape[0], self.latent_dim))
            with poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", dist.Normal(zeros, 1.0 + zeros).to_event(1))
            pyro.sample("x", self.observation(self.decoder_(z)), obs=x)

    def guide(self, x):
        """q(z | x) = N(μ(x), diag σ(x)²) for a batch x [n, *item], scaled by the KL weight like the model's z."""
        self._ready(x)
        pyro.module("encoder", self.encoder_)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder_(x)
            with poutine.scale(scale=self.kl_weight):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- training --
    def fit(
        self,
        x,
        x_val=None,
        *,
        epochs=50,
        batch_size=128,
        lr=1e-3,
        patience=None,
        elbo=None,
        checkpoint=None,
        checkpoint_every=None,
        resume=False,
        seed=0,
        progress=None,
        distributed=False,
        **svi_kwargs,
    ):
        """Train on x by minibatch SVI (:func:`inference.svi`, Adam) and return ``self``.

        The loss is the negative β-ELBO on the full-data scale (each minibatch term x N/B).

        Args:
            x: training data [n, *item].
            x_val: held-out data [m, *item]: its loss is evaluated once per epoch, training stops after
                ``patience`` epochs without improvement, and the best networks are kept.
            epochs: passes over x.
            batch_size: rows per step.
            lr: Adam's learning rate (constant unless ``schedule`` is given).
            patience: epochs without improvement before stopping (None: never stop early).
            elbo: the estimator's name, passed to :func:`inference.svi` (default "jit-meanfield"; "meanfield"
                while annealing, as a compiled step would freeze the changing weight; "trace" when
                distributed).
            checkpoint: path of a checkpoint written every ``checkpoint_every`` steps (default: every
                epoch) and at the end.
            checkpoint_every: steps between checkpoints.
            resume: continue from ``checkpoint``.
            seed: seeds the networks, the minibatch order and the noise.
            progress: show a progress bar (None: on a terminal).
            distributed: this process is one rank of a torch.distributed group, x and x_val are its shards
                and ``batch_size`` is per rank; :func:`inference.distributed.svi_settings` gives the group's
                steps, data size, seeds and gradient averaging (it refuses "jit-" ELBOs: a distributed
                step runs eagerly). ``history_`` is on this rank's x_val.
            **svi_kwargs: further arguments of :func:`inference.svi` (``num_particles``, ``schedule``, ...).

        Returns:
            self, with ``fit_``, ``losses_``, ``history_`` and ``n_train_`` set.
        """
        x = self.check_data(x, "x")
        if x_val is not None:
            x_val = self.check_data(x_val, "x_val")
            if x_val.shape[1:] != x.shape[1:]:
                raise InvalidInputError(
                    f"x_val has items of shape {tuple(x_val.shape[1:])}, x has {tuple(x.shape[1:])}"
                )
        check_positive("epochs", epochs, integer=True)
        check_positive("batch_size", batch_size, integer=True)
        if distributed:
            run = svi_settings(x.shape[0], batch_size, epochs, seed, elbo=elbo, what="VAE.fit(distributed=True)")
        else:
            per_epoch = x.shape[0] // min(batch_size, x.shape[0])
            run = {"steps": epochs * per_epoch, "eval_every": per_epoch, "data_size": x.shape[0], "seed": seed}
        per_epoch = run["eval_every"]
        run.update(svi_kwargs)
        anneal_steps = round(self.anneal_epochs * per_epoch)
        if elbo is None:
            elbo = "meanfield" if anneal_steps else ("trace" if distributed else DEFAULT_ELBO)
        if anneal_steps and elbo.startswith("jit-"):
            raise InvalidInputError(
                f"elbo={elbo!r} compiles the KL weight into the step, so it cannot anneal; "
                f"use elbo={elbo.removeprefix('jit-')!r} with anneal_epochs > 0"
            )
        if anneal_steps:  # the KL weight changes between steps: a captured step would hold it fixed
            run.setdefault("compile", False)
        pyro.set_rng_seed(seed)  # the run's seed, not the rank's: every rank starts from the same networks
        if not resume or self.encoder_ is None or self.item_shape_ != tuple(x.shape[1:]):
            self.build(x.shape[1:])
        self.to(x.device)
        monitor = x_val if x_val is not None else x[:1000]
        history = {"epoch": [], "elbo": [], "reconstruction": [], "kl": []}

        def callback(step, loss):
            if anneal_steps:
                self.kl_weight = self.beta * min(1.0, (step + 2) / anneal_steps)
            if (step + 1) % per_epoch == 0:
                rec, kl = self.elbo_parts(monitor, seed=step)
                history["epoch"].append((step + 1) / per_epoch)
                history["reconstruction"].append(rec.mean().item())
                history["kl"].append(kl.mean().item())
                history["elbo"].append((rec - kl).mean().item())
            return False

        self.kl_weight = self.beta * min(1.0, 1 / anneal_steps) if anneal_steps else self.beta
        run.setdefault("schedule", None)
        try:
            fit = inference.svi(
                self.model,
                self.guide,
                x,
                batch_size=batch_size,
                lr=lr,
                optimizer="adam",
                elbo=elbo,
                validation_data=None if x_val is None else (x_val,),
                patience=patience,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every or (per_epoch if checkpoint else None),
                resume=resume,
                progress=progress,
                callback=callback,
                **run,
            )
        finally:
            self.kl_weight = self.beta
        self.fit_, self.losses_, self.history_, self.n_train_ = fit, fit.losses, history, run["data_size"]
        return self

    # -- encoding, decoding, sampling --
    @torch.no_grad()
    def encode(self, x):
        """The parameters of q(z | x).

        Args:
            x: data [n, *item].

        Returns:
            (loc, scale), each [n, latent_dim].
        """
        x = self.check_data(x, values=False)
        self._ready(x)
        return self.encoder_(x)

    @torch.no_grad()
    def decode(self, z):
        """E[x | z].

        Args:
            z: codes [n, latent_dim].

        Returns:
            tensor [n, *item].
        """
        if self.encoder_ is None:
            raise InvalidInputError(f"this {type(self).__name__} has no networks yet: call fit(x) (or build)")
        return self.mean(self.decoder_(torch.as_tensor(z, dtype=torch.float32, device=self.device)))

    def reconstruct(self, x):
        """E[x | z = μ(x)], the decoded posterior mean of each data point x [n, *item]: [n, *item]."""
        return self.decode(self.encode(x)[0])

    def sample(self, n, seed=0):
        """E[x | z] at n draws z ~ p(z) = N(0, I).

        Args:
            n: number of draws.
            seed: seeds the draws.

        Returns:
            tensor [n, *item].
        """
        check_positive("n", n, integer=True)
        return self.decode(torch.randn(n, self.latent_dim, generator=generator(seed)))

    # -- evaluation (beta = 1: the ELBO and bounds on log p(x), nats per data point): zoo/vae/evaluation.py --
    elbo_parts = evaluation.elbo_parts
    elbo = evaluation.elbo
    log_weights = evaluation.log_weights
    iwae = evaluation.iwae
    kl_split = evaluation.kl_split
    codes = evaluation.codes

    # -- files --
    def save(self, path):
        """Write the settings and network weights to ``path`` atomically (tensors and plain data only).

        Args:
            path: the file to write.

        Returns:
            path.
        """
        if self.encoder_ is None:
            raise InvalidInputError(f"this {type(self).__name__} has no networks yet: call fit(x) (or build)")
        save_checkpoint(
            path,
            {
                "format": FILE_FORMAT,
                "class": type(self).__name__,
                "settings": self.get_params(),
                "item_shape": list(self.item_shape_),
                "encoder": self.encoder_.state_dict(),
                "decoder": self.decoder_.state_dict(),
            },
        )
        return path

    @classmethod
    def load(cls, path, device="cpu"):
        """A model saved by :meth:`save`.

        Args:
            path: the file.
            device: where to put the networks.

        Returns:
            a VAE or BetaVAE, as saved.
        """
        state = load_checkpoint(path, map_location=device)
        if state.get("format") != FILE_FORMAT:
            raise CheckpointError(f"{str(path)!r} is not a pyro-zoo VAE file")
        try:
            klass = BetaVAE if state["class"] == "BetaVAE" else VAE
            vae = klass(**state["settings"]).to(device)
            vae.build(state["item_shape"])
            vae.encoder_.load_state_dict(state["encoder"])
            vae.decoder_.load_state_dict(state["decoder"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # edited, or from another version
            raise CheckpointError(
                f"{str(path)!r} does not hold a consistent VAE ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        return vae

    def get_params(self):
        """The constructor's settings (as scikit-learn's ``get_params``): a dict of plain values."""
        return {
            "latent_dim": self.latent_dim,
            "architecture": self.architecture,
            "hidden": None if self.hidden is None else list(self.hidden),
            "likelihood": self.likelihood,
            "beta": self.beta,
            "anneal_epochs": self.anneal_epochs,
        }


class BetaVAE(VAE):
    """The beta-VAE (Higgins et al. 2017): :class:`VAE` with the KL weighted by ``beta``, 4 by default.

    Args:
        latent_dim: size of z.
        beta: weight of the KL term (> 0).
        **kwargs: the other settings of :class:`VAE`.
    """

    def __init__(self, latent_dim=10, *, beta=4.0, **kwargs):
        super().__init__(latent_dim, beta=beta, **kwargs)
