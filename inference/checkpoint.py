"""Safe checkpoints, written atomically (:mod:`inference.files`).

Checkpoints hold tensors and plain data only and load with
``torch.load(weights_only=True)``, so loading a file can never run code from it.
"""

import io
from pathlib import Path

import torch

from .errors import CheckpointError
from .files import atomic_write_bytes


def save_checkpoint(path, state: dict):
    """Save a dict of tensors and plain Python data atomically with ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`, refusing anything but tensors and plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupted, or holding pickled objects weights_only refuses
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read safely "
            f"(truncated, corrupted or not a pyro-zoo checkpoint): "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a dict of tensors")
    return state
