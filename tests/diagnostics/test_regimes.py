"""α-scaling: zero initial output, α² kernel, O(1/α) kernel change, linearised limit; parameterisations."""

import numpy as np
import pytest
import torch

from ntkit import empirical_ntk
from ntkit import layers as L
from ntkit.diagnostics import AlphaScaled, alpha_scaling, fit_power_law, parameterization_comparison

from ._nets import mlp


def test_alpha_scaled_output_and_kernel():
    net = mlp(d=3, width=16, seed=0)
    x = torch.randn(5, 3, dtype=torch.float64)
    m = AlphaScaled(net, 7.0)
    assert float(m(x).abs().max()) == 0.0
    np.testing.assert_allclose(empirical_ntk(m, x).numpy(), 49 * empirical_ntk(net, x).numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="alpha"):
        AlphaScaled(net, 0.0)


def test_large_alpha_is_lazy_and_matches_kernel_regression():
    net = mlp(d=3, width=32, seed=1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    alphas = [10.0, 100.0, 1000.0]
    lr, steps = 0.2, 40  # lr λ_max / n ≈ 0.97 < 2: stable
    res = alpha_scaling(net, x, y, alphas, lr=lr, steps=steps)
    # first order: parameters move O(1/α), so kernel change ∝ 1/α
    fit = fit_power_law(alphas, res.kernel_change)
    assert fit.slope == pytest.approx(-1.0, abs=0.05)
    # the α → ∞ limit is GD on the linearised model started at 0: r_T = (I − lr Θ/n)^T (−y)
    theta = empirical_ntk(net, x).double()
    lin_r = torch.linalg.matrix_power(torch.eye(6, dtype=torch.float64) - lr * theta / 6, steps) @ (-y)
    lin_loss = float(0.5 * lin_r.pow(2).sum() / 6)
    gaps = [abs(ls - lin_loss) / lin_loss for ls in res.train_loss]
    assert gaps[2] < gaps[1] < gaps[0]
    assert gaps[2] < 1e-2


def test_parameterization_comparison_runs_and_serialises():
    archs = {p: L.serial(L.Dense(8, parameterization=p), L.Relu(), L.Dense(1, parameterization=p))
             for p in ("ntk", "standard")}
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 3, generator=g), torch.sign(torch.randn(6, generator=g))
    res = parameterization_comparison(archs, x, y, widths=[16, 64], seeds=[0], steps=5, x_test=x, y_test=y)
    assert set(res.results) == {"ntk", "standard"}
    for r in res.results.values():
        assert r.test_error.shape == (2, 1)
        assert np.all((r.test_error >= 0) & (r.test_error <= 1))
    import json

    json.dumps(res.to_dict())
    with pytest.raises(TypeError, match="mapping"):
        parameterization_comparison([], x, y, widths=[16, 64])
