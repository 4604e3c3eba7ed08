"""Kernels and solves beyond one machine's memory (see ``docs/scaling.md``).

* :func:`kernel` — kernel matrices sharded over ``torch.distributed`` ranks
  into a resumable on-disk :class:`KernelStore`;
* :func:`cg_solve` / :class:`KernelOperator` — preconditioned conjugate
  gradients for ``(K + λI) α = y`` where each rank multiplies only its rows
  (read from a store, or recomputed each time with ``KernelOperator.matrix_free``);
  preconditioners :func:`pivoted_cholesky` and :func:`nystrom_factor`;
* :func:`nystrom`, :func:`relu_random_features` — single-machine
  low-rank approximations ``K ≈ ΦΦᵀ`` with O(n r) memory;
* :func:`as_linear_operator` — GPyTorch ``linear_operator`` adapter (optional dependency).
"""

from ._store import KernelStore, StoreMismatch
from .adapters import as_linear_operator
from .approx import FeatureApproximation, ntk_relu_fc, nystrom, relu_random_features
from .cg import (
    CGResult,
    KernelOperator,
    LowRankPreconditioner,
    cg_solve,
    nystrom_factor,
    pivoted_cholesky,
)
from .kernel import kernel, row_block_owner

__all__ = ["kernel", "row_block_owner", "KernelStore", "StoreMismatch", "cg_solve", "CGResult",
           "KernelOperator", "LowRankPreconditioner", "pivoted_cholesky", "nystrom_factor",
           "nystrom", "relu_random_features", "ntk_relu_fc", "FeatureApproximation",
           "as_linear_operator"]
