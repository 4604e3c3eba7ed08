"""scikit-learn estimators and a Gaussian-process kernel built on infinite-width NTK/NNGP kernels.

* :class:`NTKRegressor` — kernel regression with the NTK (or NNGP) of an
  infinitely wide network: the output of the network trained by gradient
  descent on the MSE to convergence (``t=None``) or for time ``t``;
* :class:`NTKClassifier` — the same on centred one-hot targets, predicting the
  argmax, or an SVM on the precomputed kernel (``solver="svm"``), the
  classifier of Arora et al. (2020), *Harnessing the Power of Infinitely Wide
  Deep Nets on Small-data Tasks*;
* :class:`NTKKernel` — a :mod:`sklearn.gaussian_process` kernel whose
  hyperparameters ``W_std`` and ``b_std`` can be fitted by marginal likelihood
  (gradients by torch forward-mode autodiff);
* :func:`fc_relu_kernel` and :func:`fc_relu_kernel_grid` — the fully connected
  ReLU NNGP/NTK with frozen bottom layers, in closed form.

scikit-learn is an optional dependency: it is imported when this module is,
never by ``import ntkit``.

Fully connected ReLU network (``arch=None``)
-------------------------------------------
``depth`` hidden layers ``Dense(W_std, b_std) -> ReLU`` and a ``Dense`` readout,
NTK parameterisation, so ``L = depth + 1`` affine layers. With inputs ``x``
of dimension ``d``, ``Sigma_1 = W_std^2 x.x'/d + b_std^2`` and for the next layers
``Sigma_h = W_std^2 E[relu(u) relu(v)] + b_std^2`` with ``(u, v)`` Gaussian of
covariance ``Sigma_{h-1}``; ``Sigma_L`` is the NNGP. When the bottom
``n_fixed_layers = f`` affine layers are frozen (not trained), the NTK only sums
the gradient terms of the trained layers ``h > f``::

    Theta_L = sum_{h=f+1}^{L} Sigma_h prod_{j=h}^{L-1} W_std^2 E[relu'(u) relu'(v)]_j

``f = 0`` is the usual NTK, ``f = depth`` (only the readout trained) is the NNGP.

Examples
--------
>>> import numpy as np
>>> from ntkit.sklearn import NTKClassifier
>>> from sklearn.datasets import load_iris
>>> X, y = load_iris(return_X_y=True)
>>> clf = NTKClassifier(depth=2).fit(X[::2], y[::2])
>>> float(clf.score(X[1::2], y[1::2])) > 0.9
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.gaussian_process.kernels import Hyperparameter
from sklearn.gaussian_process.kernels import Kernel as _SKKernel
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._validation import as_input_tensor, check_choice, check_nonnegative, check_positive

__all__ = ["NTKRegressor", "NTKClassifier", "NTKKernel", "fc_relu_kernel", "fc_relu_kernel_grid"]

_KERNELS = ("ntk", "nngp")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_TWO_PI = 2.0 * math.pi
_SQRT2 = math.sqrt(2.0)
_PREDICT_BLOCK = 2048  # test rows per kernel block in predict: memory O(block * n_train)


# ---- arc-cosine maps with safe derivatives ------------------------------------------------
# With rho = cos(angle) the correlation of (u, v), normalised by sqrt(q1 q2):
#   J1(rho) = E[relu(u) relu(v)] / sqrt(q1 q2) = (sqrt(1 - rho^2) + (pi - arccos rho) rho) / (2 pi)
#   J0(rho) = E[relu'(u) relu'(v)]             = (pi - arccos rho) / (2 pi)
# J1' = J0 is finite on [-1, 1]; plain autograd of the formula would give inf * 0 = NaN at
# rho = +-1 (every diagonal entry), so both maps get explicit derivatives.
_RHO_GUARD = 1e-12  # 1 - rho^2 is floored here in J0' (|J0'| <= 1.6e5)


def _j0(rho: torch.Tensor) -> torch.Tensor:
    return (math.pi - torch.arccos(rho)) / _TWO_PI


def _j0_prime(rho: torch.Tensor) -> torch.Tensor:
    return 1.0 / (_TWO_PI * torch.sqrt((1.0 - rho * rho).clamp_min(_RHO_GUARD)))


class _J1(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rho: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rho)
        ctx.save_for_forward(rho)
        s = torch.sqrt((1.0 - rho * rho).clamp_min(0.0))
        return (s + (math.pi - torch.arccos(rho)) * rho) / _TWO_PI

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (rho,) = ctx.saved_tensors
        return grad * _j0(rho)

    @staticmethod
    def jvp(ctx: Any, drho: torch.Tensor) -> torch.Tensor:
        (rho,) = ctx.saved_tensors
        return drho * _j0(rho)


class _J0(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rho: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rho)
        ctx.save_for_forward(rho)
        return _j0(rho)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (rho,) = ctx.saved_tensors
        return grad * _j0_prime(rho)

    @staticmethod
    def jvp(ctx: Any, drho: torch.Tensor) -> torch.Tensor:
        (rho,) = ctx.saved_tensors
        return drho * _j0_prime(rho)


def _relu_step(c: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, same: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[relu(u) relu(v)], E[relu'(u) relu'(v)])`` for covariance ``c`` and variances ``q1, q2``.

    ``same`` marks entries whose two inputs are the same point (correlation exactly 1).
    """
    tiny = torch.finfo(c.dtype).tiny
    norm = torch.sqrt((q1 * q2).clamp_min(tiny))
    rho = (c / norm).clamp(-1.0, 1.0)
    if same is not None:
        rho = torch.where(same, torch.ones((), dtype=c.dtype, device=c.device), rho)
    return norm * _J1.apply(rho), _J0.apply(rho)


