"""The VAE's encoder and decoder networks: an MLP for any data, stride-2 convolutions for images.

An encoder maps a batch x [n, *item] to the parameters (loc, scale) [n, latent] of the diagonal Gaussian
q(z | x); a decoder maps codes z [n, latent] to the likelihood's parameters [n, *item] (logits, or the
Gaussian mean). ``make_networks`` picks and builds a matching pair.
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from inference.errors import InvalidInputError

ARCHITECTURES = ("auto", "mlp", "conv")
DEFAULT_HIDDEN = {"mlp": (256,), "conv": (32, 32, 64)}


class MLPEncoder(nn.Module):
    """x [n, *item] -> (loc, scale) [n, latent]: flatten, ReLU layers of widths ``hidden``, linear head.

    Args:
        item_shape: shape of one data item, e.g. (64,) or (1, 28, 28).
        latent_dim: size of z.
        hidden: widths of the hidden layers (may be empty: a linear encoder).
    """

    def __init__(self, item_shape, latent_dim, hidden):
        super().__init__()
        sizes = [math.prod(item_shape), *hidden]
        layers = [m for a, b in itertools.pairwise(sizes) for m in (nn.Linear(a, b), nn.ReLU())]
        self.body = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(sizes[-1], 2 * latent_dim)

    def forward(self, x):
        loc, raw = self.head(self.body(x)).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-6  # scale > 0; the floor keeps log q finite


class MLPDecoder(nn.Module):
    """z [n, latent] -> likelihood parameters [n, *item]: the encoder's layers in reverse order.

    Args:
        item_shape: shape of one data item.
        latent_dim: size of z.
        hidden: widths of the encoder's hidden layers (used here from last to first).
    """

    def __init__(self, item_shape, latent_dim, hidden):
        super().__init__()
        sizes = [latent_dim, *reversed(hidden)]
        layers = [m for a, b in itertools.pairwise(sizes) for m in (nn.Linear(a, b), nn.ReLU())]
        self.net = nn.Sequential(
            *layers, nn.Linear(sizes[-1], math.prod(item_shape)), nn.Unflatten(-1, tuple(item_shape))
        )

    def forward(self, z):
        return self.net(z)


def conv_sizes(height, width, layers):
    """Spatial sizes after each stride-2 convolution (kernel 4, padding 1 halves, rounding down).

    Args:
        height, width: the image's size in pixels.
        layers: number of convolutions.

    Returns:
        list of layers + 1 pairs (H, W), the input's first.
    """
    sizes = [(height, width)]
    for _ in range(layers):
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2))
    return sizes


class ConvEncoder(nn.Module):
    """x [n, C, H, W] -> (loc, scale) [n, latent]: stride-2 4x4 convolutions, a dense layer, a head.

    Args:
        item_shape: (C, H, W).
        latent_dim: size of z.
        channels: output channels of each convolution.
        dense: width of the dense layer after them.
    """

    def __init__(self, item_shape, latent_dim, channels, dense=256):
        super().__init__()
        c, h, w = item_shape
        sizes = conv_sizes(h, w, len(channels))
        chans = [c, *channels]
        convs = [m for a, b in itertools.pairwise(chans) for m in (nn.Conv2d(a, b, 4, 2, 1), nn.ReLU())]
        flat = chans[-1] * sizes[-1][0] * sizes[-1][1]
        self.body = nn.Sequential(*convs, nn.Flatten(), nn.Linear(flat, dense), nn.ReLU())
        self.head = nn.Linear(dense, 2 * latent_dim)

    def forward(self, x):
        loc, raw = self.head(self.body(x)).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-6


class ConvDecoder(nn.Module):
    """z [n, latent] -> [n, C, H, W]: the encoder mirrored with transposed convolutions.

    ``output_padding`` restores the odd sizes the encoder rounded down (28 -> 14 -> 7 -> 3 -> 7 -> ...).

    Args:
        item_shape: (C, H, W).
        latent_dim: size of z.
        channels: output channels of the encoder's convolutions.
        dense: width of the first dense layer.
    """

    def __init__(self, item_shape, latent_dim, channels, dense=256):
        super().__init__()
        c, h, w = item_shape
        sizes = conv_sizes(h, w, len(channels))
        chans = [c, *channels]
        h0, w0 = sizes[-1]
        layers = []
        for i in reversed(range(len(channels))):
            (hi, wi), (ho, wo) = sizes[i + 1], sizes[i]
            layers.append(
                nn.ConvTranspose2d(chans[i + 1], chans[i], 4, 2, 1, output_padding=(ho - 2 * hi, wo - 2 * wi))
            )
            if i > 0:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(
            nn.Linear(latent_dim, dense),
            nn.ReLU(),
            nn.Linear(dense, chans[-1] * h0 * w0),
            nn.ReLU(),
            nn.Unflatten(-1, (chans[-1], h0, w0)),
            *layers,
        )

    def forward(self, z):
        return self.net(z)


class Decoder(nn.Module):
    """A decoder network plus the learned observation scale of the Gaussian likelihood (one scalar).

    Args:
        net: the decoder network, z [n, latent] -> [n, *item].
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.log_scale = nn.Parameter(torch.zeros(()))  # used by likelihood="gaussian" only

    def forward(self, z):
        return self.net(z)


def pick_architecture(architecture, x_dim):
    """The architecture in use: "auto" is "conv" for 4-D data [n, C, H, W], "mlp" otherwise.

    Args:
        architecture: "auto", "mlp" or "conv".
        x_dim: number of dims of the data, batch dim included.
    """
    if architecture == "auto":
        return "conv" if x_dim == 4 else "mlp"
    return architecture


def make_networks(item_shape, latent_dim, architecture="auto", hidden=None):
    """A fresh encoder and decoder (a :class:`Decoder`) for data items of ``item_shape``.

    Args:
        item_shape: shape of one data item, e.g. (64,) or (1, 32, 32).
        latent_dim: size of z.
        architecture: "auto", "mlp" or "conv" (see :func:`pick_architecture`).
        hidden: mlp: hidden widths; conv: channels (default ``DEFAULT_HIDDEN``).

    Returns:
        (encoder, decoder) on the CPU.
    """
    item_shape = tuple(int(s) for s in item_shape)
    arch = pick_architecture(architecture, len(item_shape) + 1)
    hidden = DEFAULT_HIDDEN[arch] if hidden is None else tuple(hidden)
    if arch == "mlp":
        return MLPEncoder(item_shape, latent_dim, hidden), Decoder(MLPDecoder(item_shape, latent_dim, hidden))
    if len(item_shape) != 3:
        raise InvalidInputError(
            f"architecture='conv' needs images x of shape [n, channels, height, width]; got items of shape {item_shape}"
        )
    if min(item_shape[1:]) < 2 ** len(hidden):
        raise InvalidInputError(
            f"images of {item_shape[1]}x{item_shape[2]} pixels are too small for {len(hidden)} "
            f"stride-2 convolutions (hidden={hidden}); need at least {2 ** len(hidden)} pixels "
            f"a side: pass fewer channels"
        )
    return ConvEncoder(item_shape, latent_dim, hidden), Decoder(ConvDecoder(item_shape, latent_dim, hidden))
