"""Tiled evaluation of an architecture's kernel: memory-budgeted tiles, cache-sized sub-tiles.

``Layer.kernel`` delegates here. Two levels of blocking:

* **tiles** (``b1 x b2`` input pairs) keep memory under the user's budget;
* **sub-tiles** (``s x s`` pairs, a few tens of MB of working set) run the
  whole layer chain while its temporaries still sit in the CPU cache. A
  full-layout CNN's per-pair covariance is ``|S|^2`` entries (256 KB for a
  16x16 image in float32), so a budget-sized tile streams every layer's
  tensors through main memory, and the elementwise layers are
  memory-bound; sub-tiles keep them in cache (measured 1.9x on the
  CNN-GAP benchmark).

Sub-tiles would recompute each input's self covariance (as large as a
pair's) once per sub-tile; instead each tile runs a variance-only pass and
records the self covariances on a :class:`~ntkit.layers._tape.VarTape` that
the sub-tiles replay (see that module). Architectures containing a layer
that cannot run variance-only fall back to recomputing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..tiling import parse_memory, plan_blocks, progress_bar, tile_grid
from ._tape import VarTape
from .kernel import Kernel

if TYPE_CHECKING:
    from .base import Layer

#: working-set bytes of one sub-tile (the per-pair estimate of ``Layer._bytes_per_pair`` times the
#: pairs); about the size of a server CPU's last-level cache. Measured on the CNN-GAP benchmark
#: (16x16 images, 1 thread): 16-64 MB within 10% of each other; 4 MB (one pair per sub-tile) and 128 MB
#: 1.7x slower.
_SUBTILE_BYTES = 32 * 2**20


def _output_cells(out_shape: tuple[int, ...], full: bool) -> int:
    p = math.prod(out_shape[1:]) if len(out_shape) > 1 else 1
    return p * p if full else p


def _record(arch: Layer, x: torch.Tensor, full: bool, chunk: int, positions_only: bool
            ) -> tuple[VarTape, torch.Tensor]:
    """Variance pass over ``x``, ``chunk`` examples at a time: its tape and its output variances."""
    tapes, finals = [], []
    for i in range(0, x.shape[0], chunk):
        tape = VarTape(positions_only)
        with tape.recording():
            out, _ = arch._apply_inputs(x[i:i + chunk], None, full, False, var_only=True)
        tapes.append(tape)
        finals.append(out.var1)
    return VarTape.joined(tapes, None), torch.cat(finals)


def evaluate_tiled(arch: Layer, x1: torch.Tensor, x2: torch.Tensor | None, gets: tuple[str, ...], full: bool,
                   memory_budget: int | str | None, batch_size: int | None, progress: bool) -> Kernel:
    """The kernel of ``arch`` between ``x1`` and ``x2`` (``None``: ``x1``), tile by tile."""
    in_shape = tuple(x1.shape[1:])
    out_shape = arch.output_shape(in_shape)
    if isinstance(out_shape, list):
        raise ValueError("the architecture ends with several branches; close them with a FanIn layer")
    itemsize = x1.element_size()
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    symmetric = x2 is None
    xb = x1 if x2 is None else x2
    compute_ntk = "ntk" in gets
    per_pair, _ = arch._bytes_per_pair(in_shape, full, itemsize)
    budget = parse_memory(memory_budget)

    # tiles as large as the budget allows (one pair's working set per pair and per input)
    b1, b2 = plan_blocks(n1, n2, per_pair, budget, batch_size, bytes_per_row=per_pair)
    sub_limit = _SUBTILE_BYTES if budget is None else min(_SUBTILE_BYTES, budget)
    side = max(1, math.isqrt(int(sub_limit // max(per_pair, 1.0))))
    two_level = len(in_shape) > 1 and b1 * b2 * per_pair > _SUBTILE_BYTES and side < max(b1, b2)
    use_tape = two_level and arch._supports_tape()
    positions_only = not arch._needs_full_vars()
    chunk = side * side  # examples per variance-pass chunk: about one sub-tile's working set
    if two_level and batch_size is None:
        # with cache-sized sub-tiles a tile only holds its results and its inputs' recorded variances:
        # re-plan the tiles for those (results per pair, tape per input), leaving a sub-tile's working set
        row = per_pair
        if use_tape:
            probe, _ = _record(arch, x1[:1], full, 1, positions_only)
            row = max(probe.nbytes, 1) + x1[0].numel() * itemsize
        out_pair = len(gets) * _output_cells(tuple(out_shape), full) * itemsize
        rest = None if budget is None else max(budget - side * side * per_pair, out_pair + 2 * row)
        b1, b2 = plan_blocks(n1, n2, out_pair, rest, None, bytes_per_row=row)
    if symmetric:
        b1 = b2 = min(b1, b2)
    if not two_level:
        side = max(b1, b2)

    tiles = tile_grid(n1, n2, b1, b2, symmetric=symmetric)
    work = [(t1, t2, r, c) for t1, t2 in tiles
            for r, c in tile_grid(t1.stop - t1.start, t2.stop - t2.start, min(side, b1), min(side, b2),
                                  symmetric=symmetric and t1 == t2)]
    results: dict[str, torch.Tensor | None] = {}
    var1_parts: dict[int, torch.Tensor] = {}
    var2_parts: dict[int, torch.Tensor] = {}
    is_gaussian = True
    tape: VarTape | None = None
    current = None
    n_out_spatial = len(out_shape) - 1

    def mirror(t: torch.Tensor) -> torch.Tensor:
        # the (j, i) block of a symmetric kernel: swap the batch axes and, in the full spatial layout,
        # the x1 / x2 position axes too
        if full and n_out_spatial:
            d = n_out_spatial
            return t.permute((1, 0) + tuple(range(2 + d, 2 + 2 * d)) + tuple(range(2, 2 + d)))
        return t.transpose(0, 1)

    for t1, t2, r, c in progress_bar(work, total=len(work), enabled=progress, desc="kernel tiles"):
        same_tile = symmetric and t1 == t2
        a = x1[t1]
        b = a if same_tile else xb[t2]
        if use_tape and current != (t1, t2):
            current = (t1, t2)
            tape_a, var1_parts[t1.start] = _record(arch, a, full, chunk, positions_only)
            if same_tile:
                tape = tape_a
            else:
                tape_b, var2_parts[t2.start] = _record(arch, b, full, chunk, positions_only)
                tape = VarTape.joined([tape_a], [tape_b])
        same = same_tile and r == c
        if tape is not None and not same:
            # a block against another block: replay the recorded variances (a block against itself
            # needs its full self covariances at equal inputs, so it computes them)
            with tape.replaying(r, c):
                out, _ = arch._apply_inputs(a[r], b[c], full, compute_ntk)
        else:
            out, _ = arch._apply_inputs(a[r], None if same else b[c], full, compute_ntk)
            if tape is None:
                var1_parts.setdefault(t1.start + r.start, out.var1)
                var2_parts.setdefault(t2.start + c.start, out.var2)
        if isinstance(out, list):
            raise ValueError("the architecture ends with several branches; close them with a FanIn layer")
        is_gaussian = out.is_gaussian
        parts = {"nngp": out.nngp if "nngp" in gets else None, "ntk": out.ntk if "ntk" in gets else None}
        if len(work) == 1:  # one block: no copy
            results = parts
            break
        rows = slice(t1.start + r.start, t1.start + r.stop)
        cols = slice(t2.start + c.start, t2.start + c.stop)
        for key, v in parts.items():
            if v is None:
                results[key] = None
                continue
            if results.get(key) is None:
                results[key] = v.new_empty((n1, n2) + tuple(v.shape[2:]))
            dest = results[key]
            dest[rows, cols] = v
            if symmetric and rows.start != cols.start:
                dest[cols, rows] = mirror(v)

    if symmetric:
        merged = {**var2_parts, **var1_parts}
        var1 = torch.cat([merged[s] for s in sorted(merged)])
        var2 = var1
    else:
        var1 = torch.cat([var1_parts[s] for s in sorted(var1_parts)])
        var2 = torch.cat([var2_parts[s] for s in sorted(var2_parts)])
    return Kernel(nngp=results.get("nngp"), ntk=results.get("ntk"), var1=var1, var2=var2,
                  shape=tuple(out_shape), diagonal_spatial=not full and len(out_shape) > 1,
                  is_gaussian=is_gaussian, x1_is_x2=symmetric)
