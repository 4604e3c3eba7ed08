"""linearize / taylor_expand against explicit Jacobians, finite differences and exact polynomials."""

import pytest
import torch

import ntkit as nk
from tests.predict.helpers import jacobian, mlp

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread (thread-pool contention costs 100x on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturb(module, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _flat_delta(lin):
    return torch.cat([d.reshape(-1) for d in lin.delta().values()]).detach()


def test_equals_model_at_init_and_explicit_jacobian_after_move():
    net = mlp(3, 16, k=2)
    x = torch.randn(5, 3, dtype=D)
    lin = nk.linearize(net)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=0)
    _perturb(lin, 0.3)
    j = jacobian(net, x)  # net still holds theta_0 (lin wraps a copy)
    expected = net(x) + (j @ _flat_delta(lin)).reshape(5, 2)
    torch.testing.assert_close(lin(x), expected, rtol=1e-12, atol=1e-12)


def test_gradient_is_jacobian_transpose():
    net = mlp(3, 8)
    x = torch.randn(4, 3, dtype=D)
    lin = nk.linearize(net)
    _perturb(lin, 0.5)
    w = torch.randn(4, 1, dtype=D)
    (lin(x) * w).sum().backward()
    grad = torch.cat([p.grad.reshape(-1) for p in lin.parameters()])
    torch.testing.assert_close(grad, jacobian(net, x).T @ w.reshape(-1), rtol=1e-12, atol=1e-12)


def test_central_finite_difference():
    net = mlp(2, 12)
    x = torch.randn(6, 2, dtype=D)
    lin = nk.linearize(net)
    _perturb(lin, 1.0)
    delta = lin.delta()
    eps = 1e-5
    base = {n: p.detach() for n, p in net.named_parameters()}
    plus = {n: base[n] + eps * delta[n].detach() for n in base}
    minus = {n: base[n] - eps * delta[n].detach() for n in base}
    fd = (torch.func.functional_call(net, plus, (x,)) - torch.func.functional_call(net, minus, (x,))) / (2 * eps)
    torch.testing.assert_close(lin(x) - net(x), fd, rtol=1e-7, atol=1e-8)


def test_trains_with_any_optimiser_and_stays_affine():
    net = mlp(2, 10)
    x, y = torch.randn(8, 2, dtype=D), torch.randn(8, 1, dtype=D)
    lin = nk.linearize(net)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = (lin(x) - y).pow(2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert (lin(x) - y).pow(2).mean().item() < 0.5 * first
    expected = net(x) + (jacobian(net, x) @ _flat_delta(lin)).reshape(8, 1)
    torch.testing.assert_close(lin(x), expected, rtol=1e-11, atol=1e-11)


def test_copy_and_share():
    net = mlp(2, 4)
    before = [p.detach().clone() for p in net.parameters()]
    _perturb(nk.linearize(net), 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    shared = nk.linearize(net, copy_model=False)
    _perturb(shared, 1.0)
    assert not torch.equal(before[0], next(net.parameters()))


def test_frozen_parameters_are_not_expanded():
    net = mlp(2, 6)
    net[0].requires_grad_(False)
    lin = nk.linearize(net)
    assert len(list(lin.buffers())) == 2 and len(lin.delta()) == 2


def test_taylor_degree2_exact_for_bilinear_model():
    """f = a^T (W x) is quadratic in (a, W): degree 2 is exact, degree 1 is not."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 5, bias=False), torch.nn.Linear(5, 1, bias=False)).double()
    x = torch.randn(4, 3, dtype=D)
    quad, lin = nk.taylor_expand(model, 2), nk.taylor_expand(model, 1)
    _perturb(quad, 0.7)
    _perturb(lin, 0.7)
    moved = quad.model
    torch.testing.assert_close(quad(x), moved(x), rtol=1e-12, atol=1e-12)
    assert (lin(x) - moved(x)).abs().max() > 1e-3


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_taylor_error_order(degree):
    """The remainder of a degree-d expansion is O(eps^{d+1}): halving eps divides it by 2^{d+1}."""
    net = mlp(2, 6)
    x = torch.randn(3, 2, dtype=D)
    errs = []
    for eps in (0.02, 0.01):
        te = nk.taylor_expand(net, degree)
        _perturb(te, eps, seed=3)
        errs.append(float((te(x) - te.model(x)).abs().max()))
    ratio = errs[0] / errs[1]
    assert 0.7 * 2 ** (degree + 1) < ratio < 1.3 * 2 ** (degree + 1)


def test_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        nk.linearize(lambda x: x)
    with pytest.raises(ValueError, match="degree"):
        nk.taylor_expand(mlp(2, 3), 0)
    frozen = mlp(2, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        nk.linearize(frozen)
