"""Gaussian-process posterior with any kernel (NNGP, NTK, NTK-GP).

* NNGP kernel: the exact Bayesian posterior of an infinitely wide network
  with Gaussian priors on its weights (equivalently, training only the
  readout layer with gradient descent to convergence, averaged over inits).
* NTK kernel: the "NTK-GP", the GP whose prior covariance is the NTK
  (He, Lakshminarayanan & Teh 2020): its mean is kernel ridge regression with
  the NTK, i.e. the end point of gradient descent from a zero-output init.
  (The distribution over *random initialisations* of fully trained networks
  is different — use :func:`ntkit.predict.gradient_descent_mse_ensemble`.)

``diag_reg`` is the observation-noise variance, relative to the mean
diagonal of the kernel unless ``diag_reg_absolute_scale``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._linalg import (
    KernelSolver,
    _to_tensor,
    check_cross_kernel,
    check_solve_dtype,
    check_targets,
    check_train_kernel,
    regulariser,
)

__all__ = ["gp_inference", "GPPredictor", "Gaussian"]


class Gaussian(NamedTuple):
    """Mean ``(m,)``/``(m, k)`` and covariance ``(m, m)`` (or variances ``(m,)``), shared by every output."""

    mean: torch.Tensor
    cov: torch.Tensor | None


class GPPredictor:
    """Callable returned by :func:`gp_inference` (see there)."""

    def __init__(self, k_train_train: Any, y_train: Any, diag_reg: float, absolute: bool,
                 dtype: torch.dtype) -> None:
        k, in_dtype = check_train_kernel(k_train_train, dtype=check_solve_dtype(dtype))
        self.n = k.shape[0]
        y, self._squeeze = check_targets(y_train, self.n)
        self.noise = regulariser(k, diag_reg, absolute)
        self.solver = KernelSolver(k, self.noise, in_dtype)
        self.y = y.to(dtype=dtype, device=k.device)
        self.out_dtype = torch.promote_types(in_dtype, y.dtype)
        self.device = k.device
        self._alpha: torch.Tensor | None = None

    @property
    def alpha(self) -> torch.Tensor:
        """``(K + noise I)^{-1} y`` (cached), ``(n, k)``."""
        if self._alpha is None:
            self._alpha = self.solver.solve(self.y)
        return self._alpha

    def __call__(self, k_test_train: Any = None, k_test_test: Any = None) -> Gaussian:
        """Posterior at test points.

        Parameters
        ----------
        k_test_train : tensor ``(m, n)``, optional
            Kernel between test and training points; ``None`` means the training points.
        k_test_test : tensor ``(m, m)`` or ``(m,)``, optional
            Prior covariance of the test points (full matrix), or their prior
            variances (then only posterior variances are returned). Without it
            ``cov`` is ``None`` (except at the training points, where it is known).
        """
        dt = self.solver.dtype
        if k_test_train is None:
            kts = self.solver.k
            ktt = self.solver.k if k_test_test is None else k_test_test
        else:
            kts = check_cross_kernel(k_test_train, self.n).to(dtype=dt, device=self.device)
            ktt = k_test_test
        mean = kts @ self.alpha
        cov = None
        if ktt is not None:
            m = kts.shape[0]
            ktt = _to_tensor(ktt, "k_test_test")
            if not ktt.is_floating_point():
                ktt = ktt.to(torch.get_default_dtype())
            if not bool(torch.isfinite(ktt).all()):
                raise ValueError("k_test_test contains non-finite values (NaN or inf)")
            ktt = ktt.to(dtype=dt, device=self.device)
            w = self.solver.solve(kts.T)  # (n, m)
            if ktt.shape == (m, m):
                cov = ktt - kts @ w
                cov = 0.5 * (cov + cov.T)
            elif ktt.shape == (m,):
                cov = ktt - (kts * w.T).sum(1)
            else:
                raise ValueError(f"k_test_test must be ({m}, {m}) or ({m},), got shape {tuple(ktt.shape)}")
            cov = cov.to(self.out_dtype)
        mean = mean.to(self.out_dtype)
        if self._squeeze:
            mean = mean.squeeze(-1)
        return Gaussian(mean, cov)


def gp_inference(
    k_train_train: Any,
    y_train: Any,
    diag_reg: float = 0.0,
    *,
    diag_reg_absolute_scale: bool = False,
    dtype: torch.dtype = torch.float64,
) -> GPPredictor:
    """Posterior mean and covariance of a zero-mean GP conditioned on noisy targets.

    ``mean = K_*X (K + s I)^{-1} y`` and ``cov = K_** - K_*X (K + s I)^{-1} K_X*`` with
    ``s = diag_reg * mean(diag K)`` (or ``diag_reg`` if ``diag_reg_absolute_scale``).
    Usable with NNGP, NTK and NTK-GP kernels (see module docstring). The
    Cholesky factor is cached; a singular kernel falls back to a pseudo-inverse
    with a :class:`~ntkit.predict.NumericalWarning`.

    Parameters
    ----------
    k_train_train : tensor ``(n, n)``
    y_train : tensor ``(n,)`` or ``(n, k)``
    diag_reg : float
        Observation-noise variance (relative to the mean diagonal by default).
    dtype : torch.dtype
        Solve dtype (float64 by default); results are cast back.

    Returns
    -------
    GPPredictor
        ``predict(k_test_train=None, k_test_test=None)`` returning :class:`Gaussian`.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gp_inference
    >>> x = torch.randn(6, 2, dtype=torch.float64)
    >>> k = torch.exp(-torch.cdist(x, x) ** 2)
    >>> post = gp_inference(k, torch.sin(x[:, 0]), diag_reg=1e-3)
    >>> xs = torch.randn(3, 2, dtype=torch.float64)
    >>> out = post(torch.exp(-torch.cdist(xs, x) ** 2), torch.ones(3, dtype=torch.float64))
    >>> out.mean.shape, out.cov.shape
    (torch.Size([3]), torch.Size([3]))
    """
    return GPPredictor(k_train_train, y_train, diag_reg, diag_reg_absolute_scale, dtype)
