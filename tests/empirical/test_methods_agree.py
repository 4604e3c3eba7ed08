"""The three algorithms agree to <= 1e-10 relative error in float64 (and auto equals them)."""

import pytest
import torch

import ntkit as nk
from ntkit.empirical import _common, structured

from ._models import cases, mixed

CASES = {name: (m, x1, x2) for name, m, x1, x2 in cases()}
OUTPUTS = ["trace", "full", "diagonal", "sample_diagonal"]


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("output", OUTPUTS)
def test_methods_agree(name, output):
    model, x1, x2 = CASES[name]
    x2 = None if output in ("diagonal", "sample_diagonal") else x2
    ref = nk.empirical_ntk(model, x1, x2, output=output, method="jacobian")
    assert ref.dtype == torch.float64 and not ref.requires_grad
    for method in ("ntvp", "structured", "auto"):
        got = nk.empirical_ntk(model, x1, x2, output=output, method=method)
        assert got.shape == ref.shape
        assert _rel(got, ref) <= 1e-10, (method, _rel(got, ref))


@pytest.mark.parametrize("name", list(CASES))
def test_symmetric_kernel_is_symmetric_psd(name):
    model, x1, _ = CASES[name]
    K = nk.empirical_ntk(model, x1, output="full", method="structured")
    n, k = K.shape[0], K.shape[2]
    M = K.permute(0, 2, 1, 3).reshape(n * k, n * k)
    assert torch.allclose(M, M.T, atol=1e-12 * M.abs().max())
    assert float(torch.linalg.eigvalsh(M).min()) >= -1e-10 * float(M.abs().max())


def test_structured_uses_the_structure_and_falls_back_only_where_needed():
    model, x1, _ = CASES["fallback"]
    ctx = _common.make_context(model, x1, _common.select_params(model))
    plan = structured.analyse(ctx, x1)
    assert sorted(plan.fallback) == ["1.a", "1.c"]
    assert sorted(s.name for s in plan.sites) == ["0", "3"]
    model, x1, _ = CASES["mixed"]
    ctx = _common.make_context(model, x1, _common.select_params(model))
    plan = structured.analyse(ctx, x1)
    assert plan.fallback == {}
    assert {s.kind for s in plan.sites} == {"embedding", "layernorm", "conv", "linear"}


@pytest.mark.parametrize("strategy", ["pair", "jac"])
@pytest.mark.parametrize("output", OUTPUTS)
def test_both_structured_strategies_exact(strategy, output):
    """Multi-position layers (conv, embedding, sequence Linear): pairwise and per-example forms."""
    model = mixed()
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randint(0, 13, (4, 7), generator=g), torch.randint(0, 13, (3, 7), generator=g)
    x2 = None if output in ("diagonal", "sample_diagonal") else x2
    ref = nk.empirical_ntk(model, x1, x2, output=output, method="jacobian")
    ctx = _common.make_context(model, x1, _common.select_params(model))
    got = structured.compute(ctx, x1, x2, output, None, None, False, force_strategy=strategy)
    assert _rel(got, ref) <= 1e-10


def test_tied_and_reused_parameters_are_exact():
    """A Linear called twice, and an embedding matrix reused as the readout (used outside its forward)."""

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(9, 4)
            self.mix = torch.nn.Linear(4, 4)

        def forward(self, ids):
            h = torch.tanh(self.mix(torch.tanh(self.mix(self.emb(ids))))).mean(1)
            return torch.nn.functional.linear(h, self.emb.weight)  # logits over the vocabulary

    model = Tied().double()
    x = torch.randint(0, 9, (4, 3))
    ref = nk.empirical_ntk(model, x, output="full", method="jacobian")
    got = nk.empirical_ntk(model, x, output="full", method="structured")
    assert _rel(got, ref) <= 1e-10
    ctx = _common.make_context(model, x, _common.select_params(model))
    plan = structured.analyse(ctx, x)
    assert "emb.weight" in plan.fallback and "mix.weight" not in plan.fallback


def test_overridden_forward_and_attention_fall_back():
    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2.0 * super().forward(x)

    class Att(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.att = torch.nn.MultiheadAttention(4, 2, batch_first=True)
            self.out = Scaled(4, 2)

        def forward(self, x):
            return self.out(self.att(x, x, x, need_weights=False)[0].mean(1))

    model = Att().double().eval()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    ref = nk.empirical_ntk(model, x, output="full", method="jacobian")
    got = nk.empirical_ntk(model, x, output="full", method="structured")
    assert _rel(got, ref) <= 1e-10
    ctx = _common.make_context(model, x, _common.select_params(model))
    plan = structured.analyse(ctx, x)
    assert "out.weight" in plan.fallback and "att.out_proj.weight" in plan.fallback


def test_float32_close_to_float64():
    import copy

    model, x1, x2 = CASES["mixed"]
    ref = nk.empirical_ntk(model, x1, x2, output="full", method="jacobian")
    m32 = copy.deepcopy(model).float()
    for method in ("jacobian", "ntvp", "structured"):
        got = nk.empirical_ntk(m32, x1, x2, output="full", method=method)
        assert got.dtype == torch.float32
        assert _rel(got.double(), ref) <= 1e-4
