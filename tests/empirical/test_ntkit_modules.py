"""The structured eNTK on the finite networks built by ntkit.layers (``arch.init``).

Truth: agreement with the independent ``jacobian`` and ``ntvp`` algorithms in
float64, plus a check that no parameter of these modules went to the autograd
fallback (so the structured rules themselves were exercised).
"""

import pytest
import torch

import ntkit as nk
from ntkit import layers as L
from ntkit.empirical import _common, structured

TOL = 1e-10


def _dense_net():
    arch = L.serial(
        L.Dense(64, W_std=1.5, b_std=0.1), L.Relu(),
        L.Dense(32, W_std=1.5, b_std=0.1, parameterization="standard"), L.Erf(),
        L.Dense(3),
    )
    return arch.init((5,), dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64), torch.randn(
        4, 5, dtype=torch.float64)


def _conv_net():
    arch = L.serial(
        L.Conv(4, (3, 3), strides=(2, 1), padding="SAME", W_std=1.3, b_std=0.2), L.Relu(),
        L.Conv(5, (2, 3), strides=2, padding="CIRCULAR", W_std=1.1, b_std=0.3, parameterization="standard"),
        L.Relu(),
        L.Dense(3, W_std=1.2, b_std=0.4),  # dense on the channel axis of (n, C, H, W): several positions
        L.Relu(), L.Flatten(), L.Dense(2, b_std=0.1),
    )
    return arch.init((2, 6, 5), dtype=torch.float64), torch.randn(5, 2, 6, 5, dtype=torch.float64), torch.randn(
        3, 2, 6, 5, dtype=torch.float64)


def _conv1d_net():
    arch = L.serial(L.Conv(3, 3, strides=2, padding="SAME", b_std=0.5), L.Erf(),
                    L.Conv(2, 2, padding="CIRCULAR", parameterization="standard", b_std=0.2), L.Flatten(), L.Dense(2))
    return arch.init((2, 7), dtype=torch.float64), torch.randn(4, 2, 7, dtype=torch.float64), None


NETS = {"dense": _dense_net, "conv": _conv_net, "conv1d": _conv1d_net}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture
def no_fallback(monkeypatch):
    """Count calls of the autograd fallback inside the structured method."""
    calls = []
    orig = structured.jacobians

    def counting(ctx, x, params):
        calls.append(sorted(params))
        return orig(ctx, x, params)

    monkeypatch.setattr(structured, "jacobians", counting)
    return calls


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("output", ["trace", "full"])
def test_methods_agree(name, output, no_fallback):
    torch.manual_seed(0)
    net, x1, x2 = NETS[name]()
    for xb in (None, x2):
        ref = nk.empirical_ntk(net, x1, xb, output=output, method="jacobian")
        for method in ("ntvp", "structured", "auto"):
            got = nk.empirical_ntk(net, x1, xb, output=output, method=method)
            assert got.shape == ref.shape
            assert _rel(got, ref) <= TOL, (method, _rel(got, ref))
    assert no_fallback == []  # structured (and auto, if it chose it) never used per-example autograd


@pytest.mark.parametrize("name", list(NETS))
def test_diagonal_outputs_agree(name, no_fallback):
    torch.manual_seed(1)
    net, x1, _ = NETS[name]()
    for output in ("diagonal", "sample_diagonal"):
        ref = nk.empirical_ntk(net, x1, output=output, method="jacobian")
        assert _rel(nk.empirical_ntk(net, x1, output=output, method="structured"), ref) <= TOL
    assert no_fallback == []


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("strategy", ["pair", "jac"])
def test_both_strategies_and_plan(name, strategy):
    torch.manual_seed(2)
    net, x1, x2 = NETS[name]()
    x2 = x1[:3] if x2 is None else x2
    ctx = _common.make_context(net, x1, _common.select_params(net, None))
    plan = structured.analyse(ctx, x1)
    assert plan.fallback == {}
    kinds = {s.kind for s in plan.sites}
    assert kinds <= {"ntk_dense", "ntk_conv"} and len(plan.sites) == len(list(net.modules())) - len(
        [m for m in net.modules() if not list(m.parameters(recurse=False))])
    for output in ("trace", "full"):
        ref = nk.empirical_ntk(net, x1, x2, output=output, method="jacobian")
        got = structured.compute(ctx, x1, x2, output, None, None, False, force_strategy=strategy)
        assert _rel(got, ref) <= TOL


@pytest.mark.parametrize("name", list(NETS))
def test_param_subsets_and_additivity(name, no_fallback):
    torch.manual_seed(3)
    net, x1, x2 = NETS[name]()
    names = [n for n, _ in net.named_parameters()]
    biases = [n for n in names if n.endswith("bias")]
    subset = [names[0], names[-1]] + biases[:1]
    for params in (biases, subset, lambda n, p: n.endswith("weight")):
        for output in ("trace", "full"):
            ref = nk.empirical_ntk(net, x1, x2, output=output, method="jacobian", params=params)
            for method in ("ntvp", "structured", "auto"):
                got = nk.empirical_ntk(net, x1, x2, output=output, method=method, params=params)
                assert _rel(got, ref) <= TOL, (params, method)
    weights = [n for n in names if n.endswith("weight")]
    total = nk.empirical_ntk(net, x1, method="structured")
    parts = nk.empirical_ntk(net, x1, method="structured", params=weights) + nk.empirical_ntk(
        net, x1, method="structured", params=biases)
    assert _rel(parts, total) <= TOL
    assert no_fallback == []


def test_modified_forward_goes_to_the_fallback(no_fallback):
    torch.manual_seed(4)
    net, x1, _ = _dense_net()
    first = net.layers[0]
    orig = first.forward
    first.forward = lambda x: orig(x) * 1.5  # instance override: the structured rule must not apply
    ref = nk.empirical_ntk(net, x1, output="full", method="jacobian")
    got = nk.empirical_ntk(net, x1, output="full", method="structured")
    assert _rel(got, ref) <= TOL
    assert no_fallback and set(no_fallback[0]) == {"layers.0.weight", "layers.0.bias"}


def test_auto_prefers_structured_for_wide_ntkit_nets():
    net = L.serial(L.Dense(512), L.Relu(), L.Dense(512), L.Relu(), L.Dense(10)).init((16,))
    x = torch.randn(40, 16)
    ctx = _common.make_context(net, x, _common.select_params(net, None))
    plan = structured.analyse(ctx, x)
    assert plan.fallback == {}
    from ntkit.empirical import dispatch

    assert dispatch._auto(ctx, x, x.shape[0], "trace", None, plan) == "structured"


def test_bias_only_multi_position_torch_conv():
    """Regression: a bias-only selection on a layer with several positions (was a crash)."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(27, 2)).double()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    for output in ("trace", "full", "diagonal"):
        ref = nk.empirical_ntk(net, x, output=output, method="jacobian", params=["0.bias"])
        assert _rel(nk.empirical_ntk(net, x, output=output, method="structured", params=["0.bias"]), ref) <= TOL
