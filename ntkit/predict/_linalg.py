"""Shared numerics for :mod:`ntkit.predict`: input checks, PSD checks, cached solves.

Everything here works in a *solve dtype* (float64 unless asked otherwise) and
reports numerical trouble instead of returning silent NaN:

* a kernel that is not symmetric, not finite, or strongly indefinite raises a
  ``ValueError`` naming the offending value;
* a kernel with small negative eigenvalues beyond round-off is clamped to PSD
  with a :class:`NumericalWarning` naming the smallest eigenvalue;
* a Cholesky factorisation that fails (singular or indefinite kernel) falls
  back to an eigendecomposition pseudo-inverse, again with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .._validation import check_finite, check_nonnegative

__all__ = ["NumericalWarning"]

#: eigenvalues below ``-_SEVERE * lambda_max`` are not round-off: the kernel is rejected.
_SEVERE = 1e-2


class NumericalWarning(UserWarning):
    """A kernel was singular, indefinite or ill-conditioned and a fallback was used."""


def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray | list | tuple | float | int):
        try:
            return torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array, could not convert it: {exc}") from None
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def check_solve_dtype(dtype: torch.dtype) -> torch.dtype:
    """Solves run in float32 or float64."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def _float_dtype(*ts: torch.Tensor) -> torch.dtype:
    """The floating dtype results are cast back to (promotion of the inputs' float dtypes)."""
    out: torch.dtype | None = None
    for t in ts:
        if t.is_floating_point():
            out = t.dtype if out is None else torch.promote_types(out, t.dtype)
    return torch.get_default_dtype() if out is None else out


def check_train_kernel(
    k: Any, name: str = "k_train_train", dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.dtype]:
    """Validate a train-train kernel; return it symmetrised, in ``dtype``, plus its input dtype.

    Square, real, finite and symmetric to round-off, else ``ValueError``. The
    work is four passes over the matrix and one new ``n x n`` buffer (which is
    the returned ``(K + K^T) / 2``): validation costs less than a Cholesky
    factorisation even for moderate ``n``.
    """
    k = _to_tensor(k, name)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) matrix, got shape {tuple(k.shape)}")
    if k.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 x 0)")
    if k.is_complex() or k.dtype == torch.bool:
        raise TypeError(f"{name} must be a real floating tensor, got dtype {k.dtype}")
    if not k.is_floating_point():
        k = k.to(torch.get_default_dtype())
    in_dtype = k.dtype
    lo, hi = torch.aminmax(k)  # NaN propagates: a free finiteness test
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        check_finite(k, name)  # raises with the count and first index
    scale = max(abs(float(lo)), abs(float(hi)))
    kd = k if dtype is None else k.to(dtype)
    d = kd - kd.T
    asym = float(d.max())  # d is antisymmetric: its max is max |K - K^T|
    eps = torch.finfo(in_dtype).eps
    if asym > 100 * eps * max(scale, 1e-300) * max(1, k.shape[0]) ** 0.5 and asym > 1e-6 * scale:
        raise ValueError(
            f"{name} must be symmetric; max |K - K^T| = {asym:.3g} (max |K| = {scale:.3g})"
        )
    sym = d.mul_(-0.5).add_(kd)  # (K + K^T) / 2 = K - (K - K^T) / 2, in the same buffer
    return sym, in_dtype


def check_targets(y: Any, n: int, name: str = "y_train") -> tuple[torch.Tensor, bool]:
    """``y`` as ``(n, k)`` plus whether it was 1-D (so results can be squeezed back)."""
    y = _to_tensor(y, name)
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must be (n,) or (n, k), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} rows but the kernel is {n} x {n}; they must match")
    if y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be real numbers, got dtype {y.dtype}")
    if not y.is_floating_point():
        y = y.to(torch.get_default_dtype())
    check_finite(y, name)
    return (y.unsqueeze(1), True) if y.ndim == 1 else (y, False)


def check_cross_kernel(k: Any, n: int, name: str = "k_test_train") -> torch.Tensor:
    """A test-train kernel ``(m, n)``: 2-D, finite, ``n`` columns."""
    k = _to_tensor(k, name)
    if k.ndim != 2 or k.shape[1] != n:
        raise ValueError(f"{name} must be (n_test, {n}) (test rows, train columns), got shape {tuple(k.shape)}")
    if k.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if not k.is_floating_point():
        k = k.to(torch.get_default_dtype())
    check_finite(k, name)
    return k


