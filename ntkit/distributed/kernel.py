"""Kernel matrices sharded over ``torch.distributed`` ranks into a resumable on-disk store.

Launch one process per rank with ``torchrun`` (gloo on CPU, NCCL on GPUs);
every rank calls :func:`kernel` with the same arguments. Row blocks of the
tile grid are dealt out to ranks; each rank computes its tiles with the
single-process code (``arch.kernel`` of an ntkit architecture, or
:func:`ntkit.empirical_ntk` of an ``nn.Module``) and writes them into a
shared :class:`~ntkit.distributed._store.KernelStore` directory. A job
restarted on the same store computes only the tiles that have no
"finished" marker — with any number of ranks.

Examples
--------
>>> import tempfile, torch
>>> from ntkit import distributed as D
>>> x = torch.randn(6, 3, dtype=torch.float64)
>>> st = D.kernel(lambda a, b: a @ (a if b is None else b).T, x, store=tempfile.mkdtemp(),
...               get="k", batch_size=4, dtype=torch.float64)
>>> torch.allclose(torch.from_numpy(st.read_rows("k", 0, 6)), x @ x.T)
True
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._tilestore import fingerprint_array
from .._validation import as_input_tensor, check_feature_shapes_match
from ..tiling import plan_blocks, progress_bar
from ._comm import barrier, comm_device, rank_world
from ._store import KernelStore

__all__ = ["kernel", "row_block_owner"]

#: test hook: ``"k"`` or ``"k:rank"`` — SIGKILL this process after it wrote k tiles (on that rank)
KILL_AFTER_ENV = "NTKIT_TEST_KILL_AFTER_TILES"
_DEFAULT_TILE = 2048

TileFn = Callable[[torch.Tensor, torch.Tensor | None], dict[str, torch.Tensor]]


def row_block_owner(n_row_blocks: int, world_size: int, symmetric: bool) -> list[int]:
    """Rank owning each row block of the tile grid.

    Without symmetry every row block holds the same work and ranks get
    contiguous ranges. With symmetry only the upper triangle is computed, so
    row block ``i`` holds ``nb - i`` tiles; blocks are dealt in a snake order
    (0, 1, ..., R-1, R-1, ..., 0, 0, 1, ...) which balances the work to within one row block.

    Examples
    --------
    >>> row_block_owner(4, 2, symmetric=False)
    [0, 0, 1, 1]
    >>> row_block_owner(4, 2, symmetric=True)
    [0, 1, 1, 0]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not symmetric:
        return [i * world_size // n_row_blocks for i in range(n_row_blocks)]
    out = []
    for k in range(n_row_blocks):
        cycle, pos = divmod(k, world_size)
        out.append(pos if cycle % 2 == 0 else world_size - 1 - pos)
    return out


def _is_layer(obj: Any) -> bool:
    from ..layers.base import Layer

    return isinstance(obj, Layer)


def _module_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(repr(model).encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(fingerprint_array(t.detach().cpu().numpy()).encode())
    return h.hexdigest()


def _tile_function(source: Any, gets: tuple[str, ...], memory_budget: Any, dtype: torch.dtype,
                   ) -> tuple[TileFn, str]:
    """``fn(a, b_or_None) -> {name: tile}`` and a fingerprint of ``source``."""
    if _is_layer(source):
        def fn(a: torch.Tensor, b: torch.Tensor | None) -> dict[str, torch.Tensor]:
            k = source.kernel(a, b, get=gets, memory_budget=memory_budget, dtype=dtype)
            return {g: getattr(k, g) for g in gets}

        return fn, "layer:" + repr(source)
    if isinstance(source, nn.Module):
        for g in gets:
            if g not in ("ntk", "nngp"):
                raise ValueError(f"get must be 'ntk' and/or 'nngp' for an nn.Module, got {g!r}")

        def fn(a: torch.Tensor, b: torch.Tensor | None) -> dict[str, torch.Tensor]:
            from ..empirical import empirical_nngp, empirical_ntk

            out = {}
            if "ntk" in gets:
                out["ntk"] = empirical_ntk(source, a, b, output="trace", memory_budget=memory_budget)
            if "nngp" in gets:
                out["nngp"] = empirical_nngp(source, a, b)
            return out

        return fn, "module:" + _module_fingerprint(source)
    if callable(source):
        if len(gets) != 1:
            raise ValueError("a plain callable gives one result: pass a single name as get")

        def fn(a: torch.Tensor, b: torch.Tensor | None) -> dict[str, torch.Tensor]:
            return {gets[0]: source(a, b)}

        name = getattr(source, "__qualname__", type(source).__name__)
        return fn, "callable:" + getattr(source, "__module__", "?") + "." + name
    raise TypeError("arch_or_model must be an ntkit layer, a torch.nn.Module, or a callable "
                    f"fn(x1_block, x2_block_or_None) -> tensor; got {type(source).__name__}")


def _kill_hook() -> tuple[int, int | None]:
    raw = os.environ.get(KILL_AFTER_ENV, "").strip()
    if not raw:
        return 0, None
    k, _, r = raw.partition(":")
    return int(k), (int(r) if r else None)


def kernel(
    arch_or_model: Any,
    x1: Any,
    x2: Any = None,
    *,
    store: str | os.PathLike,
    get: str | Sequence[str] = "ntk",
    batch_size: int | None = None,
    memory_budget: int | str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    durable: bool = True,
    progress: bool = False,
    group: Any = None,
) -> KernelStore:
    """Compute a kernel matrix tile by tile on every rank into the on-disk ``store``.

    Call it on every rank of an initialised ``torch.distributed`` process
    group with identical arguments (or without a process group: one rank).

    Parameters
    ----------
    arch_or_model : ntkit layer, torch.nn.Module or callable
        An infinite-width architecture (``arch.kernel`` is used on each tile),
        a finite network (:func:`ntkit.empirical_ntk` with ``output="trace"``
        / :func:`ntkit.empirical_nngp`), or ``fn(a, b) -> (len(a), len(b))``
        tensor with ``b=None`` meaning ``b = a``.
    x1, x2 : tensor or array
        Inputs ``(n1, ...)`` and ``(n2, ...)``; ``x2=None`` computes the
        symmetric ``x1`` kernel (upper-triangle tiles only, mirrored).
    store : path
        Directory of the store (created if missing, resumed if present; a
        store made with other inputs/architecture/dtype is refused).
    get : str or sequence of str
        Results to store: ``"ntk"``, ``"nngp"`` for layers/modules; any one
        name for a callable.
    batch_size : int, optional
        Side of a store tile (default: sized from ``memory_budget``, else 2048).
    memory_budget : int or str, optional
        Budget of one tile's working memory, also passed on to the per-tile
        kernel computation.
    dtype : torch.dtype
        Dtype of the computation and of the stored matrix (float32 halves the disk).
    device : optional
        Where tiles are computed (default: the current CUDA device under NCCL, else CPU).
    durable : bool
        fsync each tile before marking it finished (survives machine crashes).
    progress : bool
        Progress bar on rank 0.
    group : optional
        ``torch.distributed`` process group (default: the world).

    Returns
    -------
    KernelStore
        The store (on every rank), complete when this returns. ``.stats``
        holds this rank's ``tiles_computed``, ``tiles_skipped`` and ``seconds``.

    Examples
    --------
    >>> import tempfile, torch
    >>> from ntkit import layers as L, distributed as D
    >>> arch = L.serial(L.Dense(64), L.Relu(), L.Dense(1))
    >>> x = torch.randn(10, 3, dtype=torch.float64)
    >>> st = D.kernel(arch, x, store=tempfile.mkdtemp(), batch_size=4, dtype=torch.float64)
    >>> bool(abs(st.ntk[:] - arch.kernel(x, get="ntk").ntk.numpy()).max() < 1e-12)
    True
    """
    t0 = time.perf_counter()
    if store is None:
        raise TypeError("store must be a directory path for the on-disk kernel store")
    store = os.fspath(store)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    gets = (get,) if isinstance(get, str) else tuple(get)
    if not gets or len(set(gets)) != len(gets) or not all(isinstance(g, str) and g for g in gets):
        raise ValueError(f"get must be a non-empty name or sequence of distinct names, got {get!r}")
    x1t = as_input_tensor(x1, "x1", dtype=dtype, min_ndim=2)
    x2t = None
    if x2 is not None:
        x2t = as_input_tensor(x2, "x2", dtype=dtype, min_ndim=2)
        check_feature_shapes_match(x1t, x2t)
    fn, src_fp = _tile_function(arch_or_model, gets, memory_budget, dtype)
    symmetric = x2t is None
    n1 = x1t.shape[0]
    n2 = n1 if symmetric else x2t.shape[0]
    itemsize = torch.finfo(dtype).bits // 8
    if batch_size is None and memory_budget is None:
        b1, b2 = min(_DEFAULT_TILE, n1), min(_DEFAULT_TILE, n2)
    else:
        # a tile's results (one array per name) plus a few same-size temporaries
        b1, b2 = plan_blocks(n1, n2, bytes_per_pair=4 * len(gets) * itemsize,
                             memory_budget=memory_budget, batch_size=batch_size)
    rank, world = rank_world(group)
    if device is None:
        device = comm_device(group)
    device = torch.device(device)
    if isinstance(arch_or_model, nn.Module):
        arch_or_model.to(device)

    fingerprint = {
        "x1": fingerprint_array(x1t.cpu().numpy()),
        "x2": None if x2t is None else fingerprint_array(x2t.cpu().numpy()),
        "source": src_fp,
        "get": list(gets),
    }
    if rank == 0:
        KernelStore.create(store, names=list(gets), shape=(n1, n2), dtype=str(np.dtype(str(dtype)[6:])),
                           blocks=(b1, b2), symmetric=symmetric, fingerprint=fingerprint)
    barrier(group)
    st = KernelStore.attach(store)
    # a mismatch on rank 0 raised above; other ranks see the same meta
    done = st.done()
    row_starts = sorted({g[0] for g in st.grid})
    owner = row_block_owner(len(row_starts), world, symmetric)
    mine_rows = {r for r, o in zip(row_starts, owner, strict=True) if o == rank}
    todo = [t for t in range(st.n_tiles) if st.grid[t][0] in mine_rows and t not in done]
    skipped = sum(1 for t in range(st.n_tiles) if st.grid[t][0] in mine_rows and t in done)
    kill_after, kill_rank = _kill_hook()
    written = 0
    xa_all = x1t
    xb_all = x1t if symmetric else x2t
    for t in progress_bar(todo, total=len(todo), enabled=progress and rank == 0, desc="kernel tiles"):
        s1, s2 = st.slices(t)
        a = xa_all[s1].to(device)
        b = None if (symmetric and s1 == s2) else xb_all[s2].to(device)
        with torch.no_grad() if not isinstance(arch_or_model, nn.Module) else _nullcontext():
            res = fn(a, b)
        values = {}
        for g in gets:
            v = res[g]
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != (s1.stop - s1.start, s2.stop - s2.start):
                raise ValueError(f"the kernel of a tile must be a tensor of shape "
                                 f"{(s1.stop - s1.start, s2.stop - s2.start)} for {g!r}, got "
                                 f"{getattr(v, 'shape', type(v).__name__)}; only flat (n1, n2) kernels "
                                 "can be stored")
            values[g] = v.detach().to(device="cpu", dtype=dtype).numpy()
            if not np.isfinite(values[g]).all():
                raise ValueError(f"non-finite values in tile {t} of {g!r}")
        st.write(t, values, durable=durable)
        written += 1
        if kill_after and written >= kill_after and (kill_rank is None or kill_rank == rank):
            os.kill(os.getpid(), signal.SIGKILL)
    barrier(group)
    if not st.complete:  # pragma: no cover - only if a rank failed silently
        raise RuntimeError(f"kernel store {store} is incomplete after all ranks finished "
                           f"({len(st.done())}/{st.n_tiles} tiles)")
    st.stats = {"rank": rank, "world_size": world, "tiles_computed": written, "tiles_skipped": skipped,
                "tiles_total": st.n_tiles, "seconds": time.perf_counter() - t0}
    return st


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
