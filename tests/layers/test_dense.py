"""Dense: kernel maps, finite module and their agreement.

Truths: a single Dense layer's empirical NTK is deterministic (it is linear in
its parameters), so the finite module's Jacobian inner products must equal the
analytic kernel exactly, in both parameterisations and for any width; the
finite module's parameter statistics are checked against their laws with
tolerances from the number of draws.
"""

import math

import pytest
import torch

import ntkit
from ntkit import layers as L
from ntkit.layers.kernel import input_kernel

F64 = torch.float64


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("b_std", [None, 0.7])
def test_single_dense_kernel_equals_empirical_exactly(param, b_std):
    x1 = torch.randn(5, 6, dtype=F64)
    x2 = torch.randn(3, 6, dtype=F64)
    arch = L.Dense(4, W_std=1.7, b_std=b_std, parameterization=param)
    net = arch.init((6,), seed=1, dtype=F64)
    k = arch.kernel(x1, x2)
    emp_ntk = ntkit.empirical_ntk(net, x1, x2, output="trace", method="jacobian") / 4
    torch.testing.assert_close(k.ntk, emp_ntk)
    b2 = 0.0 if b_std is None else b_std ** 2
    torch.testing.assert_close(k.nngp, 1.7 ** 2 * x1 @ x2.T / 6 + b2)
    if param == "standard":  # Θ = C q + 1[bias] = x·x' + 1[bias]: grows with the width C
        torch.testing.assert_close(k.ntk, x1 @ x2.T + (0.0 if b_std is None else 1.0))


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_dense_on_spatial_inputs_is_a_1x1_conv(param):
    x = torch.randn(3, 4, 5, dtype=F64)
    arch = L.Dense(6, W_std=1.3, b_std=0.4, parameterization=param)
    net = arch.init((4, 5), seed=2, dtype=F64)
    out = net(x)
    assert out.shape == (3, 6, 5)
    # same weights on each position
    torch.testing.assert_close(out[:, :, 2], net(x[:, :, 2]))
    full = arch.apply_kernel(input_kernel(x, None))
    diag = arch.apply_kernel(input_kernel(x, None, diagonal_spatial=True))
    assert full.shape == (6, 5) and full.nngp.shape == (3, 3, 5, 5) and diag.nngp.shape == (3, 3, 5)
    q = torch.einsum("ics,jct->ijst", x, x) / 4
    torch.testing.assert_close(full.nngp, 1.3 ** 2 * q + 0.16)
    torch.testing.assert_close(torch.diagonal(full.ntk, dim1=2, dim2=3), diag.ntk)
    # empirical NTK of the 1x1 conv summed over output channels at a pair of positions: exact
    emp = ntkit.empirical_ntk(net, x, output="full", method="jacobian")  # (n, n, 30, 30)
    emp = emp.reshape(3, 3, 6, 5, 6, 5)
    per_unit = torch.einsum("ijasat->ijst", emp) / 6
    torch.testing.assert_close(full.ntk, per_unit)


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_dense_finite_module_distribution_and_forward(param):
    fan_in, out = 50, 400
    arch = L.Dense(out, W_std=2.0, b_std=0.5, parameterization=param)
    net = arch.init((fan_in,), seed=3, dtype=F64)
    w, b = net.weight.detach(), net.bias.detach()
    n = w.numel()
    want_var = 1.0 if param == "ntk" else 4.0 / fan_in
    # sample variance of n normal draws: relative SE sqrt(2/n); mean SE sqrt(var/n); 5 SE bounds
    assert abs(float(w.var()) / want_var - 1) < 5 * math.sqrt(2 / n)
    assert abs(float(w.mean())) < 5 * math.sqrt(want_var / n)
    want_bvar = 1.0 if param == "ntk" else 0.25
    assert abs(float(b.var()) / want_bvar - 1) < 5 * math.sqrt(2 / out)
    x = torch.randn(7, fan_in, dtype=F64)
    if param == "ntk":
        ref = 2.0 / math.sqrt(fan_in) * x @ w.T + 0.5 * b
    else:
        ref = x @ w.T + b
    torch.testing.assert_close(net(x), ref)
    assert not hasattr(L.Dense(3).init((2,)), "bias") or L.Dense(3).init((2,)).bias is None


def test_width_override_keeps_readout_and_seeds_reproduce():
    arch = L.serial(L.Dense(7), L.Relu(), L.Dense(9), L.Erf(), L.Dense(3))
    net = arch.init((4,), width=33, seed=5)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(33, 4), (33, 33), (3, 33)]
    assert net(torch.randn(2, 4)).shape == (2, 3)
    again = arch.init((4,), width=33, seed=5)
    other = arch.init((4,), width=33, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters(), strict=True))
    assert not torch.equal(next(net.parameters()), next(other.parameters()))
    assert net.layers[0].weight.dtype == torch.float32
    assert arch.init((4,), dtype=F64).layers[0].weight.dtype == F64


def test_standard_ntk_grows_with_width_ntk_param_does_not():
    x = torch.randn(4, 3, dtype=F64)

    def ntk(param, n):
        arch = L.serial(L.Dense(n, parameterization=param), L.Relu(), L.Dense(1, parameterization=param))
        return arch.kernel(x).ntk

    torch.testing.assert_close(ntk("ntk", 10), ntk("ntk", 1000))
    # the readout weight term is C * q_relu: exactly linear in the hidden width
    d_small = ntk("standard", 20) - ntk("standard", 10)
    d_big = ntk("standard", 1010) - ntk("standard", 1000)
    torch.testing.assert_close(d_small, d_big)
    assert float(torch.diagonal(d_small).min()) > 0


