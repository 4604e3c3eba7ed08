"""Generalisation bound and H^∞ against direct computation and Monte Carlo; kernel-target alignment."""

import math

import numpy as np
import pytest
import torch

from ntkit.diagnostics import generalization_bound, kernel_target_alignment, two_layer_relu_ntk


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def _h_direct(x):
    xs = x.tolist()
    n = len(xs)
    h = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            c = sum(a * b for a, b in zip(xs[i], xs[j], strict=True))
            c = max(-1.0, min(1.0, c))
            h[i, j] = c * (math.pi - math.acos(c)) / (2 * math.pi)
    return h


def test_h_infinity_matches_direct_loop():
    x = _unit(7, 4, 0)
    np.testing.assert_allclose(two_layer_relu_ntk(x).numpy(), _h_direct(x), rtol=1e-12, atol=1e-15)


def test_h_infinity_matches_monte_carlo_expectation():
    # H_ij = E_w[x_i.x_j 1{w.x_i >= 0} 1{w.x_j >= 0}], w ~ N(0, I): tolerance 5 standard errors of the mean.
    x = _unit(5, 3, 1)
    g = torch.Generator().manual_seed(2)
    m = 200_000
    w = torch.randn(m, 3, generator=g, dtype=torch.float64)
    act = (w @ x.T >= 0).double()  # (m, n)
    samples = act.unsqueeze(2) * act.unsqueeze(1) * (x @ x.T)  # (m, n, n)
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(m)
    h = two_layer_relu_ntk(x)
    assert bool(((h - mean).abs() <= 5 * se + 1e-12).all())


def test_generalization_bound_equals_direct_computation():
    x = _unit(6, 3, 3)
    y = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    h = _h_direct(x)
    yn = y.numpy()
    direct = math.sqrt(2 * yn @ np.linalg.inv(h) @ yn / 6)
    res = generalization_bound(y, x)
    assert res.bound == pytest.approx(direct, rel=1e-10)
    assert res.lambda_min == pytest.approx(np.linalg.eigvalsh(h).min(), rel=1e-10)
    # any kernel, several outputs: trace(Y^T K^-1 Y)
    k = h + 0.1 * np.eye(6)
    y2 = np.stack([yn, yn[::-1]], 1)
    direct2 = math.sqrt(2 * np.trace(y2.T @ np.linalg.solve(k, y2)) / 6)
    assert generalization_bound(y2, kernel=torch.as_tensor(k)).bound == pytest.approx(direct2, rel=1e-10)


def test_random_labels_give_larger_bound_than_smooth_labels():
    x = _unit(40, 3, 4)
    smooth = torch.sign(x[:, 0] + 1e-9)
    g = torch.Generator().manual_seed(5)
    rand = torch.sign(torch.randn(40, generator=g, dtype=torch.float64))
    assert generalization_bound(smooth, x).bound < generalization_bound(rand, x).bound


def test_bound_input_errors():
    x = _unit(3, 2, 0)
    with pytest.raises(ValueError, match="unit norm"):
        two_layer_relu_ntk(2 * x)
    assert torch.allclose(two_layer_relu_ntk(2 * x, normalize=True), two_layer_relu_ntk(x))
    with pytest.raises(ValueError, match="positive definite"):
        generalization_bound(torch.ones(3), torch.cat([x[:2], x[:1]]))
    with pytest.raises(ValueError, match="exactly one"):
        generalization_bound(torch.ones(3))
    with pytest.raises(ValueError, match="rows"):
        generalization_bound(torch.ones(4), x)


def test_kernel_target_alignment_direct():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    k = a @ a.T
    y = torch.randn(5, generator=g, dtype=torch.float64)
    kn, yn = k.numpy(), y.numpy()
    t = np.outer(yn, yn)
    direct = np.sum(kn * t) / (np.linalg.norm(kn) * np.linalg.norm(t))
    assert kernel_target_alignment(k, y) == pytest.approx(direct, rel=1e-12)
    h = np.eye(5) - 1 / 5
    kc, tc = h @ kn @ h, h @ t @ h
    direct_c = np.sum(kc * tc) / (np.linalg.norm(kc) * np.linalg.norm(tc))
    assert kernel_target_alignment(k, y, centered=True) == pytest.approx(direct_c, rel=1e-12)
    assert kernel_target_alignment(torch.outer(y, y), y) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="square"):
        kernel_target_alignment(torch.ones(2, 3), torch.ones(2))
