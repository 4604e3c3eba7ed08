"""Convolutions: the infinite-width kernel of ``Conv`` and its finite ``nn.Module``.

Inputs are channels-first, ``(n, C, L)`` for 1-D and ``(n, C, H, W)`` for 2-D
data (any number of spatial dimensions for the kernel; up to three for the
finite module). A convolution with filter ``f``, strides ``s`` and padding maps
a channel-averaged covariance ``q`` to

``q'(h, h') = W_std^2 * mean_d q(s*h + d - p, s*h' + d - p) + b_std^2``

where ``d`` runs over the filter offsets and ``q`` is zero outside the input
(``VALID``/``SAME``) or wraps around (``CIRCULAR``). The same shift applies to
both position axes, so the full-layout map is a ``2D``-dimensional convolution
with a *diagonal* filter; it is separable over spatial dimensions and computed
as ``sum_i f_i`` strided slice additions (no ``f_1 * f_2`` product). In the
diagonal layout the same code touches one axis per dimension and costs
``O(n1 n2 |S| sum_i f_i)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_nonnegative
from ._tape import taped_vars
from .base import BuildContext, KernelOrList, Layer, ShapeOrList
from .dense import _affine, _affine_
from .kernel import Kernel

__all__ = ["Conv"]

_PADDINGS = ("VALID", "SAME", "CIRCULAR")
_PARAMS = ("ntk", "standard")
#: largest patch size ``C |f|`` for which a first Conv in the full layout builds its kernel from
#: patches (one GEMM of that inner size per entry) instead of convolving the input covariance
#: (``C + Σ f_i`` passes). Measured on 16x16 inputs, 3x3 filter, 1 thread: patches 0.3-0.75x the time
#: for C |f| <= 72, even at 144-252, 1.7x at 288 and 2.7x at 576. In the diagonal layout the per-position
#: GEMMs are 1.5-5x slower than the shifts at every size, so that layout always uses the shifts.
_MAX_PATCH = 160


# ---- shared spatial helpers (also used by pooling) ------------------------------------------


def _as_tuple(value: int | Sequence[int] | None, n: int, name: str, default: int | None = None) -> tuple[int, ...]:
    """Normalise an int or sequence of positive ints to a length-``n`` tuple."""
    if value is None:
        if default is None:
            raise ValueError(f"{name} is required")
        return (default,) * n
    vals = (value,) * n if isinstance(value, int) else tuple(value)
    if len(vals) != n or any(int(v) != v or v < 1 for v in vals):
        raise ValueError(f"{name} must be a positive int or a tuple of {n} positive ints, got {value!r}")
    return tuple(int(v) for v in vals)


def _plan_axis(length: int, window: int, stride: int, padding: str, what: str) -> tuple[int, int]:
    """``(out_len, pad_lo)`` of a sliding window along one axis (TF/JAX ``SAME`` conventions)."""
    if padding == "VALID":
        if window > length:
            raise ValueError(
                f"{what} of size {window} is larger than the input's spatial size {length} with "
                f"padding='VALID'; use padding='SAME' or a smaller window"
            )
        return (length - window) // stride + 1, 0
    out = -(-length // stride)
    total = max((out - 1) * stride + window - length, 0)
    return out, total // 2


def _plan(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: str,
          what: str) -> list[tuple[int, int]]:
    return [_plan_axis(L, f, s, padding, what) for L, f, s in zip(spatial, window, strides, strict=True)]


def _pads(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int],
          plans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(lo, hi)`` padding per spatial axis that makes the windows of ``plans`` fit (none for VALID)."""
    return [(lo, max((out_len - 1) * s + f - length, 0) - lo)
            for length, f, s, (out_len, lo) in zip(spatial, window, strides, plans, strict=True)]


