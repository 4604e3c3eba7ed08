"""Generic machinery of elementwise activations ``φ`` in the infinite-width limit.

For every entry of a kernel the two pre-activations ``(u, v)`` are treated as
a centred Gaussian pair with covariance ``[[v1, c], [c, v2]]``: ``c`` is the
entry of ``nngp`` and ``v1``, ``v2`` the variances of its two factors (from
:func:`~ntkit.layers.kernel.cross_variances`, for any layout). An activation
maps

* ``nngp -> T(c, v1, v2) = E[φ(u) φ(v)]``;
* ``ntk  -> Ṫ(c, v1, v2) * ntk`` with ``Ṫ = E[φ'(u) φ'(v)] = ∂T/∂c`` (Price's
  theorem); the NNGP term of the NTK recursion is added by the next affine layer;
* ``var1``/``var2`` (self covariances) with the same ``T``; for flat and
  diagonal layouts each entry is a variance and ``T(v, v, v)`` has a cheaper
  dedicated formula.

The closed forms are exact when the input of the activation *is* a centred
Gaussian process (``Kernel.is_gaussian``, true after ``Dense``/``Conv``).
Applied to a non-Gaussian kernel (raw inputs, or right after another
activation) they are computed anyway, treating the tracked covariance as that
of a Gaussian — which is what the infinite-width limit of the *preceding*
architecture would need, not what the finite network computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .base import BuildContext, KernelOrList, Layer, ShapeOrList
from .kernel import Kernel, cross_variances, self_variances

__all__ = ["Elementwise", "ElementwiseNumerical"]

KernelFnOut = tuple[torch.Tensor, torch.Tensor | None]


class _ActivationModule(nn.Module):
    """Finite elementwise activation."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class ElementwiseLayer(Layer):
    """Base class of elementwise activations (override ``fn`` and ``kernel_fn``).

    Subclasses implement

    * ``fn(x)``: the activation on a tensor (used by the finite module);
    * ``kernel_fn(c, v1, v2, need_dot)`` returning ``(T, Ṫ)`` (``Ṫ`` may be
      ``None`` when ``need_dot`` is false), broadcasting over the three
      tensors; the results may share memory with nothing the caller owns;
    * optionally ``diag_fn(v)``: ``T(v, v, v)``.
    """

    #: entries per block in :meth:`_map_cross` (a few MB per temporary: large enough for
    #: threaded elementwise kernels, small enough to stay in cache)
    _BLOCK = 1 << 22

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        raise NotImplementedError

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        return self.kernel_fn(v, v, v, False)[0]

    # ---- Layer protocol ------------------------------------------------------------------
    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        if isinstance(shape, list):
            raise ValueError(f"{type(self).__name__} needs a single input, got a list of branches "
                             "(close them with a FanIn first)")
        return tuple(shape)

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        s = self.output_shape(shape)
        p = math.prod(s[1:]) if len(s) > 1 else 1
        cells = p * p if (full and len(s) > 1) else p
        # nngp + ntk in, T + Ṫ + one temporary out
        return float(5 * cells * itemsize), s

    _fresh_output = True
    _tape_ok = True

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        return self._apply(k, inplace=False)

    def _apply_owned(self, k: KernelOrList, owned: bool) -> tuple[KernelOrList, bool]:
        return self._apply(k, inplace=owned), True

    def _apply(self, k: KernelOrList, inplace: bool) -> Kernel:
        name = type(self).__name__
        if isinstance(k, list):
            raise ValueError(f"{name} needs a single input, got a list of branches (close them with a FanIn first)")
        if k.nngp is None:
            if k.ntk is not None:
                raise ValueError(f"{name}: the input kernel has an NTK but no NNGP; activations need it")
            var1, var2 = self._map_vars(k, lambda v: self._map_self(v, k))  # variance pass
            return k.replace(var1=var1, var2=var2, is_gaussian=False)
        v1, v2 = cross_variances(k)
        sym_diag = k.x1_is_x2 and k.nngp.ndim >= 2 and k.nngp.shape[0] == k.nngp.shape[1] == k.n1 == k.n2
        ntk_diag = None
        if sym_diag and k.ntk is not None:
            ntk_diag = torch.diagonal(k.ntk, 0, 0, 1).clone()
        t, ntk = self._map_cross(k.nngp, v1, v2, k.ntk, inplace=inplace)
        var1, var2 = self._map_vars(k, lambda v: self._map_self(v, k))
        if sym_diag:
            # entries (i, i, ...) pair an input with itself: correlation exactly 1 at equal positions.
            # Rounding in the inputs' Gram matrix perturbs ρ by ~eps, which moves θ = arccos ρ by
            # ~sqrt(eps) for kinked activations; use the self-covariance maps there instead.
            torch.diagonal(t, 0, 0, 1).copy_(var1.movedim(0, -1))
            if ntk is not None and ntk_diag is not None:
                td_self = self._dot_self(k.var1, k)
                torch.diagonal(ntk, 0, 0, 1).copy_(ntk_diag * td_self.movedim(0, -1))
        return k.replace(nngp=t, ntk=ntk, var1=var1, var2=var2, is_gaussian=False)

    def _map_cross(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, ntk: torch.Tensor | None,
                   inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(T, Ṫ ⊙ ntk)``, computed in blocks of rows that fit in cache.

        The maps are a dozen elementwise passes; running them on blocks of
        ``_BLOCK`` entries keeps the temporaries in cache instead of streaming
        ``n1 x n2`` arrays through memory a dozen times. With ``inplace`` the
        results overwrite ``c`` and ``ntk`` (no large allocation at all).
        """
        need_dot = ntk is not None
        n1 = c.shape[0]
        per_row = max(1, c[0].numel()) if c.ndim else 1
        rows = max(1, self._BLOCK // per_row)
        blockable = c.ndim > 0 and v1.shape[0] == n1 and c.is_contiguous()
        if not blockable or rows >= n1:  # one block: T is fresh anyway, the NTK may be scaled in place
            return self._map_block(c, v1, v2, ntk, out=ntk if inplace and blockable else None)
        t_out = c if inplace else torch.empty_like(c)
        ntk_out = None
        if need_dot:
            ntk_out = ntk if inplace else torch.empty_like(ntk)
        for i in range(0, n1, rows):
            sl = slice(i, min(i + rows, n1))
            t, nt = self._map_block(c[sl], v1[sl], v2, None if ntk is None else ntk[sl],
                                    out=None if ntk_out is None else ntk_out[sl])
            t_out[sl] = t
        return t_out, ntk_out

    def _map_block(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, ntk: torch.Tensor | None,
                   out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        t, tdot = self.kernel_fn(c, v1, v2, ntk is not None)
        t = _full_shape(t, c)
        if ntk is None:
            return t, None
        if tdot is None:
            raise RuntimeError(f"{type(self).__name__}.kernel_fn returned no derivative although the NTK "
                               "was requested")
        if out is not None:
            return t, torch.mul(ntk, tdot.to(ntk.dtype), out=out)
        if (tdot.shape == ntk.shape and tdot.is_contiguous() and tdot.dtype == ntk.dtype
                and tdot.data_ptr() != ntk.data_ptr()):
            return t, tdot.mul_(ntk)
        return t, ntk * tdot

    def _map_self(self, var: torch.Tensor, k: Kernel) -> torch.Tensor:
        d = len(k.spatial_shape)
        if d == 0 or k.diagonal_spatial:
            return _full_shape(self.diag_fn(var), var)
        va, vb = self_variances(var, False, d)
        return _full_shape(self.kernel_fn(var, va, vb, False)[0], var)

    def _dot_self(self, var: torch.Tensor, k: Kernel) -> torch.Tensor:
        """``Ṫ`` of each input with itself, laid out like ``var``."""
        d = len(k.spatial_shape)
        if d == 0 or k.diagonal_spatial:
            td = self.kernel_fn(var, var, var, True)[1]
        else:
            va, vb = self_variances(var, False, d)
            td = self.kernel_fn(var, va, vb, True)[1]
        assert td is not None
        return _full_shape(td, var)

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        self.output_shape(shape)
        return _ActivationModule(self.fn, repr(self))


def _full_shape(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Make sure a kernel_fn result has the shape/dtype of the tensor it replaces."""
    if t.shape != like.shape:
        t = t.expand(like.shape).clone()
    if t.dtype != like.dtype:
        t = t.to(like.dtype)
    return t


def _grad_wrt_c(fn: Callable[..., torch.Tensor], c: torch.Tensor, v1: torch.Tensor,
                v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, ∂T/∂c)`` by autograd, for ``T = fn(c, v1, v2)`` elementwise in ``c``."""
    with torch.enable_grad():
        cc = c.detach().clone().requires_grad_(True)
        t = fn(cc, v1.detach(), v2.detach())
        t = t.expand(torch.broadcast_shapes(t.shape, cc.shape))
        (g,) = torch.autograd.grad(t.sum(), cc, allow_unused=True)
    if g is None:
        g = torch.zeros_like(c)
    return t.detach().clone(), g.detach()


class Elementwise(ElementwiseLayer):
    """An activation given by the user with its own NNGP formula.

    Parameters
    ----------
    fn : callable
        The activation on a tensor (the finite network's nonlinearity).
    nngp_fn : callable
        ``nngp_fn(c, v1, v2) = E[fn(u) fn(v)]`` for a centred Gaussian pair with
        variances ``v1``, ``v2`` and covariance ``c`` (torch tensors, broadcasting).
    d_nngp_fn : callable, optional
        ``E[fn'(u) fn'(v)]`` with the same signature. By default it is
        ``∂ nngp_fn / ∂c`` computed by autograd (Price's theorem), so
        ``nngp_fn`` must then be written with differentiable torch operations.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> identity = L.Elementwise(lambda x: x, lambda c, v1, v2: c)
    >>> x = torch.randn(3, 4, dtype=torch.float64)
    >>> k = L.serial(L.Dense(8), identity, L.Dense(1)).kernel(x)
    >>> torch.allclose(k.ntk, 2 * x @ x.T / 4)
    True
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor],
                 nngp_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 d_nngp_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                 ) -> None:
        for name, f in (("fn", fn), ("nngp_fn", nngp_fn)):
            if not callable(f):
                raise TypeError(f"Elementwise: {name} must be callable, got {type(f).__name__}")
        if d_nngp_fn is not None and not callable(d_nngp_fn):
            raise TypeError(f"Elementwise: d_nngp_fn must be callable or None, got {type(d_nngp_fn).__name__}")
        self._user_fn = fn
        self._nngp_fn = nngp_fn
        self._d_nngp_fn = d_nngp_fn

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self._user_fn(x)

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        if not need_dot:
            return _as_tensor_like(self._nngp_fn(c, v1, v2), c), None
        if self._d_nngp_fn is not None:
            return _as_tensor_like(self._nngp_fn(c, v1, v2), c), _as_tensor_like(self._d_nngp_fn(c, v1, v2), c)
        return _grad_wrt_c(self._nngp_fn, c, v1, v2)

    def __repr__(self) -> str:
        return f"Elementwise(fn={getattr(self._user_fn, '__name__', 'fn')})"


def _as_tensor_like(t: object, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(torch.broadcast_shapes(t.shape, like.shape)).clone()


class ElementwiseNumerical(ElementwiseLayer):
    """Any activation, with its kernels by 2-D Gauss–Hermite quadrature.

    For each kernel entry the Gaussian pair is written ``u = sqrt(v1) z1``,
    ``v = (c / sqrt(v1)) z1 + sqrt(v2 - c²/v1) z2`` (Cholesky of the 2x2
    covariance) and ``E[g(u) g(v)]`` is a ``deg x deg`` probabilists'
    Gauss–Hermite sum; ``g`` is ``fn`` for the NNGP and ``fn'`` (by autograd)
    for the NTK. Cost ``O(deg²)`` function evaluations per entry, done in
    chunks to bound memory.

    Accuracy (measured, max abs. error over correlations ``ρ ∈ [-1, 1]`` with
    unit variances, against the closed forms; checked in
    ``tests/layers/test_activations.py``): Gauss–Hermite of degree ``deg`` is
    exact for polynomials of degree ``< 2 deg`` and converges exponentially
    for smooth activations — ``Erf`` NNGP/NTK errors 2.5e-6/3.8e-5 at deg 25,
    5e-11/1.5e-9 at deg 50, 2e-16/7e-16 at deg 100; ``Gelu`` 5e-9/6e-8 at
    deg 25 and round-off from deg 50. For kinked activations convergence is
    slow because the kink is not aligned with the nodes: ``Relu`` NNGP
    1.0e-2 / 2.6e-3 / 1.3e-3 at deg 25 / 50 / 100 and its NTK (a step function)
    1.2e-1 / 3.1e-2 / 2.1e-2. Use a closed form when one exists, and a large
    ``deg`` for activations with kinks.

    Parameters
    ----------
    fn : callable
        Elementwise activation written with differentiable torch operations.
    deg : int
        Quadrature degree per dimension (default 25).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Dense(16), L.ElementwiseNumerical(torch.tanh, deg=30), L.Dense(1))
    >>> arch.kernel(torch.randn(3, 2, dtype=torch.float64)).ntk.shape
    torch.Size([3, 3])
    """

    _CHUNK = 1 << 21  # quadrature points evaluated at once

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], deg: int = 25) -> None:
        if not callable(fn):
            raise TypeError(f"ElementwiseNumerical: fn must be callable, got {type(fn).__name__}")
        if isinstance(deg, bool) or int(deg) != deg or deg < 1:
            raise ValueError(f"ElementwiseNumerical: deg must be a positive integer, got {deg!r}")
        self._user_fn = fn
        self.deg = int(deg)
        z, w = np.polynomial.hermite_e.hermegauss(self.deg)
        self._z = torch.as_tensor(z, dtype=torch.float64)
        self._w = torch.as_tensor(w / math.sqrt(2 * math.pi), dtype=torch.float64)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self._user_fn(x)

    def _dfn(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            y = self._user_fn(xx)
            if not y.requires_grad:  # constant activation
                return torch.zeros_like(x)
            (g,) = torch.autograd.grad(y.sum(), xx, allow_unused=True)
        return torch.zeros_like(x) if g is None else g.detach()

    def _quad2(self, g: Callable[[torch.Tensor], torch.Tensor], c: torch.Tensor, v1: torch.Tensor,
               v2: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(c.shape, v1.shape, v2.shape)
        cf, a1, a2 = (t.expand(shape).reshape(-1) for t in (c, v1, v2))
        z = self._z.to(dtype=c.dtype, device=c.device)
        w = self._w.to(dtype=c.dtype, device=c.device)
        s1 = a1.clamp_min(0).sqrt()
        safe = torch.where(s1 > 0, s1, torch.ones_like(s1))
        r = torch.where(s1 > 0, cf / safe, torch.zeros_like(cf))  # c / sqrt(v1)
        s2 = (a2 - r * r).clamp_min(0).sqrt()
        out = torch.empty_like(cf)
        d = self.deg
        step = max(1, self._CHUNK // (d * d))
        for i in range(0, cf.numel(), step):
            sl = slice(i, i + step)
            u = s1[sl, None] * z  # (m, d)
            gu = g(u)  # (m, d)
            v = (r[sl, None, None] * z[None, :, None]) + s2[sl, None, None] * z[None, None, :]  # (m, d, d)
            gv = g(v) @ w  # (m, d)
            out[sl] = (gu * gv) @ w
        return out.reshape(shape)

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        t = self._quad2(self.fn, c, v1, v2)
        td = self._quad2(self._dfn, c, v1, v2) if need_dot else None
        return t, td

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        z = self._z.to(dtype=v.dtype, device=v.device)
        w = self._w.to(dtype=v.dtype, device=v.device)
        flat = v.reshape(-1).clamp_min(0).sqrt()
        out = torch.empty_like(flat)
        step = max(1, self._CHUNK // self.deg)
        for i in range(0, flat.numel(), step):
            gu = self.fn(flat[i:i + step, None] * z)
            out[i:i + step] = (gu * gu) @ w
        return out.reshape(v.shape)

    def __repr__(self) -> str:
        return f"ElementwiseNumerical(fn={getattr(self._user_fn, '__name__', 'fn')}, deg={self.deg})"
