"""The pseudo-NTK of Mohamadi, Bae & Sutherland (ICML 2023): the NTK of the summed logits."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_choice
from ._common import ParamsArg, _check_model
from .dispatch import _run

__all__ = ["pseudo_ntk"]


def pseudo_ntk(
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
    """Pseudo-NTK ("sum of logits"): the scalar NTK of ``g(x) = k^{-1/2} Σ_a f_a(x)``.

    Mohamadi, Bae & Sutherland (ICML 2023, "A fast, well-founded approximation
    to the empirical neural tangent kernel") approximate the full
    ``(n1, n2, k, k)`` empirical NTK of a ``k``-output network by
    ``pNTK(x, x') ⊗ I_k`` where::

        pNTK(x, x') = ∇_θ g(x) · ∇_θ g(x') = (1/k) Σ_{a,b} Θ[x, x', a, b].

    This function returns that ``(n1, n2)`` matrix (``output="trace"``) or its
    diagonal ``pNTK(x_i, x_i)`` (``output="sample_diagonal"``). It costs as much
    as a one-output NTK, ``k`` times less than the trace of the full NTK.

    It is an **approximation**: for standard architectures at random
    initialisation the off-diagonal output blocks ``Θ[x, x', a, b], a ≠ b``
    vanish and the diagonal ones become equal as the width grows, so
    ``pNTK ⊗ I`` converges to the full eNTK (the paper bounds the error by
    ``O(1/√width)``); at finite width, or after training, they differ. The
    identity above (a sum over all output pairs, divided by ``k``) is exact.

    Parameters
    ----------
    model, x1, x2, method, params, batch_size, memory_budget, progress, allow_train_mode
        As in :func:`ntkit.empirical_ntk`.
    output : {"trace", "sample_diagonal"}
        ``(n1, n2)`` kernel, or the ``(n1,)`` values ``pNTK(x1_i, x1_i)`` (``x2=None``).

    Examples
    --------
    >>> import torch, ntkit as nk
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> p = nk.pseudo_ntk(net, x)
    >>> full = nk.empirical_ntk(net, x, output="full")
    >>> torch.allclose(p, full.sum((2, 3)) / 4)
    True
    """
    _check_model(model)
    check_choice(output, "output", ("trace", "sample_diagonal"))
    return _run(model, x1, x2, output=output, method=method, params=params, batch_size=batch_size,
                memory_budget=memory_budget, progress=progress, allow_train_mode=allow_train_mode,
                pseudo=True)
