"""Output modes, parameter subsets, tiling, the model is left alone, NNGP, pseudo-NTK, operator."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk

from ._models import mixed, mlp


@pytest.fixture
def net_x():
    g = torch.Generator().manual_seed(2)
    return mlp(), torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "structured"])
def test_output_modes_consistent(net_x, method):
    net, x1, x2 = net_x
    full = nk.empirical_ntk(net, x1, x2, output="full", method=method)
    trace = nk.empirical_ntk(net, x1, x2, output="trace", method=method)
    torch.testing.assert_close(trace, full.diagonal(dim1=2, dim2=3).sum(-1), rtol=1e-12, atol=1e-12)
    fsym = nk.empirical_ntk(net, x1, output="full", method=method)
    diag = nk.empirical_ntk(net, x1, output="diagonal", method=method)
    idx = torch.arange(6)
    torch.testing.assert_close(diag, fsym[idx, idx], rtol=1e-12, atol=1e-12)
    sd = nk.empirical_ntk(net, x1, output="sample_diagonal", method=method)
    torch.testing.assert_close(sd, diag.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-12, atol=1e-12)
    assert diag.shape == (6, 3, 3) and sd.shape == (6,) and full.shape == (6, 4, 3, 3)


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "structured"])
def test_parameter_subsets_add_up(net_x, method):
    net, x1, x2 = net_x
    whole = nk.empirical_ntk(net, x1, x2, output="full", method=method)
    names = [n for n, _ in net.named_parameters()]
    parts = [nk.empirical_ntk(net, x1, x2, output="full", method=method, params=[n]) for n in names]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-12, atol=1e-12)
    # the same subsets given as a predicate and as tensors
    last = nk.empirical_ntk(net, x1, x2, output="full", method=method, params=lambda n, p: n.startswith("4."))
    as_tensors = nk.empirical_ntk(net, x1, x2, output="full", method=method, params=list(net[4].parameters()))
    torch.testing.assert_close(last, parts[-2] + parts[-1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(as_tensors, last, rtol=1e-12, atol=1e-12)


def test_last_layer_kernel_closed_form(net_x):
    """Only the readout: Θ = (φ(x)·φ(x') + 1) I with φ the penultimate features."""
    net, x1, x2 = net_x
    phi1, phi2 = net[:4](x1).detach(), net[:4](x2).detach()
    got = nk.empirical_ntk(net, x1, x2, output="full", params=["4.weight", "4.bias"])
    expected = (phi1 @ phi2.T + 1)[:, :, None, None] * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_frozen_parameters_and_buffers():
    net = mlp()
    net[0].requires_grad_(False)
    x = torch.randn(3, 5, dtype=torch.float64)
    default = nk.empirical_ntk(net, x, method="structured")
    explicit = nk.empirical_ntk(net, x, params=["2.weight", "2.bias", "4.weight", "4.bias"])
    torch.testing.assert_close(default, explicit, rtol=1e-12, atol=1e-12)
    # frozen parameters can still be selected explicitly
    first = nk.empirical_ntk(net, x, params=["0.weight"], method="jacobian")
    assert float(first.abs().max()) > 0


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "structured"])
@pytest.mark.parametrize("output", ["trace", "full", "diagonal", "sample_diagonal"])
def test_tiling_equals_untiled(method, output):
    net = mixed()
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randint(0, 13, (5, 7), generator=g), torch.randint(0, 13, (3, 7), generator=g)
    cross = output in ("trace", "full")
    whole = nk.empirical_ntk(net, x1, x2 if cross else None, output=output, method=method)
    tiled = nk.empirical_ntk(net, x1, x2 if cross else None, output=output, method=method, batch_size=3)
    torch.testing.assert_close(tiled, whole, rtol=1e-12, atol=1e-12)
    if cross:  # symmetric tiling (x2=None) mirrors the upper tiles
        sym = nk.empirical_ntk(net, x1, output=output, method=method)
        sym_t = nk.empirical_ntk(net, x1, output=output, method=method, batch_size=2, progress=True)
        torch.testing.assert_close(sym_t, sym, rtol=1e-12, atol=1e-12)


