"""Closed-form outputs of a linearised network trained by gradient descent on MSE.

Conventions (used throughout :mod:`ntkit.predict` and by :func:`ntkit.train`)
-----------------------------------------------------------------------------
* Loss: ``L(f) = 1/(2N) * sum_i ||f(x_i) - y_i||^2`` — half the squared error
  summed over output units, averaged over the ``N`` training examples
  (``N = n`` unless ``loss_normalization`` says otherwise).
* Gradient descent ``theta <- theta - eta * grad L`` on the linearised network
  moves the training outputs by ``f <- f - (eta/N) Theta (f - y)``, with
  ``Theta`` the NTK of one output unit (the same kernel acts on every output
  column, as for infinitely wide networks).
* Time ``t`` counts gradient-descent steps: the gradient-flow limit is
  ``df/dt = -(eta/N) Theta (f - y)``, solved by
  ``f_t = y + exp(-eta Theta t / N) (f_0 - y)`` (eq. 14.8 of the Sutherland
  notes, with their ``2 eta / m`` written ``eta / N`` for the ``1/2`` loss).
  ``discrete=True`` gives the exact outputs after ``t`` discrete steps,
  ``(I - eta Theta / N)^t`` in place of the exponential.
* neural-tangents-style normalisation (``1/2`` the mean over all ``n*k``
  entries) is ``loss_normalization = n * k``; Sutherland's ``1/m`` sum without
  the ``1/2`` is ``learning_rate = 2 * eta``.
* Ridge: ``diag_reg = rho`` (times the mean diagonal of ``Theta`` unless
  ``diag_reg_absolute_scale``) is gradient descent on
  ``L + rho/(2N) ||theta - theta_0||^2``; it converges to kernel ridge
  regression with ``Theta + rho I``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._validation import check_positive
from ._linalg import (
    KernelSolver,
    check_cross_kernel,
    check_outputs,
    check_solve_dtype,
    check_targets,
    check_times,
    check_train_kernel,
    decay_factors,
    regulariser,
)

__all__ = ["gradient_descent_mse", "MSEPredictor", "Prediction"]


class Prediction(NamedTuple):
    """Outputs on the training points and (if a test kernel was given) on test points.

    Shapes follow ``y_train``: ``(n,)`` or ``(n, k)`` for ``train``, ``(m,)`` or
    ``(m, k)`` for ``test``, with a leading time axis when ``t`` was a 1-D array.
    """

    train: torch.Tensor
    test: torch.Tensor | None


class MSEPredictor:
    """Callable returned by :func:`gradient_descent_mse` (see there).

    Attributes
    ----------
    learning_rate, loss_normalization, regularizer, discrete
        The dynamics' constants (``regularizer`` is the absolute ridge ``rho``).
    """

    def __init__(
        self,
        k_train_train: Any,
        y_train: Any,
        learning_rate: float,
        diag_reg: float,
        diag_reg_absolute_scale: bool,
        loss_normalization: float | None,
        discrete: bool,
        dtype: torch.dtype,
    ) -> None:
        k, in_dtype = check_train_kernel(k_train_train, dtype=check_solve_dtype(dtype))
        self.n = k.shape[0]
        y, self._squeeze = check_targets(y_train, self.n)
        self.learning_rate = check_positive(learning_rate, "learning_rate")
        self.loss_normalization = (
            float(self.n) if loss_normalization is None else check_positive(loss_normalization, "loss_normalization")
        )
        self.discrete = bool(discrete)
        self.regularizer = regulariser(k, diag_reg, diag_reg_absolute_scale)
        self.out_dtype = torch.promote_types(in_dtype, y.dtype)
        self.device = k.device
        self.solver = KernelSolver(k, self.regularizer, in_dtype)
        self.y = y.to(dtype=dtype, device=self.device)

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of ``k_train_train`` (ascending, clamped at 0; cached, solve dtype)."""
        return self.solver.eigh()[0]

    @property
    def eigenvectors(self) -> torch.Tensor:
        """Orthonormal eigenvectors (columns) of ``k_train_train`` (cached, solve dtype)."""
        return self.solver.eigh()[1]

    def __call__(
        self,
        t: Any = None,
        fx_train_0: Any = 0.0,
        fx_test_0: Any = None,
        k_test_train: Any = None,
    ) -> Prediction:
        """Outputs at time(s) ``t`` (``None``: ``t -> infinity``).

        Parameters
        ----------
        t : float, 1-D array or None
            Time in gradient-descent steps; ``None`` is the end of training
            (kernel ridge / ridgeless regression, by cached Cholesky).
        fx_train_0 : scalar or tensor ``(n,)``/``(n, k)``
            Outputs on the training inputs at initialisation.
        fx_test_0 : scalar or tensor ``(m,)``/``(m, k)``, optional
            Outputs on the test inputs at initialisation (default 0).
        k_test_train : tensor ``(m, n)``, optional
            Kernel between test and training inputs; without it ``test`` is ``None``.
        """
        dt = self.solver.dtype
        k_out = self.y.shape[1]
        f0 = check_outputs(fx_train_0, (self.n, k_out), "fx_train_0").to(dtype=dt, device=self.device)
        kts = None
        g0 = None
        if k_test_train is not None:
            kts = check_cross_kernel(k_test_train, self.n).to(dtype=dt, device=self.device)
            m = kts.shape[0]
            g0 = check_outputs(0.0 if fx_test_0 is None else fx_test_0, (m, k_out), "fx_test_0")
            g0 = g0.to(dtype=dt, device=self.device)
        elif fx_test_0 is not None:
            raise ValueError("fx_test_0 was given without k_test_train; pass the test-train kernel too")
        r = self.y - f0

        if t is None:
            alpha = self.solver.solve(r)  # (n, k)
            train = f0 + self.solver.k @ alpha
            test = None if kts is None else g0 + kts @ alpha
            return self._finish(train, test, scalar=True)

        times, scalar = check_times(t)
        if self.discrete and bool((times != torch.round(times)).any()):
            raise ValueError(f"t must be whole numbers of steps when discrete=True, got {t!r}")
        evals, evecs = self.solver.eigh()
        mu = evals + self.regularizer
        scale = self.learning_rate / self.loss_normalization
        _, phi = decay_factors(mu, times.to(self.device), scale, self.discrete)  # (T, n)
        vr = evecs.T @ r  # (n, k)
        coeff = phi[:, :, None] * vr[None]  # (T, n, k): alpha in the eigenbasis
        train = f0[None] + evecs @ (evals[None, :, None] * coeff)
        test = None
        if kts is not None:
            alpha = evecs @ coeff  # (T, n, k)
            test = g0[None] + kts @ alpha
        if scalar:
            train = train[0]
            test = None if test is None else test[0]
        return self._finish(train, test, scalar)

    def _finish(self, train: torch.Tensor, test: torch.Tensor | None, scalar: bool) -> Prediction:
        def out(a: torch.Tensor | None) -> torch.Tensor | None:
            if a is None:
                return None
            a = a.to(self.out_dtype)
            return a.squeeze(-1) if self._squeeze else a

        return Prediction(out(train), out(test))

    def __repr__(self) -> str:
        return (f"MSEPredictor(n={self.n}, learning_rate={self.learning_rate}, "
                f"loss_normalization={self.loss_normalization}, regularizer={self.regularizer:.3g}, "
                f"discrete={self.discrete}, dtype={self.solver.dtype})")


