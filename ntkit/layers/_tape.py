"""A tape of per-example self covariances, recorded once per tile and replayed per sub-tile.

Every layer maps the cross covariances of a *pair* of inputs (``nngp``,
``ntk``) and the self covariances of each input (``var1``, ``var2``). When
:meth:`~ntkit.layers.base.Layer.kernel` splits a tile of ``b1 x b2`` pairs into
cache-sized sub-tiles, recomputing the self covariances in every sub-tile
would cost as much as the cross part itself (a full-layout CNN's ``var`` of
one input is as large as one pair's ``nngp``). Instead the tile first runs
the architecture once with ``nngp = ntk = None`` (the *variance pass*) while
a :class:`VarTape` records, in call order, every ``(var1, var2)`` a layer
produces; each sub-tile then replays the tape, getting row/column slices of
the recorded tensors instead of recomputing them.

Layers opt in by computing their output variances through
:meth:`~ntkit.layers.base.Layer._map_vars` (or :func:`taped_vars`); a layer
that computes them itself stays correct (it just recomputes). The call order
is the same in both passes because it depends only on the architecture and
the shapes, and every replayed entry is checked against the layer that
recorded it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch

__all__ = ["VarTape", "taped_vars"]

VarPair = tuple[torch.Tensor, torch.Tensor]


class VarTape:
    """Recorded ``(var1, var2)`` outputs of one tile's variance pass."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._replay: tuple[slice, slice, bool] | None = None
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

    def record(self, owner: object, v1: torch.Tensor, v2: torch.Tensor) -> None:
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
        rows, cols, same = self._replay
        a = v1[rows]
        if same and v2 is v1:
            return a, a
        return a, v2[cols]

    @contextlib.contextmanager
    def replaying(self, rows: slice, cols: slice, same: bool) -> Iterator[None]:
        """Replay for the sub-tile ``rows x cols`` (``same``: it pairs a block with itself)."""
        self._replay, self._pos = (rows, cols, same), 0
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


_TAPE: ContextVar[VarTape | None] = ContextVar("ntkit_var_tape", default=None)


def taped_vars(owner: object, compute: Callable[[], VarPair]) -> VarPair:
    """``compute()`` — or, while a sub-tile replays a tape, the slices recorded for ``owner``."""
    tape = _TAPE.get()
    if tape is not None and tape._replay is not None:
        return tape.replay(owner)
    v1, v2 = compute()
    if tape is not None:
        tape.record(owner, v1, v2)
    return v1, v2
