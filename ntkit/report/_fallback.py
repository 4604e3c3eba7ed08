"""PRIVATE fallbacks used by the report only when a library piece is not importable.

The report prefers the public pieces (``ntkit.layers.Dense``/``Relu``,
``ntkit.empirical_ntk``...); these minimal versions keep ``ntkit reproduce``
working while a piece is missing and are named in ``metrics.json``
(``implementations``) whenever they are used.

* :class:`FallbackDense` / :class:`FallbackRelu` — NTK-parameterised dense layer
  and ReLU following the :class:`ntkit.layers.base.Layer` protocol (closed-form
  arc-cosine kernel of degree 1);
* :func:`empirical_ntk_trace` — Θ = Σ_a J_a J_aᵀ by per-example Jacobians.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers.base import Layer
from ..layers.kernel import Kernel


class _DenseModule(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, w_scale: float, b_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.w_scale, self.b_scale = w_scale, b_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_scale * (x @ self.weight.T) + self.b_scale * self.bias


class FallbackDense(Layer):
    """y = W_std/sqrt(d_in) W x + b_std b with W, b ~ N(0, 1) (NTK parameterisation)."""

    is_affine = True

    def __init__(self, out_dim: int, W_std: float = 1.0, b_std: float = 0.0) -> None:
        self.out_dim, self.W_std, self.b_std = int(out_dim), float(W_std), float(b_std)

    def apply_kernel(self, k: Kernel) -> Kernel:
        w2, b2 = self.W_std**2, self.b_std**2
        nngp = w2 * k.nngp + b2
        ntk = None if k.ntk is None else nngp + w2 * k.ntk
        var1 = w2 * k.var1 + b2
        var2 = var1 if k.var2 is k.var1 else w2 * k.var2 + b2
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, shape=(self.out_dim,), is_gaussian=True)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 1:
            raise ValueError(f"FallbackDense needs flat inputs (d,), got {shape}")
        return (self.out_dim,)

    def build(self, shape: tuple[int, ...], ctx) -> nn.Module:  # noqa: ANN001
        d_in = shape[0]
        d_out = ctx.out_channels(self, self.out_dim)
        return _DenseModule(ctx.normal(d_out, d_in), ctx.normal(d_out), self.W_std / math.sqrt(d_in), self.b_std)


class FallbackRelu(Layer):
    """ReLU; infinite-width map = arc-cosine kernel of degree 1 and its derivative kernel."""

    def apply_kernel(self, k: Kernel) -> Kernel:
        v1 = k.var1.unsqueeze(1)
        v2 = k.var2.unsqueeze(0)
        norm = torch.sqrt(torch.clamp(v1 * v2, min=1e-300))
        c = torch.clamp(k.nngp / norm, -1.0, 1.0)
        theta = torch.arccos(c)
        nngp = norm * (torch.sin(theta) + (math.pi - theta) * c) / (2 * math.pi)
        dot = (math.pi - theta) / (2 * math.pi)
        ntk = None if k.ntk is None else k.ntk * dot
        var1 = k.var1 / 2
        var2 = var1 if k.var2 is k.var1 else k.var2 / 2
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, is_gaussian=False)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def build(self, shape: tuple[int, ...], ctx) -> nn.Module:  # noqa: ANN001
        return nn.ReLU()


def empirical_ntk_trace(model: nn.Module, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Σ over outputs of J Jᵀ by per-example Jacobians (torch.func), in chunks of examples."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p: dict, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).reshape(-1)

    feats = []
    for s in range(0, x.shape[0], chunk):
        jac = vmap(jacrev(f), in_dims=(None, 0))(params, x[s : s + chunk])
        feats.append(torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2))
    jall = torch.cat(feats, 0)  # (n, k, P)
    return torch.einsum("ikp,jkp->ij", jall, jall)
