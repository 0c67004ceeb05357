"""Atomic file writes: nothing written is lost to an interruption.

Every file is written to a temporary file in the same folder, flushed to disk and renamed over the target
(a rename is atomic on POSIX), so a reader sees the old file or the new one, never half of one.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


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
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
