"""gradient_descent_mse_ensemble: prior at t=0, GP posterior at t=inf (NNGP), Monte Carlo over initialisations."""

from types import SimpleNamespace

import pytest
import torch

from ntkit.predict import gp_inference, gradient_descent_mse, gradient_descent_mse_ensemble

D = torch.float64


def relu_kernels(x1, x2=None, get=None):
    """One-hidden-layer ReLU network (NTK parameterisation, W_std=1, no bias) in closed form (arc-cosine)."""
    x2 = x1 if x2 is None else x2
    d = x1.shape[1]
    s12 = x1 @ x2.T / d
    n1 = (x1.pow(2).sum(1) / d).sqrt()[:, None]
    n2 = (x2.pow(2).sum(1) / d).sqrt()[None, :]
    cos = (s12 / (n1 * n2)).clamp(-1, 1)
    th = torch.arccos(cos)
    nngp = n1 * n2 * (torch.sin(th) + (torch.pi - th) * cos) / (2 * torch.pi)
    ntk = nngp + s12 * (torch.pi - th) / (2 * torch.pi)
    return SimpleNamespace(nngp=nngp, ntk=ntk)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, generator=g, dtype=D)
    xt = torch.randn(4, 3, generator=g, dtype=D)
    y = torch.randn(8, generator=g, dtype=D)
    return x, xt, y


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_t0_is_prior(data, get):
    x, xt, y = data
    out = gradient_descent_mse_ensemble(relu_kernels, x, y)(xt, get=get, t=0.0, compute_cov=True)
    torch.testing.assert_close(out.mean, torch.zeros(4, dtype=D), rtol=0, atol=1e-14)
    torch.testing.assert_close(out.cov, relu_kernels(xt).nngp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x_test_none", [False, True])
def test_nngp_infinite_time_is_gp_posterior(data, x_test_none):
    x, xt, y = data
    ens = gradient_descent_mse_ensemble(relu_kernels, x, y, diag_reg=1e-4)
    out = ens(None if x_test_none else xt, get="nngp", t=None, compute_cov=True)
    k = relu_kernels(x).nngp
    post = gp_inference(k, y, diag_reg=1e-4)
    ref = post() if x_test_none else post(relu_kernels(xt, x).nngp, relu_kernels(xt).nngp)
    torch.testing.assert_close(out.mean, ref.mean, rtol=1e-8, atol=1e-8)
    # with a ridge the ensemble covariance is the GP one plus rho^2-order terms; compare ridgeless instead
    ens0 = gradient_descent_mse_ensemble(relu_kernels, x, y)
    out0 = ens0(None if x_test_none else xt, get="nngp", t=None, compute_cov=True)
    ref0 = gp_inference(k, y)() if x_test_none else gp_inference(k, y)(relu_kernels(xt, x).nngp,
                                                                       relu_kernels(xt).nngp)
    torch.testing.assert_close(out0.cov, ref0.cov, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_monte_carlo_over_initialisations(data, get):
    """Sample f_0 ~ GP(0, K), train each with gradient_descent_mse; mean/cov within 5 standard errors."""
    x, xt, y = data
    lr, t, s = 1.0, 6.0, 4000
    xa = torch.cat([x, xt])
    kj = relu_kernels(xa).nngp
    chol = torch.linalg.cholesky(kj + 1e-12 * torch.eye(12, dtype=D))
    z = chol @ torch.randn(12, s, generator=torch.Generator().manual_seed(0), dtype=D)  # samples as columns
    kdyn = relu_kernels(x).__dict__[get]
    kts = relu_kernels(xt, x).__dict__[get]
    p = gradient_descent_mse(kdyn, y[:, None].expand(8, s), learning_rate=lr)
    samples = p(t, z[:8], z[8:], kts).test  # (4, s)
    out = gradient_descent_mse_ensemble(relu_kernels, x, y, learning_rate=lr)(xt, get=get, t=t, compute_cov=True)
    mean_mc = samples.mean(1)
    se_mean = samples.std(1) / s**0.5
    assert ((out.mean - mean_mc).abs() < 5 * se_mean).all()
    c = samples - out.mean[:, None]  # centred at the exact mean
    prods = c[:, None, :] * c[None, :, :]
    cov_mc, se_cov = prods.mean(-1), prods.std(-1) / s**0.5
    assert ((out.cov - cov_mc).abs() < 5 * se_cov + 1e-12).all()
    # and the spread is not trivially zero: training has not collapsed the prior
    assert torch.diagonal(out.cov).min() > 1e-3


def test_vector_times_and_arch_interface(data):
    x, xt, y = data

    class Arch:
        def kernel(self, x1, x2=None, get=None):
            return relu_kernels(x1, x2)

    ens = gradient_descent_mse_ensemble(Arch(), x, y, learning_rate=0.5)
    ts = [0.0, 2.0, 50.0]
    out = ens(xt, t=ts, compute_cov=True)
    assert out.mean.shape == (3, 4) and out.cov.shape == (3, 4, 4)
    one = ens(xt, t=2.0, compute_cov=True)
    torch.testing.assert_close(out.mean[1], one.mean)
    torch.testing.assert_close(out.cov[1], one.cov)


def test_bad_inputs(data):
    x, xt, y = data
    with pytest.raises(TypeError, match="kernel_fn"):
        gradient_descent_mse_ensemble(3, x, y)
    ens = gradient_descent_mse_ensemble(relu_kernels, x, y)
    with pytest.raises(ValueError, match="get"):
        ens(xt, get="foo")
    with pytest.raises(ValueError, match=">= 0"):
        ens(xt, t=-1.0)
    with pytest.raises(ValueError, match="x_test"):
        ens(xt[:, :2])


def test_ntkit_architecture_matches_closed_form_kernels(data):
    """arch = Dense-Relu-Dense (NTK parameterisation, no bias) has the arc-cosine kernels written above."""
    from ntkit import layers as L

    x, xt, y = data
    arch = L.serial(L.Dense(512), L.Relu(), L.Dense(1))
    a = gradient_descent_mse_ensemble(arch, x, y, learning_rate=0.5)(xt, get="ntk", t=3.0, compute_cov=True)
    b = gradient_descent_mse_ensemble(relu_kernels, x, y, learning_rate=0.5)(xt, get="ntk", t=3.0, compute_cov=True)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(a.cov, b.cov, rtol=1e-9, atol=1e-9)
