"""Public entry point :func:`empirical_ntk` and the rule behind ``method="auto"``."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_choice
from ._common import (
    METHODS,
    OUTPUTS,
    ParamsArg,
    check_train_mode,
    make_context,
    prepare_inputs,
    select_params,
)

__all__ = ["empirical_ntk"]


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    output: str = "trace",
    method: str = "auto",
    params: ParamsArg = None,
    batch_size: int | None = None,
    memory_budget: int | str | None = None,
    progress: bool = False,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Empirical NTK."""
    check_choice(output, "output", OUTPUTS)
    check_choice(method, "method", METHODS)
    check_train_mode(model, allow_train_mode)
    sel = select_params(model, params)
    ref = next(iter(sel.values()))
    x1, x2 = prepare_inputs(model, ref, x1, x2)
    if output in ("diagonal", "sample_diagonal") and x2 is not None:
        raise ValueError(f"output={output!r} gives the x = x' blocks of one batch; pass x2=None")
    ctx = make_context(model, x1, sel, allow_train_mode=allow_train_mode)
    from . import jacobian, structured

    if method == "structured":
        return structured.compute(ctx, x1, x2, output, batch_size, memory_budget, progress)
    return jacobian.compute(ctx, x1, x2, output, batch_size, memory_budget, progress)
