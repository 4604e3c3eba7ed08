"""Tiled evaluation: cache-sized sub-tiles with a replayed variance tape, and Conv-from-patches.

Independent truths: the untiled composition ``arch.apply_kernel(input_kernel(x))`` (the
layer-by-layer definition, no tiles, no tape, no patches), computed in float64; every
tiled/sub-tiled/taped result must equal it to rounding, for every layer kind that
records variances, for symmetric and two-batch kernels, and with layers that cannot run
the variance pass (the fallback recomputes).
"""

import pytest
import torch

from ntkit import layers as L
from ntkit.layers import _evaluate
from ntkit.layers._tape import VarTape, taped_vars
from ntkit.layers.kernel import input_kernel


def reference(arch, x1, x2=None, full=None):
    """Untiled layer-by-layer kernel (no sub-tiles, no tape, no patch path)."""
    full = arch.needs_full_spatial(False) if full is None else full
    return arch.apply_kernel(input_kernel(x1, x2, diagonal_spatial=not full))


def assert_kernels_close(k, ref):
    for name in ("nngp", "ntk", "var1", "var2"):
        torch.testing.assert_close(getattr(k, name), getattr(ref, name), rtol=1e-10, atol=1e-12, msg=name)


def conv(c=6, **kw):
    return L.Conv(c, (3, 3), padding=kw.pop("padding", "SAME"), **kw)


ARCHS = {
    "cnn_gap": lambda: L.serial(conv(b_std=0.1), L.Relu(), conv(W_std=1.3), L.Erf(), L.GlobalAvgPool(), L.Dense(1)),
    "myrtle": lambda: L.serial(conv(), L.Relu(), L.AvgPool((2, 2)), conv(), L.Relu(), L.GlobalSumPool(), L.Dense(2)),
    "residual": lambda: L.serial(
        conv(), L.FanOut(2), L.parallel(L.Identity(), L.serial(L.Relu(), conv(b_std=0.2))), L.FanInSum(),
        L.Relu(), L.GlobalAvgPool(), L.Dense(1)),
    "layernorm_dropout": lambda: L.serial(conv(), L.LayerNorm(axis=(1, 2, 3)), L.Gelu(), L.Dropout(0.3), conv(),
                                          L.Relu(), L.GlobalAvgPool(), L.Dense(1)),
    "attention": lambda: L.serial(conv(), L.Relu(), L.GlobalSelfAttention(4, 4, 4), L.Relu(), L.GlobalAvgPool(),
                                  L.Dense(1)),
    "prod_concat": lambda: L.serial(
        conv(), L.FanOut(2), L.parallel(conv(), conv(W_std=0.7)), L.FanInProd(), L.FanOut(2),
        L.parallel(conv(), L.serial(L.Relu(), conv(3))), L.FanInConcat(1), L.Relu(), L.GlobalAvgPool(), L.Dense(1)),
    "resize_standard": lambda: L.serial(conv(parameterization="standard", b_std=0.3), L.Relu(),
                                        L.ImageResize((4, 4), "linear"), conv(), L.Abs(), L.GlobalAvgPool()),
    "strided_valid_flatten": lambda: L.serial(L.Conv(5, (3, 2), strides=(2, 1)), L.Relu(), conv(padding="CIRCULAR"),
                                              L.Relu(), L.Flatten(), L.Dense(1)),
}


@pytest.fixture
def tiny_subtiles(monkeypatch):
    """Sub-tiles of a few pairs even for these small images (the production size is tens of MB)."""
    monkeypatch.setattr(_evaluate, "_SUBTILE_BYTES", 64 * 1024)


@pytest.mark.parametrize("name", sorted(ARCHS))
@pytest.mark.parametrize("two_batches", [False, True])
def test_subtiles_with_tape_equal_untiled_reference(name, two_batches, tiny_subtiles):
    arch = ARCHS[name]()
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randn(7, 2, 6, 5, dtype=torch.float64, generator=gen)
    x2 = torch.randn(5, 2, 6, 5, dtype=torch.float64, generator=gen) if two_batches else None
    assert arch._supports_tape()
    ref = reference(arch, x1, x2)
    # one budget-sized tile split into sub-tiles, and several tiles each split again
    for budget in (None, "4MB"):
        k = arch.kernel(x1, x2, memory_budget=budget)
        assert_kernels_close(k, ref)
    assert k.x1_is_x2 == (x2 is None)


def test_the_two_level_path_is_really_taken(tiny_subtiles, monkeypatch):
    """Guard against the tests above silently exercising only the one-level path."""
    arch = ARCHS["cnn_gap"]()
    calls = {"record": 0, "replay": 0}
    recording, replaying = VarTape.recording, VarTape.replaying

    def rec(self):
        calls["record"] += 1
        return recording(self)

    def rep(self, *a):
        calls["replay"] += 1
        return replaying(self, *a)

    monkeypatch.setattr(VarTape, "recording", rec)
    monkeypatch.setattr(VarTape, "replaying", rep)
    arch.kernel(torch.randn(9, 2, 6, 5, dtype=torch.float64), memory_budget=None)
    assert calls["record"] >= 2  # the size probe and the one tile
    assert calls["replay"] > 3


class _NoTapeScale(L.Layer):
    """A user layer that knows nothing of the tape (computes its own variances, rejects nngp=None)."""

    def apply_kernel(self, k):
        if k.nngp is None:
            raise ValueError("needs nngp")
        var1 = k.var1 * 2.0
        return k.replace(nngp=k.nngp * 2.0, ntk=None if k.ntk is None else k.ntk * 2.0, var1=var1,
                         var2=var1 if k.var2 is k.var1 else k.var2 * 2.0)

    def output_shape(self, shape):
        return shape


