"""Training dynamics in closed form, GP inference and function-space ODEs.

Conventions (shared by every function here and by :func:`ntkit.train`):
loss ``L = 1/(2N) sum_i ||f(x_i) - y_i||^2`` (``N = n`` by default), time ``t``
in gradient-descent steps, ``df/dt = -(eta/N) Theta (f - y)``; solves in
float64 by default. See ``docs/predict.md``.

Examples
--------
>>> import torch
>>> from ntkit.predict import gradient_descent_mse
>>> x = torch.randn(8, 3, dtype=torch.float64)
>>> k = x @ x.T + 1.0
>>> y = torch.randn(8, dtype=torch.float64)
>>> out = gradient_descent_mse(k, y, learning_rate=1.0)(t=0.0, fx_train_0=0.0)
>>> bool(out.train.abs().max() == 0)
True
"""

from ._linalg import NumericalWarning
from .ensemble import EnsemblePredictor, gradient_descent_mse_ensemble
from .gp import Gaussian, GPPredictor, gp_inference
from .mse import MSEPredictor, Prediction, gradient_descent_mse
from .ode import ODEPredictor, gradient_descent
from .stability import max_learning_rate

__all__ = [
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "gp_inference",
    "gradient_descent",
    "max_learning_rate",
    "Prediction",
    "Gaussian",
    "MSEPredictor",
    "GPPredictor",
    "EnsemblePredictor",
    "ODEPredictor",
    "NumericalWarning",
]
