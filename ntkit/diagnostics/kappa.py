"""The lazy-training ratio κ of Chizat et al. (2019), as in Pleiss' lecture notes (seed 002, eq. 3).

Definition used here (``f_a(x; θ)`` one output unit, ``X`` the ``n`` data points)::

    κ(θ₀) = ||∇²f|| / ||∇f||² · ||f(X; θ₀) − y||

with the *sup over data* norms of the notes,

* ``||∇f|| = max_{i,a} ||∇_θ f_a(x_i; θ₀)||₂`` (from the NTK's diagonal),
* ``||∇²f|| = max_{i,a} ||∇²_θ f_a(x_i; θ₀)||_op`` (largest |eigenvalue| of the
  per-example parameter Hessian, by power iteration on Hessian-vector
  products, forward-over-reverse with :mod:`torch.func`; the Hessian is never
  formed),
* ``||f − y||`` the Euclidean norm over all ``n·k`` residuals (``residual="norm"``,
  as in eq. 3) or its RMS ``||f − y|| / sqrt(n k)`` (``residual="rms"``, the
  ``sqrt(n)`` that eq. 3 drops as a constant).

In the NTK parameterisation ``||∇f||² = O(1)`` and ``||∇²f|| = O(1/sqrt(width))``
for bounded readout weights (the notes' ``a_j = ±1``), so κ = O(width^(-1/2)):
the network is "lazy". With Gaussian readout weights (``arch.init``) the
largest Hessian block grows with ``max_j |a_j| ~ sqrt(2 log width)``, so the
measured slope at moderate widths is flatter, ``||∇²f|| ~ sqrt(log w / w)``
(about −0.38 over widths 64…4096 for a one-hidden-layer erf network). For a
model linear in θ the Hessian vanishes and κ = 0 exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp, vmap

from .._validation import check_choice, check_positive
from ._common import check_model, detached, functional, prepare_xy, trainable
from ._fit import PowerLawFit, fit_power_law
from .lazy import check_seeds, check_widths

__all__ = ["hessian_operator_norm", "kappa", "kappa_scaling", "KappaResult", "KappaScaling"]


def _norms(v: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-row norms of a batched parameter dict (leading axis = batch)."""
    return torch.sqrt(sum(t.reshape(t.shape[0], -1).pow(2).sum(1) for t in v.values()))


