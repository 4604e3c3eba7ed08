"""Resumable on-disk tile store for long kernel computations.

A store is a directory holding

* one memory-mapped ``<name>.npy`` per result (e.g. ``nngp.npy``, ``ntk.npy``),
  of shape ``(n1, n2)``, preallocated;
* ``manifest.json``: the tile plan, a fingerprint of the arguments and the
  list of finished tiles, rewritten atomically (temp file + ``os.replace``)
  after every tile, *after* the tile's data were flushed to disk.

A crash or Ctrl-C therefore loses at most the tile being computed, and a
rerun with the same arguments computes only the missing tiles. A rerun with
different arguments (another input file, architecture, dtype...) is refused
with a message instead of silently mixing two computations.

Examples
--------
>>> import tempfile, numpy as np
>>> from ntkit._tilestore import TileStore
>>> d = tempfile.mkdtemp()
>>> st = TileStore.open(d, names=["k"], shape=(4, 4), dtype="float64", blocks=(2, 2),
...                     symmetric=True, fingerprint={"x": "abc"})
>>> for t in st.pending():
...     s1, s2 = st.slices(t)
...     st.write(t, {"k": np.ones((s1.stop - s1.start, s2.stop - s2.start))})
>>> st.complete, float(st.array("k").sum())
(True, 16.0)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TileStore", "TileStoreMismatch", "fingerprint_array", "FAIL_AFTER_ENV"]

MANIFEST = "manifest.json"
_FORMAT = "ntkit-tilestore-1"
#: test hook: raise after this many tiles have been written in this process (simulates a crash)
FAIL_AFTER_ENV = "NTKIT_TEST_FAIL_AFTER_TILES"


class TileStoreMismatch(ValueError):
    """An existing store was made with other arguments than the ones given now."""


def fingerprint_array(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (identifies an input for resuming).

    Examples
    --------
    >>> fingerprint_array(np.zeros(3)) == fingerprint_array(np.zeros(3))
    True
    """
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(str(a.dtype.str).encode())
    h.update(repr(a.shape).encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _atomic_write_json(path: str, obj: Any) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _grid(n1: int, n2: int, b1: int, b2: int, symmetric: bool) -> list[tuple[int, int, int, int]]:
    out = []
    for i in range(0, n1, b1):
        for j in range(0, n2, b2):
            if symmetric and j < i:
                continue
            out.append((i, min(i + b1, n1), j, min(j + b2, n2)))
    return out


class TileStore:
    """A directory of memory-mapped results plus a manifest of finished tiles (see module docstring)."""

    def __init__(self, directory: str, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self._grid = _grid(*manifest["shape"], *manifest["blocks"], manifest["symmetric"])
        self._done = set(int(t) for t in manifest["done"])
        self._maps: dict[str, np.memmap] = {}
        self._written_here = 0
        self._fail_after = int(os.environ.get(FAIL_AFTER_ENV, "0") or 0)

    # ---- creation / validation -------------------------------------------------------
    @classmethod
    def open(
        cls,
        directory: str,
        *,
        names: Sequence[str],
        shape: tuple[int, int],
        dtype: str,
        blocks: tuple[int, int],
        symmetric: bool,
        fingerprint: Mapping[str, Any],
    ) -> TileStore:
        """Open the store in ``directory``, creating it or validating an existing one.

        An existing store must have the same ``names``, ``shape``, ``dtype``,
        ``symmetric`` flag and ``fingerprint``; its tile plan (``blocks``) is
        kept even if ``blocks`` differs now, so finished tiles stay valid.
        """
        n1, n2 = int(shape[0]), int(shape[1])
        b1, b2 = int(blocks[0]), int(blocks[1])
        if symmetric:
            if n1 != n2:
                raise ValueError("a symmetric tile store needs n1 == n2")
            b1 = b2 = min(b1, b2)
        np.dtype(dtype)  # validates
        want = {
            "format": _FORMAT,
            "names": list(names),
            "shape": [n1, n2],
            "dtype": str(np.dtype(dtype)),
            "symmetric": bool(symmetric),
            "fingerprint": json.loads(json.dumps(dict(fingerprint), sort_keys=True)),
        }
        path = os.path.join(directory, MANIFEST)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    have = json.load(fh)
            except (OSError, json.JSONDecodeError) as exc:
                raise TileStoreMismatch(f"{path} is not a readable tile-store manifest ({exc}); "
                                        "remove the directory or choose another output") from None
            for key, val in want.items():
                if have.get(key) != val:
                    raise TileStoreMismatch(
                        f"{directory} holds a partial computation made with different {key!r} "
                        f"(stored {_short(have.get(key))}, now {_short(val)}); use another output "
                        "path or delete it to start over"
                    )
            for name in names:
                if not os.path.exists(os.path.join(directory, f"{name}.npy")):
                    raise TileStoreMismatch(f"{directory} lacks {name}.npy; delete the directory to start over")
            return cls(directory, have)
        os.makedirs(directory, exist_ok=True)
        for name in names:
            m = np.lib.format.open_memmap(os.path.join(directory, f"{name}.npy"), mode="w+",
                                          dtype=np.dtype(dtype), shape=(n1, n2))
            m.flush()
            del m
        manifest = dict(want, blocks=[b1, b2], done=[], complete=False)
        _atomic_write_json(path, manifest)
        return cls(directory, manifest)

    # ---- tiles -------------------------------------------------------------------------
    @property
    def n_tiles(self) -> int:
        return len(self._grid)

    @property
    def n_done(self) -> int:
        return len(self._done)

    @property
    def complete(self) -> bool:
        return len(self._done) == len(self._grid)

    def pending(self) -> list[int]:
        """Indices of tiles not yet written."""
        return [t for t in range(len(self._grid)) if t not in self._done]

    def slices(self, t: int) -> tuple[slice, slice]:
        """Row and column slices of tile ``t``."""
        i0, i1, j0, j1 = self._grid[t]
        return slice(i0, i1), slice(j0, j1)

    def _map(self, name: str) -> np.memmap:
        if name not in self._maps:
            self._maps[name] = np.load(os.path.join(self.directory, f"{name}.npy"), mmap_mode="r+")
        return self._maps[name]

    def write(self, t: int, values: Mapping[str, np.ndarray]) -> None:
        """Store tile ``t`` (and its mirror when symmetric), flush, then mark it done atomically."""
        s1, s2 = self.slices(t)
        missing = set(self.manifest["names"]) - set(values)
        if missing:
            raise ValueError(f"tile values lack {sorted(missing)}")
        for name in self.manifest["names"]:
            v = np.asarray(values[name])
            expect = (s1.stop - s1.start, s2.stop - s2.start)
            if v.shape != expect:
                raise ValueError(f"tile {t} of {name!r} has shape {v.shape}, expected {expect}")
            m = self._map(name)
            m[s1, s2] = v
            if self.manifest["symmetric"] and s1.start != s2.start:
                m[s2, s1] = v.T
            m.flush()
        self._done.add(int(t))
        self.manifest["done"] = sorted(self._done)
        self.manifest["complete"] = self.complete
        _atomic_write_json(os.path.join(self.directory, MANIFEST), self.manifest)
        self._written_here += 1
        if self._fail_after and self._written_here >= self._fail_after and not self.complete:
            raise RuntimeError(f"simulated crash after {self._written_here} tile(s) ({FAIL_AFTER_ENV})")

    def array(self, name: str) -> np.ndarray:
        """The (memory-mapped, read-only) result ``name``."""
        return np.load(os.path.join(self.directory, f"{name}.npy"), mmap_mode="r")

    def close(self) -> None:
        """Flush and drop the memory maps."""
        for m in self._maps.values():
            m.flush()
        self._maps.clear()


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."
