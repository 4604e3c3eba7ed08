"""The linearised network ``f_0(x) + J(x) (theta - theta_0)`` and higher Taylor expansions.

Both are ordinary ``nn.Module``s whose trainable parameters have the same
names and shapes as the wrapped model's (under the prefix ``model.``), so any
torch optimiser and :func:`ntkit.train` work on them unchanged. The
expansion point ``theta_0`` is kept as frozen buffers. Directional
derivatives are taken by forward-mode autodiff (:func:`torch.func.jvp`), so
the Jacobian ``J`` (``n x P``) is never materialised: one forward costs about
two to three evaluations of the model.
"""

from __future__ import annotations

import copy
import math
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jvp

__all__ = ["linearize", "taylor_expand", "TaylorExpanded"]


def _buffer_name(name: str) -> str:
    return "theta0__" + name.replace(".", "__")


class TaylorExpanded(nn.Module):
    """``sum_{j<=degree} (1/j!) D^j f(theta_0)[theta - theta_0, ...]`` (see :func:`taylor_expand`).

    Attributes
    ----------
    model : nn.Module
        The wrapped network; its parameters (those with ``requires_grad``) are
        the trainable ``theta``. Parameters without ``requires_grad`` stay fixed
        at their value and are not expanded.
    degree : int
        Order of the expansion (1 = linearisation).
    """

    def __init__(self, model: nn.Module, degree: int) -> None:
        super().__init__()
        self.model = model
        self.degree = degree
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self._names:
            raise ValueError("model has no trainable parameters (requires_grad=True) to expand around")
        for n, p in model.named_parameters():
            if p.requires_grad:
                self.register_buffer(_buffer_name(n), p.detach().clone())

    def theta0(self) -> dict[str, torch.Tensor]:
        """The expansion point (frozen copies of the initial parameters)."""
        return {n: getattr(self, _buffer_name(n)) for n in self._names}

    def delta(self) -> dict[str, torch.Tensor]:
        """``theta - theta_0`` per parameter (differentiable in ``theta``)."""
        params = dict(self.model.named_parameters())
        th0 = self.theta0()
        return {n: params[n] - th0[n] for n in self._names}

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        th0 = self.theta0()
        dlt = self.delta()

        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.model, p, args, kwargs, strict=False)

        # g_0 = f, g_j(p) = D g_{j-1}(p)[delta]  =>  g_j(theta_0) = D^j f(theta_0)[delta]^j
        def derivative(j: int) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
            if j == 0:
                return f
            inner = derivative(j - 1)
            return lambda p: jvp(inner, (p,), (dlt,))[1]

        if self.degree == 1:
            f0, d1 = jvp(f, (th0,), (dlt,))
            return f0 + d1
        out = f(th0)
        for j in range(1, self.degree + 1):
            out = out + derivative(j)(th0) / math.factorial(j)
        return out

    def extra_repr(self) -> str:
        return f"degree={self.degree}"


def _prepare(model: nn.Module, copy_model: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model) if copy_model else model


def linearize(model: nn.Module, *, copy_model: bool = True) -> TaylorExpanded:
    """The first-order Taylor expansion of ``model`` around its current parameters.

    ``lin(x) = f(x; theta_0) + J(x; theta_0) (theta - theta_0)``, computed by one
    :func:`torch.func.jvp` (forward mode), never forming ``J``. At creation
    ``theta = theta_0`` so ``lin(x) == model(x)``; training ``lin`` with any
    optimiser (or :func:`ntkit.train`) trains the linearised model, whose
    gradient-descent dynamics are exactly those of
    :func:`ntkit.predict.gradient_descent_mse` with the empirical NTK.

    Parameters
    ----------
    model : nn.Module
        Any differentiable network (use ``model.eval()`` for models with
        batch-norm statistics or dropout).
    copy_model : bool
        Wrap a deep copy (default), so training ``lin`` leaves ``model``
        untouched; ``False`` shares the parameter tensors with ``model``.

    Returns
    -------
    TaylorExpanded
        An ``nn.Module`` of degree 1; its parameters are ``lin.model.parameters()``.

    Examples
    --------
    >>> import torch
    >>> import ntkit as nk
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> lin = nk.linearize(net)
    >>> x = torch.randn(4, 3)
    >>> torch.allclose(lin(x), net(x))
    True
    >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    >>> lin(x).pow(2).mean().backward(); opt.step()
    """
    return TaylorExpanded(_prepare(model, copy_model), 1)


def taylor_expand(model: nn.Module, degree: int = 2, *, copy_model: bool = True) -> TaylorExpanded:
    """The Taylor expansion of ``model`` in its parameters, to ``degree``.

    ``sum_{j=0}^{degree} (1/j!) D^j f(theta_0)[delta, ..., delta]`` with
    ``delta = theta - theta_0``; the ``j``-th directional derivative is ``j``
    nested :func:`torch.func.jvp` calls (cost grows like ``2^j`` model
    evaluations, so degrees 1-3 are the practical ones).

    Parameters
    ----------
    model : nn.Module
    degree : int >= 1
    copy_model : bool
        As in :func:`linearize`.

    Examples
    --------
    >>> import torch
    >>> import ntkit as nk
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    >>> quad = nk.taylor_expand(net, degree=2)
    >>> x = torch.randn(3, 2)
    >>> torch.allclose(quad(x), net(x))
    True
    """
    if isinstance(degree, bool) or int(degree) != degree or degree < 1:
        raise ValueError(f"degree must be an integer >= 1, got {degree!r}")
    return TaylorExpanded(_prepare(model, copy_model), int(degree))


class _CallableModule(types.ModuleType):
    """Importing ``ntkit.linearize`` as a module rebinds ``ntkit.linearize`` to it; keep it callable."""

    def __call__(self, model: nn.Module, **kwargs: Any) -> TaylorExpanded:
        return linearize(model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
