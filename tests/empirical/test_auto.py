"""The documented ``method="auto"`` rule (pure functions) and its use on real models."""

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical import _common, dispatch, structured
from ntkit.empirical.dispatch import MethodCost, choose_method, estimate_costs


def test_cost_formulas():
    c = estimate_costs(n1=10, n2=20, k=3, n_params=1000, forward_flops=2000, output="trace", itemsize=8)
    assert c["jacobian"].flops == 30 * 3 * 3 * 2000 + 200 * 3 * 1000
    assert c["ntvp"].flops == 30 * 3 * 3 * 2000 + 200 * 3 * 3 * 2000
    assert c["jacobian"].min_bytes == 2 * 2.5 * 3 * 1000 * 8
    assert c["ntvp"].min_bytes == 3 * 1000 * 8
    f = estimate_costs(n1=10, n2=20, k=3, n_params=1000, forward_flops=2000, output="full")
    assert f["jacobian"].flops == 30 * 3 * 3 * 2000 + 200 * 9 * 1000
    d = estimate_costs(n1=10, n2=20, k=3, n_params=1000, forward_flops=2000, output="sample_diagonal")
    assert d["jacobian"].flops == 10 * 3 * 3 * 2000 + 10 * 3 * 1000
    with pytest.raises(ValueError, match="output must be one of"):
        estimate_costs(n1=1, n2=1, k=1, n_params=1, forward_flops=1, output="x")


def test_choose_cheapest_that_fits():
    costs = {
        "jacobian": MethodCost("jacobian", 100.0, 1e6),
        "ntvp": MethodCost("ntvp", 300.0, 1e3),
        "structured": MethodCost("structured", 10.0, 1e5),
    }
    assert choose_method(costs) == "structured"
    assert choose_method(costs, memory_budget=5e5) == "structured"
    assert choose_method(costs, memory_budget=5e4) == "ntvp"  # only ntvp fits
    with pytest.raises(MemoryError, match="no method fits"):
        choose_method(costs, memory_budget=10)
    tie = {"ntvp": MethodCost("ntvp", 5.0, 0), "jacobian": MethodCost("jacobian", 5.0, 0)}
    assert choose_method(tie) == "jacobian"


def test_rule_regimes():
    # dense net, many outputs, full blocks: k²P contraction beats k·3F forward passes -> ntvp wins over jacobian
    c = estimate_costs(n1=50, n2=50, k=100, n_params=10**5, forward_flops=10**5, output="full")
    assert choose_method(c, memory_budget="100GB") == "ntvp"
    # trace of a conv net (F >> P): contracting Jacobians is cheaper than forward passes
    c = estimate_costs(n1=50, n2=50, k=10, n_params=10**4, forward_flops=10**7, output="trace")
    assert choose_method(c, memory_budget="100GB") == "jacobian"
    # a huge model: one Jacobian row does not fit, one column of parameters does
    c = estimate_costs(n1=8, n2=8, k=10, n_params=10**8, forward_flops=10**8, output="trace", itemsize=4)
    assert choose_method(c, memory_budget="8GB") == "ntvp"


def _auto_for(model, x, output="trace"):
    ctx = _common.make_context(model, x, _common.select_params(model))
    plan = structured.analyse(ctx, x)
    return dispatch._auto(ctx, x, x.shape[0], output, None, plan)


def test_auto_on_models():
    mlp = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    assert _auto_for(mlp, torch.randn(64, 784)) == "structured"
    assert _auto_for(mlp, torch.randn(64, 784), "full") == "structured"

    class Opaque(nn.Module):  # nothing the structured path knows
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(20, 5))

        def forward(self, x):
            return torch.tanh(x @ self.w.T)[:, :3]

    assert _auto_for(Opaque(), torch.randn(8, 5)) == "jacobian"
    # and whatever auto picks gives the same numbers
    x = torch.randn(6, 5, dtype=torch.float64)
    m = Opaque().double()
    torch.testing.assert_close(nk.empirical_ntk(m, x), nk.empirical_ntk(m, x, method="ntvp"))
