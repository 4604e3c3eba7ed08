"""Fashion-MNIST from the files of Debian's ``dataset-fashion-mnist`` package (no download).

The package installs the four original IDX files (gzip-compressed) under
``/usr/share/datasets/fashion-mnist/``; :func:`read_idx` parses the IDX
format (gzip or plain) and :func:`load_fashion_mnist` assembles a split.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["load_fashion_mnist", "read_idx", "DEFAULT_ROOT", "INSTALL_HINT", "CLASS_NAMES"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type code -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MAX_DIMS = 8


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (as used by MNIST/Fashion-MNIST), plain or gzip-compressed.

    The header is two zero bytes, a type code, the number of dimensions, then
    one big-endian ``uint32`` per dimension; the data follow in big-endian
    order. Truncated or malformed files raise ``ValueError`` naming the file.

    Examples
    --------
    >>> import tempfile, os, struct
    >>> p = os.path.join(tempfile.mkdtemp(), "a-idx1-ubyte")
    >>> with open(p, "wb") as f:
    ...     _ = f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes([7, 8, 9]))
    >>> read_idx(p).tolist()
    [7, 8, 9]
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as fh:
        magic2 = fh.read(2)
    opener = gzip.open if magic2 == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read (corrupt gzip?): {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x}")
    if ndim < 1 or ndim > _MAX_DIMS:
        raise ValueError(f"{path}: IDX file declares {ndim} dimensions (expected 1..{_MAX_DIMS})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dt = np.dtype(_IDX_TYPES[code])
    need = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    if len(raw) - header != need:
        raise ValueError(
            f"{path}: IDX header says shape {dims} ({need} data bytes) but the file holds {len(raw) - header}"
        )
    arr = np.frombuffer(raw, dtype=dt, count=int(np.prod(dims, dtype=np.int64)), offset=header).reshape(dims)
    return arr.astype(dt.newbyteorder("="))


def _find(root: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    return None


def load_fashion_mnist(
    split: str = "train",
    *,
    root: str | None = None,
    images: bool = False,
    dtype: type | np.dtype = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """One split of Fashion-MNIST as ``(x, y)``, pixels scaled to [0, 1].

    Parameters
    ----------
    split : {"train", "test"}
        60 000 training or 10 000 test images.
    root : str, optional
        Directory of the IDX files (default ``/usr/share/datasets/fashion-mnist``,
        where Debian's ``dataset-fashion-mnist`` puts them; ``$NTKIT_FASHION_MNIST``
        overrides it).
    images : bool
        Channels-first images ``(n, 1, 28, 28)`` instead of flat ``(n, 784)``.
    dtype : numpy dtype
        Floating dtype of ``x``.

    Raises
    ------
    FileNotFoundError
        The files are missing; the message gives the install command.

    Examples
    --------
    >>> x, y = load_fashion_mnist("test")  # doctest: +SKIP
    >>> x.shape  # doctest: +SKIP
    (10000, 784)
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = root or os.environ.get("NTKIT_FASHION_MNIST") or DEFAULT_ROOT
    img_stem, lab_stem = _FILES[split]
    img_path, lab_path = _find(root, img_stem), _find(root, lab_stem)
    if img_path is None or lab_path is None:
        missing = img_stem if img_path is None else lab_stem
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed ({missing}[.gz] not found in {root}); install it with: {INSTALL_HINT}"
        )
    x = read_idx(img_path)
    y = read_idx(lab_path)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"Fashion-MNIST files in {root} have unexpected shapes {x.shape} and {y.shape}")
    xf = x.astype(dtype) / np.asarray(255, dtype=dtype)
    xf = xf.reshape(x.shape[0], 1, x.shape[1], x.shape[2]) if images else xf.reshape(x.shape[0], -1)
    return xf, y.astype(np.int64)
