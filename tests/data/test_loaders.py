"""Data loaders: IDX parser on synthetic files, Fashion-MNIST package, digits, user arrays."""

import gzip
import os
import struct

import numpy as np
import pytest

from ntkit.data import load_array_file, load_digits, load_fashion_mnist, read_idx
from ntkit.data.fashion_mnist import DEFAULT_ROOT, INSTALL_HINT


def _write_idx(path, arr, code, compress=False):
    dt = {8: ">u1", 9: ">i1", 11: ">i2", 12: ">i4", 13: ">f4", 14: ">f8"}[code]
    body = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    body += np.asarray(arr, dtype=dt).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(body)


@pytest.mark.parametrize("code, values", [(8, [0, 255, 7]), (9, [-128, 5, 127]), (11, [-300, 2, 30000]),
                                          (12, [-(2**31), 0, 2**31 - 1]), (13, [1.5, -2.25, 0.0]),
                                          (14, [1e300, -1e-300, 3.0])])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip_all_types(tmp_path, code, values, compress):
    arr = np.array(values * 4).reshape(2, 2, 3)
    p = str(tmp_path / "f-idx3")
    _write_idx(p, arr, code, compress)
    got = read_idx(p)
    assert got.shape == (2, 2, 3)
    np.testing.assert_array_equal(got, arr)
    assert got.dtype.isnative


def test_read_idx_rejects_malformed(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(str(p))
    p.write_bytes(bytes([0, 0, 0x42, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="type code"):
        read_idx(str(p))
    p.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">II", 3, 3) + b"\x00" * 8)  # one byte short
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        read_idx(str(p))
    p.write_bytes(bytes([0, 0, 8, 2]) + b"\x00")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(p))
    with pytest.raises(FileNotFoundError):
        read_idx(str(tmp_path / "nope"))


def test_fashion_mnist_from_synthetic_root(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    labs = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), imgs, 8, compress=True)
    _write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), labs, 8)  # plain file works too
    x, y = load_fashion_mnist("test", root=str(tmp_path), images=True, dtype=np.float64)
    assert x.shape == (5, 1, 28, 28) and y.tolist() == [3, 1, 4, 1, 5]
    np.testing.assert_allclose(x[:, 0] * 255, imgs)
    with pytest.raises(FileNotFoundError, match="apt-get update && apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", root=str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("valid", root=str(tmp_path))
    assert "dataset-fashion-mnist" in INSTALL_HINT


@pytest.mark.skipif(not os.path.isdir(DEFAULT_ROOT), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    # the published test split is balanced: 1000 images per class
    assert np.bincount(y).tolist() == [1000] * 10


def test_digits():
    x, y = load_digits(images=True)
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert x.min() == 0 and x.max() == 16 and set(np.unique(y)) == set(range(10))


def test_array_files(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    y = np.arange(6)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    gx, gy = load_array_file(str(tmp_path / "a.npz"))
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)
    np.savez(tmp_path / "b.npz", data=x, target=y)
    assert load_array_file(str(tmp_path / "b.npz"))[1].tolist() == y.tolist()
    np.save(tmp_path / "c.npy", x)
    gx, gy = load_array_file(str(tmp_path / "c.npy"))
    assert gy is None and gx.shape == x.shape
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    with pytest.raises(ValueError, match="6 rows but y has 5"):
        load_array_file(str(tmp_path / "d.npz"))
    np.save(tmp_path / "e.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        load_array_file(str(tmp_path / "e.npy"))
    np.savez(tmp_path / "f.npz", x=np.array([1, None], dtype=object), y=y)
    with pytest.raises(ValueError, match="pickled"):
        load_array_file(str(tmp_path / "f.npz"))
    (tmp_path / "g.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a .npy/.npz file"):
        load_array_file(str(tmp_path / "g.npz"))
    with pytest.raises(FileNotFoundError):
        load_array_file(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "h.npz", x=np.array([[np.nan, 1.0]]), y=[0])
    with pytest.raises(ValueError, match="NaN"):
        load_array_file(str(tmp_path / "h.npz"))