def test_memory_budget_tiles():
    net = mixed()
    x = torch.randint(0, 13, (5, 7), generator=torch.Generator().manual_seed(4))
    whole = nk.empirical_ntk(net, x, method="jacobian")
    for budget in ("60KB", 60 * 1024):
        torch.testing.assert_close(nk.empirical_ntk(net, x, method="jacobian", memory_budget=budget), whole)
    with pytest.raises(MemoryError, match="memory_budget"):
        nk.empirical_ntk(net, x, method="jacobian", memory_budget=100)
    # ntvp down to one parameter-sized vector at a time (column slices of one example)
    for output in ("trace", "full"):
        ref = nk.empirical_ntk(net, x, output=output, method="jacobian")
        got = nk.empirical_ntk(net, x, output=output, method="ntvp", memory_budget=3 * 8 * 320)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_model_left_untouched(net_x):
    net, x1, _ = net_x
    state = copy.deepcopy(net.state_dict())
    flags = [p.requires_grad for p in net.parameters()]
    for method in ("jacobian", "ntvp", "structured"):
        nk.empirical_ntk(net, x1, method=method, params=["2.weight"])
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert flags == [p.requires_grad for p in net.parameters()]
    assert all(not m._forward_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_under_no_grad_and_inference_mode(net_x):
    net, x1, _ = net_x
    ref = nk.empirical_ntk(net, x1, method="structured")
    with torch.no_grad():
        torch.testing.assert_close(nk.empirical_ntk(net, x1, method="structured"), ref)
        torch.testing.assert_close(nk.empirical_ntk(net, x1, method="jacobian"), ref)
    with torch.inference_mode():
        xi = x1.clone()
        for method in ("jacobian", "ntvp", "structured"):
            torch.testing.assert_close(nk.empirical_ntk(net, xi, method=method), ref)


# --- NNGP -----------------------------------------------------------------------------------------


def test_empirical_nngp(net_x):
    net, x1, x2 = net_x
    K = nk.empirical_nngp(net, x1, x2)
    f1, f2 = net(x1).detach(), net(x2).detach()
    torch.testing.assert_close(K, f1 @ f2.T / 3)
    phi1, phi2 = net[:4](x1).detach(), net[:4](x2).detach()
    torch.testing.assert_close(nk.empirical_nngp(net, x1, x2, layer="4"), phi1 @ phi2.T / 7)
    torch.testing.assert_close(nk.empirical_nngp(net, x1, layer="4", batch_size=4), phi1 @ phi1.T / 7)
    with pytest.raises(ValueError, match="layer='nope'"):
        nk.empirical_nngp(net, x1, layer="nope")


# --- pseudo-NTK -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "structured"])
def test_pseudo_ntk_identities(net_x, method):
    net, x1, x2 = net_x
    full = nk.empirical_ntk(net, x1, x2, output="full", method="jacobian")
    p = nk.pseudo_ntk(net, x1, x2, method=method)
    torch.testing.assert_close(p, full.sum((2, 3)) / 3, rtol=1e-12, atol=1e-12)
    pd = nk.pseudo_ntk(net, x1, output="sample_diagonal", method=method)
    fs = nk.empirical_ntk(net, x1, output="diagonal", method="jacobian")
    torch.testing.assert_close(pd, fs.sum((1, 2)) / 3, rtol=1e-12, atol=1e-12)
    one = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    torch.testing.assert_close(nk.pseudo_ntk(one, x1), nk.empirical_ntk(one, x1), rtol=1e-12, atol=1e-12)


# --- NTK-vector products --------------------------------------------------------------------------


def test_ntk_vector_product(net_x):
    net, x1, x2 = net_x
    full = nk.empirical_ntk(net, x1, x2, output="full", method="jacobian")
    M = full.permute(0, 2, 1, 3).reshape(18, 12)
    op = nk.ntk_vector_product(net, x1, x2, batch_size=3)
    assert op.shape == (18, 12)
    v = torch.randn(12, dtype=torch.float64)
    torch.testing.assert_close(op @ v, M @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op @ v.reshape(4, 3), (M @ v).reshape(6, 3), rtol=1e-10, atol=1e-12)
    V = torch.randn(12, 2, dtype=torch.float64)
    torch.testing.assert_close(op @ V, M @ V, rtol=1e-10, atol=1e-12)
    w = torch.randn(18, dtype=torch.float64)
    torch.testing.assert_close(op.rmatvec(w), M.T @ w, rtol=1e-10, atol=1e-12)
    out = op @ v.numpy()
    assert isinstance(out, np.ndarray)
    lo = op.to_scipy()
    np.testing.assert_allclose(lo.matvec(v.numpy()), (M @ v).numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="v must have shape"):
        op @ torch.randn(5, dtype=torch.float64)


def test_ntk_operator_solves_with_cg():
    from scipy.sparse.linalg import cg

    net = mlp(k=1)
    x = torch.randn(6, 5, dtype=torch.float64)
    K = nk.empirical_ntk(net, x).numpy() + 0.1 * np.eye(6)
    op = nk.ntk_vector_product(net, x).to_scipy()
    from scipy.sparse.linalg import LinearOperator

    reg = LinearOperator((6, 6), matvec=lambda v: op.matvec(v) + 0.1 * v, dtype=np.float64)
    y = np.arange(6.0)
    sol, info = cg(reg, y, rtol=1e-12, maxiter=200)
    assert info == 0
    np.testing.assert_allclose(sol, np.linalg.solve(K, y), rtol=1e-6)
