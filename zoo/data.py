"""Built-in data sets. Nothing is downloaded: data ship with a package or are generated here.

- mixtures: synthetic Gaussian mixtures with known truth; scikit-learn's real tables; a user's CSV file
- images: scikit-learn's 8x8 digits; procedurally generated dSprites-like shapes with known factors;
  a reader for MNIST-format (idx) files a user has on disk
"""

import gzip
from typing import NamedTuple

import numpy as np
import torch

from inference.common import generator
from inference.errors import InvalidInputError


# ---- mixtures ------------------------------------------------
class Mixture:
    """A data set drawn from a known Gaussian mixture.

    Attributes: ``X`` [N, D] (float64 tensor), ``labels`` [N] (the true component of each point), and the
    truth ``weights`` [K], ``means`` [K, D], ``covariances`` [K, D, D].
    """

    def __init__(self, X, labels, weights, means, covariances):
        self.X, self.labels = X, labels
        self.weights, self.means, self.covariances = weights, means, covariances

    def __repr__(self):
        return f"Mixture(N={self.X.shape[0]}, D={self.X.shape[1]}, K={self.means.shape[0]})"


def make_mixture(n_samples=300, n_components=3, n_features=2, separation=4.0, seed=0):
    """Draw ``n_samples`` points from a random Gaussian mixture with known truth.

    Component standard deviations along their (random) principal axes lie in [0.5, 1.5]; the means are
    at least ``separation`` apart (so separation 4 gives well-separated clusters, 1 overlapping ones);
    weights ~ Dirichlet(10, ..., 10) (no component is tiny). Deterministic given ``seed``.
    """
    for name, value in (("n_samples", n_samples), ("n_components", n_components), ("n_features", n_features)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    if not np.isfinite(separation) or separation < 0:
        raise InvalidInputError(f"separation must be a number >= 0, got {separation!r}")
    if n_components > n_samples:
        raise InvalidInputError(f"n_components={n_components} is more than n_samples={n_samples}")
    rng = np.random.default_rng(seed)
    K, D = n_components, n_features
    # means: uniform in a box large enough to fit K points `separation` apart, by rejection
    side = separation * max(1.0, K ** (1.0 / D)) * 1.5
    means = rng.uniform(-side / 2, side / 2, size=(1, D))
    for _ in range(10000):
        if len(means) == K:
            break
        m = rng.uniform(-side / 2, side / 2, size=D)
        if np.min(np.linalg.norm(means - m, axis=1)) >= separation:
            means = np.vstack([means, m])
    else:
        raise InvalidInputError(f"could not place {K} means {separation} apart in {D} dimensions")
    rotations = np.linalg.qr(rng.normal(size=(K, D, D)))[0]
    sds = rng.uniform(0.5, 1.5, size=(K, D))
    covariances = rotations @ (sds[:, :, None] ** 2 * np.swapaxes(rotations, 1, 2))
    weights = rng.dirichlet(np.full(K, 10.0))
    labels = rng.choice(K, size=n_samples, p=weights)
    chols = np.linalg.cholesky(covariances)
    X = means[labels] + np.einsum("nij,nj->ni", chols[labels], rng.normal(size=(n_samples, D)))
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)
    return Mixture(t(X), torch.as_tensor(labels), t(weights), t(means), t(covariances))


def load_table(name):
    """A real table that ships with scikit-learn, standardised (zero mean, unit sd per column).

    ``name``: "iris" (150 x 4, 3 species) or "wine" (178 x 13, 3 cultivars). Returns (X [N, D] float64,
    labels [N]).
    """
    from sklearn import datasets

    loaders = {"iris": datasets.load_iris, "wine": datasets.load_wine}
    if name not in loaders:
        raise InvalidInputError(f"table {name!r} is not one of {sorted(loaders)}")
    bunch = loaders[name]()
    X = bunch.data.astype(np.float64)
    X = (X - X.mean(0)) / X.std(0)
    return torch.as_tensor(X), torch.as_tensor(bunch.target)


