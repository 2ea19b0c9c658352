"""Real data sets that need no download at run time.

Fashion-MNIST comes from an explicit path, the ``MORPHSPARSE_FASHION_MNIST`` environment variable, Debian's
``dataset-fashion-mnist`` package or Keras's cache, in that order. scikit-learn's bundled 8x8 digits are the
small real fallback that tests can rely on without the Debian package.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_FASHION_MNIST = Path("~/.keras/datasets/fashion-mnist").expanduser()

_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataNotFoundError(FileNotFoundError):
    """Raised when a data set is not on this machine; the message says how to install it."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{dtype_code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: holds {array.size} values, header says shape {shape}")
    return array.reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _fashion_dir_candidates(path):
    if path is not None:
        return [Path(path).expanduser()]
    candidates = []
    if os.environ.get("MORPHSPARSE_FASHION_MNIST"):
        candidates.append(Path(os.environ["MORPHSPARSE_FASHION_MNIST"]).expanduser())
    candidates += [DEBIAN_FASHION_MNIST, KERAS_CACHE_FASHION_MNIST]
    return candidates


def fashion_mnist_available(path=None) -> bool:
    """True when Fashion-MNIST can be loaded without a download."""
    return any(all(_find_idx(d, stem) for stem in _FASHION_FILES.values())
               for d in _fashion_dir_candidates(path))


def load_fashion_mnist(path=None):
    """Fashion-MNIST as ``(x_train, y_train), (x_test, y_test)``: uint8 images (n, 28, 28), uint8 labels.

    Looks in ``path`` if given (a folder holding the four IDX files, gzip-compressed or not), else in
    ``$MORPHSPARSE_FASHION_MNIST``, Debian's ``/usr/share/datasets/fashion-mnist`` and Keras's cache
    ``~/.keras/datasets/fashion-mnist``. Never downloads.
    """
    searched = _fashion_dir_candidates(path)
    for directory in searched:
        files = {key: _find_idx(directory, stem) for key, stem in _FASHION_FILES.items()}
        if all(files.values()):
            arrays = {key: read_idx(f) for key, f in files.items()}
            _check_pairs(arrays, files)
            return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
        if path is not None:
            missing = [stem for key, stem in _FASHION_FILES.items() if files[key] is None]
            raise DataNotFoundError(f"{directory} does not hold the Fashion-MNIST IDX files {missing} "
                                    "(gzip-compressed '.gz' or plain).")
    raise DataNotFoundError(
        "Fashion-MNIST was not found in " + ", ".join(str(d) for d in searched) + ". Install Debian's package "
        "with `apt-get install dataset-fashion-mnist` (as root), or pass load_fashion_mnist(path=...) a folder "
        "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz. morphsparse never downloads data at run time.")


def _check_pairs(arrays, files):
    """Images are (n, h, w), labels (n,), and each set has as many labels as images: a folder mixing files of
    different sets or versions is refused, naming the files."""
    for images, labels in (("x_train", "y_train"), ("x_test", "y_test")):
        x, y = arrays[images], arrays[labels]
        if x.ndim != 3 or y.ndim != 1:
            raise ValueError(f"{files[images]} and {files[labels]} should hold images (n, height, width) and labels "
                             f"(n,), but hold arrays of shapes {x.shape} and {y.shape}: are the files swapped?")
        if len(x) != len(y):
            raise ValueError(f"{files[images]} holds {len(x)} images but {files[labels]} {len(y)} labels: the files "
                             "come from different sets or versions; put the four files of one Fashion-MNIST "
                             "release in the folder")


def fashion_mnist_subset(train_images=None, test_images=None, seed=0, path=None):
    """A random subset of the Fashion-MNIST training images and the first test images, ready for a network:
    ``(x_train, y_train), (x_test, y_test)`` with float32 images in [0, 1] of shape (n, 28, 28, 1).

    ``train_images`` training images drawn without replacement by a generator seeded with ``seed`` (the same
    subset on every run; None: all 60,000, unshuffled), ``test_images`` the first ones of the test set (None:
    all 10,000). The examples' studies share it so that they train on the same images.
    """
    (x, y), (xt, yt) = load_fashion_mnist(path)
    if train_images is not None:
        chosen = np.random.default_rng(seed).permutation(len(x))[:train_images]
        x, y = x[chosen], y[chosen]
    if test_images is not None:
        xt, yt = xt[:test_images], yt[:test_images]
    return (prepare_images(x), y), (prepare_images(xt), yt)


def load_digits(test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn's bundled 8x8 digits as ``(x_train, y_train), (x_test, y_test)``.

    Images are float32 in [0, 1] of shape (n, 8, 8); labels int64. The split is stratified-free but seeded.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise DataNotFoundError("load_digits needs scikit-learn: pip install 'morphsparse[dev]' "
                                "or pip install scikit-learn") from err
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sk_load_digits()
    x = (bunch.images / 16.0).astype("float32")
    y = bunch.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def prepare_images(x, dtype="float32"):
    """Scale uint8 images to [0, 1] and add a trailing channel axis: (n, h, w) -> (n, h, w, 1)."""
    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    x = (x.astype(dtype) / scale)
    return x[..., None] if x.ndim == 3 else x
