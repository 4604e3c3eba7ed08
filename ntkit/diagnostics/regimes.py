"""Training regimes: Chizat et al.'s α-scaling and NTK vs standard parameterisation.

α-scaling (Chizat, Oyallon & Bach 2019, "On lazy training"; seed 004)
----------------------------------------------------------------------
Exact setup used by :func:`alpha_scaling`: with ``f̄(x; θ)`` the given model and
``θ₀`` its initial parameters,

    f_α(x; θ) = α (f̄(x; θ) − f̄(x; θ₀)),      L_α(θ) = 1/(2 n α²) Σ_i ||f_α(x_i; θ) − y_i||²,

trained by full-batch GD with a step ``lr`` that does not depend on ``α``.
Subtracting ``f̄(·; θ₀)`` (a frozen copy) makes the initial output exactly 0
for every ``α``, and the ``1/α²`` loss scaling makes the function-space
dynamics ``df_α/dt = −(lr/n) Θ̄ (f_α − y)`` (``Θ̄`` the NTK of ``f̄``)
independent of ``α`` to first order. The parameters then move ``O(1/α)``, so
the relative kernel change is ``O(1/α)`` and, as ``α → ∞``, training
reduces to that of the linearised model (kernel regression with ``Θ̄(θ₀)``);
small ``α`` lets features move. ``lr="auto"`` means ``n / λ_max(Θ̄(θ₀))``.

Parameterisations
-----------------
:func:`parameterization_comparison` runs :func:`~ntkit.diagnostics.lazy.lazy_scaling`
for several architectures (typically the same ``L.serial`` with
``parameterization="ntk"`` and ``"standard"``) and collects kernel change,
weight change and test error against width. With ``lr="auto"`` each network
gets ``n / λ_max(Θ₀)``, which is what keeps the standard parameterisation
(whose NTK grows like the width) stable.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._validation import check_positive
from ._common import check_model, check_steps, prepare_xy, resolve_lr
from .lazy import LazyScaling, lazy_scaling, lazy_training

__all__ = ["AlphaScaled", "alpha_scaling", "AlphaScaling", "parameterization_comparison",
           "ParameterizationComparison"]


class AlphaScaled(nn.Module):
    """``f_α(x) = α (f̄(x; θ) − f̄(x; θ₀))`` around a frozen copy of the initial model.

    Parameters
    ----------
    model : nn.Module
        ``f̄``; its parameters stay trainable (shared, not copied).
    alpha : float > 0

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(3, 1)
    >>> AlphaScaled(net, 10.0)(torch.randn(2, 3)).abs().max().item()
    0.0
    """

    def __init__(self, model: nn.Module, alpha: float) -> None:
        super().__init__()
        self.alpha = check_positive(alpha, "alpha")
        self.model = check_model(model)
        self.reference = copy.deepcopy(model)
        for p in self.reference.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (self.model(x) - self.reference(x))


@dataclass
class AlphaScaling:
    """Result of :func:`alpha_scaling` (one entry per ``α``).

    Attributes
    ----------
    alphas : list of float
    kernel_change : list of float
        Relative NTK change after ``steps`` steps.
    weight_change : list of float
        ``||θ_T − θ₀|| / ||θ₀||`` over all parameters.
    train_loss : list of float
        Final ``1/(2n) Σ ||f_α − y||²`` (unscaled).
    test_mse, test_error : list of float
        On the test set, if given.
    lr : float
    steps : int
    """

    alphas: list[float]
    kernel_change: list[float]
    weight_change: list[float]
    train_loss: list[float]
    test_mse: list[float]
    test_error: list[float]
    lr: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in vars(self).items()}


def alpha_scaling(
    model: nn.Module,
    x: Any,
    y: Any,
    alphas: Sequence[float],
    *,
    steps: int = 200,
    lr: float | str = "auto",
    x_test: Any | None = None,
    y_test: Any | None = None,
    method: str = "auto",
) -> AlphaScaling:
    """Train ``f_α = α (f̄ − f̄₀)`` on ``L/α²`` for each ``α`` and record how lazy it is.

    Parameters
    ----------
    model : nn.Module
        ``f̄`` at its initialisation (not modified; each α trains a copy).
    x, y : tensors
    alphas : sequence of positive floats
    steps : int
    lr : float or "auto"
        α-independent step (``"auto"`` = ``n / λ_max(Θ̄(θ₀))``).
    x_test, y_test : tensors, optional
    method : str
        Empirical NTK method.

    Returns
    -------
    AlphaScaling

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    >>> res = alpha_scaling(net, torch.randn(8, 3), torch.randn(8), alphas=[1.0, 10.0], steps=20)
    >>> res.kernel_change[1] < res.kernel_change[0]
    True
    """
    check_model(model)
    xt, yt, k = prepare_xy(model, x, y)
    steps = check_steps(steps)
    als = [check_positive(a, "alphas") for a in alphas]
    if not als:
        raise ValueError("alphas must hold at least one value")
    lr_f = resolve_lr(lr, model, xt, k, method)
    out = AlphaScaling(alphas=als, kernel_change=[], weight_change=[], train_loss=[], test_mse=[], test_error=[],
                       lr=lr_f, steps=steps)
    for a in als:
        tr = lazy_training(AlphaScaled(copy.deepcopy(model), a), xt, yt, lr=lr_f, steps=steps,
                           record_every=max(steps, 1), x_test=x_test, y_test=y_test, method=method,
                           loss_scale=1.0 / a**2)
        out.kernel_change.append(tr.kernel_change[-1])
        out.weight_change.append(tr.total_weight_change[-1])
        out.train_loss.append(tr.loss[-1])
        if tr.test_mse:
            out.test_mse.append(tr.test_mse[-1])
            out.test_error.append(tr.test_error[-1])
    return out


@dataclass
class ParameterizationComparison:
    """Result of :func:`parameterization_comparison`: one :class:`LazyScaling` per architecture name."""

    results: dict[str, LazyScaling]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {k: v.to_dict() for k, v in self.results.items()}


def parameterization_comparison(
    archs: Mapping[str, Any],
    x: Any,
    y: Any,
    widths: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    *,
    steps: int = 100,
    lr: float | str = "auto",
    x_test: Any | None = None,
    y_test: Any | None = None,
    dtype: torch.dtype = torch.float32,
    method: str = "auto",
) -> ParameterizationComparison:
    """Kernel change, weight change and test error against width for several architectures.

    Parameters
    ----------
    archs : mapping name -> ntkit layer
        E.g. ``{"ntk": serial(Dense(w), Relu(), Dense(1)),
        "standard": serial(Dense(w, parameterization="standard"), ...)}``.
    x, y, widths, seeds, steps, lr, x_test, y_test, dtype, method
        As in :func:`~ntkit.diagnostics.lazy.lazy_scaling`.

    Returns
    -------
    ParameterizationComparison

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> archs = {p: L.serial(L.Dense(8, parameterization=p), L.Dense(1, parameterization=p))
    ...          for p in ("ntk", "standard")}
    >>> x, y = torch.randn(6, 3), torch.randn(6)
    >>> res = parameterization_comparison(archs, x, y, widths=[16, 64], seeds=[0], steps=5, x_test=x, y_test=y)
    >>> sorted(res.results)
    ['ntk', 'standard']
    """
    if not isinstance(archs, Mapping) or not archs:
        raise TypeError("archs must be a non-empty mapping {name: architecture}")
    res = {}
    for name, arch in archs.items():
        res[str(name)] = lazy_scaling(arch, x, y, widths, seeds, steps=steps, lr=lr, dtype=dtype, x_test=x_test,
                                      y_test=y_test, method=method)
    return ParameterizationComparison(results=res)
