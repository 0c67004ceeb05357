"""The minibatch order and early stopping of an SVI run, each with a ``state()`` a checkpoint can hold."""

import math

import torch

from .common import generator
from .errors import InvalidInputError, check_positive
from .objectives import scale_plate


class Batches:
    """Epoch-wise shuffled minibatches of the tensor arguments (or the whole data when batch_size=None).

    ``total`` is the full data-set size the plate's sites stand for (None when the arguments have no
    common number of rows); ``scale`` = total / batch size is the factor applied to those sites.
    """

    def __init__(self, data, batch_size, seed, data_size):
        self.data, self.batch_size = data, batch_size
        sizes = {a.shape[0] if a.dim() else None for a in data if torch.is_tensor(a)}
        self.n = sizes.pop() if len(sizes) == 1 else None
        self.total = self.n if data_size is None else check_positive("data_size", data_size, integer=True)
        self.per_epoch, self.scale = 1, 1.0
        if batch_size is None:
            return
        check_positive("batch_size", batch_size, integer=True)
        if self.n is None:
            raise InvalidInputError(
                f"with batch_size every tensor data argument must have the same "
                f"number of rows (dim 0); got sizes {sorted(map(str, sizes))}"
                if sizes
                else "batch_size needs a tensor data argument to cut"
            )
        if self.n == 0:
            raise InvalidInputError("the data are empty (0 rows)")
        self.batch_size = min(batch_size, self.n)
        self.per_epoch = self.n // self.batch_size  # drop the ragged last batch: constant shapes for jit
        self.scale = self.total / self.batch_size
        self.device = next(a for a in data if torch.is_tensor(a)).device
        self.generator = generator(seed)
        self.perm, self.pos = None, self.per_epoch

    def first(self):
        return self.data if self.batch_size is None else self._slice(torch.arange(self.batch_size, device=self.device))

    def next(self):
        if self.batch_size is None:
            return self.data
        if self.pos >= self.per_epoch:
            self.perm = torch.randperm(self.n, generator=self.generator).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos * self.batch_size : (self.pos + 1) * self.batch_size]
        self.pos += 1
        return self._slice(idx)

    def _slice(self, idx):
        return tuple(a[idx] if torch.is_tensor(a) else a for a in self.data)

    def scaled(self, plate_name, scale=None):
        return scale_plate(plate_name, self.scale if scale is None else scale)

    def state(self):
        if self.batch_size is None:
            return {}
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, state):
        if self.batch_size is not None:
            self.generator.set_state(state["generator"])
            perm = state["perm"]
            self.perm, self.pos = (None if perm is None else perm.to(self.device)), state["pos"]


class EarlyStopping:
    """Stop after ``patience`` evaluations without a relative improvement of ``min_delta``."""

    def __init__(self, patience, min_delta):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_step, self.best_params, self.bad = math.inf, None, None, 0

    def update(self, step, value, params, keep_best):
        if value < self.best - self.min_delta * abs(self.best if math.isfinite(self.best) else value):
            self.best, self.best_step, self.bad = value, step, 0
            if keep_best:
                self.best_params = [p.detach().clone() for p in params]
        else:
            self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def state(self):
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "best_params": self.best_params}

    def load(self, s):
        self.best, self.best_step, self.bad, self.best_params = s["best"], s["best_step"], s["bad"], s["best_params"]
