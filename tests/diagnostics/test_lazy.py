"""Kernel and weight change: zero kernel change for linear models, direct recomputation, width trend."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ntkit import layers as L
from ntkit.diagnostics import kernel_change, lazy_scaling, lazy_training, weight_change

from ._nets import mlp


def test_linear_model_has_zero_kernel_change():
    lin = nn.Linear(5, 2).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    tr = lazy_training(lin, x, y, lr=0.5, steps=20, record_every=5, kernel_every=1)
    assert max(tr.kernel_change) < 1e-12
    assert len(tr.kernel_change) == len(tr.steps)
    assert tr.weight_change["<root>"][-1] > 1e-2
    assert tr.loss[-1] < tr.loss[0]


def test_trace_matches_direct_recomputation():
    net = mlp(d=3, width=32, seed=1)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    lr, steps = 0.3, 15
    tr = lazy_training(net, x, y, lr=lr, steps=steps, record_every=steps)
    # independent re-run with torch.optim.SGD on the same loss
    net2 = copy.deepcopy(net)
    opt = torch.optim.SGD(net2.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (net2(x)[:, 0] - y).pow(2).sum() / 6).backward()
        opt.step()
    wc = weight_change(net, net2)
    assert tr.weight_change["0"][-1] == pytest.approx(wc["0"], rel=1e-9)
    assert tr.weight_change["2"][-1] == pytest.approx(wc["2"], rel=1e-9)
    k0 = _ntk(net, x)
    kt = _ntk(net2, x)
    direct = float(torch.linalg.norm(kt - k0) / torch.linalg.norm(k0))
    assert tr.kernel_change[-1] == pytest.approx(direct, rel=1e-8)
    assert kernel_change(net, net2, x) == pytest.approx(direct, rel=1e-8)
    with torch.no_grad():
        final = float(0.5 * (net2(x)[:, 0] - y).pow(2).sum() / 6)
    assert tr.loss[-1] == pytest.approx(final, rel=1e-9)


def _ntk(net, x):
    grads = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(net(x[i:i + 1])[0, 0], list(net.parameters()))
        grads.append(torch.cat([t.reshape(-1) for t in g]))
    j = torch.stack(grads)
    return j @ j.T


def test_weight_change_by_tensor_and_errors():
    net = mlp(d=2, width=4)
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].weight.add_(1.0)
    d = weight_change(net, other, by="tensor", relative=False)
    assert d["0.weight"] == pytest.approx(np.sqrt(8.0))
    assert d["0.bias"] == 0.0
    with pytest.raises(ValueError, match="by"):
        weight_change(net, other, by="module")
    with pytest.raises(ValueError, match="same trainable"):
        weight_change(net, mlp(d=2, width=5))
    with pytest.raises(ValueError, match="lr"):
        lazy_training(net, torch.randn(3, 2), torch.randn(3), lr=-1.0)
    with pytest.raises(ValueError, match="steps"):
        lazy_training(net, torch.randn(3, 2), torch.randn(3), steps=-1)
    with pytest.raises(ValueError, match="x_test"):
        lazy_training(net, torch.randn(3, 2), torch.randn(3), x_test=torch.randn(2, 2))


def test_lazy_scaling_changes_shrink_with_width():
    arch = L.serial(L.Dense(8, b_std=0.1), L.Erf(), L.Dense(1, b_std=0.1))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, generator=g)
    res = lazy_scaling(arch, x, y, widths=[32, 128, 512], seeds=[0, 1], steps=30, dtype=torch.float64,
                       x_test=x, y_test=y)
    assert res.kernel_change.shape == (3, 2)
    assert res.kernel_fit.ci_high < 0
    for g_name, fit in res.weight_fits.items():
        assert fit.ci_high < 0, g_name
    import json

    json.dumps(res.to_dict())


def test_agrees_with_ntkit_train():
    # two implementations of full-batch GD on 1/(2n) Σ (f - y)^2: ntkit.train (torch.optim.SGD) and ours
    import ntkit as nk

    net = mlp(d=3, width=16, seed=4)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    rec = nk.train(copy.deepcopy(net), x, y, "mse", lr=0.2, steps=10, record=("loss", "distance"), record_every=10)
    tr = lazy_training(net, x, y, lr=0.2, steps=10, record_every=10)
    np.testing.assert_allclose(tr.loss, rec.loss.numpy(), rtol=1e-9)
    np.testing.assert_allclose(tr.total_weight_change, rec.relative_distance.numpy(), rtol=1e-9, atol=1e-15)
