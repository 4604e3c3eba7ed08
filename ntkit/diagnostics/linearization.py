"""Linearisation error along training, against ``||θ − θ₀||²``, and Proposition 14.1 of seed 000.

Along a full-batch GD run on ``L = 1/(2n) Σ ||f − y||²`` we record, at each
recorded step ``t``,

* ``f(x; θ_t)`` and the first-order Taylor model
  ``f_lin(x; θ_t) = f(x; θ₀) + J(x; θ₀)(θ_t − θ₀)`` (one forward-mode
  ``torch.func.jvp`` at ``θ₀``; the Jacobian is never formed),
* ``|f − f_lin|`` at every evaluation point and ``||θ_t − θ₀||²``.

For a twice-differentiable model the error is ``≤ ½ sup||∇²f|| · ||θ − θ₀||²``
(quadratic in the distance). For the seed's two-layer model
``h(x; W) = N^(-1/2) Σ_j a_j σ(w_j · x)`` with fixed ``a`` and a β-smooth
``σ`` (:class:`SeedTwoLayerNet`), Proposition 14.1 gives the explicit bound

    |h(x; W) − h_lin(x; W)| ≤ β / (2 sqrt(N)) · max_j |a_j| · ||x||² · ||W − W̃||_F²,

which :func:`linearization_error` evaluates per point when the model is a
:class:`SeedTwoLayerNet` (``bound_ratio`` = max over points of error / bound;
the proposition says it never exceeds 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import jvp

from ._common import (
    check_model,
    check_steps,
    detached,
    functional,
    gd_train,
    prepare_xy,
    record_points,
    resolve_lr,
    sq_dist,
    trainable,
)

__all__ = ["SeedTwoLayerNet", "SMOOTHNESS", "linearization_error", "prop14_1_bound", "LinearizationTrace"]

#: β = sup |σ''| of smooth activations, for Proposition 14.1.
SMOOTHNESS: dict[str, float] = {
    "tanh": 4.0 / (3.0 * math.sqrt(3.0)),  # |tanh''| peaks at tanh(x) = ±1/sqrt(3)
    "sigmoid": 1.0 / (6.0 * math.sqrt(3.0)),
    "softplus": 0.25,
    "sin": 1.0,
    "erf": 4.0 / math.sqrt(math.pi) * math.exp(-0.5) / math.sqrt(2.0),  # at x = 1/sqrt(2)
}

_ACTS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": torch.nn.functional.softplus,
         "sin": torch.sin, "erf": torch.erf}


class SeedTwoLayerNet(nn.Module):
    """The two-layer network of seed 000 §14.1: ``h(x) = N^(-1/2) Σ_j a_j σ(w_j · x)``.

    ``W`` (``N × d``, i.i.d. N(0, 1)) is the only trainable parameter; the
    signs ``a_j = ±1`` are a fixed buffer. ``beta`` is ``sup |σ''|``.

    Parameters
    ----------
    d : int
        Input dimension.
    width : int
        Number of hidden units ``N``.
    activation : {"tanh", "sigmoid", "softplus", "sin", "erf"}
    seed : int
    dtype : torch.dtype

    Examples
    --------
    >>> import torch
    >>> net = SeedTwoLayerNet(3, 16, "tanh", seed=0)
    >>> net(torch.randn(2, 3, dtype=torch.float64)).shape
    torch.Size([2, 1])
    """

    def __init__(self, d: int, width: int, activation: str = "tanh", seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        for v, nm in ((d, "d"), (width, "width")):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{nm} must be a positive integer, got {v!r}")
        if activation not in _ACTS:
            raise ValueError(f"activation must be one of {sorted(_ACTS)}, got {activation!r}")
        g = torch.Generator().manual_seed(int(seed))
        self.activation = activation
        self.beta = SMOOTHNESS[activation]
        self.width = int(width)
        self.weight = nn.Parameter(torch.randn(int(width), int(d), generator=g, dtype=torch.float64).to(dtype))
        a = torch.randint(0, 2, (int(width),), generator=g).to(torch.float64) * 2 - 1
        self.register_buffer("a", a.to(dtype))

    @property
    def a_max(self) -> float:
        return float(self.a.abs().max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _ACTS[self.activation](x @ self.weight.T)
        return (h @ self.a / math.sqrt(self.width)).unsqueeze(-1)


def prop14_1_bound(x: torch.Tensor, weight_distance_sq: float, width: int, beta: float, a_max: float = 1.0
                   ) -> torch.Tensor:
    """Right-hand side of Proposition 14.1 at each row of ``x``.

    ``β / (2 sqrt(N)) · a_max · ||x||² · ||W − W̃||_F²``.

    Examples
    --------
    >>> import torch
    >>> prop14_1_bound(torch.tensor([[3.0, 4.0]]), 2.0, 4, 1.0).tolist()
    [12.5]
    """
    x = torch.as_tensor(x)
    return beta / (2 * math.sqrt(width)) * a_max * x.reshape(x.shape[0], -1).double().pow(2).sum(1) * float(
        weight_distance_sq)


@dataclass
class LinearizationTrace:
    """What :func:`linearization_error` records.

    Attributes
    ----------
    steps : list of int
    param_distance_sq : list of float
        ``||θ_t − θ₀||²``.
    max_error, mean_error : list of float
        Max / mean over evaluation points and outputs of ``|f − f_lin|``.
    loss : list of float
        Training loss ``1/(2n) Σ ||f − y||²``.
    errors : list of list of float
        ``|f − f_lin|`` per evaluation point (max over outputs), per step.
    bound_ratio : list of float
        Only for :class:`SeedTwoLayerNet`: max over points of error / Prop. 14.1
        bound (``≤ 1`` when the proposition holds; 0 where the bound is 0).
    lr : float
    """

    steps: list[int]
    param_distance_sq: list[float]
    max_error: list[float]
    mean_error: list[float]
    loss: list[float]
    errors: list[list[float]]
    lr: float
    bound_ratio: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in vars(self).items()}


def linearization_error(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    lr: float | str = "auto",
    steps: int = 100,
    record_every: int | None = None,
    x_eval: Any | None = None,
    method: str = "auto",
) -> LinearizationTrace:
    """``|f(θ_t) − f_lin(θ_t)|`` along a GD run on MSE, against ``||θ_t − θ₀||²``.

    Parameters
    ----------
    model : nn.Module
        Not modified (a copy is trained).
    x, y : tensors
        Training data.
    lr : float or "auto"
        GD step on ``1/(2n) Σ ||f − y||²`` (``"auto"`` = ``n / λ_max(Θ₀)``).
    steps, record_every : int
    x_eval : tensor, optional
        Points where the error is measured (default: ``x``).
    method : str
        Empirical NTK method used only by ``lr="auto"``.

    Returns
    -------
    LinearizationTrace

    Examples
    --------
    >>> import torch
    >>> tr = linearization_error(torch.nn.Linear(3, 1).double(), torch.randn(6, 3), torch.randn(6), steps=10)
    >>> max(tr.max_error) < 1e-12
    True
    """
    check_model(model)
    xt, yt, k = prepare_xy(model, x, y)
    xe = xt if x_eval is None else prepare_xy(model, x_eval, None, "x_eval")[0]
    steps = check_steps(steps)
    pts = record_points(steps, record_every)
    lr_f = resolve_lr(lr, model, xt, k, method)
    p0 = detached(trainable(model))
    f = functional(model)
    with torch.no_grad():
        f0 = f(p0, xe)
    seed_net = isinstance(model, SeedTwoLayerNet)
    tr = LinearizationTrace(steps=[], param_distance_sq=[], max_error=[], mean_error=[], loss=[], errors=[],
                            lr=lr_f)

    def cb(step: int, net: nn.Module, loss: float) -> None:
        pt = detached(trainable(net))
        delta = {n: pt[n] - p0[n] for n in p0}
        _, lin = jvp(lambda p: f(p, xe), (p0,), (delta,))
        ft = f(pt, xe)
        err = (ft - (f0 + lin)).abs().double()
        d2 = sq_dist(pt, p0)
        per_point = err.max(1).values
        tr.steps.append(step)
        tr.param_distance_sq.append(d2)
        tr.max_error.append(float(err.max()))
        tr.mean_error.append(float(err.mean()))
        tr.loss.append(loss)
        tr.errors.append(per_point.tolist())
        if seed_net:
            b = prop14_1_bound(xe, d2, model.width, model.beta, model.a_max)
            ratio = torch.where(b > 0, per_point / torch.where(b > 0, b, torch.ones_like(b)),
                                torch.zeros_like(b))
            tr.bound_ratio.append(float(ratio.max()))

    gd_train(model, xt, yt, lr_f, steps, pts, cb)
    return tr
