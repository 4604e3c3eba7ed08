"""gp_inference against the textbook posterior formula (explicit inverse) and consistency checks."""

import pytest
import torch

from ntkit.predict import NumericalWarning, gp_inference

from .helpers import rbf

D = torch.float64


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(15, 2, generator=g, dtype=D)
    xt = torch.randn(6, 2, generator=g, dtype=D)
    y = torch.sin(x[:, :1]) + 0.1 * torch.randn(15, 3, generator=g, dtype=D)
    return rbf(x, x), rbf(xt, x), rbf(xt, xt), y


@pytest.mark.parametrize("noise", [1e-3, 0.2])
def test_textbook_posterior(data, noise):
    k, kts, ktt, y = data
    s = noise * float(torch.diagonal(k).mean())
    inv = torch.linalg.inv(k + s * torch.eye(15, dtype=D))
    out = gp_inference(k, y, diag_reg=noise)(kts, ktt)
    torch.testing.assert_close(out.mean, kts @ inv @ y, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out.cov, ktt - kts @ inv @ kts.T, rtol=1e-8, atol=1e-8)
    assert torch.linalg.eigvalsh(out.cov).min() > -1e-10
    var = gp_inference(k, y, diag_reg=noise)(kts, torch.diagonal(ktt)).cov
    torch.testing.assert_close(var, torch.diagonal(out.cov))


def test_absolute_noise_and_train_points(data):
    k, _, _, y = data
    out = gp_inference(k, y[:, 0], diag_reg=0.05, diag_reg_absolute_scale=True)()
    inv = torch.linalg.inv(k + 0.05 * torch.eye(15, dtype=D))
    torch.testing.assert_close(out.mean, k @ inv @ y[:, 0])
    torch.testing.assert_close(out.cov, k - k @ inv @ k)


def test_noiseless_interpolates(data):
    k, _, _, y = data
    out = gp_inference(k, y)()
    torch.testing.assert_close(out.mean, y, rtol=0, atol=1e-7)
    assert out.cov.abs().max() < 1e-6


def test_singular_kernel_reports_fallback():
    x = torch.randn(8, 2, dtype=D)
    k = x @ x.T
    with pytest.warns(NumericalWarning, match="Cholesky failed"):
        out = gp_inference(k, torch.randn(8, dtype=D))(k[:3])
    assert torch.isfinite(out.mean).all()


def test_bad_inputs(data):
    k, kts, ktt, y = data
    with pytest.raises(ValueError, match="rows"):
        gp_inference(k, y[:4])
    with pytest.raises(ValueError, match=r"\(6, 6\) or \(6,\)"):
        gp_inference(k, y)(kts, ktt[:3])
    with pytest.raises(ValueError, match="k_test_train"):
        gp_inference(k, y)(kts[:, :4])
