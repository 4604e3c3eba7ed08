"""Nyström and random-feature approximations against exact kernels and solves."""

from __future__ import annotations

import math

import pytest
import torch

from ntkit import distributed as D


def _data(n: int = 300, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def _relu_ntk(a, b):
    return D.ntk_relu_fc(a, b, depth=2, W_std=1.4, b_std=0.1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_ntk_relu_fc_matches_monte_carlo_of_its_definition():
    # depth 1: Θ = Σ¹ + Σ⁰ Σ̇¹ with expectations over (u, v) ~ N(0, Σ⁰); estimate them by sampling
    x = torch.randn(3, 4, dtype=torch.float64)
    w2, b2 = 1.3**2, 0.2**2
    S0 = w2 * x @ x.T / 4 + b2
    g = torch.Generator().manual_seed(3)
    m = 400_000
    u = torch.linalg.cholesky(S0 + 1e-12 * torch.eye(3, dtype=torch.float64)) @ torch.randn(
        3, m, generator=g, dtype=torch.float64)
    samples = w2 * torch.relu(u)[:, None, :] * torch.relu(u)[None, :, :] + b2 \
        + S0[:, :, None] * w2 * ((u > 0).double()[:, None, :] * (u > 0).double()[None, :, :])
    mc, se = samples.mean(-1), samples.std(-1) / math.sqrt(m)
    exact = D.ntk_relu_fc(x, depth=1, W_std=1.3, b_std=0.2)
    assert ((mc - exact).abs() <= 5 * se).all(), (mc - exact) / se


def test_nystrom_accuracy_improves_with_rank_and_is_exact_at_full_rank():
    # accuracy of the kernel and of test predictions K(x*, x) α (α itself is dominated by the
    # small-eigenvalue directions that a low-rank kernel drops, so its error is not the useful metric)
    x, y = _data()
    xt, _ = _data(100, seed=9)
    K, Kt = _relu_ntk(x, None), _relu_ntk(xt, x)
    lam = 1e-2 * float(torch.diagonal(K).mean())
    exact_alpha = torch.linalg.solve(K + lam * torch.eye(len(x), dtype=torch.float64), y)
    exact_pred = Kt @ exact_alpha
    kerr, perr = [], []
    for r in (10, 40, 160):
        ny = D.nystrom(_relu_ntk, x, r, seed=1)
        kerr.append(_rel(ny.features @ ny.features.T, K))
        perr.append(_rel(ny.predict(xt, y, lam), exact_pred))
    assert kerr == sorted(kerr, reverse=True) and perr == sorted(perr, reverse=True), (kerr, perr)
    assert kerr[2] < kerr[0] / 4 and perr[2] < perr[0] / 4, (kerr, perr)  # a real improvement
    full = D.nystrom(_relu_ntk, x, len(x))  # every point a landmark: the exact kernel
    assert _rel(full.features @ full.features.T, K) < 1e-8
    assert _rel(full.solve(y, lam), exact_alpha) < 1e-6


def test_nystrom_predict_matches_exact_kernel_regression():
    x, y = _data(200)
    xt, _ = _data(20, seed=5)
    K, Kt = _relu_ntk(x, None), _relu_ntk(xt, x)
    lam = 0.1
    exact = Kt @ torch.linalg.solve(K + lam * torch.eye(200, dtype=torch.float64), y)
    ny = D.nystrom(_relu_ntk, x, 200)
    torch.testing.assert_close(ny.predict(xt, y, lam), exact, rtol=1e-6, atol=1e-6)


def test_nystrom_on_module_empirical_ntk():
    from ntkit.empirical import empirical_ntk

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    ny = D.nystrom(net, x, 40)
    K = empirical_ntk(net, x, output="trace").detach()
    assert _rel(ny.features @ ny.features.T, K) < 1e-8


def test_relu_random_features_unbiased_depth1():
    x, _ = _data(5, 4)
    exact = D.ntk_relu_fc(x, depth=1, W_std=1.2, b_std=0.3)
    for get in ("ntk", "nngp"):
        target = exact if get == "ntk" else D.ntk_relu_fc(x, depth=1, W_std=1.2, b_std=0.3, get="nngp")
        est = torch.stack([
            (lambda f: f @ f.T)(D.relu_random_features(x, 64, depth=1, W_std=1.2, b_std=0.3, get=get,
                                                       seed=s).features)
            for s in range(100)])
        mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
        # 25 entries: 4.5 standard errors keeps the family-wise false alarm rate < 2e-4
        assert ((mean - target).abs() <= 4.5 * se + 1e-12).all(), ((mean - target) / se)


def test_relu_random_features_error_shrinks_with_width_and_solve_converges():
    x, y = _data(200)
    K = _relu_ntk(x, None)
    lam = 1e-1 * float(torch.diagonal(K).mean())
    exact = torch.linalg.solve(K + lam * torch.eye(200, dtype=torch.float64), y)
    xt, _ = _data(100, seed=9)
    exact_pred = _relu_ntk(xt, x) @ exact
    errs, perrs = [], []
    for m in (64, 256, 1024):
        rf = D.relu_random_features(x, m, depth=2, W_std=1.4, b_std=0.1, seed=0)
        errs.append(_rel(rf.features @ rf.features.T, K))
        perrs.append(_rel(rf.predict(xt, y, lam), exact_pred))
    # Monte Carlo error ~ 1/sqrt(m): each 4x wider step should cut it about 2x; 16x about 4x
    assert errs[1] < errs[0] and errs[2] < errs[1] and errs[2] < errs[0] / 2.5, errs
    assert perrs[2] < perrs[0] / 2, perrs


def test_approx_errors():
    x, y = _data(20)
    with pytest.raises(ValueError, match="num_landmarks"):
        D.nystrom(_relu_ntk, x, 0)
    with pytest.raises(ValueError, match="landmarks must be"):
        D.nystrom(_relu_ntk, x, 5, landmarks=[0, 0, 1])
    with pytest.raises(TypeError, match="source must be"):
        D.nystrom(3, x, 5)
    ny = D.nystrom(_relu_ntk, x, 5)
    with pytest.raises(ValueError, match="ridge"):
        ny.solve(y, 0.0)
    with pytest.raises(ValueError, match="y must have shape"):
        ny.solve(y[:3], 1.0)
    with pytest.raises(ValueError, match="depth"):
        D.relu_random_features(x, 10, depth=0)
    with pytest.raises(ValueError, match="W_std"):
        D.ntk_relu_fc(x, W_std=float("nan"))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_ntk_relu_fc_matches_layer_algebra(depth):
    # two independent implementations: the closed-form recursion here vs ntkit.layers' Dense/Relu maps
    from ntkit import layers as L

    x, _ = _data(30, 5)
    layers = []
    for _ in range(depth):
        layers += [L.Dense(64, W_std=1.3, b_std=0.2), L.Relu()]
    arch = L.serial(*layers, L.Dense(1, W_std=1.3, b_std=0.2))
    k = arch.kernel(x, get=("nngp", "ntk"))
    # on the diagonal c = 1 - O(eps) and arccos has slope -1/sqrt(1-c^2): rounding alone moves the angle by
    # ~sqrt(2 eps) = 1.5e-8, so the two implementations may legitimately differ there by ~1e-8 relative
    for get in ("nngp", "ntk"):
        torch.testing.assert_close(D.ntk_relu_fc(x, depth=depth, W_std=1.3, b_std=0.2, get=get), getattr(k, get),
                                   rtol=1e-7, atol=1e-9)
