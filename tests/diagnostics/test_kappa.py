"""Hessian operator norm by power iteration vs dense Hessians and a closed form; κ."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from ntkit.diagnostics import hessian_operator_norm, kappa

from ._nets import ReluTwoLayer, mlp


def _dense_hessian_norm(net, x, a):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def unflat(t):
        out, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            out[n] = t[i:i + s.numel()].reshape(s)
            i += s.numel()
        return out

    h = torch.autograd.functional.hessian(lambda th: functional_call(net, unflat(th), (x.unsqueeze(0),))[0, a], theta)
    return float(torch.linalg.eigvalsh(h).abs().max())


def test_power_iteration_matches_dense_hessian_top_eigenvalue():
    net = mlp(d=3, width=5, k=2, act=nn.Tanh, seed=1)
    x = torch.randn(3, 3, dtype=torch.float64)
    hn = hessian_operator_norm(net, x, tol=1e-12, max_iter=3000)
    for i in range(3):
        for a in range(2):
            assert hn[i, a].item() == pytest.approx(_dense_hessian_norm(net, x[i], a), rel=1e-6)


def test_relu_two_layer_closed_form():
    width = 40
    net = ReluTwoLayer(4, width, seed=2)
    x = torch.randn(5, 4, dtype=torch.float64)
    hn = hessian_operator_norm(net, x)
    expected = x.norm(dim=1) / math.sqrt(width)
    np.testing.assert_allclose(hn[:, 0].numpy(), expected.numpy(), rtol=1e-9)


def test_kappa_of_linear_model_is_zero():
    lin = nn.Linear(4, 2).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    res = kappa(lin, x, y)
    assert res.kappa == 0.0 and res.hessian_norm == 0.0
    assert res.gradient_norm > 0


def test_kappa_parts_match_direct_computation():
    width = 30
    net = ReluTwoLayer(3, width, seed=3)
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    res = kappa(net, x, y)
    with torch.no_grad():
        r = net(x)[:, 0] - y
    grads = []
    for i in range(7):
        g = torch.autograd.grad(net(x[i:i + 1])[0, 0], list(net.parameters()))
        grads.append(math.sqrt(sum(float(t.pow(2).sum()) for t in g)))
    hmax = float(x.norm(dim=1).max()) / math.sqrt(width)
    assert res.gradient_norm == pytest.approx(max(grads), rel=1e-10)
    assert res.residual_norm == pytest.approx(float(r.norm()), rel=1e-12)
    assert res.hessian_norm == pytest.approx(hmax, rel=1e-9)
    assert res.kappa == pytest.approx(hmax / max(grads) ** 2 * float(r.norm()), rel=1e-9)
    rms = kappa(net, x, y, residual="rms")
    assert rms.kappa == pytest.approx(res.kappa / math.sqrt(7), rel=1e-9)


def test_kappa_decreases_like_inverse_sqrt_width_for_relu_two_layer():
    # ||∇²f|| = max||x||/sqrt(w) exactly, ||∇f||² -> E-limit O(1): κ·sqrt(w) should be O(1) across widths.
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    ws = [64, 256, 1024]
    hs = [kappa(ReluTwoLayer(3, w, seed=4), x, y).hessian_norm for w in ws]
    np.testing.assert_allclose(np.array(hs) * np.sqrt(ws), float(x.norm(dim=1).max()), rtol=1e-9)


def test_kappa_input_errors():
    net = mlp()
    with pytest.raises(ValueError, match="residual"):
        kappa(net, torch.randn(3, 3), torch.randn(3), residual="bad")
    with pytest.raises(ValueError, match="target"):
        kappa(net, torch.randn(3, 3), torch.randn(3, 2))
    with pytest.raises(ValueError, match="max_iter"):
        hessian_operator_norm(net, torch.randn(3, 3), max_iter=0)
    with pytest.raises(TypeError, match="model"):
        kappa("net", torch.randn(3, 3), torch.randn(3))


def test_non_converged_power_iteration_warns():
    net = mlp(d=3, width=5, k=1, act=nn.Tanh, seed=1)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        hessian_operator_norm(net, torch.randn(2, 3, dtype=torch.float64), max_iter=2, tol=1e-14)


@pytest.mark.slow
def test_kappa_scaling_trend_for_erf_network():
    # With Gaussian readout weights a_j the Hessian's largest block scales with max_j |a_j| ~ sqrt(2 log w),
    # so ||∇²f|| ~ sqrt(log w / w): after dividing by sqrt(log w) the slope must be -1/2 (within its CI + 0.05).
    from ntkit import layers as L
    from ntkit.diagnostics import fit_power_law, kappa_scaling

    arch = L.serial(L.Dense(8, b_std=0.1), L.Erf(), L.Dense(1, b_std=0.1))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    ws = [64, 256, 1024, 4096]
    res = kappa_scaling(arch, x, y, widths=ws, seeds=range(3), tol=1e-5, max_iter=500)
    corrected = res.hessian_norm / np.sqrt(np.log(ws))[:, None]
    fit = fit_power_law(np.repeat(ws, 3), corrected.ravel())
    assert fit.ci_low - 0.05 <= -0.5 <= fit.ci_high + 0.05
    assert res.kappa_fit.ci_high < 0
