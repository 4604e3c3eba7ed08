"""The Kernel container, input kernels and layout helpers."""

import math

import pytest
import torch

from ntkit.layers import FanInSum, FanOut, Identity, parallel, serial
from ntkit.layers.kernel import cross_variances, input_kernel, position_variance, self_variances
from ntkit.tiling import parse_memory, plan_blocks, tiled


def test_input_kernel_flat_matches_gram():
    x1, x2 = torch.randn(4, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    k = input_kernel(x1, x2)
    torch.testing.assert_close(k.nngp, x1 @ x2.T / 7)
    torch.testing.assert_close(k.var1, (x1 * x1).sum(1) / 7)
    assert torch.count_nonzero(k.ntk) == 0


def test_input_kernel_spatial_full_and_diagonal_agree():
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    full = input_kernel(x, None)
    diag = input_kernel(x, None, diagonal_spatial=True)
    assert full.nngp.shape == (3, 3, 4, 5, 4, 5)
    assert diag.nngp.shape == (3, 3, 4, 5)
    got = torch.diagonal(full.nngp.reshape(3, 3, 20, 20), dim1=2, dim2=3).reshape(3, 3, 4, 5)
    torch.testing.assert_close(got, diag.nngp)
    torch.testing.assert_close(position_variance(full.var1, False, 2), diag.var1)
    # brute force entry
    i, j, h, w, h2, w2 = 0, 2, 1, 3, 2, 0
    want = (x[i, :, h, w] * x[j, :, h2, w2]).sum() / 2
    torch.testing.assert_close(full.nngp[i, j, h, w, h2, w2], want)


def test_broadcast_helpers_shapes():
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    k = input_kernel(x, torch.randn(5, 2, 4, dtype=torch.float64))
    v1, v2 = cross_variances(k)
    assert (v1 * v2 * k.nngp).shape == k.nngp.shape
    assert v1.shape == (3, 1, 4, 1) and v2.shape == (1, 5, 1, 4)
    va, vb = self_variances(k.var1, False, 1)
    assert (va * vb).shape == k.var1.shape
    # Cauchy-Schwarz: |cov| <= sqrt(v1 v2)
    assert bool((k.nngp.abs() <= (v1 * v2).sqrt() + 1e-12).all())


def test_parse_memory_and_plan_blocks():
    assert parse_memory("1KB") == 1024
    assert parse_memory(None) is None
    with pytest.raises(ValueError, match="memory_budget"):
        parse_memory("lots")
    b1, b2 = plan_blocks(100, 100, bytes_per_pair=8, memory_budget=8 * 100)
    assert b1 * b2 * 8 <= 800 and b1 >= 1
    with pytest.raises(MemoryError, match="memory_budget"):
        plan_blocks(10, 10, bytes_per_pair=1000, memory_budget=10)


@pytest.mark.parametrize("symmetric", [True, False])
def test_tiled_assembles_exact_result(symmetric):
    a = torch.randn(11, 3, dtype=torch.float64)
    b = a if symmetric else torch.randn(7, 3, dtype=torch.float64)
    out = tiled(lambda s1, s2: a[s1] @ b[s2].T, a.shape[0], b.shape[0], 3, 3, symmetric=symmetric)
    torch.testing.assert_close(out, a @ b.T)


def test_combinator_shape_errors_are_clear():
    with pytest.raises(ValueError, match="FanInSum needs a list"):
        FanInSum().output_shape((3,))
    with pytest.raises(ValueError, match="needs a list of 2"):
        parallel(Identity(), Identity()).output_shape((3,))
    arch = serial(FanOut(2), parallel(Identity(), Identity()), FanInSum())
    assert arch.output_shape((3,)) == (3,)
    assert math.prod(arch.output_shape((2, 4))) == 8