def hessian_operator_norm(
    model: nn.Module,
    x: Any,
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
    seed: int = 0,
    batch_size: int | None = None,
    return_iterations: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Operator norm of each per-example Hessian ``∇²_θ f_a(x_i)``, by power iteration.

    Each iteration is one batched Hessian-vector product
    ``H v = d/dε ∇_θ f(θ + ε v)`` (``torch.func.jvp`` of ``torch.func.grad``,
    vectorised over examples and outputs with ``vmap``). The estimate
    ``||H v_t||`` with ``v_t = H v_{t-1} / ||H v_{t-1}||`` converges to the
    largest |eigenvalue| even when ``±λ`` are both eigenvalues (as for ReLU
    networks, whose Hessians only couple consecutive layers).

    Parameters
    ----------
    model : nn.Module
        Differentiated with respect to its trainable parameters.
    x : tensor (n, ...)
    max_iter : int
        Maximum power iterations; a ``RuntimeWarning`` is issued if the
        relative change of every estimate has not dropped below ``tol``.
    tol : float
        Relative tolerance on successive estimates.
    seed : int
        Seed of the random start vectors (a private generator).
    batch_size : int, optional
        Examples per vectorised chunk (memory ~ ``batch_size · k · P``).
    return_iterations : bool
        Also return the number of iterations of the slowest chunk.

    Returns
    -------
    torch.Tensor (n, k)
        ``||∇²_θ f_a(x_i)||_op`` in float64.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 1)
    >>> hessian_operator_norm(lin, torch.randn(2, 3)).flatten().tolist()
    [0.0, 0.0]
    """
    check_model(model)
    xt, _, k = prepare_xy(model, x, None)
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    check_positive(tol, "tol")
    n = xt.shape[0]
    b = n if batch_size is None else int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    params = detached(trainable(model))
    f = functional(model)
    gen = torch.Generator().manual_seed(int(seed))

    def scalar(p: dict[str, torch.Tensor], xi: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (f(p, xi.unsqueeze(0))[0] * a).sum()

    def hvp(v: dict[str, torch.Tensor], xi: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        return jvp(lambda p: grad(scalar)(p, xi, a), (params,), (v,))[1]

    bhvp = vmap(hvp)
    eye = torch.eye(k, dtype=xt.dtype, device=xt.device)
    out = torch.zeros(n, k, dtype=torch.float64)
    worst = 0
    for s in range(0, n, b):
        xs = xt[s:s + b]
        m = xs.shape[0]
        xr = xs.repeat_interleave(k, 0)  # rows: (example, output)
        ar = eye.repeat(m, 1)
        v = {name: torch.randn((m * k, *p.shape), generator=gen, dtype=torch.float64).to(p)
             for name, p in params.items()}
        nv = _norms(v)
        v = {name: t / nv.reshape(-1, *([1] * (t.ndim - 1))) for name, t in v.items()}
        est = torch.zeros(m * k, dtype=torch.float64)
        it = 0
        for it in range(1, int(max_iter) + 1):
            hv = bhvp(v, xr, ar)
            new = _norms(hv).double()
            scale = torch.where(new > 0, new, torch.ones_like(new)).to(xt.dtype)
            v = {name: t / scale.reshape(-1, *([1] * (t.ndim - 1))) for name, t in hv.items()}
            done = bool(torch.all((new - est).abs() <= tol * new.clamp_min(1e-300)))
            est = new
            if it > 1 and done:
                break
        else:
            warnings.warn(f"hessian_operator_norm: power iteration did not reach tol={tol} in {max_iter} "
                          "iterations (close top eigenvalues); the estimate is a lower bound", RuntimeWarning,
                          stacklevel=2)
        worst = max(worst, it)
        out[s:s + m] = est.reshape(m, k)
    return (out, worst) if return_iterations else out


@dataclass
class KappaResult:
    """κ and its parts (see module docstring).

    Attributes
    ----------
    kappa : float
    hessian_norm : float
        ``max_{i,a} ||∇²_θ f_a(x_i)||_op``.
    gradient_norm : float
        ``max_{i,a} ||∇_θ f_a(x_i)||``.
    residual_norm : float
        ``||f − y||`` (or its RMS, per ``residual``).
    residual : str
    per_example_hessian_norm : list of list of float (n, k)
    """

    kappa: float
    hessian_norm: float
    gradient_norm: float
    residual_norm: float
    residual: str
    per_example_hessian_norm: list[list[float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return dict(vars(self))


def kappa(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    residual: str = "norm",
    max_iter: int = 200,
    tol: float = 1e-6,
    seed: int = 0,
    batch_size: int | None = None,
) -> KappaResult:
    """κ = ||∇²f|| / ||∇f||² · ||f − y|| at the model's current parameters.

    Parameters
    ----------
    model : nn.Module
    x, y : tensors
        Data ``(n, ...)`` and targets ``(n,)`` / ``(n, k)``.
    residual : {"norm", "rms"}
        ``||f − y||`` as in seed 002 eq. (3), or divided by ``sqrt(n k)``.
    max_iter, tol, seed, batch_size
        Power-iteration settings (see :func:`hessian_operator_norm`).

    Returns
    -------
    KappaResult

    Examples
    --------
    >>> import torch
    >>> kappa(torch.nn.Linear(3, 1), torch.randn(5, 3), torch.randn(5)).kappa
    0.0
    """
    check_choice(residual, "residual", ("norm", "rms"))
    check_model(model)
    xt, yt, k = prepare_xy(model, x, y)
    from ..empirical import empirical_ntk

    diag = empirical_ntk(model, xt, output="diagonal")  # (n, k, k)
    gnorm = math.sqrt(float(torch.diagonal(diag, dim1=1, dim2=2).max()))
    if gnorm == 0:
        raise ValueError("the model's output has zero gradient at every example; κ is undefined")
    hn = hessian_operator_norm(model, xt, max_iter=max_iter, tol=tol, seed=seed, batch_size=batch_size)
    with torch.no_grad():
        r = (model(xt).reshape(xt.shape[0], -1) - yt).double()
    rn = float(torch.linalg.norm(r))
    if residual == "rms":
        rn /= math.sqrt(r.numel())
    h = float(hn.max())
    return KappaResult(kappa=h / gnorm**2 * rn, hessian_norm=h, gradient_norm=gnorm, residual_norm=rn,
                       residual=residual, per_example_hessian_norm=hn.tolist())


@dataclass
class KappaScaling:
    """κ at initialisation over widths and seeds (:func:`kappa_scaling`).

    Attributes
    ----------
    widths, seeds : list of int
    kappa, hessian_norm, gradient_norm : np.ndarray (n_widths, n_seeds)
    kappa_fit, hessian_fit : PowerLawFit
        Log-log fits against width (theory: slope −½ for both in the NTK
        parameterisation).
    """

    widths: list[int]
    seeds: list[int]
    kappa: np.ndarray
    hessian_norm: np.ndarray
    gradient_norm: np.ndarray
    kappa_fit: PowerLawFit
    hessian_fit: PowerLawFit

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {"widths": self.widths, "seeds": self.seeds, "kappa": self.kappa.tolist(),
                "hessian_norm": self.hessian_norm.tolist(), "gradient_norm": self.gradient_norm.tolist(),
                "kappa_fit": self.kappa_fit.to_dict(), "hessian_fit": self.hessian_fit.to_dict()}


def kappa_scaling(
    arch: Any,
    x: Any,
    y: Any,
    widths: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    *,
    dtype: torch.dtype = torch.float64,
    residual: str = "norm",
    max_iter: int = 200,
    tol: float = 1e-6,
) -> KappaScaling:
    """κ at initialisation of ``arch.init(..., width=w, seed=s)`` for each width and seed, with slope fits.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Dense(8), L.Erf(), L.Dense(1))
    >>> res = kappa_scaling(arch, torch.randn(3, 2), torch.randn(3), widths=[16, 64], seeds=[0], tol=1e-3)
    >>> res.kappa.shape
    (2, 1)
    """
    ws, ss = check_widths(widths), check_seeds(seeds)
    if not hasattr(arch, "init"):
        raise TypeError(f"arch must be an ntkit layer with .init(...), got {type(arch).__name__}")
    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    shape = tuple(xt.shape[1:])
    kap = np.zeros((len(ws), len(ss)))
    hes = np.zeros_like(kap)
    gra = np.zeros_like(kap)
    for i, w in enumerate(ws):
        for j, s in enumerate(ss):
            net = arch.init(shape, width=w, seed=s, dtype=dtype)
            r = kappa(net, xt, y, residual=residual, max_iter=max_iter, tol=tol, seed=s)
            kap[i, j], hes[i, j], gra[i, j] = r.kappa, r.hessian_norm, r.gradient_norm
    wx = np.repeat(np.asarray(ws, dtype=float), len(ss))
    return KappaScaling(widths=ws, seeds=ss, kappa=kap, hessian_norm=hes, gradient_norm=gra,
                        kappa_fit=fit_power_law(wx, kap.ravel()), hessian_fit=fit_power_law(wx, hes.ravel()))
