"""gradient_descent_mse against independent truths: solve, Euler integration, explicit GD iteration."""

import math
import warnings

import pytest
import torch

from ntkit.predict import NumericalWarning, gradient_descent_mse

from .helpers import euler_mse, rbf

D = torch.float64


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=g, dtype=D)
    xt = torch.randn(5, 3, generator=g, dtype=D)
    k = rbf(x, x)
    kts = rbf(xt, x)
    y = torch.randn(12, 2, generator=g, dtype=D)
    f0 = 0.3 * torch.randn(12, 2, generator=g, dtype=D)
    g0 = 0.3 * torch.randn(5, 2, generator=g, dtype=D)
    return k, kts, y, f0, g0


def test_t0_returns_initial_outputs(problem):
    k, kts, y, f0, g0 = problem
    out = gradient_descent_mse(k, y, learning_rate=0.7)(0.0, f0, g0, kts)
    torch.testing.assert_close(out.train, f0, rtol=0, atol=1e-14)
    torch.testing.assert_close(out.test, g0, rtol=0, atol=1e-14)


def test_infinite_time_interpolates_and_equals_solve(problem):
    k, kts, y, f0, g0 = problem
    out = gradient_descent_mse(k, y)(None, f0, g0, kts)
    torch.testing.assert_close(out.train, y, rtol=0, atol=1e-8)
    ref = g0 + kts @ torch.linalg.solve(k, y - f0)
    torch.testing.assert_close(out.test, ref, rtol=1e-9, atol=1e-9)


def test_large_t_approaches_infinite_limit(problem):
    k, kts, y, f0, g0 = problem
    p = gradient_descent_mse(k, y, learning_rate=1.0)
    lam_min = float(p.eigenvalues[0])
    t = 40.0 * k.shape[0] / lam_min  # exp(-40) of the slowest mode is left
    a, b = p(t, f0, g0, kts), p(None, f0, g0, kts)
    torch.testing.assert_close(a.test, b.test, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_closed_form_equals_euler_richardson(problem, rho):
    """Euler has O(h) error: Richardson 2 E(h/2) - E(h) must be far closer to the closed form than E(h/2)."""
    k, kts, y, f0, g0 = problem
    lr, t, h = 2.0, 15.0, 0.02
    p = gradient_descent_mse(k, y, learning_rate=lr, diag_reg=rho, diag_reg_absolute_scale=True)
    out = p(t, f0, g0, kts)
    e1 = euler_mse(k, kts, y, f0, g0, lr, t, h, rho)
    e2 = euler_mse(k, kts, y, f0, g0, lr, t, h / 2, rho)
    for i in range(2):
        diff = (e1[i] - e2[i]).abs().max()
        assert diff > 0
        rich = 2 * e2[i] - e1[i]
        closed = out.train if i == 0 else out.test
        assert (closed - e2[i]).abs().max() < 1.5 * diff  # O(h) error of the finer Euler run
        assert (closed - rich).abs().max() < 0.05 * diff  # O(h^2) after extrapolation


def test_discrete_equals_explicit_gd_iteration(problem):
    k, kts, y, f0, g0 = problem
    n, lr = k.shape[0], 3.0
    p = gradient_descent_mse(k, y, learning_rate=lr, discrete=True)
    steps = [0, 1, 2, 7, 30]
    out = p(torch.tensor(steps, dtype=D), f0, g0, kts)
    f, g = f0.clone(), g0.clone()
    for s in range(max(steps) + 1):
        if s in steps:
            i = steps.index(s)
            torch.testing.assert_close(out.train[i], f, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out.test[i], g, rtol=1e-12, atol=1e-12)
        res = f - y
        f, g = f - lr / n * k @ res, g - lr / n * kts @ res
    with pytest.raises(ValueError, match="whole numbers"):
        p(1.5)


def test_vector_times_and_multi_output(problem):
    k, kts, y, f0, g0 = problem
    p = gradient_descent_mse(k, y, learning_rate=0.5)
    ts = torch.tensor([0.5, 3.0, 20.0], dtype=D)
    out = p(ts, f0, g0, kts)
    assert out.train.shape == (3, 12, 2) and out.test.shape == (3, 5, 2)
    for i, t in enumerate(ts):
        one = p(float(t), f0, g0, kts)
        torch.testing.assert_close(out.test[i], one.test)
        col = gradient_descent_mse(k, y[:, 1], learning_rate=0.5)(float(t), f0[:, 1], g0[:, 1], kts)
        assert col.train.shape == (12,)
        torch.testing.assert_close(out.train[i][:, 1], col.train)
        torch.testing.assert_close(out.test[i][:, 1], col.test)


def test_ridge_limit_is_kernel_ridge_regression(problem):
    k, kts, y, f0, g0 = problem
    rel = 0.1
    rho = rel * float(torch.diagonal(k).mean())
    out = gradient_descent_mse(k, y, diag_reg=rel)(None, f0, g0, kts)
    alpha = torch.linalg.solve(k + rho * torch.eye(12, dtype=D), y - f0)
    torch.testing.assert_close(out.train, f0 + k @ alpha)
    torch.testing.assert_close(out.test, g0 + kts @ alpha)


def test_loss_normalization_conversion(problem):
    """The 1/2-mean-over-all-entries convention (N = n k) is our convention with lr / k."""
    k, kts, y, f0, g0 = problem
    a = gradient_descent_mse(k, y, learning_rate=1.0, loss_normalization=24)(5.0, f0, g0, kts)
    b = gradient_descent_mse(k, y, learning_rate=0.5)(5.0, f0, g0, kts)
    torch.testing.assert_close(a.test, b.test)


def test_singular_kernel_warns_and_uses_pseudo_inverse():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 3, generator=g, dtype=D)  # rank 3 linear kernel
    xt = torch.randn(4, 3, generator=g, dtype=D)
    k, kts = x @ x.T, xt @ x.T
    y = torch.randn(10, generator=g, dtype=D)
    p = gradient_descent_mse(k, y, learning_rate=1.0)
    with pytest.warns(NumericalWarning, match="smallest eigenvalue"):
        out = p(None, 0.0, None, kts)
    ref = kts @ torch.linalg.pinv(k, hermitian=True) @ y
    torch.testing.assert_close(out.test, ref, rtol=1e-8, atol=1e-8)
    # finite-time predictions converge to the same min-norm limit (zero modes never move the test outputs)
    lam = p.eigenvalues
    t = 40.0 * 10 / float(lam[lam > 1e-8 * lam[-1]][0])
    torch.testing.assert_close(p(t, 0.0, None, kts).test, ref, rtol=1e-7, atol=1e-7)
    assert torch.isfinite(p(1e12, 0.0, None, kts).test).all()