def check_outputs(f: Any, shape: tuple[int, int], name: str) -> torch.Tensor:
    """Initial outputs: a scalar or a tensor broadcastable to ``shape`` = ``(rows, k)``."""
    f = _to_tensor(f, name)
    if not f.is_floating_point():
        f = f.to(torch.get_default_dtype())
    check_finite(f, name)
    if f.ndim == 1 and f.shape[0] == shape[0]:
        f = f.unsqueeze(1)
    try:
        return torch.broadcast_to(f, shape)
    except RuntimeError:
        raise ValueError(
            f"{name} must be a scalar, ({shape[0]},) or ({shape[0]}, {shape[1]}), got shape {tuple(f.shape)}"
        ) from None


def check_times(t: Any, name: str = "t") -> tuple[torch.Tensor, bool]:
    """Times as a float64 1-D tensor plus whether ``t`` was a scalar."""
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a number or a 1-D array of numbers, got a bool")
    tt = _to_tensor(t, name)
    if tt.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array of times, got shape {tuple(tt.shape)}")
    scalar = tt.ndim == 0
    tt = tt.reshape(-1).to(torch.float64)
    if tt.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(tt).all()):
        raise ValueError(f"{name} must be finite (use t=None for t -> infinity), got {t!r}")
    if bool((tt < 0).any()):
        raise ValueError(f"{name} must be >= 0 (times since the start of training), got min {float(tt.min())}")
    return tt, scalar


def regulariser(k: torch.Tensor, diag_reg: float, absolute: bool) -> float:
    """The ridge ``rho`` added to the diagonal: ``diag_reg`` times the mean diagonal unless ``absolute``."""
    d = check_nonnegative(diag_reg, "diag_reg")
    if d == 0.0:
        return 0.0
    if absolute:
        return d
    return d * float(torch.diagonal(k).mean().clamp_min(0))


