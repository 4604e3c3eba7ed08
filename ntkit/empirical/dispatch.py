"""Public entry point :func:`empirical_ntk` and the rule behind ``method="auto"``.

The auto rule
-------------
Cost model (multiply-adds), with ``F`` the multiply-adds of one forward pass of
one example, ``P`` the number of selected parameters, ``k`` outputs,
``R = n1 + n2`` rows to differentiate and ``Q = n1·n2`` pairs (``R = Q = n1``
for the diagonal outputs), ``kk = k²`` for full blocks and ``k`` for traces:

* ``jacobian``:  ``R·k·3F + Q·kk·P``; smallest tile needs ``2 × 2.5·k·P`` numbers
  (the Jacobians of one row and one column);
* ``ntvp``:      ``R·k·3F + Q·k·3F``; smallest tile needs ``3·P`` numbers (one column);
* ``structured``: ``R·(1 + 2k)·F`` for the output gradients, plus each
  layer's contraction (``Q·(d_in + kk·d_out)`` for a dense layer, the cheaper
  of the pairwise and per-example-gradient forms for layers with several
  positions), plus the ``jacobian`` cost restricted to fallback parameters.

:func:`choose_method` keeps the methods whose smallest tile fits the memory
budget and returns the one with the fewest multiply-adds (ties: jacobian,
structured, ntvp). Both functions are pure and unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_choice
from ..tiling import parse_memory
from ._common import (
    DEFAULT_MEMORY_BUDGET,
    METHODS,
    OUTPUTS,
    Context,
    ParamsArg,
    _check_model,
    check_train_mode,
    make_context,
    prepare_inputs,
    select_params,
)

__all__ = ["empirical_ntk", "MethodCost", "estimate_costs", "choose_method"]

_TIE_ORDER = ("jacobian", "structured", "ntvp")


@dataclass(frozen=True)
class MethodCost:
    """Estimated work and smallest-tile memory of one algorithm."""

    method: str
    flops: float  # multiply-adds
    min_bytes: float  # memory of the smallest possible tile


def estimate_costs(
    *,
    n1: int,
    n2: int,
    k: int,
    n_params: int,
    forward_flops: float,
    output: str,
    itemsize: int = 4,
    structured_flops: float | None = None,
    structured_min_bytes: float | None = None,
) -> dict[str, MethodCost]:
    """Cost of each method (see the module docstring); pure arithmetic.

    ``structured_flops`` / ``structured_min_bytes`` come from the layer
    analysis of the model (:func:`ntkit.empirical.structured.site_costs`);
    ``None`` leaves the structured method out.

    Examples
    --------
    >>> c = estimate_costs(n1=100, n2=100, k=10, n_params=10**6, forward_flops=10**6, output="trace")
    >>> sorted(c)
    ['jacobian', 'ntvp']
    """
    check_choice(output, "output", OUTPUTS)
    diag = output in ("diagonal", "sample_diagonal")
    rows = n1 if diag else n1 + n2
    pairs = n1 if diag else n1 * n2
    kk = k * k if output in ("full", "diagonal") else k
    F, P = float(forward_flops), float(n_params)
    jac_tile = (1 if diag else 2) * 2.5 * k * P * itemsize
    out = {
        "jacobian": MethodCost("jacobian", rows * k * 3 * F + pairs * kk * P, jac_tile),
        "ntvp": MethodCost("ntvp", rows * k * 3 * F + pairs * k * 3 * F, 3.0 * P * itemsize),
    }
    if structured_flops is not None:
        out["structured"] = MethodCost("structured", float(structured_flops), float(structured_min_bytes or 0.0))
    return out


def choose_method(costs: dict[str, MethodCost], memory_budget: int | str | None = None) -> str:
    """The cheapest method whose smallest tile fits ``memory_budget`` (default ``"1GB"``).

    Examples
    --------
    >>> c = {"jacobian": MethodCost("jacobian", 10.0, 1e3), "ntvp": MethodCost("ntvp", 50.0, 10.0)}
    >>> choose_method(c), choose_method(c, memory_budget=100)
    ('jacobian', 'ntvp')
    """
    budget = parse_memory(memory_budget if memory_budget is not None else DEFAULT_MEMORY_BUDGET)
    fits = [c for c in costs.values() if c.min_bytes <= budget]
    if not fits:
        need = min(c.min_bytes for c in costs.values())
        raise MemoryError(
            f"no method fits memory_budget={budget} bytes; the smallest tile needs about {int(need)} bytes"
        )
    return min(fits, key=lambda c: (c.flops, _TIE_ORDER.index(c.method))).method


def _auto(ctx: Context, x1: torch.Tensor, n2: int, output: str, memory_budget, plan):
    from . import structured

    full = output in ("full", "diagonal")
    diag = output in ("diagonal", "sample_diagonal")
    n1 = x1.shape[0]
    structured.choose_strategies(plan, n1, n2, ctx.k, full, diag)
    s_flops, per_row, per_pair = structured.site_costs(plan, n1, n2, ctx.k, full, diag)
    fwd = max(plan.forward_flops, float(ctx.n_params))
    rows = n1 if diag else n1 + n2
    if plan.sites:
        s_flops += rows * (1 + 2 * ctx.k) * fwd
    s = ctx.itemsize
    costs = estimate_costs(
        n1=n1, n2=n2, k=ctx.k, n_params=ctx.n_params, forward_flops=fwd, output=output, itemsize=s,
        structured_flops=s_flops, structured_min_bytes=((1 if diag else 2) * per_row + per_pair) * s,
    )
    return choose_method(costs, memory_budget)


def _run(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    output: str,
    method: str,
    params: ParamsArg,
    batch_size: int | None,
    memory_budget: int | str | None,
    progress: bool,
    allow_train_mode: bool,
    pseudo: bool = False,
) -> torch.Tensor:
    _check_model(model)
    check_choice(output, "output", OUTPUTS)
    check_choice(method, "method", METHODS)
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    parse_memory(memory_budget)
    check_train_mode(model, allow_train_mode)
    sel = select_params(model, params)
    x1, x2 = prepare_inputs(model, next(iter(sel.values())), x1, x2)
    if output in ("diagonal", "sample_diagonal") and x2 is not None:
        raise ValueError(
            f"output={output!r} returns the x = x' blocks Θ(x1_i, x1_i) of one batch; pass x2=None "
            "(use output='full' or 'trace' for a cross kernel)"
        )
    ctx = make_context(model, x1, sel, allow_train_mode=allow_train_mode)
    if pseudo:  # g(x) = k^{-1/2} Σ_a f_a(x): project the flat outputs on the normalised ones vector
        proj = torch.full((1, ctx.k), ctx.k**-0.5, dtype=ctx.dtype, device=ctx.device)
        ctx = make_context(model, x1, sel, proj=proj, allow_train_mode=allow_train_mode)
    from . import jacobian, ntvp, structured

    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    with torch.inference_mode(False), torch.enable_grad():
        # tensors made under torch.inference_mode() cannot enter autograd graphs: use normal copies
        x1 = x1.clone() if x1.is_inference() else x1
        x2 = x2.clone() if x2 is not None and x2.is_inference() else x2
        plan = None
        if method in ("auto", "structured"):
            plan = structured.analyse(ctx, x1)
        if method == "auto":
            method = _auto(ctx, x1, n2, output, memory_budget, plan)
        if method == "structured":
            out = structured.compute(ctx, x1, x2, output, batch_size, memory_budget, progress, plan=plan)
        elif method == "ntvp":
            out = ntvp.compute(ctx, x1, x2, output, batch_size, memory_budget, progress)
        else:
            out = jacobian.compute(ctx, x1, x2, output, batch_size, memory_budget, progress)
    return out.detach()


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
    """Empirical (finite-width) Neural Tangent Kernel of any ``torch.nn.Module``.

    With ``f(x) ∈ R^k`` the model's output for one example, flattened (an
    output of shape ``(n, *s)`` gives ``k = prod(s)``; shape ``(n,)`` gives
    ``k = 1``), and ``θ`` the selected parameters::

        Θ[i, j, a, b] = Σ_p ∂f_a(x1_i)/∂θ_p · ∂f_b(x2_j)/∂θ_p.

    Parameters
    ----------
    model : nn.Module
        Maps a batch ``(n, ...)`` to ``(n, ...)``; it is not modified (parameters
        are substituted with ``torch.func.functional_call``). Models in train mode
        with BatchNorm or active Dropout are refused (see ``allow_train_mode``).
    x1 : Tensor, shape (n1, ...)
        Inputs, batch first, in the model's dtype and on its device (integer
        token ids are accepted for models with an ``nn.Embedding``).
    x2 : Tensor, shape (n2, ...), optional
        Second inputs with the same per-example shape; ``None`` means ``x1``
        (and only one triangle of tiles is computed).
    output : {"trace", "full", "diagonal", "sample_diagonal"}
        * ``"full"``: ``(n1, n2, k, k)``, all output pairs;
        * ``"trace"``: ``(n1, n2)``, ``Σ_a Θ[i, j, a, a]`` (the sum, not the mean,
          over outputs; for ``k = 1`` it is the scalar NTK);
        * ``"diagonal"``: ``(n1, k, k)``, the ``x = x'`` blocks ``Θ(x1_i, x1_i)``
          (``x2`` must be ``None``);
        * ``"sample_diagonal"``: ``(n1,)``, the traces of those blocks.
    method : {"auto", "jacobian", "ntvp", "structured"}
        Algorithm; all give the same numbers up to rounding. ``"jacobian"``
        contracts per-example Jacobians, ``"ntvp"`` uses NTK-vector products,
        ``"structured"`` exploits layer structure (exact, with an autograd
        fallback for unknown parameters), ``"auto"`` picks the cheapest that
        fits the memory budget (rule in :mod:`ntkit.empirical.dispatch`).
    params : None, str, list of str, list of tensors, or callable
        Parameters to differentiate: ``None`` = all with ``requires_grad``;
        names from ``model.named_parameters()``; a predicate
        ``params(name, param) -> bool``; or parameter tensors of ``model``.
        Buffers are never differentiated. The kernel is additive: the kernel of
        a union of disjoint subsets is the sum of their kernels.
    batch_size : int, optional
        Tile size (examples per tile side). Takes precedence over ``memory_budget``.
    memory_budget : int or str, optional
        Working-memory budget of one tile, in bytes or like ``"2GB"``
        (default ``"1GB"`` when neither is given). The result itself is extra.
    progress : bool
        Show a tqdm progress bar over tiles.
    allow_train_mode : bool
        Compute even when BatchNorm/Dropout make the result batch-dependent;
        the methods may then disagree.

    Returns
    -------
    Tensor
        Shape as described under ``output``; the model's dtype and device.

    Raises
    ------
    ValueError, TypeError
        Unknown ``output``/``method``; unknown parameter names; no parameter
        selected; NaN/inf inputs; ``x1``/``x2`` per-example shapes differ;
        dtype or device different from the model's; train-mode BatchNorm/Dropout.

    Examples
    --------
    >>> import torch, ntkit as nk
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    >>> x = torch.randn(4, 3)
    >>> nk.empirical_ntk(net, x).shape
    torch.Size([4, 4])
    >>> full = nk.empirical_ntk(net, x, torch.randn(5, 3), output="full")
    >>> full.shape
    torch.Size([4, 5, 2, 2])
    >>> last = nk.empirical_ntk(net, x, params=["2.weight", "2.bias"], method="structured")
    >>> last.shape
    torch.Size([4, 4])
    """
    return _run(
        model, x1, x2, output=output, method=method, params=params, batch_size=batch_size,
        memory_budget=memory_budget, progress=progress, allow_train_mode=allow_train_mode,
    )
