"""Fully-connected (``Dense``) layer: its infinite-width kernel map and its finite module.

``Dense`` acts on the channel axis (axis 1) of channels-first inputs
``(n, C, *S)`` or ``(n, d)``; on spatial inputs it is a 1x1 convolution.

Kernel maps (``q`` is the input NNGP, ``Θ`` the input NTK, ``C`` the input
width ``k.channels``, ``σw = W_std``, ``σb = b_std`` or 0 without bias):

* NTK parameterisation (weights ``W ~ N(0, 1)``, bias ``b ~ N(0, 1)``,
  output ``σw / sqrt(C) * x W^T + σb * b``)::

      q' = σw² q + σb²          Θ' = q' + σw² Θ

* standard parameterisation (``W ~ N(0, σw²/C)``, ``b ~ N(0, σb²)``,
  output ``x W^T + b``)::

      q' = σw² q + σb²          Θ' = σw² Θ + C q + 1[bias]

  This is the NTK of plain gradients of the actual parameters at finite
  width ``C``: the weight gradient contributes ``sum_j x_j x'_j = C q`` and
  grows with the width, so the infinite-width limit of this NTK diverges.
  The ``C`` used is the *declared* width of the previous layer (what
  ``arch.init`` builds without a ``width`` override).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_nonnegative
from .base import BuildContext, KernelOrList, Layer, ShapeOrList
from .kernel import Kernel

__all__ = ["Dense"]

_PARAMS = ("ntk", "standard")


def _single_shape(shape: ShapeOrList, who: str) -> tuple[int, ...]:
    if isinstance(shape, list):
        raise ValueError(f"{who} needs a single input, got a list of branches (close them with a FanIn first)")
    return tuple(shape)


def _single_kernel(k: KernelOrList, who: str) -> Kernel:
    if isinstance(k, list):
        raise ValueError(f"{who} needs a single input, got a list of branches (close them with a FanIn first)")
    return k


class _DenseModule(nn.Module):
    """Finite dense layer on axis 1 of ``(n, C)`` or ``(n, C, *S)`` inputs."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, w_scale: float, b_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.w_scale, self.b_scale = w_scale, b_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"Dense expects inputs (n, {self.weight.shape[1]}, *S), got shape {tuple(x.shape)}")
        w = self.weight if self.w_scale == 1.0 else self.weight * self.w_scale
        b = None
        if self.bias is not None:
            b = self.bias if self.b_scale == 1.0 else self.bias * self.b_scale
        if x.ndim == 2:
            return F.linear(x, w, b)
        out = F.linear(x.movedim(1, -1), w, b)
        return out.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, bias={self.bias is not None}"


class Dense(Layer):
    """Fully-connected layer on the channel axis.

    Parameters
    ----------
    out_dim : int
        Output width (overridden by ``width`` in :meth:`Layer.init` for hidden layers).
    W_std : float
        Weight standard deviation ``σw``.
    b_std : float, optional
        Bias standard deviation ``σb``; ``None`` means no bias parameter at all.
    parameterization : {"ntk", "standard"}
        See the module docstring; the standard NTK depends on the input width.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> k = L.Dense(10, W_std=2.0, b_std=0.5).kernel(x)
    >>> torch.allclose(k.nngp, 4.0 * x @ x.T / 3 + 0.25)
    True
    """

    is_affine = True
    _tape_ok = True

    def __init__(self, out_dim: int, W_std: float = 1.0, b_std: float | None = None,
                 parameterization: str = "ntk") -> None:
        if isinstance(out_dim, bool) or int(out_dim) != out_dim or out_dim < 1:
            raise ValueError(f"Dense: out_dim must be a positive integer, got {out_dim!r}")
        self.out_dim = int(out_dim)
        self.W_std = check_nonnegative(W_std, "Dense: W_std")
        self.b_std = None if b_std is None else check_nonnegative(b_std, "Dense: b_std")
        self.parameterization = str(check_choice(parameterization, "Dense: parameterization", _PARAMS))

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        s = _single_shape(shape, "Dense")
        if len(s) < 1:
            raise ValueError("Dense needs inputs with a channel axis, (n, d) or (n, C, *S)")
        return (self.out_dim,) + s[1:]

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        k = _single_kernel(k, "Dense")
        w2 = self.W_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        q = k.nngp
        nngp = None if q is None else _affine(q, w2, b2)
        ntk = None
        if k.ntk is not None:
            if q is None:
                raise ValueError("Dense: the input kernel has an NTK but no NNGP; both are needed")
            if self.parameterization == "ntk":
                ntk = torch.add(nngp, k.ntk, alpha=w2)  # one fused pass
            else:
                ntk = torch.mul(k.ntk, w2).add_(q, alpha=float(k.channels))
                if self.b_std is not None:
                    ntk.add_(1.0)
        var1, var2 = self._map_vars(k, lambda v: _affine(v, w2, b2))
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2,
                         shape=(self.out_dim,) + tuple(k.shape[1:]), is_gaussian=True)

    _fresh_output = True

    def _apply_owned(self, k: KernelOrList, owned: bool) -> tuple[KernelOrList, bool]:
        """In place when the input kernel is ours to overwrite (one pass per tensor, no allocation)."""
        if not owned or isinstance(k, list) or k.nngp is None:
            return self.apply_kernel(k), True
        w2 = self.W_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        q, ntk = k.nngp, k.ntk
        if ntk is not None and self.parameterization == "standard":
            ntk.mul_(w2).add_(q, alpha=float(k.channels))  # needs the old q
            if self.b_std is not None:
                ntk.add_(1.0)
        _affine_(q, w2, b2)
        if ntk is not None and self.parameterization == "ntk":
            torch.add(q, ntk, alpha=w2, out=ntk)
        var1, var2 = self._map_vars(k, lambda v: _affine(v, w2, b2))
        return k.replace(nngp=q, ntk=ntk, var1=var1, var2=var2, shape=(self.out_dim,) + tuple(k.shape[1:]),
                         is_gaussian=True), True

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        s = _single_shape(shape, "Dense")
        p = math.prod(s[1:]) if len(s) > 1 else 1
        cells = p * p if (full and len(s) > 1) else p
        # inputs (nngp, ntk) plus outputs (nngp, ntk)
        return float(4 * cells * itemsize), self.output_shape(s)

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        s = _single_shape(shape, "Dense")
        fan_in = s[0]
        out = ctx.out_channels(self, self.out_dim)
        weight = ctx.normal(out, fan_in)
        bias = None if self.b_std is None else ctx.normal(out)
        if self.parameterization == "ntk":
            return _DenseModule(weight, bias, self.W_std / math.sqrt(fan_in), 1.0 if bias is None else self.b_std)
        weight = weight * (self.W_std / math.sqrt(fan_in))
        if bias is not None:
            bias = bias * self.b_std
        return _DenseModule(weight, bias, 1.0, 1.0)


def _affine(t: torch.Tensor, w2: float, b2: float) -> torch.Tensor:
    """``w2 * t + b2`` in one pass over ``t`` (a fresh tensor)."""
    if not b2:
        return torch.mul(t, w2)
    return torch.add(torch.tensor(b2, dtype=t.dtype, device=t.device), t, alpha=w2)


def _affine_(t: torch.Tensor, w2: float, b2: float) -> torch.Tensor:
    """``t <- w2 * t + b2`` in place, one pass."""
    if not b2:
        return t.mul_(w2)
    return torch.add(torch.tensor(b2, dtype=t.dtype, device=t.device), t, alpha=w2, out=t)
