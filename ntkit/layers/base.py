"""The layer protocol: one description, a finite network and its infinite-width kernels.

Every layer implements four small methods:

``apply_kernel(k)``
    the infinite-width map on a :class:`~ntkit.layers.kernel.Kernel` (or a
    list of them, between ``FanOut`` and a ``FanIn*``);
``output_shape(shape)``
    the per-example activation shape ``(C, *S)`` after the layer;
``build(shape, ctx)``
    the matching finite ``torch.nn.Module`` (parameters drawn from
    ``ctx.generator`` in ``ctx.dtype``);
``needs_full_spatial(full_out)``
    whether the layer needs the full spatial covariance of its input given
    whether what follows needs it of its output (default: passes it through).

Users only call :meth:`Layer.kernel` and :meth:`Layer.init` on the top-level
architecture; :func:`serial` and :func:`parallel` work out spatial
requirements and readout layers for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._validation import as_input_tensor, check_feature_shapes_match
from ._tape import taped_vars
from .kernel import Kernel, input_kernel

__all__ = ["Layer", "BuildContext", "serial", "parallel", "FanOut", "FanInSum", "Identity",
           "KernelOrList", "ShapeOrList"]

KernelOrList = Kernel | list[Kernel]
ShapeOrList = tuple[int, ...] | list[tuple[int, ...]]
_GET_CHOICES = ("nngp", "ntk")


@dataclass
class BuildContext:
    """What :meth:`Layer.build` needs: random source, dtype, device, width override."""

    generator: torch.Generator
    dtype: torch.dtype = torch.float32
    device: torch.device | str | None = None
    width: int | None = None
    readout: set[int] = field(default_factory=set)  # ids of affine layers that keep their out size

    def out_channels(self, layer: Layer, declared: int) -> int:
        """Width of an affine layer: ``width`` overrides hidden ones, readouts keep theirs."""
        if self.width is None or id(layer) in self.readout:
            return declared
        return self.width

    def normal(self, *shape: int) -> torch.Tensor:
        """i.i.d. N(0, 1) draws from the context's generator (drawn on CPU for reproducibility)."""
        t = torch.randn(*shape, generator=self.generator, dtype=torch.float64)
        return t.to(dtype=self.dtype, device=self.device)


