import gzip
import struct

import numpy as np
import pytest

from morphsparse import data


def write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fake_fashion(tmp_path, compress=True):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 255, (6, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, (6,)),
              "t10k-images-idx3-ubyte": rng.integers(0, 255, (3, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, (3,))}
    for name, array in arrays.items():
        write_idx(tmp_path / name, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_load_from_explicit_path(tmp_path, compress):
    arrays = fake_fashion(tmp_path, compress)
    (x, y), (xt, yt) = data.load_fashion_mnist(tmp_path)
    assert x.shape == (6, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(yt, arrays["t10k-labels-idx1-ubyte"])


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(data.DataNotFoundError, match="IDX files"):
        data.load_fashion_mnist(tmp_path)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setattr(data, "KERAS_CACHE_FASHION_MNIST", tmp_path / "none2")
    monkeypatch.delenv("MORPHSPARSE_FASHION_MNIST", raising=False)
    with pytest.raises(data.DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist()


def test_environment_variable_is_searched(tmp_path, monkeypatch):
    fake_fashion(tmp_path)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setenv("MORPHSPARSE_FASHION_MNIST", str(tmp_path))
    assert data.load_fashion_mnist()[1][0].shape == (3, 28, 28)


def test_mismatched_idx_files_are_refused_naming_them(tmp_path):
    """Labels of the test set next to the training images (6 images, 3 labels), or labels where images belong:
    a ValueError naming both files, not arrays that silently do not pair up."""
    rng = np.random.default_rng(0)
    arrays = fake_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz holds 6 images but .*"
                                         r"train-labels-idx1-ubyte.gz 3 labels"):
        data.load_fashion_mnist(tmp_path)
    fake_fashion(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 10, (3,)))      # labels in the images' place
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz and .*t10k-labels-idx1-ubyte.gz should hold "
                                         r"images .*shapes \(3,\) and \(3,\)"):
        data.load_fashion_mnist(tmp_path)


def test_bad_idx_is_rejected(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "bad")


@pytest.mark.skipif(not data.fashion_mnist_available(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    (x, y), (xt, yt) = data.load_fashion_mnist()
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert sorted(np.unique(y).tolist()) == list(range(10))
    assert data.prepare_images(xt[:2]).shape == (2, 28, 28, 1)


def test_digits_fallback():
    (x, y), (xt, yt) = data.load_digits()
    assert x.shape[1:] == (8, 8) and len(x) + len(xt) == 1797
    assert 0.0 <= x.min() and x.max() <= 1.0
