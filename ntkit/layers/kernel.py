"""The :class:`Kernel` container that flows through infinite-width layers.

Layout conventions (channels-first, as in PyTorch):

* inputs are ``(n, C, *S)`` with ``S`` the spatial shape (``()`` for flat
  ``(n, d)`` inputs, ``(T,)`` for sequences, ``(H, W)`` for images);
* ``nngp`` / ``ntk`` are covariances averaged over channels:

  - flat: ``(n1, n2)``;
  - spatial, full (``diagonal_spatial=False``): ``(n1, n2, *S, *S)``, the
    first ``S`` indexing positions of ``x1``, the second of ``x2``;
  - spatial, diagonal only (``diagonal_spatial=True``): ``(n1, n2, *S)``,
    entries at equal positions only — what a network ending in ``Flatten``
    needs, at O(n1 n2 |S|) instead of O(n1 n2 |S|^2);

* ``var1`` / ``var2`` are each input's covariance with itself, laid out like
  ``nngp`` without the second batch axis: ``(n1, *S, *S)``, ``(n1, *S)`` or
  ``(n1,)``. Layers need them for normalising (ReLU's arc-cosine, LayerNorm).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ._tape import taped_vars

__all__ = ["Kernel", "input_kernel"]


@dataclass
class Kernel:
    """Infinite-width NNGP and NTK of a batch pair, plus what layers need.

    Attributes
    ----------
    nngp : torch.Tensor or None
        Cross covariance E[f(x1) f(x2)] per channel (see module docstring for shapes).
    ntk : torch.Tensor or None
        Neural tangent kernel, same shape as ``nngp``; ``None`` when not requested.
    var1, var2 : torch.Tensor
        Self covariances of ``x1`` and ``x2`` (``var2 is var1`` when x2 is x1).
    shape : tuple of int
        Per-example shape ``(C, *S)`` of the finite network's activations at
        this point (channels-first). ``C`` is the declared width: it sets
        fan-in for the standard parameterisation and is checked by combinators.
    diagonal_spatial : bool
        Only equal-position spatial entries are tracked.
    is_gaussian : bool
        The activations are a centred Gaussian process (true after an affine
        layer, false after a nonlinearity). Activations' closed forms assume it.
    x1_is_x2 : bool
        Both batches are the same inputs (the kernel is symmetric).

    Examples
    --------
    >>> import torch
    >>> from ntkit.layers.kernel import input_kernel
    >>> k = input_kernel(torch.ones(2, 4), None)
    >>> k.nngp
    tensor([[1., 1.],
            [1., 1.]])
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None
    var1: torch.Tensor
    var2: torch.Tensor
    shape: tuple[int, ...]
    diagonal_spatial: bool = False
    is_gaussian: bool = False
    x1_is_x2: bool = False

    @property
    def channels(self) -> int:
        """Number of channels (features) per position."""
        return self.shape[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape ``S`` (empty for flat activations)."""
        return tuple(self.shape[1:])

    @property
    def full_layout(self) -> bool:
        """Spatial covariances are tracked for every pair of positions (``(n1, n2, *S, *S)``)."""
        return bool(self.shape[1:]) and not self.diagonal_spatial

    @property
    def n1(self) -> int:
        return self.var1.shape[0]

    @property
    def n2(self) -> int:
        return self.var2.shape[0]

    def replace(self, **changes: object) -> Kernel:
        """A copy with some fields changed (tensors are not copied)."""
        return dataclasses.replace(self, **changes)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Kernel:
        """Cast/move every tensor field."""

        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(dtype=dtype, device=device)

        return self.replace(nngp=mv(self.nngp), ntk=mv(self.ntk), var1=mv(self.var1), var2=mv(self.var2))

    def __repr__(self) -> str:  # short: tensors can be huge
        def s(t: torch.Tensor | None) -> str:
            return "None" if t is None else f"Tensor{tuple(t.shape)}"

        return (f"Kernel(nngp={s(self.nngp)}, ntk={s(self.ntk)}, var1={s(self.var1)}, var2={s(self.var2)}, "
                f"shape={self.shape}, diagonal_spatial={self.diagonal_spatial}, is_gaussian={self.is_gaussian})")


def _sym_gram(a: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * a @ a.T`` computing only the upper-triangular row panels (about half the flops)."""
    n = a.shape[0]
    a_s = a * scale
    if n < 384:  # measured (784 features, 1 thread): the panels win from n=500 (0.70x at n=1000)
        return torch.mm(a_s, a.T)
    out = torch.empty((n, n), dtype=a.dtype, device=a.device)
    step = -(-n // 8)
    for i in range(0, n, step):
        rows = slice(i, min(i + step, n))
        out[rows, i:] = torch.mm(a_s[rows], a[i:].T)
        if i:
            out[rows, :i] = out[:i, rows].T
    return out


def _channel_cov(a: torch.Tensor, b: torch.Tensor, full: bool) -> torch.Tensor:
    """(1/C) sum_c a[i,c,s] b[j,c,s'] with a: (n1, C, *S), b: (n2, C, *S)."""
    n1, c = a.shape[0], a.shape[1]
    n2 = b.shape[0]
    spatial = tuple(a.shape[2:])
    p = math.prod(spatial)
    if p == 1 and not spatial:  # flat inputs: one GEMM, scaling the small operand
        a2d, b2d = a.reshape(n1, c), b.reshape(n2, c)
        if a is b:
            return _sym_gram(a2d, 1.0 / c)
        return torch.mm(a2d * (1.0 / c), b2d.T)
    a2 = a.reshape(n1, c, p)
    b2 = b.reshape(n2, c, p)
    if full:
        out = torch.einsum("icp,jcq->ijpq", a2, b2) / c
        return out.reshape((n1, n2) + spatial + spatial)
    out = torch.einsum("icp,jcp->ijp", a2, b2) / c
    return out.reshape((n1, n2) + spatial)


def _self_cov(a: torch.Tensor, full: bool) -> torch.Tensor:
    """(1/C) sum_c a[i,c,s] a[i,c,s'] per example."""
    n, c = a.shape[0], a.shape[1]
    spatial = tuple(a.shape[2:])
    p = math.prod(spatial)
    a2 = a.reshape(n, c, p)
    if full:
        return (torch.einsum("icp,icq->ipq", a2, a2) / c).reshape((n,) + spatial + spatial)
    return ((a2 * a2).sum(1) / c).reshape((n,) + spatial)


def input_kernel(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    diagonal_spatial: bool = False,
    compute_ntk: bool = True,
    var_only: bool = False,
) -> Kernel:
    """The kernel of raw inputs: channel-averaged inner products, zero NTK.

    ``x1`` is ``(n1, C, *S)`` (or ``(n1, d)``), ``x2`` likewise or ``None``.
    With ``var_only`` only the self covariances are computed (``nngp`` and
    ``ntk`` are ``None``): the variance pass of a tiled kernel.
    """
    x1_is_x2 = x2 is None
    x2_ = x1 if x2 is None else x2
    full = not diagonal_spatial and x1.ndim > 2
    if x1.ndim == 1:
        raise ValueError("inputs must be (n, C, *S) or (n, d); got a 1-D tensor")

    def variances() -> tuple[torch.Tensor, torch.Tensor]:
        v1 = _self_cov(x1, full)
        return v1, (v1 if x1_is_x2 else _self_cov(x2_, full))

    var1, var2 = taped_vars(input_kernel, variances, full=full)
    nngp = ntk = None
    if not var_only:
        nngp = _channel_cov(x1, x2_, full)
        ntk = torch.zeros_like(nngp) if compute_ntk else None
    return Kernel(
        nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=tuple(x1.shape[1:]),
        diagonal_spatial=diagonal_spatial and x1.ndim > 2, is_gaussian=False, x1_is_x2=x1_is_x2,
    )


def position_variance(var: torch.Tensor, diagonal_spatial: bool, n_spatial: int) -> torch.Tensor:
    """Each input's variance at each position, ``(n, *S)``, from a self covariance.

    ``var`` is ``(n, *S, *S)`` when the layout is full, ``(n, *S)`` when
    diagonal, ``(n,)`` when flat (returned as is). A full-layout kernel may
    also carry its variances as ``(n, *S)`` already (replayed from a
    position-only tape, see :mod:`ntkit.layers._tape`); they are returned as is.
    """
    if n_spatial == 0 or diagonal_spatial or var.ndim == 1 + n_spatial:
        return var
    n = var.shape[0]
    spatial = tuple(var.shape[1 : 1 + n_spatial])
    p = math.prod(spatial)
    return torch.diagonal(var.reshape(n, p, p), dim1=1, dim2=2).reshape((n,) + spatial)


def cross_variances(k: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v1, v2)`` that broadcast against ``k.nngp``: the variances of the two factors of each entry.

    Flat: ``(n1, 1)``, ``(1, n2)``; diagonal spatial: ``(n1, 1, *S)``,
    ``(1, n2, *S)``; full spatial: ``(n1, 1, *S, 1...)``, ``(1, n2, 1..., *S)``.
    """
    d = len(k.spatial_shape)
    p1 = position_variance(k.var1, k.diagonal_spatial, d)
    p2 = position_variance(k.var2, k.diagonal_spatial, d)
    if d == 0 or k.diagonal_spatial:
        return p1.unsqueeze(1), p2.unsqueeze(0)
    v1 = p1.reshape(p1.shape[:1] + (1,) + p1.shape[1:] + (1,) * d)
    v2 = p2.reshape((1,) + p2.shape[:1] + (1,) * d + p2.shape[1:])
    return v1, v2


def self_variances(var: torch.Tensor, diagonal_spatial: bool, n_spatial: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(va, vb)`` broadcasting against a self covariance ``var`` (for mapping ``var1``/``var2`` themselves).

    Flat and diagonal layouts: both are ``var`` (each entry is a variance).
    Full layout ``(n, *S, *S)``: ``(n, *S, 1...)`` and ``(n, 1..., *S)``.
    """
    if n_spatial == 0 or diagonal_spatial:
        return var, var
    p = position_variance(var, False, n_spatial)
    va = p.reshape(p.shape + (1,) * n_spatial)
    vb = p.reshape(p.shape[:1] + (1,) * n_spatial + p.shape[1:])
    return va, vb
