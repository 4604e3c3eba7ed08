"""LayerNorm, Dropout and GlobalSelfAttention against finite networks (float64).

Truths: Monte Carlo averages of finite networks (tolerance: ``K_SE`` standard errors from the
sample variance plus a stated finite-width allowance), closed forms where they exist (Dropout
on a single affine layer), and identities (test-mode Dropout is the identity).
"""

import pytest
import torch

from ntkit import layers as L
from ntkit import monte_carlo_kernel
from ntkit.layers.kernel import input_kernel

from .test_conv import assert_mc_close, empirical_kernels, monte_carlo

K_SE = 5.0


def _x(n, *shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


def _mc_flat(arch, x, n_samples, width, allowance, what):
    exact = arch.kernel(x)
    mc = monte_carlo_kernel(arch, x, n_samples=n_samples, width=width, dtype=torch.float64)
    assert_mc_close(exact.nngp, mc.nngp, mc.nngp_se, K_SE, allowance, what + " nngp")
    assert_mc_close(exact.ntk, mc.ntk, mc.ntk_se, K_SE, allowance, what + " ntk")


# ---- LayerNorm ---------------------------------------------------------------------------------
# allowance 2 * depth / width as for ReLU networks (the normaliser's fluctuation is O(1/sqrt(width))
# and enters the mean at second order)


def test_layernorm_channels_and_spatial_mc():
    arch = L.serial(L.Conv(8, 3, padding="SAME", W_std=1.3, b_std=0.2), L.LayerNorm(axis=1), L.Relu(),
                    L.Conv(8, 3, padding="SAME"), L.LayerNorm(axis=(1, -1), eps=1e-3), L.Relu(),
                    L.GlobalAvgPool(), L.Dense(16))
    _mc_flat(arch, _x(3, 2, 6, seed=1) * torch.tensor([1.0, 3.0, 0.3]).reshape(3, 1, 1), 30, 96, 2 * 3 / 96,
             "LayerNorm conv")


def test_layernorm_dense_mc_and_scale_invariance():
    arch = L.serial(L.Dense(8, W_std=1.5, b_std=0.1), L.LayerNorm(), L.Erf(), L.Dense(16))
    x = _x(4, 5, seed=2)
    _mc_flat(arch, x, 30, 128, 2 * 2 / 128, "LayerNorm dense")
    # without bias, LayerNorm(eps=0) makes the kernel invariant to rescaling each input
    arch0 = L.serial(L.Dense(8), L.LayerNorm(eps=0.0), L.Relu(), L.Dense(1))
    k1 = arch0.kernel(x)
    k2 = arch0.kernel(x * torch.tensor([1.0, 5.0, 0.2, 3.0], dtype=torch.float64).reshape(4, 1))
    torch.testing.assert_close(k1.ntk, k2.ntk)


def test_layernorm_errors():
    with pytest.raises(ValueError, match="centred Gaussian"):
        L.serial(L.Dense(8), L.Relu(), L.LayerNorm()).kernel(torch.randn(2, 3))
    with pytest.raises(ValueError, match="centred Gaussian"):
        L.LayerNorm().kernel(torch.randn(2, 3))
    with pytest.raises(ValueError, match="must include the channel axis 1"):
        L.serial(L.Conv(4, 3), L.LayerNorm(axis=2)).kernel(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="batch"):
        L.serial(L.Conv(4, 3), L.LayerNorm(axis=(0, 1))).kernel(torch.randn(2, 3, 5))


# ---- Dropout -----------------------------------------------------------------------------------


def test_dropout_closed_form_on_one_layer():
    x = _x(3, 4)
    base = L.Dense(5, W_std=1.2, b_std=0.5)
    k0 = base.kernel(x)
    k = L.serial(base, L.Dropout(0.25)).kernel(x)
    want = k0.nngp.clone()
    want.diagonal().mul_(1 / 0.75)
    torch.testing.assert_close(k.nngp, want)
    torch.testing.assert_close(k.var1, k0.var1 / 0.75)
    # spatial full layout: only same example *and* same position are scaled
    xs = _x(2, 2, 3)
    kf = L.serial(L.Conv(3, 2, padding="SAME"), L.Dropout(0.5)).apply_kernel(input_kernel(xs, None))
    kf0 = L.Conv(3, 2, padding="SAME").apply_kernel(input_kernel(xs, None))
    ratio = kf.nngp / kf0.nngp
    expect = torch.ones_like(ratio)
    for i in range(2):
        for h in range(3):
            expect[i, i, h, h] = 2.0
    torch.testing.assert_close(ratio, expect)


def test_dropout_test_mode_is_identity():
    arch = L.serial(L.Conv(4, 3, padding="SAME"), L.Relu(), L.Dropout(0.4, mode="test"), L.Flatten(), L.Dense(1))
    ref = L.serial(L.Conv(4, 3, padding="SAME"), L.Relu(), L.Flatten(), L.Dense(1))
    x = _x(3, 2, 5)
    torch.testing.assert_close(arch.kernel(x).ntk, ref.kernel(x).ntk)
    net = arch.init((2, 5), seed=0, dtype=torch.float64)
    torch.testing.assert_close(net(x), net(x))  # never drops, even in training mode


def test_dropout_train_mode_mc():
    arch = L.serial(L.Conv(8, 3, padding="SAME", W_std=1.4), L.Relu(), L.Dropout(0.3),
                    L.Conv(16, 3, padding="SAME"), L.Flatten())
    x = _x(3, 2, 5, seed=3)
    exact = arch.kernel(x)
    (m, se), (mt, st) = monte_carlo(arch, x, x, n_samples=40, width=64)
    assert m.shape == exact.nngp.shape == (3, 3)
    assert_mc_close(exact.nngp, m, se, K_SE, 2 * 2 / 64, "dropout nngp")
    assert_mc_close(exact.ntk, mt, st, K_SE, 2 * 2 / 64, "dropout ntk")
    # the diagonal really is inflated relative to the test-mode kernel
    k_test = L.serial(L.Conv(8, 3, padding="SAME", W_std=1.4), L.Relu(), L.Dropout(0.3, mode="test"),
                      L.Conv(16, 3, padding="SAME"), L.Flatten()).kernel(x)
    assert bool((exact.nngp.diagonal() > k_test.nngp.diagonal() * 1.2).all())


def test_dropout_bad_rate():
    with pytest.raises(ValueError, match=r"drop probability\) must be in \[0, 1\)"):
        L.Dropout(1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        L.Dropout(0.1, mode="eval")


# ---- attention ---------------------------------------------------------------------------------
# Allowance: the attention weights fluctuate by O(1/sqrt(width)) around their limit, which biases
# the mean kernel by O(1/width); a width scan (32, 64, 128) measured a relative NTK bias of about
# 11/width, so we allow 16/width.


@pytest.mark.parametrize("mechanism, tie, head", [("SOFTMAX", True, "flatten"), ("IDENTITY", True, "gap"),
                                                  ("SOFTMAX", False, "gap")])
def test_attention_mc(mechanism, tie, head):
    width = 128
    att = L.GlobalSelfAttention(16, 8, 8, n_heads=2, W_query_std=1.3, W_key_std=0.8, W_value_std=1.1,
                                W_out_std=0.9, b_std=0.1, attention_mechanism=mechanism, tie_query_key=tie)
    tail = [L.Relu(), L.Flatten()] if head == "flatten" else [L.GlobalAvgPool()]
    arch = L.serial(L.Conv(8, 1, W_std=1.2), att, *tail, L.Dense(16))
    x = _x(3, 2, 4, seed=4)
    _mc_flat(arch, x, 30, width, 16 / width, f"attention {mechanism} tie={tie}")


def test_attention_limits_closed_form():
    x = _x(2, 3, 4, seed=5)
    k_in = input_kernel(x, None)
    # independent query/key weights: uniform attention, output covariance = mean over all position pairs
    att = L.GlobalSelfAttention(4, 4, 4, tie_query_key=False, W_value_std=1.5)
    k = att.apply_kernel(k_in)
    want = 2.25 * k_in.nngp.mean((2, 3))
    torch.testing.assert_close(k.nngp, want[:, :, None, None].expand_as(k.nngp))
    torch.testing.assert_close(k.ntk, 2 * k.nngp)  # inputs carry no NTK: output + value weights
    # identity mechanism: A = W_q W_k Q_x
    att = L.GlobalSelfAttention(4, 4, 4, attention_mechanism="IDENTITY", W_query_std=2.0, W_key_std=0.5)
    k = att.apply_kernel(k_in)
    a = k_in.var1
    want = torch.einsum("iab,ijbc,jdc->ijad", a, k_in.nngp, a)
    torch.testing.assert_close(k.nngp, want)


def test_attention_needs_full_layout_and_sequence():
    att = L.GlobalSelfAttention(4, 4, 4)
    assert att.needs_full_spatial(False) is True
    assert L.serial(L.Conv(4, 1), att, L.Flatten(), L.Dense(1)).needs_full_spatial(False) is True
    with pytest.raises(ValueError, match="flat per-example shape"):
        att.kernel(torch.randn(2, 3))
    with pytest.raises(ValueError, match="diagonal-only"):
        att.apply_kernel(input_kernel(torch.randn(2, 3, 4), None, diagonal_spatial=True))
    with pytest.raises(ValueError, match="linear_scaling=True"):
        L.GlobalSelfAttention(4, 4, 4, linear_scaling=False)
    with pytest.raises(ValueError, match="attention_mechanism must be one of"):
        L.GlobalSelfAttention(4, 4, 4, attention_mechanism="RELU")


def test_attention_finite_module_shapes():
    net = L.serial(L.Conv(8, 1), L.GlobalSelfAttention(5, 4, 6, n_heads=3)).init((2, 7), width=32)
    assert net(torch.randn(4, 2, 7)).shape == (4, 5, 7)
    net2 = L.GlobalSelfAttention(5, 4, 6).init((2, 3, 3))  # 2-D positions are flattened
    assert net2(torch.randn(1, 2, 3, 3)).shape == (1, 5, 3, 3)
    _ = empirical_kernels  # imported helper is shared with the conv tests
