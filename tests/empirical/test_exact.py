"""Independent truths: a closed form (seed 000) and float64 finite differences."""

import math

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical import _common, jacobian


class OneHidden(nn.Module):
    """h(x) = N^{-1/2} Σ_j a_j relu(w_j · x), a_j = ±1 fixed (a buffer), NTK parameterisation."""

    def __init__(self, d, N, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(N, d, generator=g, dtype=torch.float64))
        self.register_buffer("a", torch.randint(0, 2, (N,), generator=g).double() * 2 - 1)
        self.N = N

    def forward(self, x):
        return torch.relu(x @ self.w.T) @ self.a / math.sqrt(self.N)


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "structured", "auto"])
def test_one_hidden_layer_relu_closed_form(method):
    d, N = 3, 64
    net = OneHidden(d, N)
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(6, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, d, generator=g, dtype=torch.float64)
    act1, act2 = (x1 @ net.w.T > 0).double(), (x2 @ net.w.T > 0).double()
    expected = (x1 @ x2.T) * (act1 @ act2.T) / N  # x·x' (1/N) Σ_j 1(w_j·x>0) 1(w_j·x'>0)
    got = nk.empirical_ntk(net, x1, x2, method=method)
    assert got.shape == (6, 4)  # scalar output: k = 1
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    full = nk.empirical_ntk(net, x1, x2, output="full", method=method)
    assert full.shape == (6, 4, 1, 1)
    diag = nk.empirical_ntk(net, x1, output="sample_diagonal", method=method)
    torch.testing.assert_close(diag, (x1 * x1).sum(1) * act1.sum(1) / N, rtol=1e-12, atol=1e-14)
    # the buffer a is not differentiated: no parameter named "a"
    assert [n for n, _ in net.named_parameters()] == ["w"]


def _fd_jacobian(model, x, eps=1e-6):
    """Central finite differences of the flat outputs wrt every parameter entry: (n, k, P)."""
    cols = []
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            for idx in range(flat.numel()):
                old = flat[idx].item()
                flat[idx] = old + eps
                fp = model(x).reshape(x.shape[0], -1)
                flat[idx] = old - eps
                fm = model(x).reshape(x.shape[0], -1)
                flat[idx] = old
                cols.append((fp - fm) / (2 * eps))
    return torch.stack(cols, -1)


def test_one_jacobian_column_matches_finite_differences():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    ctx = _common.make_context(net, x, _common.select_params(net))
    J = jacobian.jacobians(ctx, x)  # pieces per parameter tensor, (n, k, p)
    w = net[0].weight
    eps, (r, c) = 1e-6, (2, 1)
    with torch.no_grad():
        old = w[r, c].item()
        w[r, c] = old + eps
        fp = net(x)
        w[r, c] = old - eps
        fm = net(x)
        w[r, c] = old
    fd = (fp - fm) / (2 * eps)
    torch.testing.assert_close(J[0][:, :, r * 3 + c], fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "structured"])
def test_kernel_matches_finite_difference_jacobian(method):
    """Θ = J Jᵀ with J from finite differences, for a tiny CNN + norm model (every structured rule)."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1), nn.GroupNorm(1, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3),
        nn.LayerNorm(3), nn.Linear(3, 2),
    ).double()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    J = _fd_jacobian(net, x)
    expected = torch.einsum("iap,jbp->ijab", J, J)
    got = nk.empirical_ntk(net, x, output="full", method=method)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-8)


def test_multidimensional_outputs_are_flattened():
    class Out23(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 6)

        def forward(self, x):
            return self.lin(x).reshape(-1, 2, 3)

    net = Out23().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    full = nk.empirical_ntk(net, x, output="full", method="structured")
    assert full.shape == (3, 3, 6, 6)
    # a linear model: Θ[i,j,a,b] = (x_i·x_j + 1) δ_ab
    expected = ((x @ x.T + 1)[:, :, None, None] * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(full, expected, rtol=1e-12, atol=1e-12)
