"""FanInProd, FanInConcat and residual blocks: kernels vs finite networks and exact identities."""

import pytest
import torch

import ntkit
from ntkit import layers as L
from ntkit import monte_carlo_kernel
from ntkit.layers.kernel import input_kernel

F64 = torch.float64
Z = 6.0  # see tests/layers/test_monte_carlo_fc.py for the tolerance rule


def _mc_check(arch_k, arch_1, x, width, n_nngp, n_ntk, n_hidden):
    for arch, get, n in ((arch_k, "nngp", n_nngp), (arch_1, "ntk", n_ntk)):
        ana = getattr(arch.kernel(x, get=get), get)
        mc = monte_carlo_kernel(arch, x, n_samples=n, width=width, seed=3, get=get)
        mean, se = getattr(mc, get), getattr(mc, get + "_se")
        bias = 2.0 * n_hidden / width * float(ana.abs().max())
        assert float(((mean - ana).abs() - (Z * se + bias)).max()) <= 0, (get, ana, mean, se)


def test_fan_in_prod_kernel_and_finite_network():
    def build(k_out):
        return L.serial(L.Dense(32, W_std=1.2, b_std=0.3), L.FanOut(2),
                        L.parallel(L.serial(L.Relu(), L.Dense(32, b_std=0.2)), L.Dense(32, W_std=0.8)),
                        L.FanInProd(), L.Dense(k_out))

    x = torch.randn(3, 4, dtype=F64)
    _mc_check(build(256), build(1), x, width=384, n_nngp=24, n_ntk=6, n_hidden=3)
    net = build(1).init((4,), width=8, dtype=F64)
    assert net(x).shape == (3, 1)


def test_fan_in_prod_exact_identities():
    x = torch.randn(4, 3, dtype=F64)
    y = torch.randn(2, 3, dtype=F64)
    a = L.Dense(8, W_std=1.5, b_std=0.5)
    b = L.serial(L.Dense(8), L.Erf(), L.Dense(8, b_std=0.1))
    prod = L.serial(L.FanOut(2), L.parallel(a, b), L.FanInProd())
    k = prod.kernel(x, y)
    ka, kb = a.kernel(x, y), b.kernel(x, y)
    torch.testing.assert_close(k.nngp, ka.nngp * kb.nngp)
    torch.testing.assert_close(k.ntk, ka.ntk * kb.nngp + kb.ntk * ka.nngp)
    # one non-Gaussian branch (the raw input) is fine; two are refused
    L.serial(L.FanOut(2), L.parallel(L.Identity(), L.Dense(3)), L.FanInProd()).kernel(x)
    with pytest.raises(ValueError, match="at most one branch"):
        L.serial(L.Dense(3), L.FanOut(2), L.parallel(L.Relu(), L.Erf()), L.FanInProd()).kernel(x)
    with pytest.raises(ValueError, match="equal shape"):
        L.serial(L.FanOut(2), L.parallel(L.Dense(3), L.Dense(4)), L.FanInProd()).kernel(x)


def test_fan_in_concat_channels_exact_and_finite():
    x = torch.randn(4, 3, dtype=F64)
    br1, br2 = L.Dense(5, W_std=2.0, b_std=0.1), L.serial(L.Dense(7), L.Relu())
    arch = L.serial(L.FanOut(2), L.parallel(br1, br2), L.FanInConcat(1))
    k = arch.kernel(x)
    torch.testing.assert_close(k.nngp, (5 * br1.kernel(x).nngp + 7 * br2.kernel(x).nngp) / 12)
    assert k.shape == (12,)
    assert L.serial(L.FanOut(2), L.parallel(br1, br2), L.FanInConcat(-1)).kernel(x).shape == (12,)
    net = arch.init((3,), dtype=F64)
    out = net(x)
    assert out.shape == (4, 12)
    # exact: the empirical NTK of the concatenation, averaged over its 12 outputs (one Dense per branch,
    # so the NTK of the concatenated outputs is the channel-weighted average of the branches' NTKs)
    lin = L.serial(L.FanOut(2), L.parallel(L.Dense(5, W_std=2.0, b_std=0.1), L.Dense(7)), L.FanInConcat(1))
    emp = ntkit.empirical_ntk(lin.init((3,), dtype=F64), x, output="trace", method="jacobian") / 12
    torch.testing.assert_close(lin.kernel(x).ntk, emp)


def test_fan_in_concat_spatial_axis():
    x = torch.randn(2, 3, 4, dtype=F64)
    arch = L.serial(L.FanOut(2), L.parallel(L.Dense(5), L.serial(L.Dense(5), L.Relu())), L.FanInConcat(2))
    assert arch.output_shape((3, 4)) == (5, 8)
    diag = arch.apply_kernel(input_kernel(x, None, diagonal_spatial=True))
    assert diag.nngp.shape == (2, 2, 8)
    k1 = L.Dense(5).apply_kernel(input_kernel(x, None, diagonal_spatial=True))
    torch.testing.assert_close(diag.nngp[..., :4], k1.nngp)
    with pytest.raises(NotImplementedError, match="full"):
        arch.apply_kernel(input_kernel(x, None))
    assert arch.init((3, 4))(x.float()).shape == (2, 5, 8)
    with pytest.raises(ValueError, match="axis"):
        L.serial(L.FanOut(2), L.parallel(L.Dense(5), L.Dense(5)), L.FanInConcat(0)).output_shape((3, 4))
    with pytest.raises(ValueError, match="agree except"):
        L.serial(L.FanOut(2), L.parallel(L.Dense(5), L.Dense(6)), L.FanInConcat(2)).output_shape((3, 4))


def test_residual_block_mc():
    def build(k_out):
        block = L.serial(L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), L.Dense(64, W_std=1.0, b_std=0.1))),
                         L.FanInSum())
        return L.serial(L.Dense(64, W_std=1.2), block, block, L.Relu(), L.Dense(k_out))

    x = torch.randn(3, 4, dtype=F64)
    _mc_check(build(256), build(1), x, width=384, n_nngp=24, n_ntk=6, n_hidden=3)


def test_fan_in_sum_of_different_widths_is_refused():
    with pytest.raises(ValueError, match="FanInSum needs branches of equal shape"):
        L.serial(L.FanOut(2), L.parallel(L.Dense(3), L.Dense(4)), L.FanInSum()).kernel(torch.randn(2, 5))
    with pytest.raises(ValueError, match="FanInSum needs branches of equal shape"):
        L.serial(L.FanOut(2), L.parallel(L.Dense(3), L.Dense(4)), L.FanInSum()).init((5,))
