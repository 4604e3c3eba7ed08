"""Memory-budgeted tiles for O(n1*n2) computations.

A kernel between ``n1`` and ``n2`` inputs is computed block by block: rows
``x1[i:i+b1]`` against columns ``x2[j:j+b2]``. :func:`plan_blocks` chooses
``b1, b2`` so that one tile's working memory stays under a byte budget, and
:func:`tiled` runs a tile function over the grid, with an optional progress
bar, writing each tile into a preallocated result. When ``x2`` is ``x1`` only
the upper triangle of tiles is computed and the lower one is mirrored.

Examples
--------
>>> import torch
>>> from ntkit.tiling import plan_blocks, tiled
>>> x = torch.randn(10, 3)
>>> b1, b2 = plan_blocks(10, 10, bytes_per_pair=8, memory_budget=8 * 16)
>>> (b1, b2)
(4, 4)
>>> out = tiled(lambda s1, s2: x[s1] @ x[s2].T, 10, 10, b1, b2, symmetric=True)
>>> torch.allclose(out, x @ x.T)
True
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

__all__ = ["parse_memory", "plan_blocks", "tile_grid", "tiled", "progress_bar"]

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4,
          "tib": 1024**4}


def parse_memory(budget: int | float | str | None, name: str = "memory_budget") -> int | None:
    """Bytes from an int or a string such as ``"512MB"`` or ``"2 GiB"``; ``None`` stays ``None``.

    Examples
    --------
    >>> parse_memory("2GB")
    2147483648
    """
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise TypeError(f"{name} must be a number of bytes or a string like '2GB', got {budget!r}")
    if isinstance(budget, int | float):
        value = float(budget)
    elif isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", budget)
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{name} must look like '512MB' or '2GiB', got {budget!r}")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise TypeError(f"{name} must be a number of bytes or a string like '2GB', got {type(budget).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 bytes, got {budget!r}")
    return int(value)


def plan_blocks(
    n1: int,
    n2: int,
    bytes_per_pair: float,
    memory_budget: int | str | None = None,
    batch_size: int | None = None,
    bytes_per_row: float = 0.0,
) -> tuple[int, int]:
    """Block sizes ``(b1, b2)`` for tiles whose working memory fits ``memory_budget``.

    Parameters
    ----------
    n1, n2 : int
        Number of rows and columns of the result.
    bytes_per_pair : float
        Working memory one (row, column) pair of the tile needs.
    memory_budget : int or str, optional
        Byte budget of one tile. ``None`` with ``batch_size=None`` means one tile.
    batch_size : int, optional
        Explicit block size for both axes; takes precedence over the budget.
    bytes_per_row : float
        Extra memory each row or column of a tile needs on its own (per-input terms).

    Returns
    -------
    tuple of int
        Square-ish blocks, each at least 1. If even a 1x1 tile exceeds the
        budget a ``MemoryError`` names the budget needed.
    """
    if batch_size is not None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return min(int(batch_size), n1), min(int(batch_size), n2)
    budget = parse_memory(memory_budget)
    if budget is None:
        return n1, n2
    need_one = bytes_per_pair + 2 * bytes_per_row
    if need_one > budget:
        raise MemoryError(
            f"memory_budget={budget} bytes is too small: a single pair of inputs needs about "
            f"{int(math.ceil(need_one))} bytes; raise memory_budget"
        )
    # largest b with b*b*bytes_per_pair + 2*b*bytes_per_row <= budget
    a, bb, c = bytes_per_pair, 2 * bytes_per_row, -float(budget)
    b = (-bb + math.sqrt(bb * bb - 4 * a * c)) / (2 * a) if a > 0 else budget / max(bb, 1)
    b = max(1, int(b))
    b1 = min(b, n1)
    # give leftover budget to the other axis when one axis is short
    b2 = max(1, int((budget - b1 * bytes_per_row) / max(b1 * bytes_per_pair + bytes_per_row, 1e-30)))
    return b1, min(b2, n2)


def tile_grid(n1: int, n2: int, b1: int, b2: int, symmetric: bool = False) -> list[tuple[slice, slice]]:
    """Row/column slices of every tile; with ``symmetric`` only tiles with row start <= column start.

    ``symmetric`` needs ``n1 == n2`` and ``b1 == b2``.
    """
    if symmetric and (n1 != n2 or b1 != b2):
        raise ValueError("symmetric tiling needs n1 == n2 and b1 == b2")
    out = []
    for i in range(0, n1, b1):
        for j in range(0, n2, b2):
            if symmetric and j < i:
                continue
            out.append((slice(i, min(i + b1, n1)), slice(j, min(j + b2, n2))))
    return out


def _default_mirror(t: torch.Tensor) -> torch.Tensor:
    t = t.transpose(0, 1)
    if t.ndim == 4:  # (n1, n2, k, k) full output blocks
        t = t.transpose(2, 3)
    return t


def tiled(
    fn: Callable[[slice, slice], Any],
    n1: int,
    n2: int,
    b1: int,
    b2: int,
    *,
    symmetric: bool = False,
    progress: bool = False,
    desc: str = "tiles",
    mirror: Callable[[torch.Tensor], torch.Tensor] = _default_mirror,
) -> Any:
    """Run ``fn(rows, cols)`` over the tile grid and assemble the results.

    ``fn`` returns a tensor of shape ``(len(rows), len(cols), ...)`` or a dict
    of such tensors; the assembled result has the same structure with shape
    ``(n1, n2, ...)``. With a single tile the tile itself is returned (no copy).
    """
    if symmetric:
        b2 = b1 = min(b1, b2)
    grid = tile_grid(n1, n2, b1, b2, symmetric=symmetric)
    if len(grid) == 1:
        return fn(*grid[0])
    out: Any = None
    for s1, s2 in progress_bar(grid, total=len(grid), enabled=progress, desc=desc):
        res = fn(s1, s2)
        is_dict = isinstance(res, dict)
        items = res if is_dict else {"_": res}
        if out is None:
            out = {k: (None if v is None else v.new_empty((n1, n2) + tuple(v.shape[2:]))) for k, v in items.items()}
        for k, v in items.items():
            if v is None:
                continue
            out[k][s1, s2] = v
            if symmetric and s1.start != s2.start:
                out[k][s2, s1] = mirror(v)
        if not is_dict:
            pass
    return out if isinstance(out, dict) and "_" not in out else out["_"]


class _StderrProgress:
    """Minimal progress reporter used when tqdm is not installed."""

    def __init__(self, iterable: Iterable[Any], total: int, desc: str) -> None:
        self._it, self._total, self._desc = iterable, total, desc

    def __iter__(self) -> Iterator[Any]:
        step = max(1, self._total // 20)
        for i, item in enumerate(self._it, 1):
            yield item
            if i % step == 0 or i == self._total:
                print(f"\r{self._desc}: {i}/{self._total}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)


def progress_bar(iterable: Iterable[Any], total: int | None = None, enabled: bool = True, desc: str = "") -> Iterable[Any]:
    """Wrap ``iterable`` in a tqdm bar when ``enabled`` (a plain stderr counter without tqdm)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional extra
        return _StderrProgress(iterable, total or 0, desc)
    return tqdm(iterable, total=total, desc=desc, leave=False)
