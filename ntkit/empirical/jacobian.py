"""Jacobian-contraction algorithm for the empirical NTK.

Per-example Jacobians ``J[i, a, p] = ∂f_a(x_i)/∂θ_p`` are computed with
``torch.func.vmap(torch.func.jacrev(f))`` for a block of examples and
contracted parameter tensor by parameter tensor (the pieces are never
concatenated into one ``(n, k, P)`` matrix):

    Θ[i, j, a, b] = Σ_tensors J1[i, a, :] · J2[j, b, :].

Cost: ``(n1 + n2) k`` reverse passes plus ``n1 n2 k² P`` (full) or
``n1 n2 k P`` (trace) multiply-adds; memory ``k P`` per example of a tile.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from ._common import Context, contract_jacobians, run_blocks

__all__ = ["jacobians", "compute"]


def jacobians(ctx: Context, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Per-example Jacobians of the flattened outputs, one ``(n, k, p)`` tensor per parameter tensor."""
    params = ctx.params if params is None else params
    jac = vmap(jacrev(ctx.fn_single), in_dims=(None, 0), randomness=ctx.randomness)(params, x)
    n = x.shape[0]
    return [jac[name].reshape(n, ctx.k, -1) for name in params]


def compute(
    ctx: Context,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    output: str,
    batch_size: int | None,
    memory_budget: int | str | None,
    progress: bool,
) -> torch.Tensor:
    """The empirical NTK by Jacobian contraction (see :func:`ntkit.empirical_ntk`)."""
    full = output in ("full", "diagonal")
    diagonal_only = output in ("diagonal", "sample_diagonal")
    s = ctx.itemsize
    bytes_per_row = 2.5 * ctx.k * ctx.n_params * s  # the Jacobian and jacrev's intermediates
    bytes_per_pair = (ctx.k * ctx.k if full else 1) * s
    return run_blocks(
        lambda x: jacobians(ctx, x),
        lambda a, b: contract_jacobians(a, b, full),
        lambda a: contract_jacobians(a, None, full),
        x1,
        x2,
        diagonal_only,
        bytes_per_row,
        bytes_per_pair,
        batch_size,
        memory_budget,
        progress,
        "eNTK (jacobian)",
    )