def test_indefinite_kernels():
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=D))
    y = torch.randn(6, dtype=D)
    bad = q @ torch.diag(torch.tensor([-1.0, 0.5, 1, 2, 3, 4], dtype=D)) @ q.T
    with pytest.raises(ValueError, match="not positive semi-definite.*-1"):
        gradient_descent_mse(bad, y)(1.0)
    slight = q @ torch.diag(torch.tensor([-1e-5, 0.5, 1, 2, 3, 4], dtype=D)) @ q.T
    with pytest.warns(NumericalWarning, match="smallest eigenvalue -1e-05"):
        out = gradient_descent_mse(slight, y)(1.0)
    assert torch.isfinite(out.train).all()


def test_float32_inputs_give_float32_matching_float64(problem):
    k, kts, y, f0, g0 = problem
    ref = gradient_descent_mse(k, y)(3.0, f0, g0, kts)
    out = gradient_descent_mse(k.float(), y.float())(3.0, f0.float(), g0.float(), kts.float())
    assert out.train.dtype == torch.float32 and out.test.dtype == torch.float32
    torch.testing.assert_close(out.test.double(), ref.test, rtol=1e-5, atol=1e-5)
    out32 = gradient_descent_mse(k, y, dtype=torch.float32)(3.0, f0, g0, kts)
    assert out32.test.dtype == torch.float64
    torch.testing.assert_close(out32.test, ref.test, rtol=1e-4, atol=1e-4)


def test_no_warning_on_healthy_kernel(problem):
    k, kts, y, f0, g0 = problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = gradient_descent_mse(k, y)
        p(None, f0, g0, kts)
        p([1.0, 2.0], f0, g0, kts)


@pytest.mark.parametrize(
    "kwargs, call, match",
    [
        ({"y_train": torch.zeros(11)}, {}, "11 rows"),
        ({"k_train_train": torch.zeros(12, 11)}, {}, "square"),
        ({"k_train_train": torch.full((12, 12), math.nan)}, {}, "non-finite"),
        ({"y_train": torch.full((12,), math.inf)}, {}, "non-finite"),
        ({"learning_rate": 0.0}, {}, "learning_rate"),
        ({"diag_reg": -1.0}, {}, "diag_reg"),
        ({}, {"t": -1.0}, ">= 0"),
        ({}, {"t": [1.0, -2.0]}, ">= 0"),
        ({}, {"t": math.inf}, "finite"),
        ({}, {"t": 1.0, "k_test_train": torch.zeros(3, 5)}, "n_test, 12"),
        ({}, {"t": 1.0, "fx_test_0": torch.zeros(3)}, "without k_test_train"),
        ({}, {"t": 1.0, "fx_train_0": torch.zeros(5)}, "fx_train_0"),
    ],
)
def test_bad_inputs(problem, kwargs, call, match):
    k, kts, y, f0, g0 = problem
    args = {"k_train_train": k, "y_train": y[:, 0], **kwargs}
    with pytest.raises(ValueError, match=match):
        gradient_descent_mse(**args)(**call)


def test_asymmetric_kernel_rejected(problem):
    k = problem[0].clone()
    k[0, 1] += 0.5
    with pytest.raises(ValueError, match="symmetric"):
        gradient_descent_mse(k, torch.zeros(12, dtype=D))