def read_csv(path, columns=None, standardize=False):
    """Read a numeric table [N, D] (float64 tensor) from a CSV file of the user's.

    A header row is detected (a first row that is not all numbers). ``columns``: names (or 0-based
    indices) of the columns to use; by default all, which must then all be numeric. ``standardize``:
    centre and scale every column to unit sd. Raises InvalidInputError naming the problem (missing file,
    non-numeric or missing values, empty table).
    """
    from pathlib import Path

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"CSV file {str(path)!r} does not exist")
    try:
        first = pd.read_csv(path, header=None, nrows=1)
        numeric_first = pd.to_numeric(first.iloc[0], errors="coerce").notna().all()
        frame = pd.read_csv(path, header=None if numeric_first else 0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"CSV file {str(path)!r} cannot be read as a table: {str(e).splitlines()[0]}") from None
    if columns is not None:
        cols = list(columns)
        unknown = [c for c in cols if c not in frame.columns and not (isinstance(c, int) and 0 <= c < frame.shape[1])]
        if unknown:
            raise InvalidInputError(f"column(s) {unknown} are not in {str(path)!r} (it has {list(frame.columns)})")
        frame = frame[[c if c in frame.columns else frame.columns[c] for c in cols]]
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = [
        c
        for c in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[c]) and numeric[c].isna().sum() > frame[c].isna().sum()
    ]
    if bad:
        raise InvalidInputError(
            f"column(s) {bad} of {str(path)!r} are not numeric; choose numeric columns "
            f"with columns=[...] (--columns on the command line)"
        )
    if numeric.shape[0] == 0 or numeric.shape[1] == 0:
        raise InvalidInputError(f"CSV file {str(path)!r} holds no data rows")
    if numeric.isna().any().any() or not np.isfinite(numeric.to_numpy()).all():
        rows = np.nonzero(~np.isfinite(numeric.to_numpy()).all(1))[0]
        raise InvalidInputError(
            f"CSV file {str(path)!r} has {len(rows)} row(s) with missing or non-finite "
            f"values (first data row {int(rows[0])})"
        )
    X = numeric.to_numpy(dtype=np.float64, copy=True)  # pandas may hand out a read-only view
    if standardize:
        sd = X.std(0)
        X = (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
    return torch.as_tensor(X)


# ---- images ---------------------------------------------------------------


class ImageSplit(NamedTuple):
    """A fixed train/test split; unpacks like scikit-learn's ``train_test_split``."""

    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor
    y_test: torch.Tensor


def digits(images=False, test_size=0.2):
    """scikit-learn's 8x8 handwritten digits (1797 images), scaled from 0..16 to [0, 1].

    The split is fixed (stratified by digit, ``random_state=0``) so that every run, test and benchmark
    evaluates on the same held-out images.

    Returns:
        ImageSplit(x_train, x_test, y_train, y_test): float32 images, ``[n, 64]`` (``images=False``) or
        ``[n, 1, 8, 8]`` (``images=True``), and int64 digit labels ``[n]``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise InvalidInputError(f"test_size must be in (0, 1), got {test_size!r}")
    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=0, stratify=y)
    shape = (-1, 1, 8, 8) if images else (-1, 64)
    return ImageSplit(
        torch.from_numpy(x_train).reshape(shape),
        torch.from_numpy(x_test).reshape(shape),
        torch.from_numpy(y_train),
        torch.from_numpy(y_test),
    )


# The generating factors of `shapes`, in label-column order, with the number of values of each.
SHAPES_FACTORS = {"shape": 3, "scale": 6, "orientation": 40, "x": 32, "y": 32}
SHAPE_NAMES = ("square", "ellipse", "heart")


def shapes_factor_values(grid=None):
    """The value of every factor level: dict name -> float tensor (shape: 0, 1, 2; scale: 0.5..1;
    orientation: radians in [0, 2 pi); x, y: the centre as a fraction of the image width, 0.2..0.8).
    ``grid`` (name -> number of levels) keeps the ranges and takes fewer, evenly spread, levels."""
    sizes = _shapes_grid(grid)
    return {
        "shape": torch.arange(sizes["shape"], dtype=torch.float32),
        "scale": torch.linspace(0.5, 1.0, sizes["scale"]) if sizes["scale"] > 1 else torch.ones(1),
        "orientation": torch.arange(sizes["orientation"]) * (2 * np.pi / sizes["orientation"]),
        "x": torch.linspace(0.2, 0.8, sizes["x"]) if sizes["x"] > 1 else torch.full((1,), 0.5),
        "y": torch.linspace(0.2, 0.8, sizes["y"]) if sizes["y"] > 1 else torch.full((1,), 0.5),
    }


def shapes(n=None, size=32, seed=0, grid=None, chunk=4096):
    """Procedural dSprites-like images (Matthey et al. 2017) with known generating factors.

    A white square, ellipse or heart on black, at one of 6 scales, 40 orientations and 32 x 32 centre
    positions: 3 * 6 * 40 * 32 * 32 = 737,280 combinations. Each image is rendered exactly (no
    anti-aliasing) by testing every pixel centre against the shape's implicit inequality in the shape's
    own frame: a pixel p is white iff f(R(-theta) (p - c) / r) <= 0, with f(u, v) = max(|u|, |v|) - 1
    (square), u^2 + (v / 0.5)^2 - 1 (ellipse) or (u^2 + v^2 - 1)^3 - u^2 v^3 (heart, the classic
    sextic), c the centre, theta the orientation and r = 0.18 * size * scale the half-width.

    Args:
        n: number of images, drawn without replacement from the factor grid with ``seed``; ``None``
            renders the whole grid in grid order (factor order as in ``SHAPES_FACTORS``, last fastest).
        size: image height and width in pixels (32 or 64 train on a CPU; any size >= 8 works).
        grid: optional dict factor name -> number of levels, to render a factor subset, e.g.
            ``{"orientation": 1}`` (upright shapes only) or ``{"shape": 1}`` (squares only).
        chunk: images rendered per vectorised batch (bounds the memory used).

    Returns:
        images: float32 ``[n, 1, size, size]`` with values in {0, 1};
        factors: int64 ``[n, 5]``, the level of each factor (columns as ``SHAPES_FACTORS``).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise InvalidInputError(f"size must be an integer >= 8, got {size!r}")
    sizes = _shapes_grid(grid)
    total = int(np.prod(list(sizes.values())))
    gen = generator(seed)
    if n is None:
        index = torch.arange(total)
    else:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
            raise InvalidInputError(f"n must be an integer in [1, {total}] (the size of the factor grid), got {n!r}")
        index = torch.randperm(total, generator=gen)[:n]
    # grid index -> one level per factor (row-major, last factor fastest)
    factors = torch.empty(len(index), len(sizes), dtype=torch.int64)
    rest = index.clone()
    for j, k in reversed(list(enumerate(sizes.values()))):
        factors[:, j] = rest % k
        rest = rest // k
    values = shapes_factor_values(sizes)
    images = torch.empty(len(index), 1, size, size, dtype=torch.float32)
    for start in range(0, len(index), chunk):
        f = factors[start : start + chunk]
        images[start : start + chunk, 0] = _render_shapes(
            f[:, 0],
            values["scale"][f[:, 1]],
            values["orientation"][f[:, 2]],
            values["x"][f[:, 3]],
            values["y"][f[:, 4]],
            size,
        )
    return images, factors


def _shapes_grid(grid):
    sizes = dict(SHAPES_FACTORS)
    for name, k in (grid or {}).items():
        if name not in sizes:
            raise InvalidInputError(f"grid has unknown factor {name!r}; factors are {list(sizes)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= sizes[name]:
            raise InvalidInputError(f"grid[{name!r}] must be an integer in [1, {sizes[name]}], got {k!r}")
        sizes[name] = k
    return sizes


def _render_shapes(shape, scale, angle, cx, cy, size):
    """Render a batch: shape [b] (0 square, 1 ellipse, 2 heart), scale, angle, cx, cy [b] -> [b, size, size]."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    py, px = centres[None, :, None], centres[None, None, :]  # image rows go down the y axis
    dx, dy = px - cx[:, None, None], py - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    r = (0.18 * scale)[:, None, None]
    u = (cos * dx + sin * dy) / r  # rotate by -angle, then scale
    v = (-sin * dx + cos * dy) / r
    out = torch.zeros(u.shape)
    for k, inside in enumerate((_square, _ellipse, _heart)):
        rows = shape == k  # each image tests one shape only
        if rows.any():
            out[rows] = inside(u[rows], v[rows]).float()
    return out


def _square(u, v):
    return torch.maximum(u.abs(), v.abs()) <= 1


def _ellipse(u, v):
    return u**2 + (v / 0.5) ** 2 <= 1


def _heart(u, v):
    hu, hv = 1.15 * u, -1.15 * v - 0.1  # upright, centred, unit size
    return (hu**2 + hv**2 - 1) ** 3 - hu**2 * hv**3 <= 0


def _open_maybe_gzip(path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read one IDX file (the MNIST format; gzipped or not) into a numpy array, validating the header.

    Format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, then each dimension as a big-endian uint32, then the data.
    """
    path = str(path)
    try:
        with _open_maybe_gzip(path) as f:
            raw = f.read()
    except FileNotFoundError:
        raise InvalidInputError(f"IDX file {path!r} does not exist") from None
    except (OSError, EOFError) as e:
        raise InvalidInputError(f"IDX file {path!r} cannot be read: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise InvalidInputError(
            f"{path!r} is not an IDX (MNIST-format) file: bad magic number "
            f"{raw[:4].hex() or '(empty file)'}; expected 0000 then a type byte "
            f"(08 for unsigned bytes) and the number of dimensions"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise InvalidInputError(f"IDX file {path!r} has a truncated or empty header ({ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"IDX file {path!r} declares shape {dims} ({expected} bytes with the header) "
            f"but holds {len(raw)} bytes: truncated or not an IDX file"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def load_mnist(images_path, labels_path=None):
    """Load MNIST-format (IDX) files a user has on disk, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        images: float32 ``[n, 1, H, W]``, unsigned bytes scaled to [0, 1]; and, if ``labels_path`` is
        given, labels: int64 ``[n]`` (then a tuple ``(images, labels)``).
    """
    images = read_idx(images_path)
    if images.ndim != 3:
        raise InvalidInputError(
            f"{str(images_path)!r} holds an array of shape {images.shape}; MNIST images "
            f"are 3-dimensional [n, rows, cols] (magic number 0x00000803)"
        )
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    x = torch.from_numpy(images.astype(np.float32) / scale)[:, None]
    if labels_path is None:
        return x
    labels = read_idx(labels_path)
    if labels.ndim != 1:
        raise InvalidInputError(
            f"{str(labels_path)!r} holds an array of shape {labels.shape}; MNIST labels "
            f"are 1-dimensional [n] (magic number 0x00000801)"
        )
    if len(labels) != len(x):
        raise InvalidInputError(
            f"{len(x)} images in {str(images_path)!r} but {len(labels)} labels in {str(labels_path)!r}"
        )
    return x, torch.from_numpy(labels.astype(np.int64))
