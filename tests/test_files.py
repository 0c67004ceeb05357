"""Saved files hold tensors and plain data only; a tampered, truncated or foreign file is a clear error."""

import os

import pytest
import torch

import zoo
from inference.checkpoint import load_checkpoint, save_checkpoint
from inference.errors import CheckpointError
from inference.files import atomic_output, atomic_write_text


class Payload:
    """Stands for any object whose unpickling could run code."""


def test_a_file_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Payload()}, path)  # not a tensor or plain data
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(path)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    path = save_checkpoint(tmp_path / "ok.pt", {"x": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_tampered_vae_file(tmp_path):
    x = zoo.data.digits().x_train[:64]
    vae = zoo.VAE(latent_dim=2, hidden=(8,)).fit(x, epochs=1, batch_size=32, progress=False)
    path = vae.save(tmp_path / "vae.pt")
    assert torch.allclose(zoo.VAE.load(path).encode(x)[0], vae.encode(x)[0])
    state = load_checkpoint(path)
    del state["decoder"][next(iter(state["decoder"]))]  # a weight goes missing
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="consistent VAE"):
        zoo.VAE.load(path)
    save_checkpoint(path, {"format": "something else"})
    with pytest.raises(CheckpointError, match="not a pyro-zoo VAE"):
        zoo.VAE.load(path)


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "result.csv", "x\n1\n")
    assert path.read_text() == "x\n1\n"
    atomic_write_text(path, "x\n2\n")
    assert path.read_text() == "x\n2\n"
    assert [p.name for p in path.parent.iterdir()] == ["result.csv"]  # no temporary file left
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # usual permissions


def test_atomic_output_removes_a_failed_write(tmp_path):
    target = tmp_path / "result.nc"
    with atomic_output(target) as tmp:
        tmp.write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half of the second")
            raise RuntimeError("the writer crashed")
    assert target.read_text() == "first"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["result.nc"]  # and no temporary file is left
