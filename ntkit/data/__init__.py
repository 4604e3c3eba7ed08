"""Offline data loaders: bundled digits, Fashion-MNIST from Debian files, UCI sets, your own arrays.

Nothing here downloads anything.

* :func:`load_digits` — scikit-learn's bundled 8x8 digits;
* :func:`load_fashion_mnist` — Fashion-MNIST from Debian's ``dataset-fashion-mnist``
  package (``apt-get install -y dataset-fashion-mnist``); :func:`read_idx` reads IDX files;
* :func:`load_array_file` — ``(x, y)`` from a ``.npz``/``.npy`` file (never unpickled);
* UCI regression/classification loaders from :mod:`ntkit.data.uci` when available.

Examples
--------
>>> from ntkit.data import load_digits
>>> x, y = load_digits(images=True)
>>> x.shape
(1797, 1, 8, 8)
"""

from __future__ import annotations

from .digits import load_digits
from .fashion_mnist import load_fashion_mnist, read_idx
from .files import load_array_file

__all__ = ["load_digits", "load_fashion_mnist", "read_idx", "load_array_file"]

try:  # UCI loaders (another module; its optional dependencies must not break `import ntkit.data`)
    from . import uci as _uci
except ImportError:  # pragma: no cover - depends on optional pieces
    _uci = None
else:
    for _name in getattr(_uci, "__all__", []):
        globals()[_name] = getattr(_uci, _name)
        __all__.append(_name)
    del _name
