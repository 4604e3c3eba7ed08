"""A user's own data set from ``.npz`` / ``.npy`` files (never unpickled)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

__all__ = ["load_array_file"]

_X_KEYS = ("x", "X", "data", "inputs", "features")
_Y_KEYS = ("y", "Y", "target", "targets", "labels")


def load_array_file(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y)`` from a ``.npz`` archive or a ``.npy`` array, with ``allow_pickle=False``.

    * ``.npz``: arrays named ``x`` and ``y`` (also ``X``/``data``/``inputs`` and
      ``Y``/``target``/``labels``); an archive with a single array gives ``(x, None)``.
    * ``.npy``: a single array ``x``; ``y`` is ``None`` (for labelled data use ``.npz``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an
    unreadable one, an object (pickled) array, or ``x``/``y`` of different lengths.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "d.npz")
    >>> np.savez(p, x=np.zeros((3, 2)), y=np.arange(3))
    >>> x, y = load_array_file(p)
    >>> x.shape, y.tolist()
    ((3, 2), [0, 1, 2])
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if not (magic.startswith(b"\x93NUMPY") or magic.startswith(b"PK")):
        raise ValueError(f"{path} is not a .npy/.npz file (save your arrays with numpy.save or numpy.savez)")
    try:
        obj = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(f"{path} holds Python objects (pickled data), which ntkit does not load; "
                             "save plain numeric arrays with numpy.savez") from None
        raise ValueError(f"{path} is not a readable .npy/.npz file: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a readable .npy/.npz file: {exc}") from None
    if isinstance(obj, np.ndarray):
        x, y = obj, None
    else:
        try:
            keys = list(obj.files)
            xk = next((k for k in _X_KEYS if k in keys), None)
            yk = next((k for k in _Y_KEYS if k in keys), None)
            if xk is None:
                if len(keys) == 1:
                    xk = keys[0]
                else:
                    raise ValueError(f"{path} must hold an array named 'x' (and 'y'); it holds {keys}")
            try:
                x = obj[xk]
                y = obj[yk] if yk is not None else None
            except ValueError as exc:
                raise ValueError(f"{path} holds Python objects (pickled data), which ntkit does not load: "
                                 f"{exc}") from None
        finally:
            obj.close()
    _check_numeric(x, f"{path}: x")
    if y is not None:
        _check_numeric(y, f"{path}: y")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{path}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.ndim < 2:
        raise ValueError(f"{path}: x must be (n, d) or (n, C, H, W), got shape {x.shape}")
    return x, y


def _check_numeric(a: np.ndarray, what: str) -> None:
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numeric, got dtype {a.dtype}")
    if a.shape[:1] == (0,):
        raise ValueError(f"{what} is empty")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or inf")
