"""Branch-merging combinators: elementwise product and concatenation.

``FanOut``, ``FanInSum``, ``Identity``, ``serial`` and ``parallel`` live in
:mod:`ntkit.layers.base`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import BuildContext, KernelOrList, Layer, ShapeOrList
from .kernel import Kernel

__all__ = ["FanInProd", "FanInConcat"]


def _need_list(x: object, who: str) -> list:
    if not isinstance(x, list):
        raise ValueError(f"{who} needs a list of branches (after FanOut/parallel), got a single input")
    if not x:
        raise ValueError(f"{who} needs at least one branch")
    return x


def _check_gaussian_branches(k: list[Kernel], who: str) -> None:
    if sum(not ki.is_gaussian for ki in k) > 1:
        raise ValueError(
            f"{who}: at most one branch may end without an affine layer (Dense/Conv); the branches must "
            "be independent for the infinite-width kernel to factorise, and branches sharing an "
            "activation or the raw input are not"
        )
    if len({ki.diagonal_spatial for ki in k}) > 1:
        raise ValueError(f"{who}: branches disagree on spatial covariance layout")


class _FanInProd(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class FanInProd(Layer):
    """Elementwise product of a list of branches of equal shape.

    For independent branches (every branch but at most one ends in its own
    zero-mean affine layer) the product's covariance is the product of the
    branches' covariances, ``q = Π_i q_i``, and its NTK is
    ``Θ = Σ_i Θ_i Π_{j≠i} q_j`` (product rule).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.FanOut(2), L.parallel(L.Dense(8), L.Dense(8)), L.FanInProd())
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> torch.allclose(arch.kernel(x).nngp, (x @ x.T / 2) ** 2)
    True
    """

    _tape_ok = True

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        k = _need_list(k, "FanInProd")
        self.output_shape([ki.shape for ki in k])
        _check_gaussian_branches(k, "FanInProd")
        var_only = all(ki.nngp is None and ki.ntk is None for ki in k)  # the variance pass of a tiled kernel
        if not var_only and any(ki.nngp is None for ki in k):
            raise ValueError("FanInProd: every branch needs its NNGP")

        def prod(ts: list[torch.Tensor]) -> torch.Tensor:
            out = ts[0]
            for t in ts[1:]:
                out = out * t
            return out

        nngp = ntk = None
        if not var_only:
            nngp = prod([ki.nngp for ki in k])
            if all(ki.ntk is not None for ki in k):
                for i, ki in enumerate(k):
                    term = prod([ki.ntk] + [kj.nngp for j, kj in enumerate(k) if j != i])
                    ntk = term if ntk is None else ntk.add_(term)

        var1, var2 = self._merge_vars(k, prod)
        return k[0].replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, is_gaussian=False)

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        _need_list(shape, "FanInProd")
        if len(set(map(tuple, shape))) != 1:
            raise ValueError(f"FanInProd needs branches of equal shape, got {[tuple(s) for s in shape]}")
        return tuple(shape[0])

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        self.output_shape(shape)
        return _FanInProd()


class _FanInConcat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class FanInConcat(Layer):
    """Concatenate branches along an axis of the channels-first activations.

    Parameters
    ----------
    axis : int
        Axis in the batch-inclusive numbering of ``(n, C, *S)``: ``1`` (or
        the equivalent negative index, ``-1`` for flat ``(n, d)`` inputs) is
        the channel axis; ``2, 3, ...`` are spatial axes. The batch axis 0 is
        not allowed.

    Notes
    -----
    Channel concatenation averages the branches' covariances weighted by
    their channel counts, ``q = Σ_i C_i q_i / Σ_i C_i`` (exact for any
    branches: the channel-averaged covariance is a sum over channels). Spatial
    concatenation is supported in the diagonal layout (networks that only
    need equal-position covariances, e.g. ending in ``Flatten``): the
    branches' entries are concatenated along that axis. It raises
    ``NotImplementedError`` in the full layout, where cross-branch position
    pairs would be needed.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.FanOut(2), L.parallel(L.Dense(3, W_std=2.0), L.Dense(1)), L.FanInConcat(1))
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> torch.allclose(arch.kernel(x).nngp, (3 * 4 + 1) / 4 * (x @ x.T / 2))
    True
    """

    _tape_ok = True

    def __init__(self, axis: int = 1) -> None:
        if isinstance(axis, bool) or int(axis) != axis:
            raise TypeError(f"FanInConcat: axis must be an integer, got {axis!r}")
        self.axis = int(axis)

    def _resolve(self, shape: tuple[int, ...]) -> int:
        """Axis index into the per-example shape ``(C, *S)``."""
        nd = len(shape) + 1
        ax = self.axis + nd if self.axis < 0 else self.axis
        if not 1 <= ax < nd:
            raise ValueError(f"FanInConcat: axis={self.axis} is invalid for inputs with per-example shape "
                             f"{shape} (use 1 for channels, 2.. for spatial axes; not the batch axis 0)")
        return ax - 1

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        shapes = [tuple(s) for s in _need_list(shape, "FanInConcat")]
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"FanInConcat needs branches with the same number of dims, got {shapes}")
        ax = self._resolve(shapes[0])
        rest = {s[:ax] + s[ax + 1:] for s in shapes}
        if len(rest) != 1:
            raise ValueError(f"FanInConcat(axis={self.axis}): branch shapes must agree except on that axis, "
                             f"got {shapes}")
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out)

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        k = _need_list(k, "FanInConcat")
        out_shape = self.output_shape([ki.shape for ki in k])
        if len({ki.diagonal_spatial for ki in k}) > 1:
            raise ValueError("FanInConcat: branches disagree on spatial covariance layout")
        ax = self._resolve(k[0].shape)
        gauss = all(ki.is_gaussian for ki in k)
        if ax == 0:
            total = sum(ki.channels for ki in k)

            def avg(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
                if any(t is None for t in ts):
                    return None
                out = ts[0] * (k[0].channels / total)
                for t, ki in zip(ts[1:], k[1:], strict=True):
                    out.add_(t, alpha=ki.channels / total)
                return out

            var1, var2 = self._merge_vars(k, avg)
            return k[0].replace(nngp=avg([ki.nngp for ki in k]), ntk=avg([ki.ntk for ki in k]), var1=var1,
                                var2=var2, shape=out_shape, is_gaussian=gauss)
        if not k[0].diagonal_spatial:
            raise NotImplementedError(
                "FanInConcat along a spatial axis needs cross-branch position covariances in the full "
                "spatial layout, which are not tracked; concatenate channels (axis=1) instead, or use it "
                "where only equal-position covariances are needed (e.g. before Flatten)"
            )
        if any(ki.channels != k[0].channels for ki in k):
            raise ValueError("FanInConcat: branches must have equal channels to concatenate spatially")

        def cat(ts: list[torch.Tensor | None], n_batch: int) -> torch.Tensor | None:
            if any(t is None for t in ts):
                return None
            return torch.cat(ts, dim=n_batch + ax - 1)

        var1, var2 = self._merge_vars(k, lambda ts: cat(ts, 1))
        return k[0].replace(nngp=cat([ki.nngp for ki in k], 2), ntk=cat([ki.ntk for ki in k], 2), var1=var1,
                            var2=var2, shape=out_shape, is_gaussian=gauss)

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        self.output_shape(shape)
        return _FanInConcat(self._resolve(tuple(shape[0])) + 1)

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        out = self.output_shape(shape)
        p = math.prod(out[1:]) if len(out) > 1 else 1
        return float(6 * (p * p if full and len(out) > 1 else p) * itemsize), out

    def __repr__(self) -> str:
        return f"FanInConcat(axis={self.axis})"
