"""A kernel store that several processes fill at once, tile by tile.

Why not :mod:`ntkit._tilestore`? That store keeps the list of finished tiles
in one ``manifest.json`` that its (single) writer rewrites after each tile:
two ranks rewriting it concurrently would lose each other's entries. It also
writes through a memory map, so every written page counts toward the
writer's resident memory. This store keeps the same on-disk idea (one
preallocated ``<name>.npy`` per result, a fingerprint that refuses mixing
two computations) but

* marks each finished tile with its own file ``done/<t>.ok``, created only
  after the tile's bytes were written (and, with ``durable``, fsynced), so
  any number of ranks can write disjoint tiles without coordination and a
  killed rank loses at most the tile it was computing;
* reads and writes with ``os.pread``/``os.pwrite``: the O(n^2) matrix lives
  in the file (and the OS page cache), never in a process's memory.

Layout of a store directory::

    meta.json        names, shape, dtype, tile blocks, symmetric flag, fingerprint
    <name>.npy       one (n1, n2) array per result ("ntk", "nngp", ...)
    done/<t>.ok      one empty marker per finished tile t (row-major tile index)

Examples
--------
>>> import tempfile, numpy as np
>>> from ntkit.distributed._store import KernelStore
>>> st = KernelStore.create(tempfile.mkdtemp(), names=["k"], shape=(4, 4), dtype="float64",
...                         blocks=(2, 2), symmetric=True, fingerprint={"x": "abc"})
>>> for t in st.pending():
...     s1, s2 = st.slices(t)
...     st.write(t, {"k": np.full((s1.stop - s1.start, s2.stop - s2.start), float(t))})
>>> st.complete
True
>>> st.read_rows("k", 0, 4)
array([[0., 0., 1., 1.],
       [0., 0., 1., 1.],
       [1., 1., 2., 2.],
       [1., 1., 2., 2.]])
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["KernelStore", "StoreMismatch"]

META = "meta.json"
DONE = "done"
_FORMAT = "ntkit-distributed-store-1"


class StoreMismatch(ValueError):
    """An existing store was made with other arguments than the ones given now."""


def _atomic_write(path: str, text: str) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
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


def _header_offset(path: str) -> int:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fh)
        else:
            np.lib.format.read_array_header_2_0(fh)
        return fh.tell()


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."


class KernelStore:
    """On-disk ``(n1, n2)`` results filled tile by tile by any number of processes.

    Use :meth:`create` (one process) then :meth:`attach` (the others), or
    :meth:`attach` alone to read a finished store. See the module docstring.
    """

    def __init__(self, directory: str, meta: dict[str, Any]) -> None:
        self.directory = os.path.abspath(directory)
        self.meta = meta
        n1, n2 = meta["shape"]
        self.shape = (int(n1), int(n2))
        self.dtype = np.dtype(meta["dtype"])
        self.names = list(meta["names"])
        self.symmetric = bool(meta["symmetric"])
        self.blocks = (int(meta["blocks"][0]), int(meta["blocks"][1]))
        self.grid = _grid(*self.shape, *self.blocks, self.symmetric)
        self._fds: dict[str, int] = {}
        self._offsets: dict[str, int] = {}

    # ---- creation -----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str,
        *,
        names: Sequence[str],
        shape: tuple[int, int],
        dtype: str | np.dtype,
        blocks: tuple[int, int],
        symmetric: bool,
        fingerprint: Mapping[str, Any],
    ) -> KernelStore:
        """Create the store, or validate and reopen an existing one made with the same arguments.

        An existing store keeps its own tile plan (``blocks``) so that its
        finished tiles stay valid; everything else must match, otherwise a
        :class:`StoreMismatch` (a ``ValueError``) says what differs.
        """
        n1, n2 = int(shape[0]), int(shape[1])
        b1, b2 = int(blocks[0]), int(blocks[1])
        if n1 < 1 or n2 < 1 or b1 < 1 or b2 < 1:
            raise ValueError(f"shape and blocks must be positive, got shape={shape}, blocks={blocks}")
        if symmetric:
            if n1 != n2:
                raise ValueError("a symmetric store needs n1 == n2")
            b1 = b2 = min(b1, b2)
        want = {
            "format": _FORMAT,
            "names": list(names),
            "shape": [n1, n2],
            "dtype": str(np.dtype(dtype)),
            "symmetric": bool(symmetric),
            "fingerprint": json.loads(json.dumps(dict(fingerprint), sort_keys=True)),
        }
        meta_path = os.path.join(directory, META)
        if os.path.exists(meta_path):
            have = cls._read_meta(directory)
            for key, val in want.items():
                if have.get(key) != val:
                    raise StoreMismatch(
                        f"store {directory} holds a computation made with different {key!r} "
                        f"(stored {_short(have.get(key))}, now {_short(val)}); use another store "
                        "path or delete it to start over")
            return cls(directory, have)
        os.makedirs(os.path.join(directory, DONE), exist_ok=True)
        for name in names:
            # open_memmap with w+ writes the header and a sparse file of the right size
            m = np.lib.format.open_memmap(os.path.join(directory, f"{name}.npy"), mode="w+",
                                          dtype=np.dtype(dtype), shape=(n1, n2))
            del m
        meta = dict(want, blocks=[b1, b2])
        _atomic_write(meta_path, json.dumps(meta, indent=1, sort_keys=True))
        return cls(directory, meta)

    @classmethod
    def attach(cls, directory: str) -> KernelStore:
        """Open an existing store (written by :meth:`create`)."""
        return cls(directory, cls._read_meta(directory))

    @staticmethod
    def _read_meta(directory: str) -> dict[str, Any]:
        path = os.path.join(directory, META)
        try:
            with open(path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except FileNotFoundError:
            raise FileNotFoundError(f"{directory} is not a kernel store (no {META})") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreMismatch(f"{path} is not a readable kernel-store file ({exc})") from None
        if meta.get("format") != _FORMAT:
            raise StoreMismatch(f"{path} has format {meta.get('format')!r}, expected {_FORMAT!r}")
        return meta

    # ---- tiles --------------------------------------------------------------------
    @property
    def n_tiles(self) -> int:
        """Number of tiles in the plan (upper triangle only when symmetric)."""
        return len(self.grid)

    def done(self) -> set[int]:
        """Indices of finished tiles (read from the markers on disk, so it sees other ranks' work)."""
        out = set()
        for f in os.listdir(os.path.join(self.directory, DONE)):
            if f.endswith(".ok"):
                out.add(int(f[:-3]))
        return out

    def pending(self) -> list[int]:
        """Indices of tiles not finished yet, in order."""
        d = self.done()
        return [t for t in range(len(self.grid)) if t not in d]

    @property
    def complete(self) -> bool:
        """Whether every tile is finished."""
        return len(self.done()) == len(self.grid)

    def slices(self, t: int) -> tuple[slice, slice]:
        """Row and column slices of tile ``t``."""
        i0, i1, j0, j1 = self.grid[t]
        return slice(i0, i1), slice(j0, j1)

    def _fd(self, name: str) -> int:
        if name not in self._names_set():
            raise KeyError(f"store has no result {name!r}; it holds {self.names}")
        if name not in self._fds:
            path = os.path.join(self.directory, f"{name}.npy")
            self._offsets[name] = _header_offset(path)
            self._fds[name] = os.open(path, os.O_RDWR)
        return self._fds[name]

    def _names_set(self) -> set[str]:
        return set(self.names)

    def _write_block(self, name: str, r0: int, c0: int, block: np.ndarray) -> None:
        fd = self._fd(name)
        base, n2, item = self._offsets[name], self.shape[1], self.dtype.itemsize
        block = np.ascontiguousarray(block, dtype=self.dtype)
        for i in range(block.shape[0]):
            os.pwrite(fd, block[i].tobytes(), base + ((r0 + i) * n2 + c0) * item)

    def write(self, t: int, values: Mapping[str, np.ndarray], durable: bool = True) -> None:
        """Write tile ``t`` (and its mirror when symmetric), then mark it finished.

        With ``durable`` the data are fsynced before the marker is created,
        so a finished marker survives a machine crash, not only a killed process.
        """
        s1, s2 = self.slices(t)
        expect = (s1.stop - s1.start, s2.stop - s2.start)
        for name in self.names:
            if name not in values:
                raise ValueError(f"tile values lack {name!r}")
            v = np.asarray(values[name])
            if v.shape != expect:
                raise ValueError(f"tile {t} of {name!r} has shape {v.shape}, expected {expect}")
            self._write_block(name, s1.start, s2.start, v)
            if self.symmetric and s1.start != s2.start:
                self._write_block(name, s2.start, s1.start, v.T)
            if durable:
                os.fsync(self._fd(name))
        marker = os.path.join(self.directory, DONE, f"{t}.ok")
        with open(marker + ".tmp", "w"):
            pass
        os.replace(marker + ".tmp", marker)

    # ---- reading ------------------------------------------------------------------
    def read_rows(self, name: str, r0: int, r1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``r0:r1`` of result ``name`` as an in-memory array (one ``pread``)."""
        fd = self._fd(name)
        n2, item = self.shape[1], self.dtype.itemsize
        if not 0 <= r0 <= r1 <= self.shape[0]:
            raise ValueError(f"rows {r0}:{r1} out of range for {self.shape[0]} rows")
        if out is None:
            out = np.empty((r1 - r0, n2), dtype=self.dtype)
        buf = memoryview(out.reshape(-1)).cast("B")
        want, got = buf.nbytes, 0
        offset = self._offsets[name] + r0 * n2 * item
        while got < want:
            k = os.preadv(fd, [buf[got:]], offset + got)
            if k <= 0:
                raise OSError(f"short read from {name}.npy at byte {offset + got}")
            got += k
        return out

    def read_row_set(self, name: str, rows: Sequence[int]) -> np.ndarray:
        """The rows ``rows`` (any order) of result ``name``, shape ``(len(rows), n2)``."""
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        for k, r in enumerate(rows):
            self.read_rows(name, int(r), int(r) + 1, out=out[k:k + 1])
        return out

    def diagonal(self, name: str) -> np.ndarray:
        """The diagonal of a square result (one small read per row)."""
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"result {name!r} is not square: shape {self.shape}")
        fd = self._fd(name)
        base, n, item = self._offsets[name], self.shape[1], self.dtype.itemsize
        out = np.empty(n, dtype=self.dtype)
        for i in range(n):
            out[i:i + 1] = np.frombuffer(os.pread(fd, item, base + (i * n + i) * item), dtype=self.dtype)
        return out

    def array(self, name: str) -> np.ndarray:
        """Result ``name`` as a read-only memory map (pages load on access)."""
        self._fd(name)  # validates the name
        return np.load(os.path.join(self.directory, f"{name}.npy"), mmap_mode="r", allow_pickle=False)

    @property
    def ntk(self) -> np.ndarray:
        """The ``"ntk"`` result as a read-only memory map."""
        return self.array("ntk")

    @property
    def nngp(self) -> np.ndarray:
        """The ``"nngp"`` result as a read-only memory map."""
        return self.array("nngp")

    def close(self) -> None:
        """Close the file descriptors (the store stays on disk)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"KernelStore({self.directory!r}, names={self.names}, shape={self.shape}, "
                f"dtype={self.dtype}, tiles={len(self.done())}/{self.n_tiles})")