class KernelSolver:
    """A symmetric PSD kernel plus a ridge, with cached eigendecomposition and Cholesky factor.

    Parameters
    ----------
    k : torch.Tensor
        Symmetrised ``(n, n)`` kernel in the solve dtype (from :func:`check_train_kernel`).
    rho : float
        Ridge added to the diagonal for solves and dynamics.
    input_dtype : torch.dtype
        The dtype the user's kernel came in (sets the round-off tolerance of the PSD check).
    name : str
        The argument name used in warnings/errors.
    """

    def __init__(self, k: torch.Tensor, rho: float, input_dtype: torch.dtype, name: str = "k_train_train") -> None:
        self.name = name
        self.input_eps = torch.finfo(input_dtype).eps
        self.k = k
        self.rho = float(rho)
        self.n = k.shape[0]
        self.dtype = k.dtype
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None
        self._chol: torch.Tensor | None = None
        self._chol_failed = False

    # ---- eigendecomposition ------------------------------------------------
    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (ascending, clamped at 0) and eigenvectors of the kernel (without ridge)."""
        if self._eig is None:
            evals, evecs = torch.linalg.eigh(self.k)
            lmax = float(evals[-1])
            lmin = float(evals[0])
            if lmax <= 0:
                raise ValueError(
                    f"{self.name} is not positive semi-definite: its largest eigenvalue is {lmax:.3g}"
                )
            tol = self.n * max(self.input_eps, torch.finfo(self.dtype).eps) * lmax
            if lmin < -_SEVERE * lmax:
                raise ValueError(
                    f"{self.name} is not positive semi-definite: smallest eigenvalue {lmin:.3g} "
                    f"vs largest {lmax:.3g}; is it a kernel (Gram) matrix?"
                )
            if lmin < -tol:
                warnings.warn(
                    f"{self.name} is not positive semi-definite beyond round-off: smallest eigenvalue "
                    f"{lmin:.3g} (largest {lmax:.3g}); negative eigenvalues are clamped to 0",
                    NumericalWarning,
                    stacklevel=3,
                )
            self._eig = (evals.clamp_min(0), evecs)
        return self._eig

    # ---- solves -------------------------------------------------------------
    def _cholesky(self) -> torch.Tensor | None:
        if self._chol is None and not self._chol_failed:
            diag = self.k.diagonal()
            saved = diag.clone()
            diag.add_(self.rho)  # ridge in place (no n x n copy); the diagonal is restored exactly below
            try:
                chol, info = torch.linalg.cholesky_ex(self.k)
            finally:
                diag.copy_(saved)
            if int(info) != 0:
                self._chol_failed = True
                evals, _ = self.eigh()
                warnings.warn(
                    f"{self.name} (+ ridge {self.rho:.3g}) is singular or indefinite: Cholesky failed; "
                    f"smallest eigenvalue {float(evals[0]) + self.rho:.3g} (largest "
                    f"{float(evals[-1]) + self.rho:.3g}). Falling back to an eigendecomposition "
                    "pseudo-inverse (minimum-norm solution); consider diag_reg > 0",
                    NumericalWarning,
                    stacklevel=4,
                )
            else:
                self._chol = chol
        return self._chol

    @property
    def uses_pinv(self) -> bool:
        """Whether solves fell back to the pseudo-inverse."""
        self._cholesky()
        return self._chol_failed

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``(K + rho I)^{-1} rhs`` (or the pseudo-inverse), for ``rhs`` of shape ``(n, ...)``."""
        rhs = rhs.to(self.dtype)
        shape = rhs.shape
        r2 = rhs.reshape(self.n, -1)
        chol = self._cholesky()
        if chol is not None:
            sol = torch.cholesky_solve(r2, chol)
            self._check_residual(r2, sol)
        else:
            evals, evecs = self.eigh()
            mu = evals + self.rho
            cutoff = mu[-1] * self.n * torch.finfo(self.dtype).eps
            inv = torch.where(mu > cutoff, 1.0 / mu.clamp_min(torch.finfo(self.dtype).tiny), torch.zeros_like(mu))
            sol = evecs @ (inv[:, None] * (evecs.T @ r2))
        return sol.reshape(shape)

    def _check_residual(self, rhs: torch.Tensor, sol: torch.Tensor) -> None:
        res = (self.k @ sol + self.rho * sol) - rhs
        rnorm = float(torch.linalg.vector_norm(rhs))
        if rnorm == 0:
            return
        rel = float(torch.linalg.vector_norm(res)) / rnorm
        if not np.isfinite(rel) or rel > torch.finfo(self.dtype).eps ** 0.5:
            warnings.warn(
                f"{self.name} (+ ridge {self.rho:.3g}) is ill-conditioned: the Cholesky solve has relative "
                f"residual {rel:.3g}; results may be inaccurate (consider diag_reg > 0 or dtype=torch.float64)",
                NumericalWarning,
                stacklevel=4,
            )


def decay_factors(
    mu: torch.Tensor, times: torch.Tensor, scale: float, discrete: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-time, per-eigenvalue factors of the linear MSE dynamics.

    With ``c = scale * t`` (``scale = learning_rate / N``) and ``mu`` the
    regularised eigenvalues, returns ``(one_minus, phi)`` of shape ``(T, n)``:

    * continuous: ``one_minus = 1 - exp(-c mu)`` via ``expm1``;
    * discrete (``t`` integer steps): ``one_minus = 1 - (1 - scale mu)^t``;

    and ``phi = one_minus / mu`` with its limit ``c`` at ``mu = 0`` (never a
    division by zero).
    """
    t = times.to(mu.dtype)[:, None]
    m = mu[None, :]
    c = scale * t
    if not discrete:
        one_minus = -torch.expm1(-c * m)
    else:
        a = scale * m
        stable = a < 1
        a_safe = torch.where(stable, a, torch.zeros_like(a))
        via_log = -torch.expm1(t * torch.log1p(-a_safe))
        direct = 1 - torch.pow(1 - a, t)
        one_minus = torch.where(stable, via_log, direct)
    pos = m > 0
    phi = torch.where(pos, one_minus / torch.where(pos, m, torch.ones_like(m)), c.expand_as(one_minus))
    return one_minus, phi
