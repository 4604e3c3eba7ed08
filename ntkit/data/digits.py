"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download)."""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits"]


def load_digits(*, images: bool = False, dtype: type | np.dtype = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The UCI/scikit-learn digits: pixel intensities 0..16 and labels 0..9.

    Parameters
    ----------
    images : bool
        Return ``x`` as channels-first images ``(1797, 1, 8, 8)`` instead of
        flat vectors ``(1797, 64)``.
    dtype : numpy dtype
        Floating dtype of ``x``.

    Returns
    -------
    x : numpy.ndarray
        Raw intensities (0..16), unscaled.
    y : numpy.ndarray
        ``int64`` class labels.

    Examples
    --------
    >>> x, y = load_digits()
    >>> x.shape, y.shape, int(y.max())
    ((1797, 64), (1797,), 9)
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError:  # optional dependency
        raise ImportError(
            "the digits dataset comes with scikit-learn; install it with `pip install scikit-learn` "
            "(or `pip install ntkit[sklearn]`)"
        ) from None
    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=dtype)
    y = np.asarray(bunch.target, dtype=np.int64)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return x, y
