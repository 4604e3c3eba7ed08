"""A tape of per-example self covariances, recorded once per tile and replayed per sub-tile.

Every layer maps the cross covariances of a *pair* of inputs (``nngp``,
``ntk``) and the self covariances of each input (``var1``, ``var2``). When
:meth:`~ntkit.layers.base.Layer.kernel` splits a tile of ``b1 x b2`` pairs into
cache-sized sub-tiles, recomputing the self covariances in every sub-tile
would cost as much as the cross part itself (a full-layout CNN's ``var`` of
one input is as large as one pair's ``nngp``). Instead the tile first runs
the architecture with ``nngp = ntk = None`` (the *variance pass*) while a
:class:`VarTape` records, in call order, every ``(var1, var2)`` a layer
produces; the sub-tiles pairing two different blocks then replay the tape,
getting row/column slices of the recorded tensors instead of recomputing
them.

Off the diagonal of a symmetric kernel the cross maps only read each
input's *position variances* (the diagonal ``q(h, h)`` of its full
covariance), so with ``positions_only`` the tape keeps just those:
``|S|`` numbers per example and layer instead of ``|S|²``. The replayed
variances then have the diagonal layout ``(n, *S)`` even inside a full-layout
kernel; :func:`~ntkit.layers.kernel.position_variance` accepts both. Layers
whose cross maps need full self covariances (attention) ask for the full
tape. Sub-tiles pairing a block with itself are computed without the tape.

Layers opt in by computing their output variances through
:meth:`~ntkit.layers.base.Layer._map_vars` (or :func:`taped_vars`); a layer
that computes them itself stays correct (it just recomputes). The call order
is the same in every pass because it depends only on the architecture and
the shapes, and every replayed entry is checked against the layer that
recorded it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar

import torch

__all__ = ["VarTape", "taped_vars"]

VarPair = tuple[torch.Tensor, torch.Tensor]


def _positions(v: torch.Tensor) -> torch.Tensor:
    """``(n, *S, *S) -> (n, *S)``: the position variances of full-layout self covariances."""
    d = (v.ndim - 1) // 2
    if d == 0:
        return v
    spatial = tuple(v.shape[1:1 + d])
    p = math.prod(spatial)
    return torch.diagonal(v.reshape(v.shape[0], p, p), dim1=1, dim2=2).reshape((v.shape[0],) + spatial).clone()


class VarTape:
    """Recorded ``(var1, var2)`` outputs of one tile's variance pass.

    Parameters
    ----------
    positions_only : bool
        Keep only the position variances of full-layout self covariances.
    """

    def __init__(self, positions_only: bool = False) -> None:
        self.positions_only = positions_only
        self.entries: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._replay: tuple[slice, slice] | None = None
        self._pos = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded tensors (``var2`` counted once when it is ``var1``)."""
        total = 0
        for _, v1, v2 in self.entries:
            total += v1.numel() * v1.element_size()
            if v2 is not v1:
                total += v2.numel() * v2.element_size()
        return total

    def record(self, owner: object, v1: torch.Tensor, v2: torch.Tensor, full: bool) -> None:
        if self.positions_only and full:
            p1 = _positions(v1)
            v1, v2 = p1, (p1 if v2 is v1 else _positions(v2))
        self.entries.append((id(owner), v1, v2))

    def replay(self, owner: object) -> VarPair:
        assert self._replay is not None
        if self._pos >= len(self.entries) or self.entries[self._pos][0] != id(owner):
            raise RuntimeError(
                f"internal error: the variance tape is out of step at {type(owner).__name__} (entry "
                f"{self._pos} of {len(self.entries)}); please report this architecture"
            )
        _, v1, v2 = self.entries[self._pos]
        self._pos += 1
        rows, cols = self._replay
        return v1[rows], v2[cols]

    @contextlib.contextmanager
    def replaying(self, rows: slice, cols: slice) -> Iterator[None]:
        """Replay for the sub-tile pairing ``rows`` of ``var1`` with ``cols`` of ``var2``."""
        self._replay, self._pos = (rows, cols), 0
        token = _TAPE.set(self)
        try:
            yield
        finally:
            _TAPE.reset(token)
            self._replay = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.entries.clear()
        token = _TAPE.set(self)
        try:
            yield
        finally:
            _TAPE.reset(token)

    @classmethod
    def joined(cls, rows: Sequence[VarTape], cols: Sequence[VarTape] | None) -> VarTape:
        """One tape from tapes recorded on consecutive chunks of the rows (and of the columns).

        Each chunk tape was recorded with ``var2 is var1``; ``cols=None`` means
        the columns are the rows.
        """

        def cat(tapes: Sequence[VarTape]) -> list[tuple[int, torch.Tensor]]:
            out = []
            for parts in zip(*(t.entries for t in tapes), strict=True):
                if len({p[0] for p in parts}) != 1:
                    raise RuntimeError("internal error: chunk tapes of one tile disagree")
                out.append((parts[0][0], torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]))
            return out

        tape = cls(rows[0].positions_only)
        a = cat(rows)
        b = a if cols is None else cat(cols)
        if len(a) != len(b):
            raise RuntimeError("internal error: row and column tapes of one tile disagree")
        tape.entries = [(oa, va, va if cols is None else vb) for (oa, va), (_, vb) in zip(a, b, strict=True)]
        return tape


_TAPE: ContextVar[VarTape | None] = ContextVar("ntkit_var_tape", default=None)


def taped_vars(owner: object, compute: Callable[[], VarPair], full: bool = False) -> VarPair:
    """``compute()`` — or, while a sub-tile replays a tape, the slices recorded for ``owner``.

    ``full``: the variances are laid out ``(n, *S, *S)`` (a full-layout kernel's).
    """
    tape = _TAPE.get()
    if tape is not None and tape._replay is not None:
        return tape.replay(owner)
    v1, v2 = compute()
    if tape is not None:
        tape.record(owner, v1, v2, full)
    return v1, v2
