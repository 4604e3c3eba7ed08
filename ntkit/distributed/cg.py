"""Preconditioned conjugate gradients for ``(K + λI) α = y`` with K never on one rank.

:class:`KernelOperator` wraps a kernel held in a :class:`KernelStore`, a
numpy array / memory map or a torch tensor. Under ``torch.distributed`` each
rank multiplies only its contiguous block of rows (streamed from disk in
chunks that fit ``memory_budget``) and one ``all_reduce`` of an ``(n, k)``
float64 array per product assembles ``K v`` on every rank. Vectors, the
preconditioner and the CG recurrences are O(n r) and are replicated.

Preconditioners are low-rank approximations ``K ≈ L Lᵀ`` used as
``P = L Lᵀ + λI`` (applied exactly through the thin SVD of ``L``):

* :func:`pivoted_cholesky` — partial, greedy on the largest remaining diagonal;
* :func:`nystrom_factor` — uniformly sampled landmarks, ``L = K[:, S] W^{-1/2}``.

Examples
--------
>>> import torch
>>> from ntkit.distributed import cg_solve
>>> a = torch.randn(50, 5, dtype=torch.float64)
>>> K = a @ a.T
>>> y = torch.randn(50, dtype=torch.float64)
>>> res = cg_solve(K, y, ridge=0.1, preconditioner="pivoted_cholesky", rank=5, tol=1e-10)
>>> exact = torch.linalg.solve(K + 0.1 * torch.eye(50, dtype=torch.float64), y)
>>> bool(torch.allclose(res.x, exact, atol=1e-7)), res.iterations <= 3
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._validation import as_input_tensor
from ..tiling import parse_memory
from ._comm import all_reduce_sum, broadcast, rank_world
from ._store import KernelStore

__all__ = ["KernelOperator", "LowRankPreconditioner", "pivoted_cholesky", "nystrom_factor", "cg_solve",
           "CGResult"]


class KernelOperator:
    """The linear map ``v -> (K + ridge·I) v`` for a kernel stored anywhere, row-sharded over ranks.

    Parameters
    ----------
    K : KernelStore, numpy array (memory map), torch tensor, or path of a store
        A symmetric ``(n, n)`` kernel.
    name : str, optional
        Which result of a :class:`KernelStore` (default: ``"ntk"`` if present, else its only one).
    ridge : float
        ``λ >= 0`` added to the diagonal.
    memory_budget : int or str
        Bytes of matrix rows (plus their float64 copy) one product holds at a time.
    group : optional
        ``torch.distributed`` process group (default: world; one process without one).
    device : optional
        Where products are computed (default CPU; pass ``"cuda"`` under NCCL).

    Attributes
    ----------
    rows : tuple of int
        ``(start, stop)`` of the rows this rank multiplies.
    matvecs : int
        Number of products done so far.

    Examples
    --------
    >>> import torch
    >>> K = torch.eye(3, dtype=torch.float64)
    >>> KernelOperator(K, ridge=1.0).matmul(torch.ones(3, dtype=torch.float64))
    tensor([2., 2., 2.], dtype=torch.float64)
    """

    def __init__(
        self,
        K: Any,
        *,
        name: str | None = None,
        ridge: float = 0.0,
        memory_budget: int | str = "256MB",
        group: Any = None,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(K, str):
            K = KernelStore.attach(K)
        self._store: KernelStore | None = None
        self._dense: torch.Tensor | None = None
        self._array: np.ndarray | None = None
        self._fn: Any = None
        if isinstance(K, _MatrixFree):
            self._fn, shape = K, (K.n, K.n)
        elif isinstance(K, KernelStore):
            if name is None:
                name = "ntk" if "ntk" in K.names else (K.names[0] if len(K.names) == 1 else None)
                if name is None:
                    raise ValueError(f"the store holds {K.names}: pass name= to pick one")
            if name not in K.names:
                raise ValueError(f"name must be one of the store's results {K.names}, got {name!r}")
            if not K.complete:
                raise ValueError(f"the kernel store {K.directory} is incomplete "
                                 f"({len(K.done())}/{K.n_tiles} tiles): finish it with kernel() first")
            self._store, self.name, shape = K, name, K.shape
        elif isinstance(K, torch.Tensor):
            self._dense, shape = K, tuple(K.shape)
        elif isinstance(K, np.ndarray):
            self._array, shape = K, K.shape
        else:
            raise TypeError(f"K must be a KernelStore, store path, numpy array or torch tensor, got "
                            f"{type(K).__name__}")
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"K must be a square (n, n) kernel, got shape {tuple(shape)}")
        ridge = float(ridge)
        if not math.isfinite(ridge) or ridge < 0:
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
        self.n = int(shape[0])
        self.ridge = ridge
        self.group = group
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        rank, world = rank_world(group)
        self.rank, self.world_size = rank, world
        self.rows = (rank * self.n // world, (rank + 1) * self.n // world)
        budget = parse_memory(memory_budget)
        self._chunk = max(1, int(budget // (self.n * 16)))
        self.matvecs = 0

    @classmethod
    def matrix_free(
        cls,
        source: Any,
        x: Any,
        *,
        get: str = "ntk",
        ridge: float = 0.0,
        memory_budget: int | str = "256MB",
        group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> KernelOperator:
        """An operator that recomputes its rows of K inside every product instead of storing K.

        O(n) memory and no disk, at the price of recomputing n²/R kernel
        entries per product on each of R ranks (the only exact option once
        n² numbers no longer fit anywhere; see ``docs/scaling.md``).
        ``source`` is an ntkit layer, an ``nn.Module`` or ``fn(a, b)`` as in
        :func:`ntkit.distributed.kernel`.

        Examples
        --------
        >>> import torch
        >>> x = torch.randn(20, 3, dtype=torch.float64)
        >>> lin = lambda a, b: a @ (a if b is None else b).T
        >>> op = KernelOperator.matrix_free(lin, x, get="k", ridge=1.0)
        >>> v = torch.randn(20, dtype=torch.float64)
        >>> bool(torch.allclose(op.matmul(v), x @ (x.T @ v) + v))
        True
        """
        return cls(_MatrixFree(source, x, get, dtype), ridge=ridge, memory_budget=memory_budget,
                   group=group, device=device)

    # ---- access to K ------------------------------------------------------------------
    def _read(self, r0: int, r1: int) -> torch.Tensor:
        if self._fn is not None:
            return self._fn.rows(r0, r1)
        if self._store is not None:
            return torch.from_numpy(self._store.read_rows(self.name, r0, r1))
        if self._dense is not None:
            return self._dense[r0:r1]
        return torch.from_numpy(np.array(self._array[r0:r1]))

    def row_set(self, idx: Sequence[int]) -> torch.Tensor:
        """Rows ``K[idx, :]`` as float64 (read on this rank only; no ridge)."""
        idx = [int(i) for i in idx]
        if self._fn is not None:
            return self._fn.row_set(idx)
        if self._store is not None:
            return torch.from_numpy(self._store.read_row_set(self.name, idx)).to(torch.float64)
        if self._dense is not None:
            return self._dense[idx].to(torch.float64)
        return torch.from_numpy(np.array(self._array[idx])).to(torch.float64)

    def diagonal(self) -> torch.Tensor:
        """``diag(K)`` as float64 (no ridge)."""
        if self._fn is not None:
            return self._fn.diagonal()
        if self._store is not None:
            return torch.from_numpy(self._store.diagonal(self.name)).to(torch.float64)
        if self._dense is not None:
            return torch.diagonal(self._dense).to(torch.float64).clone()
        return torch.from_numpy(np.array(np.diagonal(self._array))).to(torch.float64)

    # ---- products -----------------------------------------------------------------------
    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """``(K + ridge·I) v`` for ``v`` of shape ``(n,)`` or ``(n, k)``, float64, on every rank.

        Each rank multiplies its rows in float64 (the stored float32 rows are
        upcast chunk by chunk), then one ``all_reduce`` sums the pieces.
        """
        squeeze = v.ndim == 1
        V = (v[:, None] if squeeze else v).to(device=self.device, dtype=torch.float64)
        if V.shape[0] != self.n:
            raise ValueError(f"v must have {self.n} rows, got shape {tuple(v.shape)}")
        out = torch.zeros_like(V)
        r0, r1 = self.rows
        for a in range(r0, r1, self._chunk):
            b = min(a + self._chunk, r1)
            block = self._read(a, b).to(device=self.device, dtype=torch.float64)
            out[a:b] = block @ V
        all_reduce_sum(out, self.group)
        if self.ridge:
            out += self.ridge * V
        self.matvecs += 1
        return out[:, 0] if squeeze else out

    __matmul__ = matmul


class _MatrixFree:
    """Rows of K computed on demand from a kernel source (see :meth:`KernelOperator.matrix_free`)."""

    def __init__(self, source: Any, x: Any, get: str, dtype: torch.dtype) -> None:
        from .kernel import _tile_function

        if not isinstance(get, str):
            raise TypeError(f"get must be one name such as 'ntk', got {get!r}")
        self.x = as_input_tensor(x, "x", dtype=dtype, min_ndim=2)
        self.n = int(self.x.shape[0])
        self.get = get
        self._fn, _ = _tile_function(source, (get,), None, dtype)

    def _k(self, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return self._fn(a, b)[self.get].detach().to(torch.float64)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        return self._k(self.x[r0:r1], self.x)

    def row_set(self, idx: list[int]) -> torch.Tensor:
        return self._k(self.x[idx], self.x)

    def diagonal(self, chunk: int = 256) -> torch.Tensor:
        parts = [torch.diagonal(self._k(self.x[a:a + chunk], None)) for a in range(0, self.n, chunk)]
        return torch.cat(parts)


class LowRankPreconditioner:
    """``P⁻¹`` for ``P = L Lᵀ + λI``, applied exactly through the thin SVD ``L = U S Vᵀ``.

    ``P⁻¹ v = U diag(1/(s² + λ)) Uᵀ v + (v − U Uᵀ v) / λ``.

    Examples
    --------
    >>> import torch
    >>> L = torch.randn(6, 2, dtype=torch.float64)
    >>> P = LowRankPreconditioner(L, 0.5)
    >>> M = L @ L.T + 0.5 * torch.eye(6, dtype=torch.float64)
    >>> v = torch.randn(6, dtype=torch.float64)
    >>> bool(torch.allclose(M @ P(v), v))
    True
    """

    def __init__(self, L: torch.Tensor, ridge: float) -> None:
        if not ridge > 0:
            raise ValueError(f"a low-rank preconditioner needs ridge > 0, got {ridge!r}")
        L = L.to(torch.float64)
        if L.shape[1] == 0:
            self.U = L
            self.inv = L.new_zeros(0)
        else:
            U, s, _ = torch.linalg.svd(L, full_matrices=False)
            self.U = U
            self.inv = 1.0 / (s * s + ridge)
        self.ridge = float(ridge)
        self.rank = int(L.shape[1])

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        squeeze = v.ndim == 1
        V = v[:, None] if squeeze else v
        U = self.U.to(V.device)
        c = U.T @ V
        out = U @ (c * self.inv.to(V.device)[:, None]) + (V - U @ c) / self.ridge
        return out[:, 0] if squeeze else out


def pivoted_cholesky(op: KernelOperator, rank: int, tol: float = 1e-10) -> torch.Tensor:
    """Partial pivoted Cholesky ``K ≈ L Lᵀ``, ``L`` of shape ``(n, r)``, ``r <= rank``.

    Greedy: each step takes the row with the largest remaining diagonal
    (the error ``diag(K − L Lᵀ)``), so it reads only ``r`` rows of K; it
    stops early once the remaining trace is below ``tol`` times the trace.
    Computed on rank 0 and broadcast, so all ranks hold the same factor.

    Examples
    --------
    >>> import torch
    >>> a = torch.randn(8, 3, dtype=torch.float64)
    >>> L = pivoted_cholesky(KernelOperator(a @ a.T), rank=3)
    >>> bool(torch.allclose(L @ L.T, a @ a.T))
    True
    """
    if int(rank) != rank or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    n = op.n
    rank = min(int(rank), n)
    L = torch.zeros(n, rank, dtype=torch.float64)
    r_used = torch.zeros(1, dtype=torch.float64)
    if op.rank == 0:
        d = op.diagonal()
        if (d < -1e-8 * d.abs().max().clamp_min(1e-300)).any():
            raise ValueError("K has negative diagonal entries: it is not a positive semi-definite kernel")
        total = float(d.clamp_min(0).sum())
        k = 0
        for k in range(rank):
            i = int(torch.argmax(d))
            if d[i] <= tol * total or d[i] <= 0:
                break
            row = op.row_set([i])[0]
            col = (row - L[:, :k] @ L[i, :k]) / math.sqrt(float(d[i]))
            L[:, k] = col
            d = d - col * col
            d[i] = 0.0
            d.clamp_(min=0.0)
        else:
            k = rank
        r_used[0] = k
    broadcast(r_used, 0, op.group)
    broadcast(L, 0, op.group)
    return L[:, : int(r_used[0])].contiguous()


def nystrom_factor(op: KernelOperator, rank: int, seed: int = 0, rcond: float = 1e-10) -> torch.Tensor:
    """Nyström factor ``L = K[:, S] W^{-1/2}`` (``W = K[S, S]``) from ``rank`` uniform landmarks.

    ``L Lᵀ = K[:, S] W⁺ K[S, :]``; eigenvalues of ``W`` below ``rcond`` times
    the largest are dropped. Computed on rank 0 and broadcast.

    Examples
    --------
    >>> import torch
    >>> a = torch.randn(8, 3, dtype=torch.float64)
    >>> L = nystrom_factor(KernelOperator(a @ a.T), rank=5)
    >>> bool(torch.allclose(L @ L.T, a @ a.T))
    True
    """
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    n = op.n
    rank = min(int(rank), n)
    L = torch.zeros(n, rank, dtype=torch.float64)
    r_used = torch.zeros(1, dtype=torch.float64)
    if op.rank == 0:
        g = torch.Generator().manual_seed(int(seed))
        S = torch.randperm(n, generator=g)[:rank].sort().values
        C = op.row_set(S.tolist()).T  # (n, m): K symmetric
        W = C[S]
        W = 0.5 * (W + W.T)
        evals, evecs = torch.linalg.eigh(W)
        keep = evals > rcond * evals.max().clamp_min(1e-300)
        Lk = C @ (evecs[:, keep] / evals[keep].sqrt())
        L[:, : Lk.shape[1]] = Lk
        r_used[0] = Lk.shape[1]
    broadcast(r_used, 0, op.group)
    broadcast(L, 0, op.group)
    return L[:, : int(r_used[0])].contiguous()


@dataclass
class CGResult:
    """Result of :func:`cg_solve`.

    Attributes
    ----------
    x : torch.Tensor
        Solution, shape of ``y``, float64.
    iterations : int
        CG iterations (= products with K) until every column met ``tol``.
    converged : bool
        Whether every column reached ``tol`` within ``maxiter``.
    residuals : list of float
        Largest recurrence relative residual ``‖r‖/‖y‖`` over columns, per iteration.
    relative_residual : float
        The true ``max_col ‖y − (K+λI)x‖ / ‖y‖`` at the end (one extra product).
    preconditioner_rank : int
        Rank of the low-rank preconditioner (0: none).
    """

    x: torch.Tensor
    iterations: int
    converged: bool
    residuals: list[float] = field(default_factory=list)
    relative_residual: float = float("nan")
    preconditioner_rank: int = 0


def cg_solve(
    K: Any,
    y: Any,
    ridge: float = 0.0,
    *,
    preconditioner: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 100,
    tol: float = 1e-6,
    maxiter: int | None = None,
    seed: int = 0,
    name: str | None = None,
    memory_budget: int | str = "256MB",
    group: Any = None,
    device: torch.device | str | None = None,
) -> CGResult:
    """Solve ``(K + ridge·I) x = y`` by (preconditioned) conjugate gradients.

    Parameters
    ----------
    K : KernelOperator, KernelStore, store path, numpy array or torch tensor
        Symmetric positive semi-definite kernel (see :class:`KernelOperator`).
    y : tensor or array
        Right-hand side ``(n,)`` or ``(n, k)``; columns are solved together
        (one product with K per iteration for all of them).
    ridge : float
        ``λ >= 0``; must be > 0 for a preconditioner.
    preconditioner : {None, "pivoted_cholesky", "nystrom"} or callable
        Low-rank preconditioner of the given ``rank``, or any ``v -> P⁻¹ v``.
    rank : int
        Rank of the low-rank preconditioner.
    tol : float
        Stop when ``‖r‖ / ‖y‖ <= tol`` for every column.
    maxiter : int, optional
        Default ``10 n``.
    seed : int
        Landmark draw of the Nyström preconditioner.
    name, memory_budget, group, device
        Passed on to :class:`KernelOperator` when ``K`` is not one.

    Returns
    -------
    CGResult

    Examples
    --------
    >>> import torch
    >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> cg_solve(K, torch.tensor([3.0, 3.0]), tol=1e-12).x
    tensor([1., 1.], dtype=torch.float64)
    """
    if isinstance(K, KernelOperator):
        op = K
        if ridge:
            raise ValueError("pass ridge to the KernelOperator, not to cg_solve, when K is an operator")
    else:
        op = KernelOperator(K, name=name, ridge=ridge, memory_budget=memory_budget, group=group,
                            device=device)
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    yt = as_input_tensor(y, "y", dtype=torch.float64).to(op.device)
    if yt.shape[0] != op.n or yt.ndim > 2:
        raise ValueError(f"y must have shape ({op.n},) or ({op.n}, k), got {tuple(yt.shape)}")
    maxiter = 10 * op.n if maxiter is None else int(maxiter)
    if maxiter < 1:
        raise ValueError(f"maxiter must be >= 1, got {maxiter}")
    Y = yt[:, None] if yt.ndim == 1 else yt
    prec_rank = 0
    if preconditioner is None:
        def apply_p(v: torch.Tensor) -> torch.Tensor:
            return v
    elif isinstance(preconditioner, str):
        if preconditioner not in ("pivoted_cholesky", "nystrom"):
            raise ValueError("preconditioner must be None, 'pivoted_cholesky', 'nystrom' or a callable, "
                             f"got {preconditioner!r}")
        if not op.ridge > 0:
            raise ValueError("a low-rank preconditioner needs ridge > 0 (P = L Lᵀ + ridge·I)")
        L = pivoted_cholesky(op, rank) if preconditioner == "pivoted_cholesky" else nystrom_factor(op, rank, seed)
        apply_p = LowRankPreconditioner(L.to(op.device), op.ridge)
        prec_rank = L.shape[1]
    elif callable(preconditioner):
        apply_p = preconditioner
    else:
        raise TypeError(f"preconditioner must be None, a name or a callable, got {type(preconditioner).__name__}")

    ynorm = torch.linalg.vector_norm(Y, dim=0)
    ynorm = torch.where(ynorm > 0, ynorm, torch.ones_like(ynorm))
    X = torch.zeros_like(Y)
    R = Y.clone()
    Z = apply_p(R)
    P = Z.clone()
    rz = (R * Z).sum(0)
    active = torch.ones(Y.shape[1], dtype=torch.bool, device=Y.device)
    history: list[float] = []
    it = 0
    rel = torch.linalg.vector_norm(R, dim=0) / ynorm
    converged = bool((rel <= tol).all())
    while not converged and it < maxiter:
        Q = op.matmul(P)
        it += 1
        pq = (P * Q).sum(0)
        alpha = torch.where(active & (pq > 0), rz / torch.where(pq > 0, pq, torch.ones_like(pq)),
                            torch.zeros_like(pq))
        X += alpha * P
        R -= alpha * Q
        rel = torch.linalg.vector_norm(R, dim=0) / ynorm
        active = active & (rel > tol)
        history.append(float(rel.max()))
        flag = torch.tensor([0.0 if bool(active.any()) else 1.0], dtype=torch.float64)
        broadcast(flag, 0, op.group)  # rank 0 decides, so ranks never disagree on stopping
        if flag.item() == 1.0:
            converged = True
            break
        Z = apply_p(R)
        rz_new = (R * Z).sum(0)
        beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        P = Z + beta * P
        rz = torch.where(active, rz_new, rz)
    true_res = Y - op.matmul(X)
    true_rel = float((torch.linalg.vector_norm(true_res, dim=0) / ynorm).max())
    x = X[:, 0] if yt.ndim == 1 else X
    return CGResult(x=x, iterations=it, converged=converged, residuals=history,
                    relative_residual=true_rel, preconditioner_rank=prec_rank)
