"""Mean and covariance over random initialisations of infinitely wide networks trained on MSE.

For an infinitely wide network the initial outputs are a centred GP with the
NNGP kernel ``K`` and training follows the linear dynamics with the NTK
``Theta`` (Lee et al. 2019, "Wide Neural Networks of Any Depth Evolve as
Linear Models Under Gradient Descent", sec. 2.3). With
``T(t) = (Theta + rho I)^{-1} (I - exp(-eta (Theta + rho I) t / N))`` (the
matrix of :func:`ntkit.predict.gradient_descent_mse`),

``f_t(x) = f_0(x) + Theta_x,X T(t) (y - f_0(X))``

is affine in the Gaussian ``f_0``, so

* mean: ``mu_t(x) = Theta_x,X T y``;
* covariance: ``K_x,x' - Theta_x T K_X,x' - K_x,X T Theta_X,x'
  + Theta_x T K_X,X T Theta_X,x'``.

``get="nngp"`` trains only the readout layer: its tangent kernel is the NNGP,
so ``Theta`` is replaced by ``K`` everywhere; at ``t -> infinity`` this is the
exact GP posterior (:func:`ntkit.predict.gp_inference`). The covariance is
the same for every output unit and is returned once, ``(m, m)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._validation import as_input_tensor, check_choice, check_feature_shapes_match, check_positive
from ._linalg import (
    KernelSolver,
    _float_dtype,
    check_solve_dtype,
    check_targets,
    check_times,
    check_train_kernel,
    decay_factors,
    regulariser,
)
from .gp import Gaussian

__all__ = ["gradient_descent_mse_ensemble", "EnsemblePredictor"]


def _kernel_call(kernel_fn: Any) -> Callable[..., Any]:
    if hasattr(kernel_fn, "kernel") and callable(kernel_fn.kernel):
        return kernel_fn.kernel
    if callable(kernel_fn):
        return kernel_fn
    raise TypeError(
        "kernel_fn must be an ntkit architecture (with .kernel) or a callable "
        f"kernel_fn(x1, x2, get=...) returning an object with .nngp/.ntk, got {type(kernel_fn).__name__}"
    )


def _pick(k: Any, which: str, what: str) -> torch.Tensor:
    val = getattr(k, which, None) if not isinstance(k, dict) else k.get(which)
    if val is None:
        raise ValueError(f"kernel_fn returned no {which!r} kernel for {what}")
    if not isinstance(val, torch.Tensor) or val.ndim != 2:
        shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
        raise ValueError(f"kernel_fn must return flat (n1, n2) {which} kernels for {what}, got {shape}")
    if not bool(torch.isfinite(val).all()):
        raise ValueError(f"kernel_fn returned a {which} kernel with non-finite values for {what}")
    return val


class EnsemblePredictor:
    """Callable returned by :func:`gradient_descent_mse_ensemble` (see there)."""

    def __init__(self, kernel_fn: Any, x_train: Any, y_train: Any, learning_rate: float, diag_reg: float,
                 absolute: bool, loss_normalization: float | None, dtype: torch.dtype) -> None:
        self._kfn = _kernel_call(kernel_fn)
        self.x_train = as_input_tensor(x_train, "x_train", min_ndim=2)
        self.n = self.x_train.shape[0]
        y, self._squeeze = check_targets(y_train, self.n)
        self.learning_rate = check_positive(learning_rate, "learning_rate")
        self.loss_normalization = (
            float(self.n) if loss_normalization is None else check_positive(loss_normalization, "loss_normalization")
        )
        self.diag_reg = diag_reg
        self.absolute = absolute
        self.dtype = check_solve_dtype(dtype)
        self.y = y
        self._ktrain: dict[str, torch.Tensor] = {}
        self._solvers: dict[str, KernelSolver] = {}
        self.out_dtype = _float_dtype(self.x_train, y)

    def _train_kernels(self) -> dict[str, torch.Tensor]:
        if not self._ktrain:
            k = self._kfn(self.x_train, None, get=("nngp", "ntk"))
            for which in ("nngp", "ntk"):
                kk, in_dtype = check_train_kernel(_pick(k, which, "x_train"), f"{which}(x_train, x_train)",
                                                  dtype=self.dtype)
                self._ktrain[which] = kk
                self._in_dtype = in_dtype
        return self._ktrain

    def solver(self, get: str) -> KernelSolver:
        """Cached solver of the dynamics kernel (``Theta`` for ``"ntk"``, ``K`` for ``"nngp"``)."""
        if get not in self._solvers:
            kd = self._train_kernels()[get]
            rho = regulariser(kd, self.diag_reg, self.absolute)
            self._solvers[get] = KernelSolver(kd, rho, self._in_dtype, name=f"{get}(x_train, x_train)")
        return self._solvers[get]

    def __call__(self, x_test: Any = None, get: str = "ntk", t: Any = None, compute_cov: bool = False) -> Gaussian:
        """Mean (and covariance) of the outputs at ``x_test`` after training time ``t``.

        Parameters
        ----------
        x_test : tensor, optional
            Test inputs; ``None`` means the training inputs.
        get : {"ntk", "nngp"}
            Full training (NTK dynamics) or readout-only training (NNGP dynamics).
        t : float, 1-D array or None
            Time in gradient-descent steps; ``None`` is ``t -> infinity``.
        compute_cov : bool
            Also return the covariance ``(m, m)`` (``(T, m, m)`` for several times).
        """
        check_choice(get, "get", ("ntk", "nngp"))
        dt = self.dtype
        kt = self._train_kernels()
        solver = self.solver(get)
        k_xx = kt["nngp"]
        y = self.y.to(dt)
        if x_test is None:
            theta_x, k_x, k_tt = kt[get], k_xx, k_xx
        else:
            xt = as_input_tensor(x_test, "x_test", min_ndim=2, dtype=self.x_train.dtype)
            check_feature_shapes_match(self.x_train, xt, "x_train", "x_test")
            kc = self._kfn(xt, self.x_train, get=("nngp", "ntk"))
            theta_x = _pick(kc, get, "(x_test, x_train)").to(dt)
            k_x = _pick(kc, "nngp", "(x_test, x_train)").to(dt)
            k_tt = None
            if compute_cov:
                k_tt = _pick(self._kfn(xt, None, get=("nngp",)), "nngp", "(x_test, x_test)").to(dt)
        if t is None:
            b = solver.solve(theta_x.T).T[None]  # (1, m, n) = Theta_x T(inf)
            scalar = True
        else:
            times, scalar = check_times(t)
            evals, evecs = solver.eigh()
            mu = evals + solver.rho
            _, phi = decay_factors(mu, times, self.learning_rate / self.loss_normalization, False)
            a = theta_x @ evecs  # (m, n)
            b = (a[None] * phi[:, None, :]) @ evecs.T  # (T, m, n)
        mean = b @ y  # (T, m, k)
        cov = None
        if compute_cov:
            bk = b @ k_x.T if x_test is not None else b @ k_xx  # (T, m, m): Theta_x T K_X,x'
            cov = k_tt[None] - bk - bk.transpose(1, 2) + b @ k_xx @ b.transpose(1, 2)
            cov = 0.5 * (cov + cov.transpose(1, 2))
            cov = cov.to(self.out_dtype)
            if scalar:
                cov = cov[0]
        mean = mean.to(self.out_dtype)
        if scalar:
            mean = mean[0]
        if self._squeeze:
            mean = mean.squeeze(-1)
        return Gaussian(mean, cov)


def gradient_descent_mse_ensemble(
    kernel_fn: Any,
    x_train: Any,
    y_train: Any,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    *,
    diag_reg_absolute_scale: bool = False,
    loss_normalization: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> EnsemblePredictor:
    """Distribution over random initialisations of infinitely wide networks trained on MSE.

    See the module docstring for the formulas (Lee et al. 2019). Loss, time and
    ridge conventions are those of :func:`ntkit.predict.gradient_descent_mse`.

    Parameters
    ----------
    kernel_fn : ntkit architecture or callable
        ``arch`` (its ``arch.kernel`` is used) or ``kernel_fn(x1, x2, get=...)``
        returning an object with flat ``.nngp`` and ``.ntk`` tensors.
    x_train : tensor ``(n, ...)``
    y_train : tensor ``(n,)`` or ``(n, k)``
    learning_rate, diag_reg, diag_reg_absolute_scale, loss_normalization, dtype
        As in :func:`ntkit.predict.gradient_descent_mse`.

    Returns
    -------
    EnsemblePredictor
        ``predict(x_test=None, get="ntk", t=None, compute_cov=False)`` returning
        :class:`~ntkit.predict.Gaussian` ``(mean, cov)``.

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ntkit.predict import gradient_descent_mse_ensemble
    >>> def kernel_fn(x1, x2=None, get=None):  # a linear model's kernels
    ...     x2 = x1 if x2 is None else x2
    ...     k = x1 @ x2.T + 1.0
    ...     return SimpleNamespace(nngp=k, ntk=2 * k)
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> ens = gradient_descent_mse_ensemble(kernel_fn, x, torch.randn(4, dtype=torch.float64), diag_reg=1e-6)
    >>> out = ens(torch.randn(3, 2, dtype=torch.float64), get="ntk", t=[0.0, 5.0], compute_cov=True)
    >>> out.mean.shape, out.cov.shape
    (torch.Size([2, 3]), torch.Size([2, 3, 3]))
    """
    return EnsemblePredictor(kernel_fn, x_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale,
                             loss_normalization, dtype)
