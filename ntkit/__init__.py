"""ntkit — the Neural Tangent Kernel toolkit for PyTorch.

Public API (imported lazily, so ``import ntkit`` stays light):

* empirical kernels of any ``nn.Module``: :func:`empirical_ntk`,
  :func:`empirical_nngp`, :func:`ntk_vector_product`, :func:`pseudo_ntk`;
* infinite-width kernels and matching finite networks: :mod:`ntkit.layers`,
  :func:`monte_carlo_kernel`;
* training dynamics and inference: :mod:`ntkit.predict`, :func:`linearize`,
  :func:`train`;
* theory checks: :mod:`ntkit.diagnostics`.

Examples
--------
>>> import torch, ntkit as nk
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
>>> nk.empirical_ntk(net, torch.randn(4, 3)).shape
torch.Size([4, 4])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

# public name -> module that defines it
_LAZY = {
    "empirical_ntk": "ntkit.empirical",
    "empirical_nngp": "ntkit.empirical",
    "ntk_vector_product": "ntkit.empirical",
    "pseudo_ntk": "ntkit.empirical",
    "monte_carlo_kernel": "ntkit.monte_carlo",
    "linearize": "ntkit.linearize",
    "taylor_expand": "ntkit.linearize",
    "train": "ntkit.train",
    "TrainingRecord": "ntkit.train",
    "Kernel": "ntkit.layers.kernel",
}
_SUBMODULES = ("layers", "empirical", "predict", "diagnostics", "data", "tiling", "sklearn", "report", "distributed")

__all__ = sorted(list(_LAZY) + list(_SUBMODULES) + ["__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        mod = importlib.import_module(f"ntkit.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'ntkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
