"""Empirical kernels approach the analytic ones like width^(-1/2)."""

import numpy as np
import pytest
import torch

from ntkit import layers as L
from ntkit.diagnostics import kernel_convergence, relative_distance


def test_relative_distance_basics():
    a = torch.eye(3, dtype=torch.float64)
    assert relative_distance(a, a) == 0.0
    assert relative_distance(2 * a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        relative_distance(torch.eye(2), torch.eye(3))
    with pytest.raises(ValueError, match="zero"):
        relative_distance(torch.eye(2), torch.zeros(2, 2))


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_kernel_distance_decays_like_inverse_sqrt_width(kernel):
    arch = L.serial(L.Dense(8, b_std=0.2), L.Relu(), L.Dense(1, b_std=0.2))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = kernel_convergence(arch, x, widths=[64, 256, 1024, 4096], seeds=range(4), kernel=kernel)
    assert res.distance.shape == (4, 4)
    # CLT: distances ~ c / sqrt(width); the fitted 95% interval must contain -1/2 and exclude 0
    assert res.fit.ci_low <= -0.5 <= res.fit.ci_high
    assert res.fit.ci_high < 0
    assert np.all(res.distance[-1] < res.distance[0].mean())


def test_convergence_errors():
    arch = L.serial(L.Dense(8), L.Relu())
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="Dense readout"):
        kernel_convergence(arch, x, widths=[8, 16], kernel="nngp")
    with pytest.raises(ValueError, match="two"):
        kernel_convergence(arch, x, widths=[8])
    with pytest.raises(ValueError, match="kernel"):
        kernel_convergence(arch, x, widths=[8, 16], kernel="cov")
