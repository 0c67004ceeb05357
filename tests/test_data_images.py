"""Built-in images: digits, procedural shapes with known factors, and the MNIST (IDX) reader."""

import gzip
import struct

import numpy as np
import pytest
import torch

from inference.errors import InvalidInputError
from zoo.data import SHAPES_FACTORS, digits, load_mnist, read_idx, shapes, shapes_factor_values


def test_digits_split_is_fixed_scaled_and_stratified():
    a, b = digits(), digits(images=True)
    assert a.x_train.shape == (1437, 64) and a.x_test.shape == (360, 64)
    assert b.x_train.shape == (1437, 1, 8, 8)
    torch.testing.assert_close(a.x_train, b.x_train.reshape(-1, 64))
    assert a.x_train.dtype == torch.float32 and a.x_train.min() == 0 and a.x_train.max() == 1
    assert torch.bincount(a.y_test).tolist() == pytest.approx([36] * 10, abs=1)  # 20% of each digit
    torch.testing.assert_close(digits().x_test, a.x_test)


def test_shapes_grid_order_labels_and_binary_images():
    images, factors = shapes(None, grid={"shape": 3, "scale": 2, "orientation": 2, "x": 3, "y": 2})
    assert images.shape == (72, 1, 32, 32) and factors.shape == (72, 5)
    assert set(images.unique().tolist()) == {0.0, 1.0}
    # row-major grid: the last factor (y) varies fastest
    assert factors[:3].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]]
    assert len({tuple(f) for f in factors.tolist()}) == 72


def test_shapes_factors_move_the_pixels_they_should():
    images, f = shapes(None, grid={"shape": 1, "scale": 6, "orientation": 1, "x": 32, "y": 32})
    values = shapes_factor_values()
    cols = torch.arange(32, dtype=torch.float32) + 0.5
    mass = images[:, 0].sum((1, 2))
    cx = (images[:, 0].sum(1) * cols).sum(1) / mass / 32
    cy = (images[:, 0].sum(2) * cols).sum(1) / mass / 32
    # the centre of mass of an upright square is its centre, to within a pixel
    assert (cx - values["x"][f[:, 3]]).abs().max() < 1 / 32
    assert (cy - values["y"][f[:, 4]]).abs().max() < 1 / 32
    # area grows with the scale factor as (2 r)^2, r = 0.18 * 32 * scale
    side = 2 * 0.18 * 32 * values["scale"][f[:, 1]]
    assert ((mass - side**2).abs() / side**2).max() < 0.35
    assert torch.all(mass[f[:, 1] == 5].float().mean() > mass[f[:, 1] == 0].float().mean() * 3)


def test_shapes_subsample_seeded_and_rotations():
    a, fa = shapes(500, seed=3)
    b, fb = shapes(500, seed=3)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    assert not torch.equal(fa, shapes(500, seed=4)[1])
    for k, size in enumerate(SHAPES_FACTORS.values()):
        assert 0 <= fa[:, k].min() and fa[:, k].max() < size
    # a square turned by 90 degrees is the same square; an ellipse turned by 90 degrees is not
    grid = {"scale": 1, "orientation": 4, "x": 1, "y": 1}
    im, f = shapes(None, grid=grid, size=64)
    assert torch.equal(im[0], im[1].transpose(-1, -2).flip(-1)) or torch.equal(im[0], im[1])
    assert not torch.equal(im[4], im[5])
    assert shapes(10, size=64)[0].shape == (10, 1, 64, 64)


def test_shapes_bad_arguments():
    with pytest.raises(InvalidInputError, match="n must be"):
        shapes(0)
    with pytest.raises(InvalidInputError, match="n must be"):
        shapes(10, grid={"shape": 1, "scale": 1, "orientation": 1, "x": 2, "y": 2})
    with pytest.raises(InvalidInputError, match="unknown factor"):
        shapes(10, grid={"colour": 2})
    with pytest.raises(InvalidInputError, match="size"):
        shapes(10, size=4)


def _write_idx(path, array, type_byte=0x08, compress=False):
    dims = array.shape
    raw = bytes([0, 0, type_byte, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + array.tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    ip = _write_idx(tmp_path / "images.idx", images, compress=compress)
    lp = _write_idx(tmp_path / "labels.idx", labels, compress=compress)
    x, y = load_mnist(ip, lp)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0] * 255, torch.from_numpy(images).float())
    assert y.tolist() == labels.tolist()
    assert load_mnist(ip).shape == (7, 1, 28, 28)
    floats = np.arange(6, dtype=">f4").reshape(2, 3)
    np.testing.assert_array_equal(read_idx(_write_idx(tmp_path / "f.idx", floats, 0x0D)), floats)


def test_load_mnist_rejects_bad_files(tmp_path):
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    good = _write_idx(tmp_path / "good.idx", images)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_mnist(tmp_path / "missing.idx")
    (tmp_path / "text.idx").write_bytes(b"hello world, not idx")
    with pytest.raises(InvalidInputError, match="magic number"):
        load_mnist(tmp_path / "text.idx")
    (tmp_path / "short.idx").write_bytes(good.read_bytes()[:-5])
    with pytest.raises(InvalidInputError, match="truncated"):
        load_mnist(tmp_path / "short.idx")
    with pytest.raises(InvalidInputError, match="3-dimensional"):
        load_mnist(_write_idx(tmp_path / "labels.idx", np.zeros(3, np.uint8)))
    with pytest.raises(InvalidInputError, match="3 images .* 2 labels"):
        load_mnist(good, _write_idx(tmp_path / "l2.idx", np.zeros(2, np.uint8)))
    with pytest.raises(InvalidInputError, match="1-dimensional"):
        load_mnist(good, good)
