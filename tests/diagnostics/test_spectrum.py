"""Spectral decay: exact for a linear model (GD and flow), spectrum basics."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ntkit.diagnostics import kernel_spectrum, residual_decay, spectral_bias

from ._nets import mlp


def test_linear_model_residual_projections_decay_exactly():
    lin = nn.Linear(4, 1).double()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    sb = spectral_bias(lin, x, y, lr=0.3, steps=40, record_every=4)
    # independent truth: Θ = x xᵀ + 1 for a linear model with bias, GD factor (1 - lr λ / n)^t
    lam = torch.linalg.eigvalsh(x @ x.T + 1).flip(0)
    np.testing.assert_allclose(sb.eigenvalues.numpy(), lam.numpy(), rtol=1e-10, atol=1e-10)
    fac = (1 - 0.3 * lam / 6).unsqueeze(0) ** torch.tensor(sb.steps, dtype=torch.float64).unsqueeze(1)
    np.testing.assert_allclose(sb.observed[..., 0].numpy(), (fac * sb.observed[0, :, 0]).numpy(), atol=1e-12)
    assert sb.relative_error() < 1e-12


def test_gradient_flow_limit_matches_exponential():
    # small steps: (1 - a)^t vs exp(-a t) differ by at most t a^2 / (2 (1 - a)) · exp(-a t) (relative to r_0)
    lin = nn.Linear(3, 1).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    lr, steps = 0.01, 400
    sb = spectral_bias(lin, x, y, lr=lr, steps=steps, record_every=50, dynamics="flow")
    a = lr * sb.eigenvalues / 5
    t = torch.tensor(sb.steps, dtype=torch.float64).unsqueeze(1)
    tol = t * a**2 / (2 * (1 - a)) * torch.exp(-a * t) * sb.observed[0, :, 0].abs() + 1e-13
    assert bool(((sb.observed[..., 0] - sb.predicted[..., 0]).abs() <= tol).all())
    flow = residual_decay(sb.eigenvalues, lr, sb.steps, 5, dynamics="flow")
    np.testing.assert_allclose(flow.numpy(), torch.exp(-a * t).numpy(), rtol=1e-12)


def test_wide_network_follows_kernel_prediction_better_than_narrow():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    errs = [spectral_bias(mlp(3, w, seed=3), x, y, steps=30, record_every=10).relative_error() for w in (8, 1024)]
    assert errs[1] < errs[0]


def test_kernel_spectrum_reconstructs_and_sorted():
    a = torch.randn(5, 5, dtype=torch.float64)
    k = a @ a.T
    sp = kernel_spectrum(k)
    assert bool((sp.eigenvalues[:-1] >= sp.eigenvalues[1:]).all())
    rec = sp.eigenvectors @ torch.diag(sp.eigenvalues) @ sp.eigenvectors.T
    np.testing.assert_allclose(rec.numpy(), k.numpy(), atol=1e-10)
    ev = sp.eigenvalues.numpy()
    assert sp.effective_rank == pytest.approx(ev.sum() ** 2 / (ev**2).sum())
    with pytest.raises(ValueError, match="symmetric"):
        kernel_spectrum(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="dynamics"):
        residual_decay([1.0], 0.1, [1], 1, dynamics="euler")
    assert residual_decay([2.0], 0.5, [3], 1, dynamics="gd").item() == 0.0
    assert residual_decay([2.0], 0.5, [3.0], 2, dynamics="flow").item() == pytest.approx(math.exp(-1.5))


def test_prediction_agrees_with_predict_module_discrete_mode():
    # same conventions as ntkit.predict: its discrete-GD outputs, projected on the eigenvectors, equal ours
    from ntkit.predict import gradient_descent_mse

    lin = nn.Linear(3, 1).double()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    sb = spectral_bias(lin, x, y, lr=0.2, steps=12, record_every=4)
    with torch.no_grad():
        f0 = lin(x)[:, 0]
    pred = gradient_descent_mse(x @ x.T + 1, y, learning_rate=0.2, discrete=True)
    for i, t in enumerate(sb.steps):
        r = pred(t=float(t), fx_train_0=f0).train - y
        np.testing.assert_allclose(sb.predicted[i, :, 0].numpy(), (_evecs(x).T @ r).numpy(), atol=1e-10)


def _evecs(x):
    return kernel_spectrum(x @ x.T + 1).eigenvectors
