"""Monte Carlo estimates of infinite-width kernels from finite networks.

``monte_carlo_kernel(arch, x1, x2)`` draws ``n_samples`` finite networks
``arch.init(..., width=width, seed=seed + s)`` and averages their empirical
kernels:

* NNGP: ``f(x1) f(x2)ᵀ / k`` (outputs averaged over the ``k`` output units);
* NTK: ``Σ_a ∇θ f_a(x1) · ∇θ f_a(x2) / k`` (the empirical NTK's trace over
  outputs divided by ``k``), because the infinite-width NTK is that of one
  output unit.

Both converge to the analytic kernels as ``width → ∞`` (the NTK
parameterisation's NTK also for a single network; its NNGP only on average).
The per-entry standard error of the mean over samples is returned as well, so
a comparison can use tolerances derived from the sample count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._validation import as_input_tensor, check_feature_shapes_match

__all__ = ["monte_carlo_kernel", "MonteCarloKernel"]


@dataclass
class MonteCarloKernel:
    """Averages of empirical kernels over random finite networks.

    Attributes
    ----------
    nngp, ntk : torch.Tensor or None
        Sample means, shape ``(n1, n2)`` (``None`` when not requested).
    nngp_se, ntk_se : torch.Tensor or None
        Standard error of each mean entry, ``std(ddof=1) / sqrt(n_samples)``
        (``None`` with a single sample).
    n_samples : int
        Number of networks averaged.
    width : int or None
        Hidden width used (``None``: the architecture's declared widths).
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None
    nngp_se: torch.Tensor | None
    ntk_se: torch.Tensor | None
    n_samples: int
    width: int | None

    def __repr__(self) -> str:
        def s(t: torch.Tensor | None) -> str:
            return "None" if t is None else f"Tensor{tuple(t.shape)}"

        return (f"MonteCarloKernel(nngp={s(self.nngp)}, ntk={s(self.ntk)}, n_samples={self.n_samples}, "
                f"width={self.width})")


class _Moments:
    """Running mean and M2 (Welford), accumulated in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        self.n += 1
        if self.mean is None:
            self.mean = x.clone()
            self.m2 = torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def result(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self.mean is not None and self.m2 is not None
        se = None if self.n < 2 else (self.m2 / (self.n - 1) / self.n).sqrt().to(dtype)
        return self.mean.to(dtype), se


def monte_carlo_kernel(
    arch: Any,
    x1: Any,
    x2: Any = None,
    n_samples: int = 16,
    width: int | None = None,
    seed: int = 0,
    get: str | Sequence[str] = ("nngp", "ntk"),
    dtype: torch.dtype | None = None,
    *,
    method: str = "auto",
    batch_size: int | None = None,
    progress: bool = False,
) -> MonteCarloKernel:
    """Average empirical NNGP/NTK kernels over ``n_samples`` random finite networks.

    Parameters
    ----------
    arch : ntkit layer
        An architecture from :mod:`ntkit.layers` (anything with ``init``).
    x1 : Tensor or array, shape (n1, C, *S) or (n1, d)
        Inputs.
    x2 : Tensor or array, optional
        Second batch; ``None`` means ``x1``.
    n_samples : int
        Number of networks (seeds ``seed, seed + 1, ...``).
    width : int, optional
        Hidden width of the finite networks (see :meth:`Layer.init`).
    seed : int
        First seed.
    get : str or sequence of str
        ``"nngp"``, ``"ntk"`` or both.
    dtype : torch.dtype, optional
        Parameter/computation dtype (default: the inputs' floating dtype).
    method : str
        Passed to :func:`ntkit.empirical_ntk`.
    batch_size : int, optional
        Tile size for the empirical kernels.
    progress : bool
        Show a progress bar over samples.

    Returns
    -------
    MonteCarloKernel
        Means and standard errors, shape ``(n1, n2)``.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L, monte_carlo_kernel
    >>> arch = L.serial(L.Dense(64), L.Relu(), L.Dense(1))
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> mc = monte_carlo_kernel(arch, x, n_samples=4, width=64)
    >>> mc.ntk.shape, mc.nngp_se.shape
    (torch.Size([3, 3]), torch.Size([3, 3]))
    """
    from .empirical import empirical_nngp, empirical_ntk
    from .layers.base import _normalise_get
    from .tiling import progress_bar

    gets = _normalise_get(get)
    if not hasattr(arch, "init"):
        raise TypeError(f"arch must be an ntkit architecture with .init(), got {type(arch).__name__}")
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    x1t = as_input_tensor(x1, "x1", dtype=dtype, min_ndim=2)
    if not x1t.is_floating_point():
        x1t = x1t.to(torch.get_default_dtype())
    x2t = None
    if x2 is not None:
        x2t = as_input_tensor(x2, "x2", dtype=x1t.dtype, min_ndim=2)
        check_feature_shapes_match(x1t, x2t)
    dt = x1t.dtype
    acc = {g: _Moments() for g in gets}
    for s in progress_bar(range(int(n_samples)), total=int(n_samples), enabled=progress, desc="networks"):
        net = arch.init(tuple(x1t.shape[1:]), width=width, seed=int(seed) + s, dtype=dt, device=x1t.device)
        net.eval()
        if "nngp" in gets:
            acc["nngp"].add(empirical_nngp(net, x1t, x2t, batch_size=batch_size))
        if "ntk" in gets:
            with torch.no_grad():
                k = math.prod(net(x1t[:1]).shape[1:])
            th = empirical_ntk(net, x1t, x2t, output="trace", method=method, batch_size=batch_size)
            acc["ntk"].add(th / k)
    out: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {"nngp": (None, None), "ntk": (None, None)}
    for g, m in acc.items():
        out[g] = m.result(dt)
    return MonteCarloKernel(nngp=out["nngp"][0], ntk=out["ntk"][0], nngp_se=out["nngp"][1],
                            ntk_se=out["ntk"][1], n_samples=int(n_samples), width=width)
