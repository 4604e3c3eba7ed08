"""Monte Carlo agreement of finite CNNs with the infinite-width kernels (float64).

Truth: averages over ``n_samples`` independently initialised finite networks of width ``W``
(``ntkit.monte_carlo_kernel``: empirical NNGP f f^T and trace-NTK J J^T / k). Tolerance per entry:
``K_SE`` standard errors (computed from the sample variance) plus a finite-width allowance
``C_BIAS * depth / W`` times the kernel's typical size: the expectation of the empirical kernel of
a ReLU network deviates from its limit by O(depth / width) (Hanin & Nica 2019; Yaida 2020), with
an O(1) constant that we take as 2.
"""

import pytest
import torch

from ntkit import layers as L
from ntkit import monte_carlo_kernel

from .test_conv import assert_mc_close

K_SE = 5.0
C_BIAS = 2.0


def _check(arch, x, n_samples, width, depth, what):
    exact = arch.kernel(x)
    mc = monte_carlo_kernel(arch, x, n_samples=n_samples, width=width, dtype=torch.float64)
    allowance = C_BIAS * depth / width
    assert_mc_close(exact.nngp, mc.nngp, mc.nngp_se, K_SE, allowance, what + " nngp")
    assert_mc_close(exact.ntk, mc.ntk, mc.ntk_se, K_SE, allowance, what + " ntk")
    return exact, mc


def _x(n, *shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


def test_cnn_flatten():
    arch = L.serial(L.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), L.Relu(),
                    L.Conv(8, (2, 2), strides=2, padding="VALID", W_std=1.5), L.Relu(), L.Flatten(), L.Dense(16))
    _check(arch, _x(3, 2, 4, 4), n_samples=30, width=96, depth=3, what="CNN-Flatten")


def test_cnn_gap():
    arch = L.serial(L.Conv(8, (3, 3), padding="CIRCULAR", W_std=1.5, b_std=0.2), L.Relu(),
                    L.Conv(8, (3, 3), padding="SAME", W_std=1.5), L.Relu(), L.GlobalAvgPool(), L.Dense(16))
    _check(arch, _x(3, 2, 4, 4, seed=1), n_samples=30, width=96, depth=3, what="CNN-GAP")


def test_myrtle_style():
    """conv, relu, avg-pool, conv, relu, global pool (1-D sequence inputs keep it small)."""
    arch = L.serial(L.Conv(8, 3, padding="SAME", W_std=1.4, b_std=0.1), L.Relu(), L.AvgPool(2),
                    L.Conv(8, 3, padding="SAME", W_std=1.4), L.Relu(), L.GlobalSumPool(), L.Dense(16))
    _check(arch, _x(4, 3, 8, seed=2), n_samples=30, width=96, depth=3, what="Myrtle-style")


def test_residual_conv_block():
    block = L.serial(L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), L.Conv(8, 3, padding="SAME"))),
                     L.FanInSum())
    arch = L.serial(L.Conv(8, 3, padding="SAME", W_std=1.2), block, block, L.Relu(), L.GlobalAvgPool(),
                    L.Dense(16, b_std=0.3))
    _check(arch, _x(3, 2, 6, seed=3), n_samples=30, width=96, depth=4, what="residual conv")


@pytest.mark.slow
def test_cnn_gap_wide_2d():
    arch = L.serial(L.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), L.Relu(), L.AvgPool((2, 2)),
                    L.Conv(8, (3, 3), padding="SAME", W_std=1.5), L.Relu(), L.GlobalAvgPool(), L.Dense(16))
    _check(arch, _x(4, 3, 6, 6, seed=4), n_samples=100, width=256, depth=3, what="CNN-GAP wide")


def test_negative_control_detects_a_10_percent_error():
    """The tolerance is tight enough to reject a kernel for weights 10% larger than the network's."""
    def arch(w):
        return L.serial(L.Conv(8, (3, 3), padding="SAME", W_std=w, b_std=0.1), L.Relu(),
                        L.GlobalAvgPool(), L.Dense(16))
    x = _x(3, 2, 4, 4, seed=5)
    mc = monte_carlo_kernel(arch(1.5), x, n_samples=30, width=96, dtype=torch.float64)
    wrong = arch(1.65).kernel(x)
    with pytest.raises(AssertionError, match="Monte Carlo disagrees|max \\|exact - mc\\|"):
        assert_mc_close(wrong.ntk, mc.ntk, mc.ntk_se, K_SE, C_BIAS * 2 / 96, "wrong ntk")
    assert_mc_close(arch(1.5).kernel(x).ntk, mc.ntk, mc.ntk_se, K_SE, C_BIAS * 2 / 96, "right ntk")
