"""gradient_descent (function-space ODE) against closed forms and against trained linearised networks."""

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.predict import gradient_descent, gradient_descent_mse

from .helpers import jacobian_ntk, mlp, rbf

D = torch.float64


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 2, generator=g, dtype=D)
    xt = torch.randn(4, 2, generator=g, dtype=D)
    y = torch.randn(10, 2, generator=g, dtype=D)
    f0 = 0.2 * torch.randn(10, 2, generator=g, dtype=D)
    g0 = 0.2 * torch.randn(4, 2, generator=g, dtype=D)
    return rbf(x, x), rbf(xt, x), y, f0, g0


def test_mse_matches_closed_form(problem):
    k, kts, y, f0, g0 = problem
    ts = [0.0, 1.0, 7.5, 40.0]
    ode = gradient_descent("mse", k, y, learning_rate=1.5)(ts, f0, g0, kts)
    ref = gradient_descent_mse(k, y, learning_rate=1.5)(ts, f0, g0, kts)
    torch.testing.assert_close(ode.train, ref.train, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(ode.test, ref.test, rtol=1e-7, atol=1e-8)


def test_callable_loss_equals_named(problem):
    k, kts, y, f0, g0 = problem

    def my_mse(f, yy):
        return 0.5 * ((f - yy) ** 2).sum() / f.shape[0]

    a = gradient_descent(my_mse, k, y)(3.0, f0, g0, kts)
    b = gradient_descent("mse", k, y)(3.0, f0, g0, kts)
    torch.testing.assert_close(a.test, b.test, rtol=1e-8, atol=1e-10)


def _damped(u0, a, m, t):
    """m u'' + (1-m) u' + a u = 0, u(0)=u0, u'(0)=0, per eigendirection (complex roots allowed)."""
    disc = np.sqrt((1 - m) ** 2 - 4 * m * a + 0j)
    r1, r2 = (-(1 - m) + disc) / (2 * m), (-(1 - m) - disc) / (2 * m)
    c1, c2 = -r2 * u0 / (r1 - r2), r1 * u0 / (r1 - r2)
    return (c1 * np.exp(r1 * t) + c2 * np.exp(r2 * t)).real


def test_momentum_mse_matches_damped_oscillator(problem):
    k, kts, y, f0, g0 = problem
    lr, m, n = 2.0, 0.6, 10
    ts = np.array([0.0, 2.0, 9.0, 25.0])
    out = gradient_descent("mse", k, y, learning_rate=lr, momentum=m)(ts, f0, g0, kts)
    lam, v = np.linalg.eigh(k.numpy())
    u0 = v.T @ (f0 - y).numpy()  # (n, 2)
    for i, t in enumerate(ts):
        u = _damped(u0, (lr * lam / n)[:, None], m, t)
        np.testing.assert_allclose(out.train[i].numpy(), y.numpy() + v @ u, rtol=1e-6, atol=1e-8)
    # test outputs move along Theta_ts Theta^-1 of the train movement (f - f0 = -lr Theta h)
    ref_test = g0 + kts @ torch.linalg.solve(k, (out.train - f0).transpose(0, 1).reshape(10, -1)).reshape(
        10, 4, 2).transpose(0, 1)
    torch.testing.assert_close(out.test, ref_test, rtol=1e-6, atol=1e-7)


def _train_linearised_ce(width, lr, steps, x, labels):
    net = mlp(2, width, k=3, seed=11)
    net[0].requires_grad_(False)  # readout-only: the NTK is exactly (phi phi^T) x I_k, what the ODE models
    lin = nk.linearize(net)
    rec = nk.train(lin, x, labels, loss="cross_entropy", lr=lr, steps=steps, record_every=steps)
    return net, rec.train_outputs[-1]


def test_cross_entropy_matches_gd_on_linearised_network():
    """GD differs from the flow by O(lr): Richardson 2 E(lr/2) - E(lr) must agree with the ODE far better."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(9, 2, generator=g, dtype=D)
    labels = torch.tensor([0, 1, 2] * 3)
    lr, steps = 0.5, 40
    net, e1 = _train_linearised_ce(32, lr, steps, x, labels)
    _, e2 = _train_linearised_ce(32, lr / 2, 2 * steps, x, labels)
    with torch.no_grad():
        f0 = net(x)
    theta = jacobian_ntk(net, x)
    ode = gradient_descent("cross_entropy", theta, labels, learning_rate=lr)(float(steps), f0).train
    diff = (e1 - e2).abs().max()
    assert diff > 1e-6
    assert (ode - e2).abs().max() < 1.5 * diff
    assert (ode - (2 * e2 - e1)).abs().max() < 0.1 * diff
    # cross-entropy gradients sum to zero over classes: per-example output sums are conserved
    torch.testing.assert_close(ode.sum(1), f0.sum(1), rtol=0, atol=1e-7)


def test_errors(problem):
    k, kts, y, f0, g0 = problem
    with pytest.raises(ValueError, match="momentum"):
        gradient_descent("mse", k, y, momentum=1.0)
    with pytest.raises(ValueError, match="loss"):
        gradient_descent("hinge", k, y)
    with pytest.raises(ValueError, match="t must be given"):
        gradient_descent("mse", k, y)(None)
    with pytest.raises(ValueError, match=">= 0"):
        gradient_descent("mse", k, y)(-1.0)
    with pytest.raises(ValueError, match="rows"):
        gradient_descent("mse", k, y[:3])
