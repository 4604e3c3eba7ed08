"""NTK-vector products: ``Θ v = J1 (J2ᵀ v)`` by a vjp then a jvp, never forming ``J``.

* :class:`NTKOperator` (returned by :func:`ntk_vector_product`) applies
  ``v ↦ Θ v`` with one reverse pass over ``x2`` (``u = J2ᵀ v``, a
  parameter-shaped vector) and one forward-mode pass over ``x1`` (``J1 u``).
* :func:`compute` builds the whole kernel from products with the basis
  vectors ``e_(j, b)`` of the ``n2·k`` columns, a chunk of columns at a time
  (vmapped): only ``cols · P`` numbers of parameter space are alive at once
  (``cols`` from the memory budget, down to a single column).
  Cost ``≈ n1 n2 k`` forward-mode passes of one example — attractive when
  ``P`` is huge and ``n k`` small, or for ``output="full"`` with many outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import jvp, vjp, vmap

from ..tiling import parse_memory
from ._common import (
    DEFAULT_MEMORY_BUDGET,
    Context,
    ParamsArg,
    check_train_mode,
    make_context,
    prepare_inputs,
    run_blocks,
    select_params,
)

__all__ = ["NTKOperator", "ntk_vector_product", "compute"]


def _tile(ctx: Context, xa: torch.Tensor, xb: torch.Tensor, full: bool, cols: int) -> torch.Tensor:
    """Θ between blocks ``xa`` (rows) and ``xb`` (columns) from basis-vector products.

    At most ``cols`` columns ``e_(j, b)`` (hence ``cols`` parameter-sized vectors)
    are alive at once: whole examples (all ``k`` outputs) when ``cols >= k``,
    else slices of one example's outputs.
    """
    n1, n2, k = xa.shape[0], xb.shape[0], ctx.k
    out = xa.new_zeros((n1, n2, k, k) if full else (n1, n2), dtype=ctx.dtype)

    def f_rows(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return ctx.fn(p, xa)

    def push(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return jvp(f_rows, (ctx.params,), (t,))[1]

    eye = torch.eye(k, dtype=ctx.dtype, device=ctx.device)
    m = max(1, cols // k)  # examples per chunk
    for s in range(0, n2, m):
        xc = xb[s : s + m]
        mc = xc.shape[0]
        _, pull = vjp(lambda p, xc=xc: ctx.fn(p, xc), ctx.params)
        if cols >= k:
            # basis cotangents e_(j, b) for the mc*k columns of this chunk: (mc*k, mc, k)
            cot = torch.einsum("jJ,bB->jbJB", torch.eye(mc, dtype=ctx.dtype, device=ctx.device), eye)
            u = vmap(pull, randomness=ctx.randomness)(cot.reshape(mc * k, mc, k))[0]
            res = vmap(push, randomness=ctx.randomness)(u).reshape(mc, k, n1, k)  # [j, b, i, a]
            if full:
                out[:, s : s + mc] = res.permute(2, 0, 3, 1)
            else:
                out[:, s : s + mc] = res.diagonal(dim1=1, dim2=3).sum(-1).T
            continue
        for b0 in range(0, k, cols):  # one example, a slice of its outputs
            c = min(cols, k - b0)
            u = vmap(pull, randomness=ctx.randomness)(eye[b0 : b0 + c].unsqueeze(1))[0]
            res = vmap(push, randomness=ctx.randomness)(u)  # [b, i, a]
            if full:
                out[:, s, :, b0 : b0 + c] = res.permute(1, 2, 0)
            else:
                out[:, s] += res[torch.arange(c), :, b0 + torch.arange(c)].sum(0)
    return out


def _diag(ctx: Context, x: torch.Tensor, full: bool) -> torch.Tensor:
    """The ``x = x'`` blocks ``Θ(x_i, x_i)`` via per-example vjp/jvp."""
    eye = torch.eye(ctx.k, dtype=ctx.dtype, device=ctx.device)

    def one(xi: torch.Tensor) -> torch.Tensor:
        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return ctx.fn_single(p, xi)

        _, pull = vjp(f, ctx.params)
        u = vmap(pull)(eye)[0]
        res = vmap(lambda t: jvp(f, (ctx.params,), (t,))[1])(u)  # [b, a]
        return res.T if full else res.diagonal().sum()

    return vmap(one, randomness=ctx.randomness)(x)


