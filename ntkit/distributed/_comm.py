"""Thin helpers over ``torch.distributed``: rank/world of a (possibly absent) process group."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["rank_world", "barrier", "all_reduce_sum", "broadcast", "comm_device"]


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when no process group is initialised."""
    if not _initialized():
        return 0, 1
    return torch.distributed.get_rank(group), torch.distributed.get_world_size(group)


def comm_device(group: Any = None) -> torch.device:
    """Where collective tensors must live: the current CUDA device for NCCL, else CPU."""
    if _initialized() and torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(group: Any = None) -> None:
    """``torch.distributed.barrier`` when running distributed, else nothing."""
    if _initialized() and torch.distributed.get_world_size(group) > 1:
        torch.distributed.barrier(group=group)


def all_reduce_sum(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process); returns ``t``."""
    if _initialized() and torch.distributed.get_world_size(group) > 1:
        dev = comm_device(group)
        if t.device != dev:
            tmp = t.to(dev)
            torch.distributed.all_reduce(tmp, group=group)
            t.copy_(tmp)
        else:
            torch.distributed.all_reduce(t, group=group)
    return t


def broadcast(t: torch.Tensor, src: int = 0, group: Any = None) -> torch.Tensor:
    """In-place broadcast from global rank ``src`` (no-op on one process); returns ``t``."""
    if _initialized() and torch.distributed.get_world_size(group) > 1:
        dev = comm_device(group)
        if t.device != dev:
            tmp = t.to(dev)
            torch.distributed.broadcast(tmp, src=src, group=group)
            t.copy_(tmp)
        else:
            torch.distributed.broadcast(t, src=src, group=group)
    return t
