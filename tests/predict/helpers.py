"""Independent references for the predict tests: explicit Jacobians and small models."""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev


def jacobian(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Explicit Jacobian ``(n * k, P)`` of the flattened outputs w.r.t. all trainable parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def f(p):
        return functional_call(model, p, (x,)).reshape(-1)

    jac = jacrev(f)(params)
    return torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in names], dim=1)


def jacobian_ntk(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """Per-output-unit empirical NTK ``(n1, n2)`` (outputs' kernels averaged) from explicit Jacobians."""
    j1 = jacobian(model, x1)
    j2 = j1 if x2 is None else jacobian(model, x2)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    k = j1.shape[0] // n1
    full = (j1 @ j2.T).reshape(n1, k, n2, k)
    return torch.diagonal(full, dim1=1, dim2=3).mean(-1)


def mlp(d: int, width: int, k: int = 1, seed: int = 0, act=torch.nn.Tanh) -> torch.nn.Module:
    """A small float64 MLP."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, width), act(), torch.nn.Linear(width, k)).double()


def rbf(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * torch.cdist(x1, x2) ** 2)


def euler_mse(k, kts, y, f0, g0, lr, t, h, rho=0.0):
    """Explicit Euler on d alpha/dt = -(lr/n) ((K + rho) alpha - (y - f0)), f = f0 + K alpha."""
    n = k.shape[0]
    alpha = torch.zeros_like(y)
    r = y - f0
    kr = k + rho * torch.eye(n, dtype=k.dtype)
    steps = int(round(t / h))
    for _ in range(steps):
        alpha = alpha - h * (lr / n) * (kr @ alpha - r)
    return f0 + k @ alpha, g0 + kts @ alpha