def test_dense_errors():
    with pytest.raises(ValueError, match="out_dim"):
        L.Dense(0)
    with pytest.raises(ValueError, match="parameterization"):
        L.Dense(3, parameterization="mean-field")
    with pytest.raises(ValueError, match="W_std"):
        L.Dense(3, W_std=-1.0)
    with pytest.raises(ValueError, match="b_std"):
        L.Dense(3, b_std=float("inf"))
    with pytest.raises(ValueError, match="list of branches"):
        L.serial(L.FanOut(2), L.Dense(3)).kernel(torch.randn(2, 3))
    net = L.Dense(3).init((4,))
    with pytest.raises(ValueError, match="Dense expects"):
        net(torch.randn(2, 5))


def _fc():
    return L.serial(L.Dense(64, W_std=1.5, b_std=0.05), L.Relu(), L.Dense(64, W_std=1.5, b_std=0.05), L.Erf(),
                    L.Dense(1, W_std=1.5, b_std=0.05))


@pytest.mark.parametrize("kw", [dict(batch_size=3), dict(batch_size=7), dict(memory_budget=4000),
                                dict(memory_budget="2KB")])
def test_tiles_equal_untiled(kw):
    x = torch.randn(17, 6, dtype=F64)
    y = torch.randn(9, 6, dtype=F64)
    arch = _fc()
    for x2 in (None, y):
        full = arch.kernel(x, x2)
        tiled = arch.kernel(x, x2, **kw)
        torch.testing.assert_close(tiled.nngp, full.nngp, atol=1e-13, rtol=1e-12)
        torch.testing.assert_close(tiled.ntk, full.ntk, atol=1e-13, rtol=1e-12)
        torch.testing.assert_close(tiled.var1, full.var1)
        torch.testing.assert_close(tiled.var2, full.var2)
        assert tiled.is_gaussian == full.is_gaussian
    only = arch.kernel(x, get="nngp", batch_size=5)
    assert only.ntk is None
    torch.testing.assert_close(only.nngp, arch.kernel(x).nngp, atol=1e-13, rtol=1e-12)


def test_kernel_accepts_a_kernel_and_numpy():
    x = torch.randn(5, 4, dtype=F64)
    head, tail = L.serial(L.Dense(8), L.Relu()), L.serial(L.Dense(8), L.Erf(), L.Dense(1))
    whole = L.serial(head, tail).kernel(x)
    k = tail.kernel(head.kernel(x))
    torch.testing.assert_close(k.ntk, whole.ntk)
    torch.testing.assert_close(L.serial(head, tail).kernel(x.numpy()).ntk, whole.ntk)
    assert L.serial(head, tail).kernel(x, dtype=torch.float32).ntk.dtype == torch.float32


def test_kernel_bad_inputs():
    arch = _fc()
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="get must contain only"):
        arch.kernel(x, get=("nngp", "cov"))
    with pytest.raises(ValueError, match="x2 has per-example shape"):
        arch.kernel(x, torch.randn(3, 5))
    bad = x.clone()
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="x1 contains 1 non-finite"):
        arch.kernel(bad)
    with pytest.raises(ValueError, match="x2 contains"):
        arch.kernel(x, torch.full((2, 6), float("nan")))
    with pytest.raises(TypeError, match="x1 must be"):
        arch.kernel("data")
    with pytest.raises(ValueError, match="batch_size"):
        arch.kernel(x, batch_size=0)
    with pytest.raises(ValueError, match="memory_budget"):
        arch.kernel(x, memory_budget="lots")


def test_kernel_reports_gaussianity_of_the_output():
    x = torch.randn(3, 2)
    assert L.serial(L.Dense(4), L.Relu(), L.Dense(1)).kernel(x).is_gaussian
    assert not L.serial(L.Dense(4), L.Relu()).kernel(x).is_gaussian


def test_in_place_fast_path_never_touches_shared_kernels():
    """Layer.kernel overwrites only tensors it created; user kernels and FanOut branches stay intact."""
    x = torch.randn(6, 3, dtype=F64)
    arch = _fc()
    k_in = input_kernel(x, None)
    saved = (k_in.nngp.clone(), k_in.ntk.clone(), k_in.var1.clone())
    a = arch.kernel(k_in)
    assert torch.equal(k_in.nngp, saved[0]) and torch.equal(k_in.ntk, saved[1]) and torch.equal(k_in.var1, saved[2])
    torch.testing.assert_close(a.ntk, arch.kernel(x).ntk)  # in-place path == out-of-place path
    torch.testing.assert_close(a.ntk, arch.apply_kernel(input_kernel(x, None)).ntk)
    # FanOut hands the same Kernel to both branches: the first branch must not corrupt the second
    br = L.serial(L.Dense(8, W_std=2.0, b_std=0.5), L.Relu())
    two = L.serial(L.Dense(8), L.FanOut(2), L.parallel(br, L.Dense(8, b_std=0.1)), L.FanInSum())
    k2 = two.kernel(x)
    base = L.Dense(8).kernel(x)
    want = br.kernel(base).nngp + L.Dense(8, b_std=0.1).kernel(base).nngp
    torch.testing.assert_close(k2.nngp, want)