def gradient_descent_mse(
    k_train_train: Any,
    y_train: Any,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    *,
    diag_reg_absolute_scale: bool = False,
    loss_normalization: float | None = None,
    discrete: bool = False,
    dtype: torch.dtype = torch.float64,
) -> MSEPredictor:
    """Outputs of a linearised network trained by full-batch gradient descent on MSE.

    Solves ``df/dt = -(eta/N) Theta (f - y)`` exactly: with ``Theta = V diag(lam) V^T``,
    ``alpha(t) = V diag((1 - exp(-eta t mu / N)) / mu) V^T (y - f_0)`` (``mu = lam + rho``),
    train outputs ``f_0 + Theta alpha`` and test outputs ``f_test,0 + Theta_test,train alpha``
    (eq. 14.8 of the Sutherland notes). Zero eigenvalues use the limit
    ``eta t / N``, never a division by zero. See the module docstring for the
    loss and time conventions.

    Parameters
    ----------
    k_train_train : tensor ``(n, n)``
        Symmetric PSD kernel (NTK for full training, NNGP for readout-only training).
    y_train : tensor ``(n,)`` or ``(n, k)``
        Targets.
    learning_rate : float
        Step size ``eta`` of the gradient descent being modelled.
    diag_reg : float
        Ridge ``rho``, relative to the mean diagonal of the kernel (absolute if
        ``diag_reg_absolute_scale``); it models the penalty ``rho/(2N) ||theta - theta_0||^2``.
    loss_normalization : float, optional
        ``N`` in the loss ``1/(2N) sum ||f - y||^2`` (default ``n``).
    discrete : bool
        Model ``t`` discrete steps exactly instead of gradient flow.
    dtype : torch.dtype
        Solve dtype (float64 default); results are cast back to the inputs' dtype.

    Returns
    -------
    MSEPredictor
        ``predict(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`` returning a
        :class:`Prediction` ``(train, test)``; eigendecomposition and Cholesky factor are
        computed once and cached.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gradient_descent_mse
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> k = x @ x.T + torch.eye(5, dtype=torch.float64)
    >>> y = torch.randn(5, dtype=torch.float64)
    >>> predict = gradient_descent_mse(k, y, learning_rate=0.5)
    >>> torch.allclose(predict(t=None).train, y)
    True
    >>> predict(t=[0.0, 10.0, 100.0]).train.shape
    torch.Size([3, 5])
    """
    return MSEPredictor(k_train_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale,
                        loss_normalization, discrete, dtype)
