"""Function-space gradient descent for any differentiable loss, by ODE integration.

Dynamics (time ``t`` in gradient-descent steps, as in
:func:`ntkit.predict.gradient_descent_mse`)::

    df/dt       = -eta * Theta           @ dL/df(f)      (training outputs, (n, k))
    df_test/dt  = -eta * Theta_test,train @ dL/df(f)      (test outputs, (m, k))

``L`` is the *whole* training objective: for the named losses
``"mse"``: ``1/(2N) sum_i ||f_i - y_i||^2`` and ``"cross_entropy"``:
``1/N sum_i -sum_c y_ic log softmax(f_i)_c``, so ``dL/df`` carries the
``1/N``; a callable ``loss(f, y) -> scalar`` defines its own normalisation and
is differentiated by autograd (in float64). This is exactly what
``ntkit.train(model, x, y, loss=...)`` minimises in weight space.

Momentum ``m`` (heavy ball, ``v <- m v - eta grad L; theta <- theta + v``)
uses the continuous limit (Qian 1999) obtained by replacing first differences
by derivatives in ``(theta_{k+1} - theta_k) - m (theta_k - theta_{k-1}) = -eta grad L``::

    m f'' + (1 - m) f' = -eta Theta dL/df,    f(0) = f_0,  f'(0) = 0,

which is gradient flow at ``m = 0`` and has terminal speed ``eta / (1 - m)``.

Integration: :func:`scipy.integrate.solve_ivp` (default ``method="DOP853"``,
``rtol=1e-9``, ``atol=1e-12`` on the state; use ``"Radau"`` or ``"LSODA"``
for stiff problems, i.e. ``eta * lambda_max * t / N`` in the thousands).
The test outputs are integrated through the accumulated gradient
``g(t) = int_0^t dL/df ds`` (``(n, k)``), so any number of test points costs
one matrix product at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._validation import check_positive
from ._linalg import (
    _to_tensor,
    check_cross_kernel,
    check_outputs,
    check_times,
    check_train_kernel,
)
from .mse import Prediction

__all__ = ["gradient_descent", "ODEPredictor"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _targets(y: Any, n: int, loss: str | LossFn) -> tuple[torch.Tensor, bool]:
    y = _to_tensor(y, "y_train")
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"y_train must be (n,) or (n, k) with n = {n} rows (the kernel's size), got "
                         f"shape {tuple(y.shape)}")
    if loss == "cross_entropy" and not y.is_floating_point():
        if y.ndim != 1:
            raise ValueError("integer class labels for cross_entropy must be 1-D (n,)")
        if bool((y < 0).any()):
            raise ValueError("class labels must be >= 0")
        return torch.nn.functional.one_hot(y.long(), int(y.max()) + 1).to(torch.float64), False
    if not y.is_floating_point():
        y = y.to(torch.float64)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y_train contains non-finite values (NaN or inf)")
    return (y.unsqueeze(1), True) if y.ndim == 1 else (y, False)


class ODEPredictor:
    """Callable returned by :func:`gradient_descent` (see there)."""

    def __init__(self, loss: str | LossFn, k_train_train: Any, y_train: Any, learning_rate: float,
                 momentum: float | None, loss_normalization: float | None, method: str, rtol: float,
                 atol: float) -> None:
        if isinstance(loss, str):
            if loss not in ("mse", "cross_entropy"):
                raise ValueError(f"loss must be 'mse', 'cross_entropy' or a callable (f, y) -> scalar, got {loss!r}")
        elif not callable(loss):
            raise TypeError(f"loss must be a string or a callable (f, y) -> scalar, got {type(loss).__name__}")
        self.loss = loss
        k, in_dtype = check_train_kernel(k_train_train, dtype=torch.float64)
        self.n = k.shape[0]
        self.out_dtype = in_dtype
        self.k = k.cpu()
        y, self._squeeze = _targets(y_train, self.n, loss)
        self.y = y.to(torch.float64).cpu()
        self.learning_rate = check_positive(learning_rate, "learning_rate")
        self.loss_normalization = (
            float(self.n) if loss_normalization is None else check_positive(loss_normalization, "loss_normalization")
        )
        m = 0.0 if momentum is None else float(momentum)
        if not np.isfinite(m) or not 0.0 <= m < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = m
        self.method = method
        self.rtol = check_positive(rtol, "rtol")
        self.atol = check_positive(atol, "atol")

    def loss_grad(self, f: torch.Tensor) -> torch.Tensor:
        """``dL/df`` at training outputs ``f`` ``(n, k)`` (float64)."""
        if self.loss == "mse":
            return (f - self.y) / self.loss_normalization
        if self.loss == "cross_entropy":
            return (torch.softmax(f, dim=1) - self.y) / self.loss_normalization
        fr = f.detach().clone().requires_grad_(True)
        y = self.y.squeeze(1) if self._squeeze else self.y
        val = self.loss(fr.squeeze(1) if self._squeeze else fr, y)
        if not isinstance(val, torch.Tensor) or val.numel() != 1:
            raise ValueError("loss(f, y) must return a scalar tensor")
        (g,) = torch.autograd.grad(val.reshape(()), fr)
        return g

    def __call__(self, t: Any, fx_train_0: Any = 0.0, fx_test_0: Any = None, k_test_train: Any = None) -> Prediction:
        """Outputs at time(s) ``t`` (in gradient-descent steps; finite, >= 0).

        Parameters are as for :class:`ntkit.predict.MSEPredictor`; ``t=None``
        is not available (no closed form for general losses).
        """
        from scipy.integrate import solve_ivp

        if t is None:
            raise ValueError("t must be given (finite times >= 0); t=None (infinity) is only available for MSE "
                             "via gradient_descent_mse")
        times, scalar = check_times(t)
        k_out = self.y.shape[1]
        f0 = check_outputs(fx_train_0, (self.n, k_out), "fx_train_0").to(torch.float64).cpu()
        kts = None
        if k_test_train is not None:
            kts = check_cross_kernel(k_test_train, self.n).to(torch.float64).cpu()
            g0 = check_outputs(0.0 if fx_test_0 is None else fx_test_0, (kts.shape[0], k_out), "fx_test_0")
            g0 = g0.to(torch.float64).cpu()
        elif fx_test_0 is not None:
            raise ValueError("fx_test_0 was given without k_test_train; pass the test-train kernel too")
        size = self.n * k_out
        eta, m = self.learning_rate, self.momentum
        k = self.k

        def unpack(s: np.ndarray, i: int) -> torch.Tensor:
            return torch.from_numpy(s[i * size:(i + 1) * size]).reshape(self.n, k_out)

        if m == 0.0:
            def rhs(_t: float, s: np.ndarray) -> np.ndarray:
                g = self.loss_grad(unpack(s, 0))
                return np.concatenate([(-eta * (k @ g)).reshape(-1).numpy(), g.reshape(-1).numpy()])
            s0 = np.concatenate([f0.reshape(-1).numpy(), np.zeros(size)])
        else:
            # state: f, f', h, h'  with  m h'' + (1-m) h' = dL/df  (f - f0 = -eta Theta h)
            def rhs(_t: float, s: np.ndarray) -> np.ndarray:
                f, v, _, hv = (unpack(s, i) for i in range(4))
                g = self.loss_grad(f)
                dv = (-eta * (k @ g) - (1 - m) * v) / m
                dhv = (g - (1 - m) * hv) / m
                return np.concatenate([v.reshape(-1).numpy(), dv.reshape(-1).numpy(),
                                       hv.reshape(-1).numpy(), dhv.reshape(-1).numpy()])
            s0 = np.concatenate([f0.reshape(-1).numpy(), np.zeros(3 * size)])

        tn = times.numpy()
        t_end = float(tn.max())
        if t_end == 0.0:
            states = np.repeat(s0[:, None], len(tn), axis=1)
        else:
            sol = solve_ivp(rhs, (0.0, t_end), s0, method=self.method, t_eval=np.unique(tn),
                            rtol=self.rtol, atol=self.atol)
            if not sol.success:
                raise RuntimeError(f"ODE integration failed: {sol.message} (try method='Radau' for stiff problems)")
            idx = np.searchsorted(sol.t, tn)
            states = sol.y[:, idx]
        st = torch.from_numpy(np.ascontiguousarray(states.T))  # (T, state)
        train = st[:, :size].reshape(-1, self.n, k_out)
        test = None
        if kts is not None:
            gi = 1 if m == 0.0 else 2
            acc = st[:, gi * size:(gi + 1) * size].reshape(-1, self.n, k_out)
            test = g0[None] - eta * (kts @ acc)
        if not bool(torch.isfinite(train).all()):
            raise RuntimeError("ODE integration produced non-finite outputs (learning rate too large for the loss?)")

        def out(a: torch.Tensor | None) -> torch.Tensor | None:
            if a is None:
                return None
            if scalar:
                a = a[0]
            a = a.to(self.out_dtype)
            return a.squeeze(-1) if self._squeeze else a

        return Prediction(out(train), out(test))


def gradient_descent(
    loss: str | LossFn,
    k_train_train: Any,
    y_train: Any,
    learning_rate: float = 1.0,
    momentum: float | None = None,
    *,
    loss_normalization: float | None = None,
    method: str = "DOP853",
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> ODEPredictor:
    """Outputs of a linearised network trained by (momentum) gradient descent on any loss.

    Integrates ``df/dt = -eta Theta dL/df`` (or its heavy-ball version) numerically;
    see the module docstring for conventions, the momentum limit and tolerances.

    Parameters
    ----------
    loss : {"mse", "cross_entropy"} or callable
        Named loss (normalised by ``N``), or ``loss(f, y) -> scalar`` differentiable in ``f``.
    k_train_train : tensor ``(n, n)``
    y_train : tensor ``(n,)``, ``(n, k)``; integer labels ``(n,)`` for cross-entropy
    learning_rate : float
    momentum : float in [0, 1), optional
    loss_normalization : float, optional
        ``N`` of the named losses (default ``n``).
    method, rtol, atol
        Passed to :func:`scipy.integrate.solve_ivp`.

    Returns
    -------
    ODEPredictor
        ``predict(t, fx_train_0=0., fx_test_0=None, k_test_train=None)`` returning a
        :class:`~ntkit.predict.Prediction`.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gradient_descent
    >>> x = torch.randn(6, 3, dtype=torch.float64)
    >>> k = x @ x.T + 1.0
    >>> labels = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> predict = gradient_descent("cross_entropy", k, labels, learning_rate=1.0)
    >>> predict(t=[0.0, 50.0]).train.shape
    torch.Size([2, 6, 3])
    """
    return ODEPredictor(loss, k_train_train, y_train, learning_rate, momentum, loss_normalization, method,
                        rtol, atol)
