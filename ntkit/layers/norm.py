"""Normalisation and dropout layers.

:class:`LayerNorm` standardises each example over the channel axis (and
optionally spatial axes). At infinite width the per-example variance over the
normalised axes concentrates on a deterministic value ``v``, so

``nngp'(h, h') = nngp(h, h') / sqrt((v1(h) + eps) (v2(h') + eps))``

and the NTK is divided by the same factor (the derivative of the normaliser
contributes ``O(1/width)``). With ``axis`` the channels only, ``v(h)`` is the
variance at position ``h``; with spatial axes included, ``v`` is the mean of
the position variances over those axes. The finite module also subtracts the
mean over the normalised axes; for centred Gaussian activations (the output
of ``Dense``/``Conv``) that mean is ``O(1/sqrt(width))`` and vanishes in the
limit. After a nonlinearity it would not (E[relu(z)] > 0), so the layer
refuses non-centred inputs rather than return a wrong kernel.

:class:`Dropout` uses the **PyTorch convention: ``rate`` is the probability of
dropping** a unit (neural-tangents' ``Dropout`` takes the keep rate instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_choice, check_nonnegative
from .base import BuildContext, KernelOrList, Layer, ShapeOrList
from .kernel import Kernel, position_variance

__all__ = ["LayerNorm", "Dropout"]


def _single_kernel(k: KernelOrList, who: str) -> Kernel:
    if isinstance(k, list):
        raise ValueError(f"{who} needs a single input, got a list of branches (close them with a FanIn first)")
    return k


def _broadcast_pair(p1: torch.Tensor, p2: torch.Tensor, n_spatial: int, diagonal: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position quantities ``(n1, *S)``, ``(n2, *S)`` shaped to broadcast against a cross covariance."""
    if n_spatial == 0 or diagonal:
        return p1.unsqueeze(1), p2.unsqueeze(0)
    return (p1.reshape(p1.shape[:1] + (1,) + p1.shape[1:] + (1,) * n_spatial),
            p2.reshape((1,) + p2.shape[:1] + (1,) * n_spatial + p2.shape[1:]))


def _broadcast_self(p: torch.Tensor, n_spatial: int, diagonal: bool) -> torch.Tensor:
    """``p (n, *S)`` multiplied pairwise to match a self covariance layout: returns the product factor."""
    if n_spatial == 0 or diagonal:
        return p * p
    return p.reshape(p.shape + (1,) * n_spatial) * p.reshape(p.shape[:1] + (1,) * n_spatial + p.shape[1:])


class _LayerNormModule(nn.Module):
    def __init__(self, dims: tuple[int, ...], eps: float) -> None:
        super().__init__()
        self.dims, self.eps = dims, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(self.dims, keepdim=True)
        xc = x - mean
        var = (xc * xc).mean(self.dims, keepdim=True)
        return xc / torch.sqrt(var + self.eps)


class LayerNorm(Layer):
    """Standardise each example over ``axis`` (no learned scale/shift).

    Parameters
    ----------
    axis : int or tuple of int
        Axes of the finite module's ``(n, C, *S)`` input to normalise over:
        ``1`` (default) is the channel axis, ``2, 3, ...`` spatial axes
        (negative values count from the end). The channel axis must be included
        (a variance over positions alone stays random at infinite width).
    eps : float
        Added to the variance, as in ``torch.nn.LayerNorm`` (default ``1e-5``).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Conv(8, 3, padding="SAME"), L.LayerNorm(axis=(1, 2)), L.Flatten())
    >>> arch.kernel(torch.randn(3, 2, 6), get="nngp").nngp.shape
    torch.Size([3, 3])
    """

    _fresh_output = True  # outputs are newly allocated
    _tape_ok = True

    def __init__(self, axis: int | Sequence[int] = 1, eps: float = 1e-5) -> None:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        if not axes or any(not isinstance(a, int) or isinstance(a, bool) for a in axes):
            raise ValueError(f"LayerNorm: axis must be an int or a non-empty tuple of ints, got {axis!r}")
        self.axis = axes
        self.eps = check_nonnegative(eps, "LayerNorm: eps")

    def _dims(self, shape: ShapeOrList) -> tuple[int, ...]:
        if isinstance(shape, list):
            raise ValueError("LayerNorm needs a single input, got a list of branches (close them with a FanIn first)")
        ndim = len(shape) + 1
        dims = []
        for a in self.axis:
            d = a + ndim if a < 0 else a
            if d < 1 or d >= ndim:
                raise ValueError(f"LayerNorm: axis {a} is out of range for inputs (n, C, *S) of {ndim} dims "
                                 "(axis 0, the batch, cannot be normalised)")
            dims.append(d)
        dims = sorted(set(dims))
        if 1 not in dims:
            raise ValueError(f"LayerNorm: axis must include the channel axis 1, got {self.axis!r}")
        return tuple(dims)

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        self._dims(shape)
        return shape

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        return _LayerNormModule(self._dims(shape), self.eps)

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        k = _single_kernel(k, "LayerNorm")
        dims = self._dims(k.shape)
        if not k.is_gaussian:
            raise ValueError(
                "LayerNorm's infinite-width kernel assumes centred Gaussian activations (its mean "
                "subtraction then vanishes); place it right after a Dense/Conv/attention layer (or a "
                "FanInSum of such branches), not after a nonlinearity or on raw inputs"
            )
        d = len(k.spatial_shape)
        spatial_dims = [x - 2 for x in dims if x >= 2]  # indices into S

        def norm_var(var: torch.Tensor) -> torch.Tensor:
            p = position_variance(var, k.diagonal_spatial, d)  # (n, *S)
            if spatial_dims:
                p = p.mean(dim=tuple(1 + i for i in spatial_dims), keepdim=True).expand_as(p)
            return p + self.eps

        p1 = norm_var(k.var1)
        p2 = p1 if k.var2 is k.var1 else norm_var(k.var2)
        v1, v2 = _broadcast_pair(p1, p2, d, k.diagonal_spatial)
        inv = torch.rsqrt(v1 * v2)
        nngp = None if k.nngp is None else k.nngp * inv
        ntk = None if k.ntk is None else k.ntk * inv
        var1, var2 = self._map_vars(
            k, lambda v: v / _broadcast_self(p1 if v is k.var1 else p2, d, k.diagonal_spatial).sqrt())
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, is_gaussian=True)