def _shift_sum(t: torch.Tensor, axes: Sequence[int], window: int, stride: int, pad_lo: int, out_len: int,
               circular: bool) -> torch.Tensor:
    """``out[.., h, .., h', ..] = sum_d t[.., s*h+d-p, .., s*h'+d-p, ..]`` over the given ``axes`` jointly.

    With one axis this is a sum-pool; with two axes (the x1 and x2 position
    axes of a covariance) it is the diagonal-filter convolution of a Conv.
    Out-of-range positions contribute zero, or wrap around when ``circular``.
    """
    length = t.shape[axes[0]]
    shape = list(t.shape)
    for a in axes:
        shape[a] = out_len
    base = torch.arange(out_len, device=t.device) * stride
    if circular:
        acc = None
        for d in range(window):
            idx = (base + (d - pad_lo)) % length
            part = t
            for a in axes:
                part = part.index_select(a, idx)
            acc = part if acc is None else acc.add_(part)
        return acc
    pieces = []
    for d in range(window):
        off = d - pad_lo
        # valid output positions h: 0 <= s*h + off < length (a contiguous range)
        h0 = (-off + stride - 1) // stride if off < 0 else 0
        h1 = min(out_len, (length - 1 - off) // stride + 1) if length - 1 - off >= 0 else 0
        if h1 <= h0:
            continue
        start = stride * h0 + off
        src = [slice(None)] * t.ndim
        dst = [slice(None)] * t.ndim
        for a in axes:
            src[a] = slice(start, start + stride * (h1 - h0 - 1) + 1, stride)
            dst[a] = slice(h0, h1)
        pieces.append((h1 - h0 == out_len, tuple(src), tuple(dst)))
    first = next((i for i, p in enumerate(pieces) if p[0]), None)
    if first is None:
        acc = t.new_zeros(shape)
        rest = list(range(len(pieces)))
    else:
        # a piece covering every output position, plus a second piece in one pass where they overlap
        # and a copy of the first on the (thin) rest: one pass fewer than "copy, then add"
        cover = t[pieces[first][1]]
        rest = [i for i in range(len(pieces)) if i != first]
        if not rest:
            return cover.clone(memory_format=torch.contiguous_format)
        _, src, dst = pieces[rest.pop(0)]
        acc = t.new_empty(shape)
        torch.add(cover[dst], t[src], out=acc[dst])
        for region in _complement(dst, axes, out_len):
            acc[region] = cover[region]
    for i in rest:
        _, src, dst = pieces[i]
        acc[dst].add_(t[src])
    return acc


def _complement(box: tuple[slice, ...], axes: Sequence[int], length: int) -> list[tuple[slice, ...]]:
    """Disjoint boxes covering ``[0, length)`` on ``axes`` (everything on other axes) minus ``box``."""
    out = []
    inner = [slice(None)] * len(box)
    for a in axes:
        lo, hi = box[a].start, box[a].stop
        for part in (slice(0, lo), slice(hi, length)):
            if part.stop > part.start:
                region = list(inner)
                region[a] = part
                out.append(tuple(region))
        inner[a] = box[a]
    return out


def _spatial_axes(n_batch: int, n_spatial: int, i: int, diagonal: bool) -> tuple[int, ...]:
    """Axes of spatial dimension ``i`` in a tensor with ``n_batch`` leading batch axes."""
    if diagonal:
        return (n_batch + i,)
    return (n_batch + i, n_batch + n_spatial + i)


def _filter_map(t: torch.Tensor | None, n_batch: int, diagonal: bool, plans: list[tuple[int, int]],
                window: Sequence[int], strides: Sequence[int], circular: bool) -> torch.Tensor | None:
    """Apply the conv diagonal-filter sum (separably over dimensions) to a covariance tensor."""
    if t is None:
        return None
    d = len(plans)
    for i, (out_len, pad_lo) in enumerate(plans):
        t = _shift_sum(t, _spatial_axes(n_batch, d, i, diagonal), window[i], strides[i], pad_lo, out_len,
                       circular)
    return t


def _all_zero(t: torch.Tensor) -> bool:
    """Whether ``t`` is all zeros (a raw input kernel's NTK), deciding on the first entry when it is not 0."""
    if t.numel() and bool(t.reshape(-1)[0] != 0):
        return False
    return not bool(t.any())


def _patches(x: torch.Tensor, filter_shape: Sequence[int], strides: Sequence[int], plans: list[tuple[int, int]],
             circular: bool) -> torch.Tensor:
    """``(n, C * |f|, P_out)`` patches of channels-first ``x`` (zero padded, or wrapped when ``circular``)."""
    pads = _pads(x.shape[2:], filter_shape, strides, plans)
    if circular:  # wrap-around by indexing: works for pads wider than the axis, unlike F.pad
        for i, ((lo, hi), length) in enumerate(zip(pads, x.shape[2:], strict=True)):
            if lo or hi:
                x = x.index_select(2 + i, torch.arange(-lo, length + hi, device=x.device) % length)
    elif any(lo or hi for lo, hi in pads):
        x = F.pad(x, [v for lo_hi in reversed(pads) for v in lo_hi])
    pieces = []
    for offsets in itertools.product(*(range(f) for f in filter_shape)):
        idx = [slice(None), slice(None)]
        idx += [slice(d, d + s * (out_len - 1) + 1, s) for d, s, (out_len, _) in zip(offsets, strides, plans, strict=True)]
        pieces.append(x[tuple(idx)])
    out = torch.stack(pieces, dim=2)  # (n, C, |f|, *S_out)
    return out.reshape(out.shape[0], -1, math.prod(out.shape[3:]))


def _check_spatial_kernel(k: object, who: str, n_spatial: int) -> Kernel:
    if isinstance(k, list):
        raise ValueError(f"{who} needs a single input, got a list of branches (close them with a FanIn first)")
    assert isinstance(k, Kernel)
    if len(k.spatial_shape) != n_spatial:
        if not k.spatial_shape:
            raise ValueError(f"{who} needs spatial inputs (n, C, *S) with {n_spatial} spatial dimension(s); "
                             f"got a flat/flattened kernel with per-example shape {k.shape}")
        raise ValueError(f"{who} needs {n_spatial} spatial dimension(s), got per-example shape {k.shape}")
    return k


# ---- Conv -------------------------------------------------------------------------------------


class _ConvModule(nn.Module):
    """Finite convolution in the NTK or standard parameterisation, channels-first."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, w_scale: float, b_scale: float,
                 strides: tuple[int, ...], pads: list[tuple[int, int]], circular: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.w_scale, self.b_scale = w_scale, b_scale
        self.strides, self.circular = strides, circular
        # F.pad wants (last_lo, last_hi, ..., first_lo, first_hi)
        self._pad = tuple(v for lo_hi in reversed(pads) for v in lo_hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = self.weight.ndim - 2
        if x.ndim != nd + 2:
            raise ValueError(f"Conv expects inputs (n, C, *S) with {nd} spatial dims, got shape {tuple(x.shape)}")
        if any(self._pad):
            x = F.pad(x, self._pad, mode="circular" if self.circular else "constant")
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
        out = conv(x, self.weight, stride=self.strides)
        if self.w_scale != 1.0:
            out = out * self.w_scale
        if self.bias is not None:
            b = self.bias.reshape((1, -1) + (1,) * nd)
            out = out + (b * self.b_scale if self.b_scale != 1.0 else b)
        return out

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, strides={self.strides}, circular={self.circular}"


class Conv(Layer):
    """Convolution over channels-first inputs ``(n, C, *S)``.

    Parameters
    ----------
    out_chan : int
        Output channels (overridden by ``width`` in :meth:`Layer.init` unless it is the readout).
    filter_shape : int or tuple of int
        Filter size per spatial dimension; its length sets the number of spatial dims.
    strides : int or tuple of int, optional
        Default 1.
    padding : {"VALID", "SAME", "CIRCULAR"}
        ``SAME`` follows TF/JAX: output size ``ceil(L / stride)``, padding split
        with the extra element on the right/bottom. ``CIRCULAR`` wraps around.
    W_std, b_std : float
        Weight and bias scales; ``b_std=None`` means no bias.
    parameterization : {"ntk", "standard"}
        ``"ntk"``: weights ~ N(0, 1), output ``W_std / sqrt(C_in |filter|) * conv(x, W) + b_std * b``.
        ``"standard"``: weights ~ N(0, W_std^2 / fan_in), output ``conv(x, W) + b``.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Conv(8, (3, 3), padding="SAME"), L.Flatten())
    >>> arch.kernel(torch.randn(2, 3, 5, 5), get="nngp").nngp.shape
    torch.Size([2, 2])
    """

    is_affine = True
    _tape_ok = True
    _fresh_output = True  # apply_kernel returns tensors it allocated: the next layer may overwrite them

    def __init__(self, out_chan: int, filter_shape: int | Sequence[int], strides: int | Sequence[int] | None = None,
                 padding: str = "VALID", W_std: float = 1.0, b_std: float | None = None,
                 parameterization: str = "ntk") -> None:
        if int(out_chan) != out_chan or out_chan < 1:
            raise ValueError(f"Conv: out_chan must be a positive integer, got {out_chan!r}")
        self.out_chan = int(out_chan)
        if isinstance(filter_shape, int):
            filter_shape = (filter_shape,)
        fs = tuple(filter_shape)
        if not fs:
            raise ValueError("Conv: filter_shape must have at least one spatial dimension")
        self.filter_shape = _as_tuple(fs, len(fs), "Conv: filter_shape")
        self.strides = _as_tuple(strides, len(fs), "Conv: strides", default=1)
        self.padding = str(check_choice(str(padding).upper(), "Conv: padding", _PADDINGS))
        self.W_std = check_nonnegative(W_std, "Conv: W_std")
        self.b_std = None if b_std is None else check_nonnegative(b_std, "Conv: b_std")
        self.parameterization = str(check_choice(parameterization, "Conv: parameterization", _PARAMS))

    # ---- shapes ----
    def _plans(self, shape: ShapeOrList) -> list[tuple[int, int]]:
        if isinstance(shape, list):
            raise ValueError("Conv needs a single input, got a list of branches (close them with a FanIn first)")
        nd = len(self.filter_shape)
        if len(shape) != nd + 1:
            dims = {1: "(n, C, L)", 2: "(n, C, H, W)", 3: "(n, C, D, H, W)"}.get(nd, f"(n, C, *S) with {nd} spatial dims")
            raise ValueError(f"Conv with a {nd}-D filter {self.filter_shape} needs inputs {dims} "
                             f"(channels-first); got per-example shape {tuple(shape)}")
        return _plan(shape[1:], self.filter_shape, self.strides, self.padding, "Conv: filter")

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        plans = self._plans(shape)
        return (self.out_chan,) + tuple(p[0] for p in plans)

    # ---- kernel ----
    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        nd = len(self.filter_shape)
        k = _check_spatial_kernel(k, "Conv", nd)
        plans = self._plans(k.shape)
        circ = self.padding == "CIRCULAR"
        fsize = math.prod(self.filter_shape)
        diag = k.diagonal_spatial

        def fsum(t: torch.Tensor | None, n_batch: int) -> torch.Tensor | None:
            return _filter_map(t, n_batch, diag, plans, self.filter_shape, self.strides, circ)

        w2 = self.W_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        scale = 1.0 / fsize  # the filter sums become means in the affine passes below
        q = fsum(k.nngp, 2)
        var1, var2 = self._map_vars(k, lambda v: _affine_(fsum(v, 1), w2 * scale, b2))
        # the raw input kernel's NTK is all zeros: skip its (expensive) map
        t = None if k.ntk is None or _all_zero(k.ntk) else fsum(k.ntk, 2)
        nngp, ntk = self._finish(q, t, k.ntk is not None, k.channels, scale)
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=self.output_shape(k.shape),
                         is_gaussian=True)

    def _apply_inputs(self, x1: torch.Tensor, x2: torch.Tensor | None, full: bool, compute_ntk: bool,
                      var_only: bool = False) -> tuple[KernelOrList, bool]:
        """The kernel after this Conv straight from raw inputs, from patches (full layout).

        ``nngp(h, h') = W_std² ⟨P(x1)_h, P(x2)_h'⟩ / (C |f|) + b_std²`` with
        ``P(x)_h`` the (padded) patch under the filter at output position
        ``h``: one GEMM with inner size ``C |f|`` replaces the input covariance
        and its ``Σ f_i`` shifted additions. Identical in exact arithmetic.
        """
        in_shape = tuple(x1.shape[1:])
        if (not full or len(in_shape) != len(self.filter_shape) + 1
                or in_shape[0] * math.prod(self.filter_shape) > _MAX_PATCH):
            return super()._apply_inputs(x1, x2, full, compute_ntk, var_only)
        plans = self._plans(in_shape)
        out_shape = self.output_shape(in_shape)
        spatial = tuple(out_shape[1:])
        circ = self.padding == "CIRCULAR"
        inv = 1.0 / (in_shape[0] * math.prod(self.filter_shape))
        w2 = self.W_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        a = _patches(x1, self.filter_shape, self.strides, plans, circ)
        b = a if x2 is None else _patches(x2, self.filter_shape, self.strides, plans, circ)

        def self_cov(p: torch.Tensor) -> torch.Tensor:
            v = torch.matmul(p.transpose(1, 2) * inv, p).reshape((p.shape[0],) + spatial + spatial)
            return _affine_(v, w2, b2)

        def variances() -> tuple[torch.Tensor, torch.Tensor]:
            v1 = self_cov(a)
            return v1, (v1 if x2 is None else self_cov(b))

        var1, var2 = taped_vars(self, variances, full=True)
        q = None
        if not var_only:
            q = torch.matmul((a.transpose(1, 2) * inv).unsqueeze(1), b.unsqueeze(0))
            q = q.reshape((a.shape[0], b.shape[0]) + spatial + spatial)
        nngp, ntk = self._finish(q, None, compute_ntk and not var_only, in_shape[0])
        k = Kernel(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=out_shape, diagonal_spatial=False,
                   is_gaussian=True, x1_is_x2=x2 is None)
        return k, True

    def _finish(self, q: torch.Tensor | None, t: torch.Tensor | None, want_ntk: bool, c_in: int,
                scale: float = 1.0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """NNGP and NTK from ``scale`` times the filter-summed input NNGP ``q`` and NTK ``t`` (``None``: zero).

        Overwrites ``q`` and ``t``; one pass per output in the NTK parameterisation.
        """
        if q is None:
            return None, None
        w2 = self.W_std ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2
        if self.parameterization == "ntk":
            nngp = _affine_(q, w2 * scale, b2)
            if not want_ntk:
                return nngp, None
            return nngp, (nngp.clone() if t is None else torch.add(nngp, t, alpha=w2 * scale, out=t))
        fan_in = c_in * math.prod(self.filter_shape)
        nngp = _affine(q, w2 * scale, b2)
        if not want_ntk:
            return nngp, None
        ntk = _affine_(q, fan_in * scale, 0.0 if self.b_std is None else 1.0)
        return nngp, (ntk if t is None else ntk.add_(t, alpha=w2 * scale))

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        out = self.output_shape(shape)
        p_in = math.prod(shape[1:])
        p_out = math.prod(out[1:])
        if full:
            cells = p_in * p_in + 2 * p_out * max(p_in, p_out) + 2 * p_out * p_out
        else:
            cells = p_in + 3 * p_out
        # nngp and ntk, input and output, plus one intermediate of the separable pass
        return float(2 * cells * itemsize), out

    # ---- finite module ----
    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        plans = self._plans(shape)
        c_in = shape[0]
        c_out = ctx.out_channels(self, self.out_chan)
        fan_in = c_in * math.prod(self.filter_shape)
        if len(self.filter_shape) > 3:
            raise ValueError("Conv: the finite module supports at most 3 spatial dimensions")
        weight = ctx.normal(c_out, c_in, *self.filter_shape)
        bias = None if self.b_std is None else ctx.normal(c_out)
        pads = _pads(shape[1:], self.filter_shape, self.strides, plans)
        if self.parameterization == "ntk":
            w_scale = self.W_std / math.sqrt(fan_in)
            b_scale = 0.0 if self.b_std is None else self.b_std
        else:
            weight = weight * (self.W_std / math.sqrt(fan_in))
            if bias is not None:
                bias = bias * self.b_std
            w_scale, b_scale = 1.0, 1.0
        return _ConvModule(weight, bias, w_scale, b_scale, self.strides, pads, self.padding == "CIRCULAR")
