"""ntkit.train against the closed-form dynamics: linearised networks exactly, wide networks approximately."""

import math
import warnings

import pytest
import torch

import ntkit as nk
from ntkit import layers as L
from ntkit.predict import gradient_descent_mse, max_learning_rate
from tests.predict.helpers import jacobian_ntk, mlp

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread (thread-pool contention costs 100x on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(21)
    x = torch.randn(10, 3, generator=g, dtype=D)
    xt = torch.randn(4, 3, generator=g, dtype=D)
    y = torch.randn(10, 1, generator=g, dtype=D)
    return x, xt, y


def test_linearised_gd_matches_closed_form_every_step(data):
    x, xt, y = data
    net = mlp(3, 64)
    with torch.no_grad():
        f0, g0 = net(x), net(xt)
    theta, theta_ts = jacobian_ntk(net, x), jacobian_ntk(net, xt, x)
    lr = 0.5 * max_learning_rate(theta)
    steps = 60
    rec = nk.train(nk.linearize(net), x, y, lr=lr, steps=steps, record_every=7, x_test=xt, y_test=torch.zeros(4, 1))
    assert rec.steps.tolist() == [0, 7, 14, 21, 28, 35, 42, 49, 56, 60]
    # discrete closed form: exact up to round-off at every recorded step
    exact = gradient_descent_mse(theta, y, learning_rate=lr, discrete=True)(rec.times, f0, g0, theta_ts)
    torch.testing.assert_close(rec.train_outputs, exact.train, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rec.test_outputs, exact.test, rtol=1e-10, atol=1e-10)
    # gradient flow: |exp(-a t) - (1 - a)^t| <= t a^2 / 2 per eigendirection (0 <= a <= 1)
    flow = gradient_descent_mse(theta, y, learning_rate=lr)(rec.times, f0, g0, theta_ts)
    a_max = lr * float(torch.linalg.eigvalsh(theta)[-1]) / 10
    assert a_max <= 1
    bound = rec.times * a_max**2 / 2 * float((f0 - y).norm())
    gap = (rec.train_outputs - flow.train).flatten(1).norm(dim=1)
    assert (gap <= bound + 1e-12).all()
    assert gap[-1] > 1e-6  # the discrete/continuous difference is real, so the exact match above is not trivial
    # loss and test loss consistent with the outputs
    torch.testing.assert_close(rec.loss, 0.5 * (rec.train_outputs - y).pow(2).sum((1, 2)) / 10)
    torch.testing.assert_close(rec.test_loss, 0.5 * rec.test_outputs.pow(2).sum((1, 2)) / 4)


def test_distance_equals_rkhs_norm_of_output_change(data):
    """For the linearised model delta = J^T alpha, so ||delta||^2 = g^T Theta^{-1} g with g = f_t - f_0."""
    x, _, y = data
    net = mlp(3, 64)
    theta = jacobian_ntk(net, x)
    lin = nk.linearize(net)
    rec = nk.train(lin, x, y, lr=0.5, steps=30, record_every=10)
    g = (rec.train_outputs - rec.train_outputs[0])[..., 0]  # (R, n)
    ref = torch.einsum("ri,ri->r", g, torch.linalg.solve(theta, g.T).T).sqrt()
    torch.testing.assert_close(rec.distance, ref, rtol=1e-6, atol=1e-9)
    parts = torch.stack(list(rec.param_distance.values())).pow(2).sum(0).sqrt()
    torch.testing.assert_close(parts, rec.distance)
    norm0 = math.sqrt(sum(float(b.pow(2).sum()) for b in lin.theta0().values()))
    torch.testing.assert_close(rec.relative_distance, rec.distance / norm0)


def test_recorded_kernels(data):
    x, xt, y = data
    net = mlp(3, 32)
    ref = jacobian_ntk(net, x)
    rec_lin = nk.train(nk.linearize(net), x, y, lr=0.5, steps=20, record=("kernel",), record_every=10)
    for k in rec_lin.kernel_train:  # default ntkit.empirical_ntk; the linearised model's kernel never changes
        torch.testing.assert_close(k, ref, rtol=1e-10, atol=1e-10)
    rec = nk.train(net, x, y, lr=2.0, steps=20, record=("kernel",), record_every=20, x_test=xt,
                   kernel_fn=lambda m, a, b: jacobian_ntk(m, a, b))
    torch.testing.assert_close(rec.kernel_train[0], ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rec.kernel_test_train[0], jacobian_ntk(mlp(3, 32), xt, x), rtol=1e-10, atol=1e-10)
    assert (rec.kernel_train[-1] - ref).abs().max() > 1e-6  # the real network's kernel moves
    rec0 = nk.train(mlp(3, 32), x, y, lr=1.0, steps=0, record=("kernel",), x_test=xt)  # default kernel_fn
    assert rec0.steps.tolist() == [0]
    torch.testing.assert_close(rec0.kernel_train[0], ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rec0.kernel_test_train[0], rec.kernel_test_train[0], rtol=1e-10, atol=1e-10)


def test_momentum_matches_function_space_heavy_ball(data):
    x, _, y = data
    net = mlp(3, 32)
    theta = jacobian_ntk(net, x)
    with torch.no_grad():
        f = net(x)
    lr, m, steps = 0.3, 0.8, 25
    rec = nk.train(nk.linearize(net), x, y, lr=lr, steps=steps, optimizer="momentum", momentum=m)
    prev = f.clone()
    for s in range(steps + 1):
        torch.testing.assert_close(rec.train_outputs[s], f, rtol=1e-10, atol=1e-10)
        f, prev = f + m * (f - prev) - lr / 10 * theta @ (f - y), f


def test_losses_and_divergence(data):
    x, _, _ = data
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    net = mlp(3, 16, k=3)
    rec = nk.train(net, x, labels, loss="cross_entropy", lr=1.0, steps=30, record_every=30)
    assert rec.loss[-1] < rec.loss[0]
    torch.testing.assert_close(rec.loss[-1], torch.nn.functional.cross_entropy(net(x), labels).detach())
    rec2 = nk.train(mlp(3, 16, k=3), x, labels, loss=lambda f, t: torch.nn.functional.cross_entropy(f, t),
                    lr=1.0, steps=30, record_every=30)
    torch.testing.assert_close(rec2.loss, rec.loss)
    with pytest.warns(RuntimeWarning, match="diverged"):
        bad = nk.train(mlp(3, 16), x, torch.zeros(10, 1, dtype=D), lr=1e4, steps=500, record=("loss",))
    assert bad.diverged and not math.isfinite(bad.loss[-1])


def test_bad_inputs(data):
    x, _, y = data
    net = mlp(3, 4)
    with pytest.raises(ValueError, match="lr"):
        nk.train(net, x, y, lr=0.0, steps=1)
    with pytest.raises(ValueError, match="steps"):
        nk.train(net, x, y, lr=0.1, steps=-1)
    with pytest.raises(ValueError, match="record"):
        nk.train(net, x, y, lr=0.1, steps=1, record=("weights",))
    with pytest.raises(ValueError, match="rows"):
        nk.train(net, x, y[:5], lr=0.1, steps=1)
    with pytest.raises(ValueError, match="non-finite"):
        nk.train(net, x * math.nan, y, lr=0.1, steps=1)
    with pytest.raises(ValueError, match="optimizer"):
        nk.train(net, x, y, lr=0.1, steps=1, optimizer="lbfgs")


# ---- wide networks track the infinite-width closed form ---------------------


def _wide_gap(width: int, seed: int, x, xt, y, lr: float, steps: int, k_inf, kts_inf) -> tuple[float, float]:
    """RMS over records and points of (network - infinite-NTK closed form), and RMS test movement."""
    arch = L.serial(L.Dense(width), L.Relu(), L.Dense(1))
    net = arch.init((x.shape[1],), width=width, seed=seed, dtype=D)
    with torch.no_grad():
        f0, g0 = net(x), net(xt)
    rec = nk.train(net, x, y, lr=lr, steps=steps, record_every=steps // 4, x_test=xt, record=("outputs",))
    pred = gradient_descent_mse(k_inf, y, learning_rate=lr, discrete=True)(rec.times, f0, g0, kts_inf)
    diff = torch.cat([(rec.train_outputs - pred.train).flatten(), (rec.test_outputs - pred.test).flatten()])
    moved = float((rec.test_outputs[-1] - g0).pow(2).mean().sqrt())
    return float(diff.pow(2).mean().sqrt()), moved


def test_wide_networks_track_infinite_ntk_with_shrinking_gap():
    """Finite-width corrections (kernel fluctuation at init and kernel motion) are O(width^-1/2).

    The gap is measured against the *discrete* closed form with the network's own initial outputs,
    so it holds only those corrections. Averaging the RMS gap over 4 seeds, theory predicts
    gap(2048)/gap(256) ~ sqrt(256/2048) = 0.35 (measured while writing this test: 0.31 here, and
    0.38 from 2048 to 8192); we require < 0.6, leaving room for seed fluctuation, and the
    gap at 2048 must be small against how far the test outputs move. The kernel is well
    conditioned (n = d = 8): with near-singular kernels the slow modes amplify the fluctuations
    and far more seeds are needed to see the trend.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 8, generator=g, dtype=D)
    xt = torch.randn(5, 8, generator=g, dtype=D)
    y = torch.sin(x.sum(1, keepdim=True))
    arch = L.serial(L.Dense(1), L.Relu(), L.Dense(1))
    k_inf = arch.kernel(x, get="ntk").ntk
    kts_inf = arch.kernel(xt, x, get="ntk").ntk
    lr = 0.5 * max_learning_rate(k_inf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numerical fallbacks expected
        res = {w: [_wide_gap(w, s, x, xt, y, lr, 40, k_inf, kts_inf) for s in range(4)] for w in (256, 2048)}
    gap = {w: sum(r[0] for r in rs) / 4 for w, rs in res.items()}
    moved = sum(r[1] for r in res[2048]) / 4
    assert gap[2048] < 0.6 * gap[256], gap
    assert gap[2048] < 0.1 * moved, (gap, moved)