class _DropoutModule(nn.Module):
    def __init__(self, rate: float, active: bool) -> None:
        super().__init__()
        self.rate, self.active = rate, active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.active and self.training) or self.rate == 0.0:
            return x
        return nn.functional.dropout(x, p=self.rate, training=True)

    def extra_repr(self) -> str:
        return f"rate={self.rate}, active={self.active}"


class Dropout(Layer):
    """Inverted dropout; ``rate`` is the probability of **dropping** a unit (PyTorch convention).

    Parameters
    ----------
    rate : float
        Drop probability in ``[0, 1)``. (neural-tangents' ``Dropout(rate)``
        is a *keep* rate: ours ``rate = 1 - theirs``.)
    mode : {"train", "test"}
        ``"test"``: the identity. ``"train"`` (default, as a freshly built
        PyTorch module is in training mode): each unit is kept with
        probability ``1 - rate`` and scaled by ``1 / (1 - rate)``; at infinite
        width this multiplies the NNGP and NTK entries of an example with
        *itself at the same position* by ``1 / (1 - rate)`` and leaves the
        rest unchanged. Those entries are only recognised within one batch
        (``kernel(x)`` or the diagonal tiles of it); ``kernel(x, x)`` treats the
        two batches as separate forward passes with independent masks. The
        finite module drops only while ``module.training`` is true, so call
        ``.eval()`` on it (or build it with ``mode="test"``, whose module
        never drops) to compare with ``mode="test"``.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Conv(8, 3), L.Dropout(0.5), L.Flatten())
    >>> k = arch.kernel(torch.randn(4, 2, 5), get="nngp")
    >>> bool((k.nngp.diagonal() > 0).all())
    True
    """

    _tape_ok = True

    def __init__(self, rate: float, mode: str = "train") -> None:
        r = float(rate)
        if not 0.0 <= r < 1.0:
            raise ValueError(f"Dropout: rate (the drop probability) must be in [0, 1), got {rate!r}")
        self.rate = r
        self.mode = str(check_choice(mode, "Dropout: mode", ("train", "test")))

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        if isinstance(shape, list):
            raise ValueError("Dropout needs a single input, got a list of branches (close them with a FanIn first)")
        return shape

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        return _DropoutModule(self.rate, self.mode == "train")

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        k = _single_kernel(k, "Dropout")
        if self.mode == "test" or self.rate == 0.0:
            return k
        factor = 1.0 / (1.0 - self.rate)
        d = len(k.spatial_shape)
        full = d > 0 and not k.diagonal_spatial

        def scale_self(var: torch.Tensor) -> torch.Tensor:
            out = var.contiguous().clone()
            if full:
                n = out.shape[0]
                p = int(round(out[0].numel() ** 0.5))
                torch.diagonal(out.view(n, p, p), dim1=1, dim2=2).mul_(factor)
            else:
                out.mul_(factor)
            return out

        def scale_cross(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or not k.x1_is_x2:
                return t
            out = t.contiguous().clone()
            n = out.shape[0]
            if full:
                p = int(round((out[0, 0].numel()) ** 0.5))
                same = torch.diagonal(out.view(n, n, p, p), dim1=0, dim2=1)  # (p, p, n) view
                same = torch.diagonal(same, dim1=0, dim2=1)  # (n, p) view
            else:
                same = torch.diagonal(out, dim1=0, dim2=1)  # (*S, n) view
            same.mul_(factor)
            return out

        var1, var2 = self._map_vars(k, scale_self)
        return k.replace(nngp=scale_cross(k.nngp), ntk=scale_cross(k.ntk), var1=var1, var2=var2,
                         is_gaussian=False)
