"""Pooling and Flatten: exact checks with a single parameterised layer, layouts and errors.

Truth: a Conv followed by parameter-free linear maps (pooling, global pooling, flattening) has an
empirical NTK independent of the weights, equal to the infinite-width NTK (computed from scratch
with torch.func in ``empirical_kernels``).
"""

import math

import pytest
import torch

from ntkit import layers as L
from ntkit.layers.kernel import input_kernel

from .test_conv import diag_of_full, empirical_kernels


def _exact_vs_finite(arch, x1, x2, full_in=True):
    net = arch.init(tuple(x1.shape[1:]), seed=3, dtype=torch.float64)
    _, th = empirical_kernels(net, x1, x2)
    k = arch.apply_kernel(input_kernel(x1, x2, diagonal_spatial=not full_in))
    return k, th


@pytest.mark.parametrize("pool", [L.AvgPool, L.SumPool])
@pytest.mark.parametrize("window, strides, padding", [((2, 2), None, "VALID"), ((3, 2), (1, 2), "SAME"),
                                                      ((2, 3), 1, "CIRCULAR"), ((3, 3), 2, "SAME")])
def test_pool_after_conv_is_exact(pool, window, strides, padding):
    arch = L.serial(L.Conv(3, (2, 2), padding="SAME", W_std=1.2, b_std=0.3), pool(window, strides, padding))
    x1, x2 = torch.randn(2, 2, 6, 5, dtype=torch.float64), torch.randn(3, 2, 6, 5, dtype=torch.float64)
    k, th = _exact_vs_finite(arch, x1, x2)
    assert k.ntk.shape == th.shape
    torch.testing.assert_close(k.ntk, th)
    torch.testing.assert_close(k.nngp, th)  # one layer, NTK parameterisation


@pytest.mark.parametrize("head", [L.GlobalAvgPool, L.GlobalSumPool, L.Flatten])
def test_global_pool_and_flatten_are_exact(head):
    arch = L.serial(L.Conv(3, 3, padding="SAME", W_std=0.9, b_std=0.2), L.AvgPool(2, strides=1), head())
    x = torch.randn(4, 2, 7, dtype=torch.float64)
    k, th = _exact_vs_finite(arch, x, x)
    torch.testing.assert_close(k.ntk, th)
    torch.testing.assert_close(k.var1, torch.diagonal(th))
    if head is L.Flatten:  # Flatten needs only the diagonal: same result from the diagonal layout
        arch2 = L.serial(L.Conv(3, 3, padding="SAME", W_std=0.9, b_std=0.2), head())
        kd = arch2.apply_kernel(input_kernel(x, None, diagonal_spatial=True))
        kf = arch2.apply_kernel(input_kernel(x, None, diagonal_spatial=False))
        torch.testing.assert_close(kd.nngp, kf.nngp)
        torch.testing.assert_close(kd.var1, kf.var1)


def test_global_sum_is_positions_squared_times_average():
    x = torch.randn(3, 2, 4, 3, dtype=torch.float64)
    a = L.serial(L.Conv(4, (2, 2)), L.GlobalAvgPool()).kernel(x)
    s = L.serial(L.Conv(4, (2, 2)), L.GlobalSumPool()).kernel(x)
    torch.testing.assert_close(s.ntk, a.ntk * (3 * 2) ** 2)


def test_flatten_of_full_layout_equals_mean_of_diagonal():
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    k = L.Conv(2, (3, 3), padding="SAME").apply_kernel(input_kernel(x, None))
    out = L.Flatten().apply_kernel(k)
    torch.testing.assert_close(out.nngp, diag_of_full(k.nngp, 2).mean((2, 3)))
    assert out.shape == (2 * 16,)


def test_pool_output_shapes_match_finite_module():
    for padding in ["VALID", "SAME", "CIRCULAR"]:
        layer = L.AvgPool((3, 2), strides=(2, 1), padding=padding)
        net = layer.init((2, 7, 5))
        y = net(torch.randn(1, 2, 7, 5))
        assert tuple(y.shape[1:]) == layer.output_shape((2, 7, 5))
    assert L.AvgPool(2).output_shape((3, 8)) == (3, 4)  # PyTorch default: strides = window


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [L.AvgPool((2, 2)), L.SumPool((2, 2)), L.GlobalAvgPool(), L.GlobalSumPool()])
def test_pooling_on_flattened_kernel_is_an_error(pool):
    arch = L.serial(L.Conv(4, (3, 3)), L.Flatten(), pool)
    with pytest.raises(ValueError, match="flat/flattened"):
        arch.kernel(torch.randn(2, 3, 6, 6))
    k = L.serial(L.Conv(4, (3, 3)), L.Flatten()).kernel(torch.randn(2, 3, 6, 6))
    with pytest.raises(ValueError, match="flat/flattened"):
        pool.apply_kernel(k)


def test_pooling_on_diagonal_kernel_is_an_error():
    k = input_kernel(torch.randn(2, 3, 6, 6), None, diagonal_spatial=True)
    with pytest.raises(ValueError, match="needs the full spatial covariance"):
        L.AvgPool((2, 2)).apply_kernel(k)
    with pytest.raises(ValueError, match="needs the full spatial covariance"):
        L.GlobalAvgPool().apply_kernel(k)


def test_pool_window_larger_than_valid_input_and_bad_args():
    with pytest.raises(ValueError, match="larger than the input's spatial size 3"):
        L.AvgPool((4, 2)).kernel(torch.randn(2, 1, 3, 6))
    with pytest.raises(ValueError, match="padding must be one of"):
        L.AvgPool(2, padding="full")
    with pytest.raises(ValueError, match="window_shape must be a positive int"):
        L.AvgPool((0, 2))
    with pytest.raises(ValueError, match="spatial dims"):
        L.AvgPool((2, 2)).kernel(torch.randn(2, 1, 6))


def test_requirements():
    assert L.Flatten().needs_full_spatial(True) is False
    assert L.AvgPool(2).needs_full_spatial(False) is True
    assert L.GlobalAvgPool().needs_full_spatial(False) is True
    arch = L.serial(L.Conv(4, 3), L.Relu(), L.AvgPool(2), L.Flatten(), L.Dense(1))
    assert arch.needs_full_spatial(False) is True  # pooling before Flatten still needs the full covariance
    assert math.isfinite(arch._bytes_per_pair((2, 8), True, 8)[0])


@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("size", [(7, 3), (3, 8)])
def test_image_resize_after_conv_is_exact(method, size):
    arch = L.serial(L.Conv(3, (2, 2), padding="SAME", W_std=1.1, b_std=0.2), L.ImageResize(size, method))
    x1, x2 = torch.randn(2, 2, 5, 4, dtype=torch.float64), torch.randn(3, 2, 5, 4, dtype=torch.float64)
    k, th = _exact_vs_finite(arch, x1, x2)
    assert k.ntk.shape == th.shape
    torch.testing.assert_close(k.ntk, th)
    if method == "nearest":  # needs only the diagonal
        assert arch.needs_full_spatial(False) is False
        kd = arch.apply_kernel(input_kernel(x1, x2, diagonal_spatial=True))
        torch.testing.assert_close(kd.ntk, diag_of_full(th, 2))
    else:
        assert arch.needs_full_spatial(False) is True
        with pytest.raises(ValueError, match="full spatial covariance"):
            arch.apply_kernel(input_kernel(x1, x2, diagonal_spatial=True))
