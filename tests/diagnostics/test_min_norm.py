"""Minimum-norm Δθ = Φ⁺ r: interpolation, minimality against null-space perturbations, agreement of methods."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev, jvp, vmap

from ntkit.diagnostics import min_norm_solution
from ntkit.diagnostics._common import detached, functional, trainable

from ._nets import mlp


def _phi(net, x):
    f, p0 = functional(net), detached(trainable(net))
    jac = vmap(jacrev(lambda p, xi: f(p, xi.unsqueeze(0))[0]), in_dims=(None, 0))(p0, x)
    n, k = x.shape[0], f(p0, x[:1]).shape[1]
    return torch.cat([jac[name].reshape(n * k, -1) for name in p0], 1).numpy()


def _lin_outputs(net, x, delta):
    f, p0 = functional(net), detached(trainable(net))
    f0, lin = jvp(lambda p: f(p, x), (p0,), (delta,))
    return f0, lin


@pytest.mark.parametrize("k", [1, 3])
def test_min_norm_solution_interpolates_targets(k):
    net = mlp(d=2, width=24, k=k, seed=0)
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, k, dtype=torch.float64)
    sol = min_norm_solution(net, x, y)
    f0, lin = _lin_outputs(net, x, sol.delta)
    assert float((f0 + lin - y).abs().max()) < 1e-9
    assert sol.rank == 6 * k
    assert sol.norm <= sol.bound * (1 + 1e-12)
    # seed's form: fit y itself
    sol_y = min_norm_solution(net, x, y, subtract_initial=False)
    _, lin_y = _lin_outputs(net, x, sol_y.delta)
    assert float((lin_y - y).abs().max()) < 1e-9


def test_min_norm_is_smallest_among_solutions():
    net = mlp(d=2, width=10, k=1, seed=1)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    sol = min_norm_solution(net, x, y)
    phi = _phi(net, x)
    # a null-space vector of Φ from numpy's SVD (independent of our code)
    _, s, vh = np.linalg.svd(phi, full_matrices=False)
    rng = np.random.default_rng(0)
    z = rng.standard_normal(phi.shape[1])
    null = z - vh.T @ (vh @ z)
    assert np.linalg.norm(null) > 1 and np.abs(phi @ null).max() < 1e-10
    other = sol.flat().numpy() + null
    r = (y - net(x)[:, 0]).detach().numpy()
    assert np.abs(phi @ other - r).max() < 1e-9  # also a solution
    assert np.linalg.norm(other) > sol.norm
    assert np.linalg.norm(other) ** 2 == pytest.approx(sol.norm**2 + np.linalg.norm(null) ** 2, rel=1e-9)
    # numpy's lstsq returns the minimum-norm solution: same vector
    ref = np.linalg.lstsq(phi, r, rcond=None)[0]
    np.testing.assert_allclose(sol.flat().numpy(), ref, atol=1e-9)
    assert sol.sigma_min == pytest.approx(s.min(), rel=1e-8)


def test_kernel_and_dense_methods_agree_and_rank_deficiency():
    net = mlp(d=3, width=12, k=2, seed=2)
    x = torch.randn(4, 3, dtype=torch.float64)
    x = torch.cat([x, x[:1]])  # duplicate input: Φ loses rank
    y = torch.randn(5, 2, dtype=torch.float64)
    a = min_norm_solution(net, x, y, method="kernel")
    b = min_norm_solution(net, x, y, method="dense")
    assert a.rank == b.rank == 8
    np.testing.assert_allclose(a.flat().numpy(), b.flat().numpy(), atol=1e-8)
    phi = _phi(net, x)
    r = (y - net(x)).detach().numpy().reshape(-1)
    np.testing.assert_allclose(a.flat().numpy(), np.linalg.lstsq(phi, r, rcond=None)[0], atol=1e-8)


def test_min_norm_errors_and_to_dict():
    net = mlp()
    with pytest.raises(ValueError, match="method"):
        min_norm_solution(net, torch.randn(3, 3), torch.randn(3), method="svd")
    with pytest.raises(ValueError, match="rows"):
        min_norm_solution(net, torch.randn(3, 3), torch.randn(4))
    import json

    json.dumps(min_norm_solution(nn.Linear(2, 1).double(), torch.randn(2, 2), torch.randn(2)).to_dict())
