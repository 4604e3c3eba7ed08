"""Private plumbing shared by the diagnostics: functional model, flat parameters, a GD loop.

Conventions used by every measurement (see ``docs/diagnostics.md``):

* the model's output for one example is flattened to ``k`` numbers, so a
  batch gives ``f(X)`` of shape ``(n, k)``;
* targets ``y`` are reshaped to ``(n, k)`` (a 1-D ``y`` is one output);
* mean squared error is ``L(θ) = 1/(2n) Σ_i ||f(x_i; θ) − y_i||²``, so
  full-batch gradient descent with step ``lr`` is
  ``θ ← θ − (lr/n) J(θ)ᵀ (f(X; θ) − y)`` and, for a constant kernel, the
  residual along an eigenvector of ``Θ`` with eigenvalue ``λ`` is multiplied by
  ``1 − lr λ / n`` each step (``exp(−lr λ t / n)`` under gradient flow).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .._validation import as_input_tensor, check_positive

__all__: list[str] = []


def check_model(model: object, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{name} has no trainable parameters (none with requires_grad=True)")
    return model


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: parameter}`` of the parameters with ``requires_grad``, in model order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def detached(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in params.items()}


def functional(model: nn.Module) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """``f(params, x) -> (n, k)`` with ``params`` replacing the trainable parameters."""

    def f(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, params, (x,))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model must return a single tensor, got {type(out).__name__}")
        return out.reshape(x.shape[0], -1)

    return f


def prepare_xy(model: nn.Module, x: Any, y: Any | None, x_name: str = "x", y_name: str = "y"
               ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Validate inputs/targets; returns ``x`` in the model's dtype, ``y`` as ``(n, k)`` and ``k``."""
    dtype = model_dtype(model)
    dev = next(model.parameters()).device
    xt = as_input_tensor(x, x_name, dtype=dtype, device=dev)
    with torch.no_grad():
        out = model(xt[:1])
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model must return a single tensor, got {type(out).__name__}")
    k = out[0].numel()
    if y is None:
        return xt, None, k
    yt = as_input_tensor(y, y_name, dtype=dtype, device=dev)
    if yt.shape[0] != xt.shape[0]:
        raise ValueError(f"{y_name} has {yt.shape[0]} rows but {x_name} has {xt.shape[0]} examples")
    yt = yt.reshape(yt.shape[0], -1)
    if yt.shape[1] != k:
        raise ValueError(f"{y_name} must have {k} target value(s) per example (the model's output size), "
                         f"got {yt.shape[1]}")
    return xt, yt, k


def flat(d: dict[str, torch.Tensor] | Iterable[torch.Tensor]) -> torch.Tensor:
    vals = d.values() if isinstance(d, dict) else d
    return torch.cat([v.reshape(-1) for v in vals])


def layer_of(name: str) -> str:
    """The module a parameter belongs to: ``'layers.0.weight' -> 'layers.0'``."""
    return name.rsplit(".", 1)[0] if "." in name else "<root>"


def layer_groups(names: Iterable[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(layer_of(n), []).append(n)
    return groups


def sq_dist(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: Iterable[str] | None = None) -> float:
    names = list(a) if names is None else list(names)
    return float(sum(float((a[n].detach() - b[n].detach()).double().pow(2).sum()) for n in names))


def sq_norm(a: dict[str, torch.Tensor], names: Iterable[str] | None = None) -> float:
    names = list(a) if names is None else list(names)
    return float(sum(float(a[n].detach().double().pow(2).sum()) for n in names))


def ntk_matrix(model: nn.Module, x: torch.Tensor, method: str = "auto", **kw: Any) -> torch.Tensor:
    """The empirical NTK, trace over outputs (``(n, n)``), via :func:`ntkit.empirical_ntk`."""
    from ..empirical import empirical_ntk

    return empirical_ntk(model, x, output="trace", method=method, **kw)


def resolve_lr(lr: float | str, model: nn.Module, x: torch.Tensor, k: int, method: str = "auto",
               kernel: torch.Tensor | None = None) -> float:
    """A float ``lr``, or ``"auto"`` = ``n / λ_max(Θ₀)`` (half the stability limit of GD on ``L``)."""
    if isinstance(lr, str):
        if lr != "auto":
            raise ValueError(f"lr must be a positive float or 'auto', got {lr!r}")
        if kernel is None:
            if k == 1:
                kernel = ntk_matrix(model, x, method=method)
            else:
                from ..empirical import empirical_ntk

                kernel = empirical_ntk(model, x, output="full", method=method)
                n = x.shape[0]
                kernel = kernel.permute(0, 2, 1, 3).reshape(n * k, n * k)
        lam = float(torch.linalg.eigvalsh(kernel.double()).max())
        if not lam > 0:
            raise ValueError("lr='auto' needs a kernel with a positive top eigenvalue; pass lr explicitly")
        return x.shape[0] / lam
    return check_positive(lr, "lr")


def check_steps(steps: int, name: str = "steps") -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {steps!r}")
    return int(steps)


def record_points(steps: int, record_every: int | None, n_records: int = 20) -> list[int]:
    """Steps (0 and ``steps`` included) at which to record."""
    if record_every is None:
        record_every = max(1, steps // n_records)
    if isinstance(record_every, bool) or int(record_every) != record_every or record_every < 1:
        raise ValueError(f"record_every must be a positive integer, got {record_every!r}")
    pts = list(range(0, steps + 1, int(record_every)))
    if pts[-1] != steps:
        pts.append(steps)
    return pts


def gd_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    steps: int,
    record_at: Iterable[int],
    callback: Callable[[int, nn.Module, float], None],
    loss_scale: float = 1.0,
) -> nn.Module:
    """Full-batch GD on ``loss_scale · 1/(2n) Σ ||f − y||²`` of a deep copy of ``model``.

    ``callback(step, model_copy, loss)`` is called (under ``no_grad``) before
    the update at every step in ``record_at`` and after the last step.
    Returns the trained copy; ``model`` itself is never modified.
    """
    net = copy.deepcopy(model)
    params = list(trainable(net).values())
    record = set(int(s) for s in record_at)
    n = x.shape[0]
    for step in range(steps + 1):
        for p in params:
            p.grad = None
        out = net(x).reshape(n, -1)
        loss = 0.5 * loss_scale * (out - y).pow(2).sum() / n
        if step in record:
            with torch.no_grad():
                callback(step, net, float(loss.detach()) / loss_scale)
        if step == steps:
            break
        if not torch.isfinite(loss):
            raise ValueError(f"training diverged at step {step} (loss {float(loss)}); lower lr")
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
    return net
