"""Small hand-written models with known derivatives, shared by the diagnostics tests."""

import math

import torch
from torch import nn


class ReluTwoLayer(nn.Module):
    """f(x) = w^(-1/2) Σ_j a_j relu(w_j · x), no biases: ||∇²_θ f(x)||_op = ||x|| / sqrt(w) exactly.

    The Hessian only couples a_j with w_j (relu'' = 0): the (a_j, w_j) block is
    [[0, u_jᵀ], [u_j, 0]] with u_j = 1{w_j·x > 0} x / sqrt(w), whose eigenvalues are ±||u_j||.
    """

    def __init__(self, d, width, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(width, d, generator=g, dtype=dtype))
        self.a = nn.Parameter(torch.randn(width, generator=g, dtype=dtype))
        self.width = width

    def forward(self, x):
        return (torch.relu(x @ self.w.T) @ self.a / math.sqrt(self.width)).unsqueeze(-1)


def mlp(d=3, width=16, k=1, act=nn.Tanh, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), act(), nn.Linear(width, k)).to(dtype)
