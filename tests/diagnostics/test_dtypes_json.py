"""float32 and float64 both work end to end, and every result's to_dict() is JSON-serialisable."""

import json

import pytest
import torch

from ntkit import layers as L
from ntkit.diagnostics import (
    SeedTwoLayerNet,
    alpha_scaling,
    generalization_bound,
    kappa,
    kernel_convergence,
    kernel_spectrum,
    lazy_training,
    linearization_error,
    min_norm_solution,
    spectral_bias,
)

from ._nets import mlp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_measurements_in_both_dtypes(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g).to(dtype)
    y = torch.randn(6, generator=g).to(dtype)
    net = mlp(d=3, width=32, seed=0, dtype=dtype)
    results = [
        lazy_training(net, x, y, steps=5),
        kappa(net, x, y, tol=1e-4),
        linearization_error(net, x, y, steps=5),
        linearization_error(SeedTwoLayerNet(3, 16, dtype=dtype), x, y, steps=5),
        min_norm_solution(net, x, y),
        spectral_bias(net, x, y, steps=5),
        alpha_scaling(net, x, y, [1.0, 10.0], steps=3),
        kernel_spectrum(x.double() @ x.double().T),
        generalization_bound(y.sign(), x, normalize=True),
        kernel_convergence(L.serial(L.Dense(8), L.Erf(), L.Dense(1)), x, widths=[8, 16], seeds=[0], dtype=dtype),
    ]
    for r in results:
        json.dumps(r.to_dict())
    assert results[0].kernel_change[-1] > 0
    assert results[4].rank == 6


def test_nonfinite_inputs_rejected():
    net = mlp()
    x = torch.randn(4, 3, dtype=torch.float64)
    bad = x.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        lazy_training(net, bad, torch.randn(4))
    with pytest.raises(ValueError, match="non-finite"):
        kappa(net, x, torch.tensor([0.0, float("inf"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="lr"):
        lazy_training(net, x, torch.randn(4), lr="fast")