class Layer:
    """Base class of every infinite-width layer (see module docstring)."""

    #: True for Dense/Conv-like layers with weights: they are the ones ``width`` overrides.
    is_affine: bool = False

    # ---- to implement -------------------------------------------------------
    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        raise NotImplementedError

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        raise NotImplementedError

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        raise NotImplementedError

    def needs_full_spatial(self, full_out: bool) -> bool:
        return full_out

    # ---- in-place fast path (private) -----------------------------------------
    #: ``apply_kernel`` returns ``nngp``/``ntk`` tensors that alias neither its input nor
    #: anything else, so the next layer may overwrite them.
    _fresh_output: bool = False

    def _apply_owned(self, k: KernelOrList, owned: bool) -> tuple[KernelOrList, bool]:
        """``apply_kernel``, told whether ``k``'s ``nngp``/``ntk`` may be overwritten.

        Returns the output and whether *it* may be overwritten by the next
        layer. Layers that can work in place (Dense, activations) override it.
        """
        out = self.apply_kernel(k)
        return out, self._fresh_output and not isinstance(out, list)

    # ---- variance tape and fused input layers (private) -------------------------
    #: the layer accepts variance-only kernels (``nngp = ntk = None``), as the variance pass of
    #: a tiled kernel needs (see :mod:`ntkit.layers._tape`); combinators ask their children
    _tape_ok: bool = False

    #: the layer's cross maps read its input's full self covariances, not only their position
    #: variances (attention's softmax over positions), so a tape must keep them whole
    _reads_full_vars: bool = False

    def _supports_tape(self) -> bool:
        return self._tape_ok

    def _needs_full_vars(self) -> bool:
        return self._reads_full_vars

    def _map_vars(self, k: Kernel, fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fn(k.var1), fn(k.var2))`` (one call when ``var2 is var1``), replayed from a tape in sub-tiles."""

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            v1 = fn(k.var1)
            return v1, (v1 if k.var2 is k.var1 else fn(k.var2))

        return taped_vars(self, compute, full=k.full_layout)

    def _merge_vars(self, ks: list[Kernel], merge: Callable[[list[torch.Tensor]], torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``_map_vars`` for branch-merging layers: ``merge`` the branches' ``var1`` (and ``var2``)."""

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            v1 = merge([ki.var1 for ki in ks])
            return v1, (v1 if all(ki.var2 is ki.var1 for ki in ks) else merge([ki.var2 for ki in ks]))

        return taped_vars(self, compute, full=ks[0].full_layout)

    def _apply_inputs(self, x1: torch.Tensor, x2: torch.Tensor | None, full: bool, compute_ntk: bool,
                      var_only: bool = False) -> tuple[KernelOrList, bool]:
        """The kernel after this layer from raw inputs (``x2=None``: ``x1`` with itself).

        Layers that can map raw inputs more cheaply than "input kernel, then
        ``apply_kernel``" override it (``Conv`` builds its output from
        patches: one GEMM, no convolution of the input covariance).
        """
        k0 = input_kernel(x1, x2, diagonal_spatial=not full, compute_ntk=compute_ntk, var_only=var_only)
        return self._apply_owned(k0, True)  # the input kernel is ours to overwrite

    # ---- structure helpers (overridden by combinators) ----------------------
    def _mark_readout(self, downstream_affine: bool, readout: set[int]) -> bool:
        """Record affine layers with no affine layer after them; return whether one is at or after here."""
        if self.is_affine:
            if not downstream_affine:
                readout.add(id(self))
            return True
        return downstream_affine

    def _actual_shape(self, shape: ShapeOrList, ctx: BuildContext) -> ShapeOrList:
        """Output shape of the *built* module given its actual input shape (``width`` overrides channels)."""
        out = self.output_shape(shape)
        if self.is_affine and isinstance(out, tuple):
            out = (ctx.out_channels(self, out[0]),) + tuple(out[1:])
        return out

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        """Rough working memory per input pair at this layer, and the output shape."""
        out = self.output_shape(shape)
        return _pair_size(shape, full) * itemsize * 6, out

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    # ---- public API ------------------------------------------------------------
    def kernel(
        self,
        x1: Any,
        x2: Any = None,
        get: str | Sequence[str] = ("nngp", "ntk"),
        *,
        batch_size: int | None = None,
        memory_budget: int | str | None = "1GB",
        progress: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Kernel:
        """Infinite-width NNGP and/or NTK between ``x1`` and ``x2``.

        Parameters
        ----------
        x1 : torch.Tensor, numpy array or Kernel
            Inputs ``(n1, C, *S)`` channels-first (``(n1, d)`` for flat data),
            or a :class:`Kernel` produced by another architecture, which is
            then carried on through this one (no tiling).
        x2 : torch.Tensor or numpy array, optional
            Second batch, same per-example shape; ``None`` means ``x1``.
        get : str or sequence of str
            ``"nngp"``, ``"ntk"`` or both. Asking only for ``"nngp"`` skips the NTK.
        batch_size : int, optional
            Tile side: rows and columns are processed ``batch_size`` at a time.
        memory_budget : int or str, optional
            Bytes (or ``"2GB"``) one tile may use; tiles are sized to fit it
            (default ``"1GB"``, which keeps e.g. CNN-GAP kernels of any ``n``
            in bounded memory; ``None`` computes everything as one tile).
        progress : bool
            Show a progress bar over tiles.
        dtype : torch.dtype, optional
            Compute in this dtype (default: the inputs' floating dtype).

        Returns
        -------
        Kernel
            ``.nngp`` and ``.ntk`` of shape ``(n1, n2)`` for architectures with
            flat outputs (``None`` for what was not requested).

        Examples
        --------
        >>> import torch
        >>> from ntkit import layers as L
        >>> arch = L.serial(L.Dense(512), L.Relu(), L.Dense(1))
        >>> k = arch.kernel(torch.randn(5, 3), get="ntk")
        >>> k.ntk.shape
        torch.Size([5, 5])
        """
        gets = _normalise_get(get)
        if isinstance(x1, Kernel):
            if x2 is not None:
                raise ValueError("x2 must be None when x1 is a Kernel")
            k = x1 if "ntk" in gets or x1.ntk is None else x1.replace(ntk=None)
            return self.apply_kernel(k)
        x1t = as_input_tensor(x1, "x1", dtype=dtype, min_ndim=2)
        if not x1t.is_floating_point():
            x1t = x1t.to(torch.get_default_dtype())
        x2t = None
        if x2 is not None:
            x2t = as_input_tensor(x2, "x2", dtype=x1t.dtype, min_ndim=2)
            check_feature_shapes_match(x1t, x2t)
        in_shape = tuple(x1t.shape[1:])
        self.output_shape(in_shape)  # validates the architecture against the input shape early
        full = self.needs_full_spatial(False)
        from ._evaluate import evaluate_tiled

        return evaluate_tiled(self, x1t, x2t, gets, full, memory_budget, batch_size, progress)

    def init(
        self,
        input_shape: Sequence[int],
        width: int | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> nn.Module:
        """The finite network this architecture describes, freshly initialised.

        Parameters
        ----------
        input_shape : sequence of int
            Per-example input shape ``(C, *S)`` (or ``(d,)``), channels-first.
        width : int, optional
            Overrides the output size of every hidden affine layer (those with
            another affine layer after them); readout layers keep theirs.
        seed : int
            Seed of the parameter draw (a private ``torch.Generator``; the
            global RNG is untouched).
        dtype, device : optional
            Of the parameters.

        Examples
        --------
        >>> import torch
        >>> from ntkit import layers as L
        >>> net = L.serial(L.Dense(16), L.Relu(), L.Dense(1)).init((3,), width=64, seed=0)
        >>> net(torch.randn(4, 3)).shape
        torch.Size([4, 1])
        """
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive ints (C, *S), got {input_shape!r}")
        if width is not None and (int(width) != width or width < 1):
            raise ValueError(f"width must be a positive integer or None, got {width!r}")
        self.output_shape(shape)
        gen = torch.Generator().manual_seed(int(seed))
        readout: set[int] = set()
        self._mark_readout(False, readout)
        ctx = BuildContext(generator=gen, dtype=dtype, device=device, width=width, readout=readout)
        return self.build(shape, ctx)


def _normalise_get(get: str | Sequence[str]) -> tuple[str, ...]:
    gets = (get,) if isinstance(get, str) else tuple(get)
    if not gets:
        raise ValueError("get must name at least one of 'nngp', 'ntk'")
    for g in gets:
        if g not in _GET_CHOICES:
            raise ValueError(f"get must contain only 'nngp' and/or 'ntk', got {g!r}")
    return gets


def _pair_size(shape: ShapeOrList, full: bool) -> float:
    if isinstance(shape, list):
        return sum(_pair_size(s, full) for s in shape)
    p = math.prod(shape[1:]) if len(shape) > 1 else 1
    return float(p * p if full else p)


# ---- combinators ------------------------------------------------------------


class _Serial(nn.Module):
    def __init__(self, mods: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(mods)

    def forward(self, x: Any) -> Any:
        for m in self.layers:
            x = m(x)
        return x


class Serial(Layer):
    """Layers applied one after the other (see :func:`serial`)."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"serial: argument {i} must be an ntkit layer, got {type(layer).__name__}")
        self.layers = list(layers)

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        return self._apply_owned(k, False)[0]

    def _apply_owned(self, k: KernelOrList, owned: bool) -> tuple[KernelOrList, bool]:
        for layer in self.layers:
            k, owned = layer._apply_owned(k, owned)
        return k, owned

    def _apply_inputs(self, x1: torch.Tensor, x2: torch.Tensor | None, full: bool, compute_ntk: bool,
                      var_only: bool = False) -> tuple[KernelOrList, bool]:
        k, owned = self.layers[0]._apply_inputs(x1, x2, full, compute_ntk, var_only)
        for layer in self.layers[1:]:
            k, owned = layer._apply_owned(k, owned)
        return k, owned

    def _supports_tape(self) -> bool:
        return all(layer._supports_tape() for layer in self.layers)

    def _needs_full_vars(self) -> bool:
        return any(layer._needs_full_vars() for layer in self.layers)

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"layer {i} ({type(layer).__name__}): {exc}") from None
        return shape

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        mods = []
        for layer in self.layers:
            mods.append(layer.build(shape, ctx))
            shape = layer._actual_shape(shape, ctx)
        return _Serial(mods)

    def _actual_shape(self, shape: ShapeOrList, ctx: BuildContext) -> ShapeOrList:
        for layer in self.layers:
            shape = layer._actual_shape(shape, ctx)
        return shape

    def needs_full_spatial(self, full_out: bool) -> bool:
        for layer in reversed(self.layers):
            full_out = layer.needs_full_spatial(full_out)
        return full_out

    def _mark_readout(self, downstream_affine: bool, readout: set[int]) -> bool:
        for layer in reversed(self.layers):
            downstream_affine = layer._mark_readout(downstream_affine, readout)
        return downstream_affine

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        # the full/diagonal flag changes along the chain: recompute it per layer
        fulls = []
        f = False
        for layer in reversed(self.layers):
            fulls.append(f)
            f = layer.needs_full_spatial(f)
        fulls = fulls[::-1]  # fulls[i]: is layer i's *output* full
        best = 0.0
        for layer, f_out in zip(self.layers, fulls, strict=True):
            f_in = layer.needs_full_spatial(f_out)
            b, shape = layer._bytes_per_pair(shape, f_in, itemsize)
            best = max(best, b)
        return best, shape

    def __repr__(self) -> str:
        return "serial(" + ", ".join(repr(layer) for layer in self.layers) + ")"


def serial(*layers: Layer) -> Layer:
    """Compose layers in sequence.

    Examples
    --------
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Dense(128), L.Relu(), L.Dense(1))
    """
    if not layers:
        raise ValueError("serial needs at least one layer")
    return Serial(layers)


class _Parallel(nn.Module):
    def __init__(self, mods: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(mods)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(x) for m, x in zip(self.branches, xs, strict=True)]


class Parallel(Layer):
    """Apply branch ``i`` to input ``i`` of a list (see :func:`parallel`)."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"parallel: argument {i} must be an ntkit layer, got {type(layer).__name__}")
        self.layers = list(layers)

    def _check(self, x: Any, what: str) -> None:
        if not isinstance(x, list) or len(x) != len(self.layers):
            got = f"a list of {len(x)}" if isinstance(x, list) else "a single input"
            raise ValueError(f"parallel of {len(self.layers)} branches needs a list of {len(self.layers)} "
                             f"{what} (put FanOut({len(self.layers)}) before it), got {got}")

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        self._check(k, "kernels")
        return [layer.apply_kernel(ki) for layer, ki in zip(self.layers, k, strict=True)]

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        self._check(shape, "inputs")
        return [layer.output_shape(s) for layer, s in zip(self.layers, shape, strict=True)]

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        self._check(shape, "inputs")
        return _Parallel([layer.build(s, ctx) for layer, s in zip(self.layers, shape, strict=True)])

    def _actual_shape(self, shape: ShapeOrList, ctx: BuildContext) -> ShapeOrList:
        self._check(shape, "inputs")
        return [layer._actual_shape(s, ctx) for layer, s in zip(self.layers, shape, strict=True)]

    def needs_full_spatial(self, full_out: bool) -> bool:
        return any(layer.needs_full_spatial(full_out) for layer in self.layers)

    def _supports_tape(self) -> bool:
        return all(layer._supports_tape() for layer in self.layers)

    def _needs_full_vars(self) -> bool:
        return any(layer._needs_full_vars() for layer in self.layers)

    def _mark_readout(self, downstream_affine: bool, readout: set[int]) -> bool:
        found = [layer._mark_readout(downstream_affine, readout) for layer in self.layers]
        return any(found)

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        self._check(shape, "inputs")
        parts = [layer._bytes_per_pair(s, layer.needs_full_spatial(full), itemsize)
                 for layer, s in zip(self.layers, shape, strict=True)]
        return sum(p[0] for p in parts), [p[1] for p in parts]

    def __repr__(self) -> str:
        return "parallel(" + ", ".join(repr(layer) for layer in self.layers) + ")"


def parallel(*layers: Layer) -> Layer:
    """Branches applied to the elements of a list input (after ``FanOut``).

    Examples
    --------
    >>> from ntkit import layers as L
    >>> block = L.serial(L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(64))), L.FanInSum())
    """
    if not layers:
        raise ValueError("parallel needs at least one layer")
    return Parallel(layers)


class _FanOut(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] * self.n


class FanOut(Layer):
    """Copy the input into a list of ``n`` identical inputs."""

    _tape_ok = True

    def __init__(self, n: int) -> None:
        if int(n) != n or n < 1:
            raise ValueError(f"FanOut: n must be a positive integer, got {n!r}")
        self.n = int(n)

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        if isinstance(k, list):
            raise ValueError("FanOut needs a single input, got a list (close the branches with a FanIn first)")
        return [k] * self.n

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        if isinstance(shape, list):
            raise ValueError("FanOut needs a single input, got a list (close the branches with a FanIn first)")
        return [shape] * self.n

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        return _FanOut(self.n)


def _check_list(x: Any, who: str) -> None:
    if not isinstance(x, list):
        raise ValueError(f"{who} needs a list of branches (after FanOut/parallel), got a single input")


class _FanInSum(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class FanInSum(Layer):
    """Sum a list of branches of equal shape.

    The infinite-width kernel adds the branches' covariances, which is exact
    when the branches are uncorrelated: every branch but at most one must end
    in its own zero-mean affine layer (``Dense``/``Conv``), as in residual
    blocks ``x + Dense(relu(x))``.
    """

    _tape_ok = True

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        _check_list(k, "FanInSum")
        self.output_shape([ki.shape for ki in k])
        if sum(not ki.is_gaussian for ki in k) > 1:
            raise ValueError(
                "FanInSum: at most one branch may end without an affine layer (Dense/Conv); the others' "
                "outputs would be correlated and the summed kernel wrong"
            )
        if len({ki.diagonal_spatial for ki in k}) > 1:
            raise ValueError("FanInSum: branches disagree on spatial covariance layout")

        def add(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
            if any(t is None for t in ts):
                return None
            out = ts[0]
            for t in ts[1:]:
                out = out + t
            return out

        var1, var2 = self._merge_vars(k, add)
        return k[0].replace(nngp=add([ki.nngp for ki in k]), ntk=add([ki.ntk for ki in k]), var1=var1,
                            var2=var2, is_gaussian=all(ki.is_gaussian for ki in k))

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        _check_list(shape, "FanInSum")
        if len(set(map(tuple, shape))) != 1:
            raise ValueError(f"FanInSum needs branches of equal shape, got {[tuple(s) for s in shape]}")
        return tuple(shape[0])

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        return _FanInSum()


class _Identity(nn.Module):
    def forward(self, x: Any) -> Any:
        return x


class Identity(Layer):
    """The identity map (a residual connection's skip branch)."""

    _tape_ok = True

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        return k

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        return shape

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        return _Identity()
