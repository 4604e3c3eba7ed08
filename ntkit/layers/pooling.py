"""Pooling and flattening of channels-first spatial activations.

* :class:`AvgPool` / :class:`SumPool` pool windows of each position axis
  independently, so they need the *full* spatial covariance
  (``needs_full_spatial`` is ``True``): ``q'(h, h') = c * sum_{d, d'} q(s h + d - p, s h' + d' - p)``
  with ``c = 1/|w|^2`` (average) or ``1`` (sum). Like PyTorch, ``strides``
  defaults to the window (non-overlapping windows; neural-tangents/stax uses 1).
* :class:`GlobalAvgPool` / :class:`GlobalSumPool` average (sum) over all
  positions, collapsing the covariance to ``(n1, n2)`` — also full layout.
* :class:`Flatten` reshapes ``(C, *S)`` to ``C * |S|`` features. In the
  channel-averaged convention the flattened covariance is the mean of the
  diagonal ``q(h, h)`` over positions, so it only needs the diagonal:
  architectures ending in ``Flatten`` cost ``O(n1 n2 |S|)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice
from .base import BuildContext, KernelOrList, Layer, ShapeOrList
from .conv import _as_tuple, _check_spatial_kernel, _pads, _plan, _shift_sum, _spatial_axes
from .kernel import Kernel, position_variance

__all__ = ["AvgPool", "SumPool", "GlobalAvgPool", "GlobalSumPool", "Flatten", "ImageResize"]

_PADDINGS = ("VALID", "SAME", "CIRCULAR")


def _single(shape: ShapeOrList, who: str) -> tuple[int, ...]:
    if isinstance(shape, list):
        raise ValueError(f"{who} needs a single input, got a list of branches (close them with a FanIn first)")
    return tuple(shape)


def _need_full(k: Kernel, who: str) -> None:
    if k.diagonal_spatial:
        raise ValueError(
            f"{who} needs the full spatial covariance but received a diagonal-only kernel; the layout "
            "requirement was not propagated (apply it through Layer.kernel, or build the input kernel "
            "with input_kernel(..., diagonal_spatial=False))"
        )


class _PoolModule(nn.Module):
    def __init__(self, window: tuple[int, ...], strides: tuple[int, ...], pads: list[tuple[int, int]],
                 circular: bool, scale: float) -> None:
        super().__init__()
        self.window, self.strides, self.circular, self.scale = window, strides, circular, scale
        self._pad = tuple(v for lo_hi in reversed(pads) for v in lo_hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.window)
        if any(self._pad):
            x = F.pad(x, self._pad, mode="circular" if self.circular else "constant")
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        out = pool(x, self.window, self.strides)
        return out * self.scale if self.scale != 1.0 else out


class _Pool(Layer):
    _sum = False
    _tape_ok = True
    _fresh_output = True  # outputs are newly allocated

    def __init__(self, window_shape: int | Sequence[int], strides: int | Sequence[int] | None = None,
                 padding: str = "VALID") -> None:
        name = type(self).__name__
        if isinstance(window_shape, int):
            window_shape = (window_shape,)
        ws = tuple(window_shape)
        if not ws:
            raise ValueError(f"{name}: window_shape must have at least one spatial dimension")
        self.window_shape = _as_tuple(ws, len(ws), f"{name}: window_shape")
        self.strides = self.window_shape if strides is None else _as_tuple(strides, len(ws), f"{name}: strides")
        self.padding = str(check_choice(str(padding).upper(), f"{name}: padding", _PADDINGS))

    def _plans(self, shape: ShapeOrList) -> list[tuple[int, int]]:
        name = type(self).__name__
        shape = _single(shape, name)
        nd = len(self.window_shape)
        if len(shape) == 1:
            raise ValueError(f"{name} needs spatial inputs (C, *S); got a flat/flattened per-example shape "
                             f"{shape} (pool before Flatten/GlobalAvgPool)")
        if len(shape) != nd + 1:
            raise ValueError(f"{name} with a {nd}-D window needs per-example shape (C, *S) with {nd} spatial "
                             f"dims, got {shape}")
        return _plan(shape[1:], self.window_shape, self.strides, self.padding, f"{name}: window")

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        plans = self._plans(shape)
        return (shape[0],) + tuple(p[0] for p in plans)

    def needs_full_spatial(self, full_out: bool) -> bool:
        return True

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        name = type(self).__name__
        nd = len(self.window_shape)
        k = _check_spatial_kernel(k, name, nd)
        _need_full(k, name)
        plans = self._plans(k.shape)
        circ = self.padding == "CIRCULAR"
        scale = 1.0 if self._sum else 1.0 / math.prod(self.window_shape) ** 2

        def pmap(t: torch.Tensor | None, n_batch: int) -> torch.Tensor | None:
            if t is None:
                return None
            for i, (out_len, lo) in enumerate(plans):
                for a in _spatial_axes(n_batch, nd, i, False):
                    t = _shift_sum(t, (a,), self.window_shape[i], self.strides[i], lo, out_len, circ)
            return t.mul_(scale) if scale != 1.0 else t

        var1, var2 = self._map_vars(k, lambda v: pmap(v, 1))
        return k.replace(nngp=pmap(k.nngp, 2), ntk=pmap(k.ntk, 2), var1=var1, var2=var2,
                         shape=self.output_shape(k.shape), is_gaussian=k.is_gaussian)

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        out = self.output_shape(shape)
        p_in, p_out = math.prod(shape[1:]), math.prod(out[1:])
        cells = p_in * p_in + 2 * p_in * p_out + 2 * p_out * p_out
        return float(2 * cells * itemsize), out

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        plans = self._plans(shape)
        if len(self.window_shape) > 3:
            raise ValueError(f"{type(self).__name__}: the finite module supports at most 3 spatial dimensions")
        pads = _pads(shape[1:], self.window_shape, self.strides, plans)
        scale = float(math.prod(self.window_shape)) if self._sum else 1.0
        return _PoolModule(self.window_shape, self.strides, pads, self.padding == "CIRCULAR", scale)


class AvgPool(_Pool):
    """Average pooling over windows of channels-first spatial inputs.

    Parameters
    ----------
    window_shape : int or tuple of int
        Window size per spatial dimension.
    strides : int or tuple of int, optional
        Default: the window (PyTorch convention; stax defaults to 1).
    padding : {"VALID", "SAME", "CIRCULAR"}
        ``SAME`` pads with zeros that count in the average (PyTorch's
        ``count_include_pad=True``), split TF-style with the extra on the right.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Conv(4, 3), L.AvgPool(2), L.Flatten())
    >>> arch.kernel(torch.randn(3, 2, 7), get="nngp").nngp.shape
    torch.Size([3, 3])
    """


class SumPool(_Pool):
    """Sum pooling: :class:`AvgPool` times the window size (same arguments).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> L.serial(L.Conv(4, 3), L.SumPool(2, strides=1)).output_shape((2, 7))
    (4, 4)
    """

    _sum = True


class _GlobalModule(nn.Module):
    def __init__(self, mean: bool) -> None:
        super().__init__()
        self.mean = mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        return x.mean(dims) if self.mean else x.sum(dims)


class _GlobalPool(Layer):
    _sum = False
    _tape_ok = True
    _fresh_output = True

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        name = type(self).__name__
        shape = _single(shape, name)
        if len(shape) < 2:
            raise ValueError(f"{name} needs spatial inputs (C, *S); got a flat/flattened per-example shape {shape}")
        return (shape[0],)

    def needs_full_spatial(self, full_out: bool) -> bool:
        return True

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        name = type(self).__name__
        if isinstance(k, list):
            raise ValueError(f"{name} needs a single input, got a list of branches (close them with a FanIn first)")
        self.output_shape(k.shape)
        _need_full(k, name)
        p = math.prod(k.spatial_shape)
        scale = float(p * p) if self._sum else 1.0

        def red(t: torch.Tensor | None, n_batch: int) -> torch.Tensor | None:
            if t is None:
                return None
            out = t.reshape(t.shape[:n_batch] + (-1,)).mean(-1)
            return out.mul_(scale) if scale != 1.0 else out

        var1, var2 = self._map_vars(k, lambda v: red(v, 1))
        return k.replace(nngp=red(k.nngp, 2), ntk=red(k.ntk, 2), var1=var1, var2=var2,
                         shape=self.output_shape(k.shape), diagonal_spatial=False)

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        out = self.output_shape(shape)
        p = math.prod(shape[1:])
        return float(2 * p * p * itemsize), out

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        self.output_shape(shape)
        return _GlobalModule(mean=not self._sum)


class GlobalAvgPool(_GlobalPool):
    """Average over all spatial positions: ``(n, C, *S) -> (n, C)``; needs the full covariance.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Conv(8, (3, 3), padding="SAME"), L.Relu(), L.GlobalAvgPool(), L.Dense(1))
    >>> arch.kernel(torch.randn(2, 3, 4, 4)).ntk.shape
    torch.Size([2, 2])
    """


class GlobalSumPool(_GlobalPool):
    """Sum over all spatial positions: ``(n, C, *S) -> (n, C)``; needs the full covariance.

    Examples
    --------
    >>> from ntkit import layers as L
    >>> L.GlobalSumPool().output_shape((3, 4, 4))
    (3,)
    """

    _sum = True


class _FlattenModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class Flatten(Layer):
    """Reshape ``(n, C, *S)`` to ``(n, C * |S|)``; needs only the diagonal of the spatial covariance.

    The flattened features' channel-averaged covariance is the mean over
    positions of ``q(h, h)`` (a following ``Dense`` in the NTK
    parameterisation averages over the ``C * |S|`` features).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Conv(8, (3, 3)), L.Relu(), L.Flatten(), L.Dense(1))
    >>> arch.needs_full_spatial(False)
    False
    """

    _tape_ok = True

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        shape = _single(shape, "Flatten")
        return (math.prod(shape),)

    def needs_full_spatial(self, full_out: bool) -> bool:
        return False

    def _apply_owned(self, k: KernelOrList, owned: bool) -> tuple[KernelOrList, bool]:
        out = self.apply_kernel(k)
        # spatial inputs give new tensors; flat ones are passed through unchanged
        return out, owned if out is k else True

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        if isinstance(k, list):
            raise ValueError("Flatten needs a single input, got a list of branches (close them with a FanIn first)")
        d = len(k.spatial_shape)
        if d == 0:
            return k
        p = math.prod(k.spatial_shape)

        def diag_mean(t: torch.Tensor | None, n_batch: int) -> torch.Tensor | None:
            if t is None:
                return None
            if not k.diagonal_spatial:
                lead = t.shape[:n_batch]
                t = torch.diagonal(t.reshape(lead + (p, p)), dim1=-2, dim2=-1)
            return t.reshape(t.shape[:n_batch] + (-1,)).mean(-1)

        var1, var2 = self._map_vars(
            k, lambda v: position_variance(v, k.diagonal_spatial, d).reshape(v.shape[0], -1).mean(-1))
        return k.replace(nngp=diag_mean(k.nngp, 2), ntk=diag_mean(k.ntk, 2), var1=var1, var2=var2,
                         shape=self.output_shape(k.shape), diagonal_spatial=False)

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        out = self.output_shape(shape)
        p = math.prod(shape[1:]) if len(shape) > 1 else 1
        return float(2 * (p * p if full else p) * itemsize), out

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        return _FlattenModule()


def _resize_matrix(length: int, out_len: int, method: str, dtype: torch.dtype, device: object) -> torch.Tensor:
    """``(out_len, length)`` matrix of the 1-D resize the finite module performs (F.interpolate)."""
    eye = torch.eye(length, dtype=torch.float64).unsqueeze(1)  # (length, 1, length): one impulse per row
    mode = "nearest" if method == "nearest" else "linear"
    kw = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(eye, size=out_len, mode=mode, **kw)[:, 0, :]  # (length, out_len)
    return out.T.to(dtype=dtype, device=device)


class _ResizeModule(nn.Module):
    def __init__(self, size: tuple[int, ...], method: str) -> None:
        super().__init__()
        self.size, self.method = size, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.size)
        if self.method == "nearest":
            return F.interpolate(x, size=self.size, mode="nearest")
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]
        return F.interpolate(x, size=self.size, mode=mode, align_corners=False)


class ImageResize(Layer):
    """Resize the spatial axes to ``shape`` like ``torch.nn.functional.interpolate``.

    ``method="nearest"`` picks positions (only the diagonal is needed);
    ``"linear"`` interpolates (``align_corners=False``), a linear map ``R`` on
    each spatial axis, so ``q' = R q R^T`` on both position axes (needs the
    full covariance).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Conv(4, 3, padding="SAME"), L.ImageResize((10,), "linear"), L.Flatten())
    >>> arch.kernel(torch.randn(2, 1, 5), get="nngp").nngp.shape
    torch.Size([2, 2])
    """

    _fresh_output = True
    _tape_ok = True

    def __init__(self, shape: int | Sequence[int], method: str = "nearest") -> None:
        if isinstance(shape, int):
            shape = (shape,)
        self.shape = _as_tuple(tuple(shape), len(tuple(shape)), "ImageResize: shape")
        self.method = str(check_choice(method, "ImageResize: method", ("nearest", "linear")))

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        shape = _single(shape, "ImageResize")
        if len(shape) != len(self.shape) + 1:
            raise ValueError(f"ImageResize to {self.shape} needs per-example shape (C, *S) with {len(self.shape)} "
                             f"spatial dims, got {shape}")
        if len(self.shape) > 3:
            raise ValueError("ImageResize supports at most 3 spatial dimensions")
        return (shape[0],) + self.shape

    def needs_full_spatial(self, full_out: bool) -> bool:
        return full_out or self.method == "linear"

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        nd = len(self.shape)
        k = _check_spatial_kernel(k, "ImageResize", nd)
        self.output_shape(k.shape)
        if k.diagonal_spatial and self.method == "linear":
            raise ValueError("ImageResize(method='linear') needs the full spatial covariance but received a "
                             "diagonal-only kernel; the layout requirement was not propagated")
        ref = k.var1
        mats = [_resize_matrix(L_in, L_out, self.method, ref.dtype, ref.device)
                for L_in, L_out in zip(k.spatial_shape, self.shape, strict=True)]

        def rmap(t: torch.Tensor | None, n_batch: int) -> torch.Tensor | None:
            if t is None:
                return None
            for i, r in enumerate(mats):
                for a in _spatial_axes(n_batch, nd, i, k.diagonal_spatial):
                    if self.method == "nearest":
                        t = t.index_select(a, r.argmax(1))
                    else:
                        t = torch.tensordot(t, r, dims=([a], [1])).movedim(-1, a)
            return t.contiguous()

        var1, var2 = self._map_vars(k, lambda v: rmap(v, 1))
        return k.replace(nngp=rmap(k.nngp, 2), ntk=rmap(k.ntk, 2), var1=var1, var2=var2,
                         shape=self.output_shape(k.shape))

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        out = self.output_shape(shape)
        p_in, p_out = math.prod(shape[1:]), math.prod(out[1:])
        cells = (p_in + p_out) ** 2 if full else p_in + p_out
        return float(3 * cells * itemsize), out

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        self.output_shape(shape)
        return _ResizeModule(self.shape, self.method)