def test_layer_without_tape_support_falls_back_to_recomputing(tiny_subtiles):
    arch = L.serial(conv(), L.Relu(), _NoTapeScale(), conv(), L.Relu(), L.GlobalAvgPool(), L.Dense(1))
    assert not arch._supports_tape()
    x = torch.randn(6, 2, 5, 5, dtype=torch.float64)
    ref = reference(arch, x)
    assert_kernels_close(arch.kernel(x), ref)
    x2 = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    assert_kernels_close(arch.kernel(x, x2), reference(arch, x, x2))


def test_nngp_only_and_float32(tiny_subtiles):
    arch = ARCHS["cnn_gap"]()
    x = torch.randn(6, 2, 6, 5)
    k = arch.kernel(x, get="nngp")
    assert k.ntk is None
    ref = reference(arch, x.double())
    torch.testing.assert_close(k.nngp, ref.nngp.float(), rtol=2e-5, atol=1e-6)


def test_tape_refuses_to_replay_out_of_step():
    tape = VarTape()
    a, b = object(), object()
    ones = torch.ones(3)
    with tape.recording():
        taped_vars(a, lambda: (ones, ones))
    with tape.replaying(slice(0, 1), slice(1, 2)), pytest.raises(RuntimeError, match="out of step"):
        taped_vars(b, lambda: (torch.ones(3), torch.ones(3)))
    with tape.replaying(slice(0, 2), slice(1, 3)):
        v1, v2 = taped_vars(a, lambda: (torch.zeros(3), torch.zeros(3)))
    assert v1.shape == v2.shape == (2,) and bool((v1 == 1).all())


def test_position_only_tape_keeps_diagonals_and_attention_keeps_full_vars():
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    gap = ARCHS["cnn_gap"]()
    assert not gap._needs_full_vars()
    small, big = VarTape(positions_only=True), VarTape(positions_only=False)
    for tape in (small, big):
        with tape.recording():
            gap._apply_inputs(x, None, True, False, var_only=True)
    # conv, relu, conv, erf: |S| instead of |S|^2 numbers per example (the pooled ones are scalars)
    assert big.nbytes > 10 * small.nbytes
    shapes = [v.shape for _, v, _ in small.entries]
    assert shapes[:2] == [(3, 4, 5), (3, 4, 5)] and all(v2 is v1 for _, v1, v2 in small.entries)
    # the first entry (the Conv's output variances) is the diagonal of the full one
    first_conv = gap.layers[0].apply_kernel(input_kernel(x, None))
    torch.testing.assert_close(small.entries[0][1], torch.diagonal(first_conv.var1.reshape(3, 20, 20), dim1=1,
                                                                   dim2=2).reshape(3, 4, 5))
    torch.testing.assert_close(big.entries[0][1], first_conv.var1)
    assert ARCHS["attention"]()._needs_full_vars()


# ---- a first Conv builds its kernel from patches ------------------------------------------------


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("strides", [1, 2, (2, 1)])
def test_conv_from_patches_equals_conv_of_input_kernel(padding, strides):
    full = True
    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(3, 2, 7, 6, dtype=torch.float64, generator=gen)
    x2 = torch.randn(4, 2, 7, 6, dtype=torch.float64, generator=gen)
    for layer in (L.Conv(5, (3, 2), strides=strides, padding=padding, W_std=1.7, b_std=0.4),
                  L.Conv(5, (4, 3), strides=strides, padding=padding, parameterization="standard", b_std=0.2)):
        for b in (None, x2):
            k, _ = layer._apply_inputs(x1, b, full, True)
            want = layer.apply_kernel(input_kernel(x1, b, diagonal_spatial=not full))
            assert_kernels_close(k, want)
            assert k.diagonal_spatial == (not full) and k.is_gaussian and k.x1_is_x2 == (b is None)
            assert k.shape == want.shape


@pytest.mark.parametrize("shape, filt", [((2, 9), (3,)), ((1, 4, 5, 3), (2, 3, 2))])
def test_conv_from_patches_1d_and_3d(shape, filt):
    x = torch.randn((4,) + shape, dtype=torch.float64)
    layer = L.Conv(3, filt, padding="SAME", b_std=0.1)
    k, _ = layer._apply_inputs(x, None, True, True)
    assert_kernels_close(k, layer.apply_kernel(input_kernel(x, None)))


def test_circular_padding_wider_than_the_input():
    """Wrap-around padding larger than the axis (filter 5 on length 2) still matches."""
    x = torch.randn(3, 2, 2, 3, dtype=torch.float64)
    layer = L.Conv(3, (5, 5), padding="CIRCULAR")
    k, _ = layer._apply_inputs(x, None, True, True)
    assert_kernels_close(k, layer.apply_kernel(input_kernel(x, None)))


def test_many_input_channels_and_the_diagonal_layout_use_the_input_kernel_path(monkeypatch):
    calls = []
    real = input_kernel

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    from ntkit.layers import base

    monkeypatch.setattr(base, "input_kernel", spy)
    L.Conv(2, (3, 3))._apply_inputs(torch.randn(2, 40, 5, 5), None, True, True)  # C |f| = 360 > 160
    assert len(calls) == 1
    L.Conv(2, (3, 3))._apply_inputs(torch.randn(2, 3, 5, 5), None, False, True)  # diagonal layout
    assert len(calls) == 2
    calls.clear()
    L.Conv(2, (3, 3))._apply_inputs(torch.randn(2, 3, 5, 5), None, True, True)
    assert not calls
