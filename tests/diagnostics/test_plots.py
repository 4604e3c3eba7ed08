"""Every plotting helper returns a matplotlib Figure with drawn axes."""

import pytest
import torch

pytest.importorskip("matplotlib")

from ntkit import layers as L  # noqa: E402
from ntkit.diagnostics import (  # noqa: E402
    SeedTwoLayerNet,
    alpha_scaling,
    generalization_bound,
    kappa_scaling,
    kernel_convergence,
    kernel_spectrum,
    lazy_scaling,
    lazy_training,
    linearization_error,
    min_norm_solution,
    parameterization_comparison,
    spectral_bias,
)
from ntkit.diagnostics import plots as P  # noqa: E402

from ._nets import mlp  # noqa: E402


def test_all_plots_build_figures(tmp_path):
    from matplotlib.figure import Figure

    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randn(5, dtype=torch.float64)
    arch = L.serial(L.Dense(8), L.Erf(), L.Dense(1))
    net = mlp(d=3, width=16)
    figs = [
        P.plot_kernel_convergence(kernel_convergence(arch, x, widths=[8, 32], seeds=[0])),
        P.plot_lazy_training(lazy_training(net, x, y, steps=4, kernel_every=1)),
        P.plot_lazy_scaling(lazy_scaling(arch, x, y, widths=[8, 32], seeds=[0], steps=3, dtype=torch.float64)),
        P.plot_kappa_scaling(kappa_scaling(arch, x, y, widths=[8, 32], seeds=[0], tol=1e-3)),
        P.plot_linearization([linearization_error(SeedTwoLayerNet(3, 8), x, y, steps=4)]),
        P.plot_min_norm([min_norm_solution(mlp(3, w), x, y) for w in (8, 32)], [8, 32]),
        P.plot_spectrum(kernel_spectrum(x @ x.T)),
        P.plot_spectral_bias(spectral_bias(net, x, y, steps=4)),
        P.plot_alpha_scaling(alpha_scaling(net, x, y, [1.0, 10.0], steps=3, x_test=x, y_test=y)),
        P.plot_parameterization_comparison(parameterization_comparison(
            {"ntk": arch}, x, y, widths=[8, 32], seeds=[0], steps=3, x_test=x, y_test=y, dtype=torch.float64)),
        P.plot_generalization_bounds(["y"], [generalization_bound(y, x, normalize=True)]),
    ]
    for fig in figs:
        assert isinstance(fig, Figure) and fig.axes
    figs[0].savefig(tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0