def compute(
    ctx: Context,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    output: str,
    batch_size: int | None,
    memory_budget: int | str | None,
    progress: bool,
) -> torch.Tensor:
    """The empirical NTK from NTK-vector products (see :func:`ntkit.empirical_ntk`)."""
    full = output in ("full", "diagonal")
    diagonal_only = output in ("diagonal", "sample_diagonal")
    s = ctx.itemsize
    per_col_example = 3.0 * ctx.k * ctx.n_params * s
    budget = parse_memory(memory_budget if memory_budget is not None else DEFAULT_MEMORY_BUDGET)
    cols = max(1, int(budget // (3.0 * ctx.n_params * s)))  # parameter-sized vectors alive at once
    if batch_size is not None:
        cols = min(cols, int(batch_size) * ctx.k)
    return run_blocks(
        lambda x: x,
        lambda a, b: _tile(ctx, a, b, full, cols),
        lambda a: _diag(ctx, a, full),
        x1,
        x2,
        diagonal_only,
        per_col_example if diagonal_only else 0.0,
        (ctx.k * ctx.k if full else 1) * s * (1 + ctx.k),
        batch_size,
        memory_budget,
        progress,
        "eNTK (ntvp)",
    )


class NTKOperator:
    """The linear map ``v ↦ Θ v`` of an empirical NTK, applied without forming ``Θ``.

    ``Θ`` is viewed as an ``(n1·k, n2·k)`` matrix with row index ``i·k + a``
    (example ``i`` of ``x1``, output ``a``) and column index ``j·k + b``.
    ``op @ v`` accepts ``v`` of shape ``(n2·k,)``, ``(n2, k)`` (returned as
    ``(n1, k)``) or ``(n2·k, m)`` (``m`` vectors at once); numpy in, numpy out.
    Each product costs one reverse pass over ``x2`` and one forward-mode pass
    over ``x1`` (in chunks of ``batch_size`` examples).
    """

    def __init__(self, ctx: Context, x1: torch.Tensor, x2: torch.Tensor, batch_size: int | None = None) -> None:
        self._ctx, self._x1, self._x2 = ctx, x1, x2
        self._bs = batch_size
        self.k = ctx.k
        self.shape = (x1.shape[0] * ctx.k, x2.shape[0] * ctx.k)
        self.dtype = ctx.dtype

    def _chunks(self, n: int) -> list[slice]:
        b = n if self._bs is None else int(self._bs)
        return [slice(s, min(s + b, n)) for s in range(0, n, b)]

    def _apply(self, v: torch.Tensor, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """``J(xa) J(xb)ᵀ v`` with ``v`` of shape ``(len(xb), k)`` -> ``(len(xa), k)``."""
        ctx = self._ctx
        u = None
        for sl in self._chunks(xb.shape[0]):
            _, pull = vjp(lambda p, sl=sl: ctx.fn(p, xb[sl]), ctx.params)
            g = pull(v[sl])[0]
            u = g if u is None else {n: u[n] + g[n] for n in u}
        outs = [jvp(lambda p, sl=sl: ctx.fn(p, xa[sl]), (ctx.params,), (u,))[1] for sl in self._chunks(xa.shape[0])]
        return torch.cat(outs, 0)

    def _prepare(self, v: object, n: int) -> tuple[torch.Tensor, str, bool]:
        as_numpy = isinstance(v, np.ndarray)
        t = torch.as_tensor(v, dtype=self.dtype, device=self._ctx.device)
        if not bool(torch.isfinite(t).all()):
            raise ValueError("v contains NaN or inf")
        k = self.k
        if t.ndim == 1 and t.shape[0] == n * k:
            return t.reshape(n, k), "vec", as_numpy
        if t.ndim == 2 and t.shape[0] == n * k:
            return t, "mat", as_numpy
        if t.ndim == 2 and t.shape == (n, k):
            return t, "blocks", as_numpy
        raise ValueError(f"v must have shape ({n * k},), ({n}, {k}) or ({n * k}, m); got {tuple(t.shape)}")

    def _run(self, v: object, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor | np.ndarray:
        t, kind, as_numpy = self._prepare(v, xb.shape[0])
        if kind == "mat":
            cols = [self._apply(t[:, c].reshape(xb.shape[0], self.k), xa, xb).reshape(-1) for c in range(t.shape[1])]
            r = torch.stack(cols, 1)
        else:
            r = self._apply(t, xa, xb)
            if kind == "vec":
                r = r.reshape(-1)
        r = r.detach()
        return r.cpu().numpy() if as_numpy else r

    def matvec(self, v: object) -> torch.Tensor | np.ndarray:
        """``Θ v``."""
        return self._run(v, self._x1, self._x2)

    def rmatvec(self, w: object) -> torch.Tensor | np.ndarray:
        """``Θᵀ w`` (``w`` indexed like the rows)."""
        return self._run(w, self._x2, self._x1)

    matmat = matvec

    def __matmul__(self, v: object) -> torch.Tensor | np.ndarray:
        return self.matvec(v)

    def to_scipy(self):  # -> scipy.sparse.linalg.LinearOperator
        """A ``scipy.sparse.linalg.LinearOperator`` on numpy vectors (for CG, eigsh, ...)."""
        from scipy.sparse.linalg import LinearOperator

        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        return LinearOperator(
            self.shape,
            matvec=lambda v: np.asarray(self.matvec(np.asarray(v).reshape(-1))),
            rmatvec=lambda w: np.asarray(self.rmatvec(np.asarray(w).reshape(-1))),
            matmat=lambda V: np.asarray(self.matvec(np.asarray(V))),
            dtype=np_dtype,
        )

    def __repr__(self) -> str:
        return f"NTKOperator(shape={self.shape}, k={self.k}, dtype={self.dtype})"


def ntk_vector_product(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    params: ParamsArg = None,
    batch_size: int | None = None,
    allow_train_mode: bool = False,
) -> NTKOperator:
    """The empirical NTK as a linear operator ``v ↦ Θ(x1, x2) v``, never forming ``Θ``.

    ``Θ v = J1 (J2ᵀ v)``: a vector-Jacobian product over ``x2`` gives the
    parameter-space vector ``u = J2ᵀ v``, a Jacobian-vector product over ``x1``
    gives ``J1 u``. Memory: activations of one chunk plus two parameter-sized
    vectors, whatever ``n`` is.

    Parameters
    ----------
    model, x1, x2, params, allow_train_mode
        As in :func:`ntkit.empirical_ntk`; ``x2=None`` means ``x1``.
    batch_size : int, optional
        Pass the examples through the model in chunks of this size.

    Returns
    -------
    NTKOperator
        ``.shape == (n1·k, n2·k)``; ``op @ v`` for ``v`` of shape ``(n2·k,)``,
        ``(n2, k)`` or ``(n2·k, m)``; ``op.to_scipy()`` for scipy solvers.

    Examples
    --------
    >>> import torch, ntkit as nk
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> op = nk.ntk_vector_product(net, x)
    >>> op.shape
    (10, 10)
    >>> v = torch.randn(10, dtype=torch.float64)
    >>> theta = nk.empirical_ntk(net, x, output="full")            # (5, 5, 2, 2)
    >>> dense = theta.permute(0, 2, 1, 3).reshape(10, 10)
    >>> torch.allclose(op @ v, dense @ v)
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_train_mode(model, allow_train_mode)
    sel = select_params(model, params)
    x1t, x2t = prepare_inputs(model, next(iter(sel.values())), x1, x2)
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    ctx = make_context(model, x1t, sel, allow_train_mode=allow_train_mode)
    return NTKOperator(ctx, x1t, x1t if x2t is None else x2t, batch_size)

