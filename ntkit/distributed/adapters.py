"""Adapters for existing solver libraries (optional dependencies, imported lazily).

* :func:`as_linear_operator` — a GPyTorch ``linear_operator.LinearOperator``
  whose products go through :class:`~ntkit.distributed.cg.KernelOperator`
  (tiled, streamed from a store, row-sharded over ranks, or matrix-free), so
  GPyTorch's CG / Lanczos / preconditioners can use an ntkit kernel that never
  sits in memory. Needs ``pip install linear_operator``.
* KeOps is not wrapped: ``pykeops`` needs a C++/CUDA toolchain at import time
  and is not installable here; :meth:`KernelOperator.matrix_free` covers the
  same "recompute instead of store" use.

Examples
--------
>>> import torch
>>> from ntkit.distributed.adapters import as_linear_operator
>>> K = torch.eye(4, dtype=torch.float64)
>>> lo = as_linear_operator(K)                               # doctest: +SKIP
>>> (lo @ torch.ones(4, dtype=torch.float64)).tolist()      # doctest: +SKIP
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import torch

from .cg import KernelOperator

__all__ = ["as_linear_operator"]


def as_linear_operator(K: Any, **operator_kwargs: Any) -> Any:
    """Wrap a kernel (anything :class:`KernelOperator` accepts, or one) as a ``LinearOperator``.

    Parameters
    ----------
    K : KernelOperator, KernelStore, store path, numpy array or tensor
        The symmetric kernel.
    **operator_kwargs
        Passed to :class:`KernelOperator` (``ridge``, ``memory_budget``, ``group``, ...).

    Returns
    -------
    linear_operator.LinearOperator
        ``(n, n)``, float64; supports ``@``, ``.diagonal()``, ``.add_diagonal``,
        ``.solve`` and the rest of the library through products.

    Raises
    ------
    ImportError
        ``linear_operator`` is not installed (message says how to install it).
    """
    try:
        from linear_operator.operators import LinearOperator
    except ImportError:
        raise ImportError("as_linear_operator needs the optional package linear_operator: "
                          "pip install linear_operator") from None
    op = K if isinstance(K, KernelOperator) else KernelOperator(K, **operator_kwargs)

    class _TiledKernelOperator(LinearOperator):
        def __init__(self, anchor: torch.Tensor) -> None:
            super().__init__(anchor)
            self._op = op

        def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
            if rhs.ndim > 2:
                raise ValueError("batched right-hand sides are not supported by the ntkit adapter")
            return self._op.matmul(rhs).to(rhs.dtype)

        def _size(self) -> torch.Size:
            return torch.Size([self._op.n, self._op.n])

        def _transpose_nonbatch(self) -> LinearOperator:
            return self  # a kernel (plus ridge) is symmetric

        def _diagonal(self) -> torch.Tensor:
            return self._op.diagonal() + self._op.ridge

        def _expand_batch(self, batch_shape: Any) -> LinearOperator:  # pragma: no cover
            raise NotImplementedError("the ntkit adapter has no batch dimensions")

    # the anchor tensor only tells linear_operator the dtype/device
    return _TiledKernelOperator(torch.zeros(1, dtype=torch.float64, device=op.device))
