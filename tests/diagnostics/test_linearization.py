"""Linearisation error: zero for linear models, second-order Taylor agreement, Prop. 14.1 bound."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from ntkit.diagnostics import SMOOTHNESS, SeedTwoLayerNet, linearization_error, prop14_1_bound

from ._nets import mlp


def test_linear_model_has_zero_linearization_error():
    lin = nn.Linear(4, 2).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    tr = linearization_error(lin, x, y, lr=0.5, steps=30, record_every=5)
    assert max(tr.max_error) < 1e-12
    assert tr.param_distance_sq[-1] > 1e-2  # it did move


def test_one_step_error_matches_second_order_taylor_term():
    # after one GD step Δθ = -lr ∇L, f - f_lin = ½ Δθᵀ H(x) Δθ + O(|Δθ|³): compare with dense Hessians.
    net = mlp(d=2, width=6, k=1, act=nn.Tanh, seed=5)
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    lr = 1e-3
    tr = linearization_error(net, x, y, lr=lr, steps=1, record_every=1)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def unflat(t):
        out, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            out[n] = t[i:i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def loss(th):
        return 0.5 * (functional_call(net, unflat(th), (x,))[:, 0] - y).pow(2).sum() / 4

    step = -lr * torch.autograd.functional.jacobian(loss, theta)
    quad = []
    for i in range(4):
        h = torch.autograd.functional.hessian(lambda th, i=i: functional_call(net, unflat(th), (x[i:i + 1],))[0, 0], theta)
        quad.append(abs(0.5 * float(step @ h @ step)))
    np.testing.assert_allclose(tr.errors[1], quad, rtol=2e-2)
    assert tr.param_distance_sq[1] == pytest.approx(float(step @ step), rel=1e-10)


@pytest.mark.parametrize("act", ["tanh", "softplus", "erf"])
def test_prop14_1_bound_holds_along_training(act):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(10, generator=g, dtype=torch.float64)
    for width in (8, 128):
        tr = linearization_error(SeedTwoLayerNet(3, width, act, seed=1), x, y, lr=2.0, steps=60, record_every=10)
        assert tr.param_distance_sq[-1] > 0.1
        assert max(tr.bound_ratio) <= 1.0
        assert max(tr.bound_ratio) > 0  # the check is not vacuous


@pytest.mark.parametrize("name", sorted(SMOOTHNESS))
def test_smoothness_constants_are_sup_of_second_derivative(name):
    from ntkit.diagnostics.linearization import _ACTS

    t = torch.linspace(-8, 8, 160_001, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(_ACTS[name](t).sum(), t, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), t)
    assert float(d2.abs().max()) == pytest.approx(SMOOTHNESS[name], rel=1e-6)


def test_prop14_1_bound_formula_and_errors():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    b = prop14_1_bound(x, 2.0, 16, 0.5, a_max=2.0)
    np.testing.assert_allclose(b.numpy(), [0.5 / (2 * 4) * 2 * 25 * 2, 0.5 / (2 * 4) * 2 * 1 * 2])
    with pytest.raises(ValueError, match="activation"):
        SeedTwoLayerNet(3, 4, "relu")
    with pytest.raises(ValueError, match="width"):
        SeedTwoLayerNet(3, 0)
    net = SeedTwoLayerNet(3, 4)
    assert net.a_max == 1.0 and net.beta == pytest.approx(4 / (3 * math.sqrt(3)))
