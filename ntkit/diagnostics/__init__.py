"""Theory diagnostics: measure on real networks what the NTK theory predicts.

One module per measurement; every function returns a dataclass with a
``to_dict()`` (JSON-serialisable) and has a plotting helper in
:mod:`ntkit.diagnostics.plots`. Conventions (loss ``1/(2n) Σ ||f − y||²``,
full-batch GD, time in steps) follow :mod:`ntkit.predict`; see
``docs/diagnostics.md``.

* :func:`kernel_convergence` — empirical vs infinite-width kernel over widths, slope fit;
* :func:`lazy_training`, :func:`lazy_scaling`, :func:`kernel_change`, :func:`weight_change`
  — how far the NTK and the weights move during training;
* :func:`kappa`, :func:`kappa_scaling`, :func:`hessian_operator_norm` — Chizat et al.'s κ;
* :func:`linearization_error`, :class:`SeedTwoLayerNet`, :func:`prop14_1_bound` — ``|f − f_lin|``;
* :func:`min_norm_solution` — ``Δθ = Φ⁺ r`` of the linearised model;
* :func:`kernel_spectrum`, :func:`residual_decay`, :func:`spectral_bias`;
* :func:`generalization_bound`, :func:`two_layer_relu_ntk`, :func:`kernel_target_alignment`;
* :func:`alpha_scaling`, :class:`AlphaScaled`, :func:`parameterization_comparison`;
* :func:`fit_power_law` — log-log slope with a confidence interval.

Examples
--------
>>> import torch
>>> from ntkit import diagnostics as D
>>> round(D.fit_power_law([100, 400], [0.1, 0.05]).slope, 9)
-0.5
"""

from ._fit import PowerLawFit, fit_power_law
from .bounds import (
    GeneralizationBound,
    generalization_bound,
    kernel_target_alignment,
    two_layer_relu_ntk,
)
from .convergence import KernelConvergence, kernel_convergence, relative_distance
from .kappa import KappaResult, KappaScaling, hessian_operator_norm, kappa, kappa_scaling
from .lazy import (
    LazyScaling,
    LazyTrainingTrace,
    kernel_change,
    lazy_scaling,
    lazy_training,
    weight_change,
)
from .linearization import (
    SMOOTHNESS,
    LinearizationTrace,
    SeedTwoLayerNet,
    linearization_error,
    prop14_1_bound,
)
from .min_norm import MinNormSolution, min_norm_solution
from .regimes import (
    AlphaScaled,
    AlphaScaling,
    ParameterizationComparison,
    alpha_scaling,
    parameterization_comparison,
)
from .spectrum import KernelSpectrum, SpectralBias, kernel_spectrum, residual_decay, spectral_bias

__all__ = [
    "AlphaScaled",
    "AlphaScaling",
    "GeneralizationBound",
    "KappaResult",
    "KappaScaling",
    "KernelConvergence",
    "KernelSpectrum",
    "LazyScaling",
    "LazyTrainingTrace",
    "LinearizationTrace",
    "MinNormSolution",
    "ParameterizationComparison",
    "PowerLawFit",
    "SMOOTHNESS",
    "SeedTwoLayerNet",
    "SpectralBias",
    "alpha_scaling",
    "fit_power_law",
    "generalization_bound",
    "hessian_operator_norm",
    "kappa",
    "kappa_scaling",
    "kernel_change",
    "kernel_convergence",
    "kernel_spectrum",
    "kernel_target_alignment",
    "lazy_scaling",
    "lazy_training",
    "linearization_error",
    "min_norm_solution",
    "parameterization_comparison",
    "prop14_1_bound",
    "relative_distance",
    "residual_decay",
    "spectral_bias",
    "two_layer_relu_ntk",
    "weight_change",
]
