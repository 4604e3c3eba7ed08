"""Largest stable learning rate of (momentum) gradient descent on the linearised MSE.

With the loss ``1/(2N) sum ||f - y||^2`` gradient descent on the linearised
network iterates ``e <- (I - eta Theta / N) e`` on the residual ``e = f - y``.
In an eigendirection with ``a = eta * lambda / N``:

* plain GD: ``e <- (1 - a) e`` is stable iff ``0 < a < 2``;
* heavy ball (``v <- m v - eta grad L``): ``e_{k+1} = (1 + m - a) e_k - m e_{k-1}``,
  whose characteristic roots have modulus < 1 iff ``|m| < 1`` and ``0 < a < 2 (1 + m)``.

Hence ``eta_max = 2 (1 + m) N / lambda_max``: steps strictly below converge,
steps above diverge along the top eigenvector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_positive
from ._linalg import check_train_kernel

__all__ = ["max_learning_rate"]


def max_learning_rate(
    k_train_train: Any,
    momentum: float = 0.0,
    *,
    loss_normalization: float | None = None,
) -> float:
    """The critical step size ``2 (1 + momentum) N / lambda_max(Theta)``.

    Parameters
    ----------
    k_train_train : tensor ``(n, n)``
        The (empirical or infinite) NTK of the training inputs.
    momentum : float in [0, 1)
        Heavy-ball momentum ``m``.
    loss_normalization : float, optional
        ``N`` in the loss ``1/(2N) sum ||f - y||^2`` (default ``n``; use
        ``n * k`` for the "1/2 mean over all entries" convention).

    Returns
    -------
    float
        Learning rates strictly below it converge on the linearised model.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import max_learning_rate
    >>> max_learning_rate(torch.diag(torch.tensor([4.0, 1.0])))
    1.0
    """
    k, _ = check_train_kernel(k_train_train, dtype=torch.float64)
    m = float(momentum)
    if not np.isfinite(m) or not 0.0 <= m < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    n = float(k.shape[0]) if loss_normalization is None else check_positive(loss_normalization, "loss_normalization")
    lmax = float(torch.linalg.eigvalsh(k)[-1])
    if lmax <= 0:
        raise ValueError(f"k_train_train has no positive eigenvalue (largest {lmax:.3g}); every step size is stable")
    return 2.0 * (1.0 + m) * n / lmax
