"""Atomic writes and safe checkpoints.

Nothing written is lost to an interruption: every file is written to a temporary file in the same folder,
flushed to disk and renamed over the target (a rename is atomic on POSIX), so a reader sees the old file
or the new one, never half of one. Checkpoints hold tensors and plain data only and load with
``torch.load(weights_only=True)``, so loading a file can never run code from it.
"""
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import CheckpointError


@contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path`` for a writer that needs a file name (netCDF, ...); on
    success the file is flushed to disk and renamed over ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str):
    return atomic_write_bytes(path, text.encode("utf-8"))


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
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read safely "
                              f"(truncated, corrupted or not a pyro-zoo checkpoint): "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a dict of tensors")
    return state