def _fc_relu_layers(
    x1: torch.Tensor, x2: torch.Tensor | None, depth: int, W_std: Any, b_std: Any, diagonal: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(Sigma_h, D_{h-1})`` for affine layers ``h = 1..depth+1`` (``D_0`` is None).

    ``D_{h-1} = W_std^2 E[relu'(u) relu'(v)]`` under ``Sigma_{h-1}``. ``W_std`` and
    ``b_std`` may be (dual/requires-grad) tensors.
    """
    d = x1.shape[1]
    w2 = W_std * W_std
    b2 = b_std * b_std
    if diagonal:
        c0 = (x1 * x1).sum(1) / d
        v1 = v2 = c0
        same = torch.ones_like(c0, dtype=torch.bool)
    else:
        xb = x1 if x2 is None else x2
        c0 = x1 @ xb.T / d
        v1 = (x1 * x1).sum(1) / d
        v2 = v1 if x2 is None else (xb * xb).sum(1) / d
        same = torch.eye(x1.shape[0], dtype=torch.bool, device=x1.device) if x2 is None else None
    sig = w2 * c0 + b2
    q1 = w2 * v1 + b2
    q2 = q1 if v2 is v1 else w2 * v2 + b2
    yield sig, None
    for _ in range(depth):
        if diagonal:
            e1, e0 = _relu_step(sig, q1, q1, same)
        else:
            e1, e0 = _relu_step(sig, q1[:, None], q2[None, :], same)
        sig = w2 * e1 + b2
        q1_new = w2 * (q1 / 2) + b2  # E[relu(u)^2] = q / 2
        q2 = q1_new if q2 is q1 else w2 * (q2 / 2) + b2
        q1 = q1_new
        yield sig, w2 * e0


def _as_float_tensor(x: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    t = as_input_tensor(x, name, min_ndim=2)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, n_features) array, got shape {tuple(t.shape)}")
    return t.to(dtype)


def _check_fc_params(depth: Any, W_std: Any, b_std: Any, n_fixed_layers: Any, kernel: Any) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (number of hidden ReLU layers), got {depth!r}")
    if not isinstance(W_std, torch.Tensor):
        check_positive(W_std, "W_std")
    if not isinstance(b_std, torch.Tensor):
        check_nonnegative(b_std, "b_std")
    if (isinstance(n_fixed_layers, bool) or not isinstance(n_fixed_layers, int | np.integer)
            or not 0 <= n_fixed_layers <= depth):
        raise ValueError(f"n_fixed_layers must be an integer in [0, depth={depth}] (frozen bottom affine "
                         f"layers), got {n_fixed_layers!r}")
    check_choice(kernel, "kernel", _KERNELS)


def fc_relu_kernel(
    x1: Any,
    x2: Any = None,
    *,
    depth: int = 2,
    W_std: float | torch.Tensor = _SQRT2,
    b_std: float | torch.Tensor = 0.1,
    n_fixed_layers: int = 0,
    kernel: str = "ntk",
    diagonal: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """NTK or NNGP of a fully connected ReLU network, with the bottom layers optionally frozen.

    Parameters
    ----------
    x1, x2 : array ``(n1, d)``, ``(n2, d)``
        Inputs; ``x2=None`` means ``x1`` (symmetric kernel).
    depth : int
        Number of hidden ``Dense -> ReLU`` layers (a ``Dense`` readout follows).
    W_std, b_std : float or 0-d tensor
        Weight and bias standard deviations (NTK parameterisation); tensors
        carry autograd (forward or reverse mode) through the result.
    n_fixed_layers : int
        Frozen bottom affine layers, ``0..depth`` (see the module docstring).
    kernel : {"ntk", "nngp"}
    diagonal : bool
        Return only ``k(x1_i, x1_i)``, shape ``(n1,)`` (``x2`` must be None).
    dtype : torch.dtype

    Returns
    -------
    torch.Tensor
        ``(n1, n2)`` (or ``(n1,)`` if ``diagonal``).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> k = fc_relu_kernel(x, depth=3, n_fixed_layers=3)
    >>> torch.allclose(k, fc_relu_kernel(x, depth=3, kernel="nngp"))
    True
    """
    _check_fc_params(depth, W_std, b_std, n_fixed_layers, kernel)
    a = _as_float_tensor(x1, "x1", dtype)
    b = None
    if x2 is not None:
        if diagonal:
            raise ValueError("diagonal=True needs x2=None")
        b = _as_float_tensor(x2, "x2", dtype)
        if b.shape[1] != a.shape[1]:
            raise ValueError(f"x2 has {b.shape[1]} features but x1 has {a.shape[1]}; they must match")
    theta = None
    sig = None
    for h, (sig, dprev) in enumerate(_fc_relu_layers(a, b, depth, W_std, b_std, diagonal), start=1):
        if kernel == "nngp":
            continue
        if theta is not None:
            theta = dprev * theta
        if h > n_fixed_layers:
            theta = sig if theta is None else theta + sig
    assert sig is not None
    return sig if kernel == "nngp" else theta


def fc_relu_kernel_grid(
    x1: Any,
    x2: Any = None,
    *,
    max_depth: int = 5,
    W_std: float = _SQRT2,
    b_std: float = 0.1,
    dtype: torch.dtype = torch.float64,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Every FC ReLU NTK of depth ``1..max_depth`` and ``0..depth`` frozen layers, in one pass.

    Yields ``(depth, n_fixed_layers, K)`` in order of increasing depth; the
    kernels equal :func:`fc_relu_kernel` with those arguments. Only
    ``max_depth + 3`` matrices are held at a time; ``n_fixed_layers = depth`` is
    the NNGP.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> [(d, f) for d, f, _ in fc_relu_kernel_grid(x, max_depth=2)]
    [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    """
    _check_fc_params(max_depth, W_std, b_std, 0, "ntk")
    a = _as_float_tensor(x1, "x1", dtype)
    b = None if x2 is None else _as_float_tensor(x2, "x2", dtype)
    if b is not None and b.shape[1] != a.shape[1]:
        raise ValueError(f"x2 has {b.shape[1]} features but x1 has {a.shape[1]}; they must match")
    thetas: list[torch.Tensor] = []  # thetas[f]: NTK with f frozen layers, at the current layer
    for h, (sig, dprev) in enumerate(_fc_relu_layers(a, b, max_depth, W_std, b_std, False), start=1):
        thetas = [dprev * t for t in thetas]
        thetas.append(sig)  # f = h - 1: only this layer and those above trained
        for f in range(h - 1):
            thetas[f] = thetas[f] + sig
        if h >= 2:
            for f, t in enumerate(thetas):
                yield h - 1, f, t


# ---- shared estimator machinery -----------------------------------------------------------


_NO_Y = "no_validation"


def _validate(est: BaseEstimator, X: Any, y: Any = _NO_Y, reset: bool = True, **kw: Any) -> Any:
    """``validate_data`` (scikit-learn >= 1.6) or the older ``est._validate_data``.

    ``y`` is validated when passed, even as ``None`` (which raises scikit-learn's
    "requires y to be passed" error in ``fit``).
    """
    try:
        from sklearn.utils.validation import validate_data
    except ImportError:  # pragma: no cover - scikit-learn < 1.6
        return est._validate_data(X, y, reset=reset, **kw)
    return validate_data(est, X, y, reset=reset, **kw)


def _gradient_descent_mse() -> Any:
    try:
        from .predict import gradient_descent_mse
    except ImportError:
        from .predict.mse import gradient_descent_mse
    return gradient_descent_mse


class _NTKBase(BaseEstimator):
    """Kernel computation and the kernel-regression fit shared by both estimators."""

    def _check_params(self) -> torch.dtype:
        check_choice(self.kernel, "kernel", _KERNELS)
        dtype = check_choice(self.dtype, "dtype", tuple(_DTYPES))
        if self.arch is None:
            _check_fc_params(self.depth, self.W_std, self.b_std, self.n_fixed_layers, self.kernel)
        else:
            from .layers.base import Layer

            if not isinstance(self.arch, Layer):
                raise TypeError(f"arch must be an ntkit.layers architecture or None, got {type(self.arch).__name__}")
            if self.n_fixed_layers != 0:
                raise ValueError("n_fixed_layers is only supported for the built-in FC ReLU network (arch=None); "
                                 f"got n_fixed_layers={self.n_fixed_layers!r} with an arch")
        if self.t is not None:
            check_nonnegative(self.t, "t")
        check_nonnegative(self.diag_reg, "diag_reg")
        check_positive(self.learning_rate, "learning_rate")
        return _DTYPES[dtype]

    def _kernel(self, X1: np.ndarray, X2: np.ndarray | None = None) -> torch.Tensor:
        """``k(X1, X2)`` as a torch tensor in the estimator's dtype."""
        dtype = _DTYPES[self.dtype]
        a = torch.as_tensor(np.array(X1, dtype=np.float64, copy=True)).to(dtype)
        b = None if X2 is None else torch.as_tensor(np.array(X2, dtype=np.float64, copy=True)).to(dtype)
        if self.arch is None:
            return fc_relu_kernel(a, b, depth=int(self.depth), W_std=self.W_std, b_std=self.b_std,
                                  n_fixed_layers=int(self.n_fixed_layers), kernel=self.kernel, dtype=dtype)
        k = getattr(self.arch.kernel(a, b, get=self.kernel, dtype=dtype), self.kernel)
        n2 = a.shape[0] if b is None else b.shape[0]
        if k is None or tuple(k.shape) != (a.shape[0], n2):
            raise ValueError(f"arch must end with flat outputs (an (n1, n2) kernel); got a kernel of shape "
                             f"{None if k is None else tuple(k.shape)}")
        return k

    def _fit_dual(self, K: torch.Tensor, Y: np.ndarray) -> np.ndarray:
        """Dual coefficients ``alpha`` with predictions ``k(x, X_fit) @ alpha`` (via ntkit.predict)."""
        gd = _gradient_descent_mse()
        yt = torch.as_tensor(Y, dtype=torch.float64)
        predict = gd(K.to(torch.float64), yt, learning_rate=self.learning_rate, diag_reg=self.diag_reg)
        self.regularizer_ = float(predict.regularizer)
        n = K.shape[0]
        eye = torch.eye(n, dtype=torch.float64)
        # predictions on "test" inputs whose kernel row is e_i are alpha_i
        alpha = predict(t=None if self.t is None else float(self.t), k_test_train=eye).test
        return alpha.reshape(n, -1).numpy()

    def _decision(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = _validate(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.concatenate([self._kernel(X[i:i + _PREDICT_BLOCK], self.X_fit_).to(torch.float64).numpy()
                               @ self.dual_coef_ for i in range(0, X.shape[0], _PREDICT_BLOCK)])

    def _test_kernel(self, X: np.ndarray) -> np.ndarray:
        """``k(X, X_fit_)`` in float64, computed in blocks of rows."""
        return np.concatenate([self._kernel(X[i:i + _PREDICT_BLOCK], self.X_fit_).to(torch.float64).numpy()
                               for i in range(0, X.shape[0], _PREDICT_BLOCK)])


_PARAM_DOC = """
    Parameters
    ----------
    arch : ntkit.layers architecture, optional
        An infinite-width architecture with flat outputs (e.g.
        ``L.serial(L.Dense(512), L.Relu(), L.Dense(1))``) whose ``kernel`` is used;
        ``depth``, ``W_std``, ``b_std`` are then ignored and ``n_fixed_layers``
        must be 0. ``None`` (default): the built-in fully connected ReLU network.
    depth : int
        Hidden ``Dense -> ReLU`` layers of the built-in network (>= 1).
    W_std, b_std : float
        Weight (> 0) and bias (>= 0) standard deviations, NTK parameterisation.
    kernel : {"ntk", "nngp"}
        Train every layer (NTK) or only the readout (NNGP).
    n_fixed_layers : int
        Frozen bottom affine layers, ``0..depth`` (Arora et al. 2020);
        ``depth`` gives the NNGP. Ignored for ``kernel="nngp"``.
    t : float, optional
        Gradient-descent time (steps of size ``learning_rate`` on the loss
        ``1/(2n) sum ||f - y||^2``, see :mod:`ntkit.predict`); ``None`` (default)
        is the end of training, i.e. kernel (ridge) regression.
    diag_reg : float
        Ridge added to the kernel's diagonal, relative to its mean diagonal.
    learning_rate : float
        Step size for finite ``t``.
    dtype : {"float64", "float32"}
        Dtype of the kernel computation (solves are always float64).
"""


class NTKRegressor(RegressorMixin, _NTKBase):
    __doc__ = """Kernel regression with the infinite-width NTK/NNGP: an infinitely wide network trained on MSE.

    ``predict(X) = k(X, X_fit) (K + rho I)^{-1} y`` for ``t=None``, or the
    outputs after gradient-descent time ``t`` (network initialised at zero output).
    """ + _PARAM_DOC + """    normalize_y : bool
        Regress ``(y - mean) / std`` and undo it on prediction (default False:
        the plain infinite-width network, whose prior mean is 0).

    Attributes
    ----------
    X_fit_ : ndarray (n_samples, n_features)
    dual_coef_ : ndarray (n_samples, n_targets)
        ``predict(X) = k(X, X_fit_) @ dual_coef_`` (before un-normalising).
    regularizer_ : float
        Absolute ridge added to the kernel's diagonal.
    y_mean_, y_std_ : ndarray
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from ntkit.sklearn import NTKRegressor
    >>> X = np.linspace(-2, 2, 30)[:, None]; y = np.sin(2 * X[:, 0])
    >>> reg = NTKRegressor(depth=3, diag_reg=1e-4).fit(X, y)
    >>> float(reg.score(X, y)) > 0.99
    True
    """

    def __init__(self, arch: Any = None, depth: int = 2, W_std: float = _SQRT2, b_std: float = 0.1,
                 kernel: str = "ntk", n_fixed_layers: int = 0, t: float | None = None, diag_reg: float = 1e-6,
                 learning_rate: float = 1.0, normalize_y: bool = False, dtype: str = "float64") -> None:
        self.arch = arch
        self.depth = depth
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.n_fixed_layers = n_fixed_layers
        self.t = t
        self.diag_reg = diag_reg
        self.learning_rate = learning_rate
        self.normalize_y = normalize_y
        self.dtype = dtype

    def fit(self, X: Any, y: Any) -> NTKRegressor:
        """Fit on ``X (n, d)`` and ``y (n,)`` or ``(n, k)``; returns ``self``."""
        self._check_params()
        X, y = _validate(self, X, y, reset=True, dtype=[np.float64, np.float32], y_numeric=True,
                         multi_output=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        Y = y.reshape(len(y), -1)
        if self.normalize_y:
            self.y_mean_ = Y.mean(0)
            std = Y.std(0)
            self.y_std_ = np.where(std > 0, std, 1.0)
        else:
            self.y_mean_ = np.zeros(Y.shape[1])
            self.y_std_ = np.ones(Y.shape[1])
        self.X_fit_ = np.array(X, dtype=np.float64, copy=True)
        K = self._kernel(self.X_fit_)
        self.dual_coef_ = self._fit_dual(K, (Y - self.y_mean_) / self.y_std_)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions ``(m,)`` (or ``(m, k)`` for 2-D targets)."""
        out = self._decision(X) * self.y_std_ + self.y_mean_
        return out[:, 0] if self._y_1d else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        # a finite training time t is early stopping: the model may underfit on purpose
        tags.regressor_tags.poor_score = self.t is not None
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"multioutput": True, "poor_score": self.t is not None}


class NTKClassifier(ClassifierMixin, _NTKBase):
    __doc__ = """Classification with the infinite-width NTK/NNGP.

    ``solver="kernel_regression"`` (default): regress centred one-hot targets
    ``onehot(y) - 1/n_classes`` (a wide network trained on MSE) and predict the
    argmax; ``solver="svm"``: ``sklearn.svm.SVC(kernel="precomputed", C=C)`` on
    the kernel, as in Arora et al. (2020).
    """ + _PARAM_DOC + """    solver : {"kernel_regression", "svm"}
    C : float
        SVM regularisation (``solver="svm"`` only).

    Attributes
    ----------
    classes_ : ndarray
    X_fit_ : ndarray (n_samples, n_features)
    dual_coef_ : ndarray (n_samples, n_classes)
        Kernel-regression coefficients (``solver="kernel_regression"``).
    svc_ : sklearn.svm.SVC
        The fitted SVM (``solver="svm"``).
    n_features_in_ : int

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from ntkit.sklearn import NTKClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = NTKClassifier(solver="svm", C=10.0).fit(X[::2], y[::2])
    >>> float(clf.score(X[1::2], y[1::2])) > 0.9
    True
    """

    def __init__(self, arch: Any = None, depth: int = 2, W_std: float = _SQRT2, b_std: float = 0.1,
                 kernel: str = "ntk", n_fixed_layers: int = 0, t: float | None = None, diag_reg: float = 1e-6,
                 learning_rate: float = 1.0, solver: str = "kernel_regression", C: float = 1.0,
                 dtype: str = "float64") -> None:
        self.arch = arch
        self.depth = depth
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.n_fixed_layers = n_fixed_layers
        self.t = t
        self.diag_reg = diag_reg
        self.learning_rate = learning_rate
        self.solver = solver
        self.C = C
        self.dtype = dtype

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        """Fit on ``X (n, d)`` and labels ``y (n,)``; returns ``self``."""
        self._check_params()
        check_choice(self.solver, "solver", ("kernel_regression", "svm"))
        if self.solver == "svm":
            check_positive(self.C, "C")
        X, y = _validate(self, X, y, reset=True, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        self.X_fit_ = np.array(X, dtype=np.float64, copy=True)
        K = self._kernel(self.X_fit_)
        if self.solver == "svm":
            from sklearn.svm import SVC

            self.svc_ = SVC(kernel="precomputed", C=float(self.C)).fit(K.to(torch.float64).numpy(), codes)
            return self
        n_classes = len(self.classes_)
        Y = np.eye(n_classes)[codes] - 1.0 / n_classes
        self.dual_coef_ = self._fit_dual(K, Y)
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.poor_score = self.t is not None  # early stopping may underfit on purpose
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"poor_score": self.t is not None}

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores ``(m, n_classes)``; for two classes ``(m,)``, positive for ``classes_[1]``."""
        if self.solver == "svm":
            check_is_fitted(self)
            X = _validate(self, X, reset=False, dtype=[np.float64, np.float32])
            return self.svc_.decision_function(self._test_kernel(X))
        f = self._decision(X)
        if len(self.classes_) == 2:
            return f[:, 1] - f[:, 0]
        return f

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels ``(m,)``."""
        if self.solver == "svm":
            check_is_fitted(self)
            X = _validate(self, X, reset=False, dtype=[np.float64, np.float32])
            codes = self.svc_.predict(self._test_kernel(X))
            return self.classes_[codes]
        f = self._decision(X)
        return self.classes_[np.argmax(f, axis=1)]


# ---- Gaussian-process kernel -----------------------------------------------------------------


class NTKKernel(_SKKernel):
    """The FC ReLU NTK/NNGP as a :mod:`sklearn.gaussian_process` kernel with fittable ``W_std``, ``b_std``.

    ``k(x, x')`` is :func:`fc_relu_kernel`. Hyperparameters (``theta`` holds
    their logs, as scikit-learn expects) are ``W_std`` and ``b_std``; their
    gradients ``dK/dlog(W_std)``, ``dK/dlog(b_std)`` come from torch
    forward-mode automatic differentiation in float64. Combine with
    ``ConstantKernel`` and ``WhiteKernel`` for an output scale and noise.

    Parameters
    ----------
    depth : int
        Hidden ReLU layers (fixed, not a hyperparameter).
    W_std, b_std : float
        Initial values (> 0; ``b_std = 0`` needs ``b_std_bounds="fixed"``).
    kernel : {"ntk", "nngp"}
    n_fixed_layers : int
        Frozen bottom affine layers (see :mod:`ntkit.sklearn`).
    W_std_bounds, b_std_bounds : pair of float or "fixed"
        Bounds of the values (not logs) for the optimiser.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.gaussian_process import GaussianProcessRegressor
    >>> from sklearn.gaussian_process.kernels import WhiteKernel
    >>> from ntkit.sklearn import NTKKernel
    >>> X = np.linspace(-1, 1, 20)[:, None]; y = np.sin(3 * X[:, 0])
    >>> gp = GaussianProcessRegressor(NTKKernel(depth=2) + WhiteKernel(1e-2)).fit(X, y)
    >>> bool(gp.kernel_.k1.W_std > 0)
    True
    """

    def __init__(self, depth: int = 2, W_std: float = 1.0, b_std: float = 0.1, kernel: str = "ntk",
                 n_fixed_layers: int = 0, W_std_bounds: Any = (1e-2, 1e2), b_std_bounds: Any = (1e-3, 1e1)
                 ) -> None:
        self.depth = depth
        self.W_std = W_std
        self.b_std = b_std
        self.kernel = kernel
        self.n_fixed_layers = n_fixed_layers
        self.W_std_bounds = W_std_bounds
        self.b_std_bounds = b_std_bounds

    @property
    def hyperparameter_W_std(self) -> Hyperparameter:
        return Hyperparameter("W_std", "numeric", self.W_std_bounds)

    @property
    def hyperparameter_b_std(self) -> Hyperparameter:
        return Hyperparameter("b_std", "numeric", self.b_std_bounds)

    def _check(self) -> None:
        _check_fc_params(self.depth, self.W_std, self.b_std, self.n_fixed_layers, self.kernel)
        if self.b_std == 0 and not self.hyperparameter_b_std.fixed:
            raise ValueError("b_std = 0 cannot be optimised on a log scale; use b_std > 0 or b_std_bounds='fixed'")

    def _eval(self, X: torch.Tensor, Y: torch.Tensor | None, W: Any, b: Any, diagonal: bool = False) -> torch.Tensor:
        return fc_relu_kernel(X, Y, depth=int(self.depth), W_std=W, b_std=b, n_fixed_layers=int(self.n_fixed_layers),
                              kernel=self.kernel, diagonal=diagonal, dtype=torch.float64)

    def __call__(self, X: Any, Y: Any = None, eval_gradient: bool = False) -> Any:
        """``K(X, Y)`` ``(n, m)``; with ``eval_gradient`` also ``dK/dtheta`` ``(n, n, n_free_hyperparameters)``."""
        self._check()
        Xt = _as_float_tensor(X, "X", torch.float64)
        Yt = None if Y is None else _as_float_tensor(Y, "Y", torch.float64)
        if Yt is not None and Yt.shape[1] != Xt.shape[1]:
            raise ValueError(f"Y has {Yt.shape[1]} features but X has {Xt.shape[1]}; they must match")
        if eval_gradient and Yt is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        K = self._eval(Xt, Yt, float(self.W_std), float(self.b_std))
        if not eval_gradient:
            return K.numpy()
        import torch.autograd.forward_ad as fwAD

        grads = []
        for hp in self.hyperparameters:
            if hp.fixed:
                continue
            logs = {"W_std": torch.tensor(math.log(self.W_std), dtype=torch.float64),
                    "b_std": torch.tensor(math.log(self.b_std) if self.b_std > 0 else -math.inf,
                                          dtype=torch.float64)}
            with fwAD.dual_level():
                logs[hp.name] = fwAD.make_dual(logs[hp.name], torch.ones((), dtype=torch.float64))
                Kd = self._eval(Xt, None, torch.exp(logs["W_std"]), torch.exp(logs["b_std"]))
                tangent = fwAD.unpack_dual(Kd).tangent
            grads.append(torch.zeros_like(K) if tangent is None else tangent)
        G = torch.stack(grads, dim=-1) if grads else torch.empty(K.shape + (0,), dtype=torch.float64)
        return K.numpy(), G.numpy()

    def diag(self, X: Any) -> np.ndarray:
        """``k(x_i, x_i)`` for each row, shape ``(n,)`` (without forming the matrix)."""
        self._check()
        Xt = _as_float_tensor(X, "X", torch.float64)
        return self._eval(Xt, None, float(self.W_std), float(self.b_std), diagonal=True).numpy()

    def is_stationary(self) -> bool:
        """NTK/NNGP kernels depend on the inputs' norms, not only their difference."""
        return False
