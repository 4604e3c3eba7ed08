"""Kernel spectrum and spectral bias: residual decay along the NTK's eigenvectors.

Under the conventions of :mod:`ntkit.predict` (loss ``1/(2n) Σ ||f − y||²``,
time in GD steps, step ``lr``), a model whose NTK ``Θ`` stays constant has
training residuals ``r_t = f_t − y`` that evolve as

    gradient flow:  r_t = exp(−lr Θ t / n) r_0,
    gradient descent: r_{t+1} = (I − lr Θ / n) r_t,

so the projection on an eigenvector ``v_i`` (eigenvalue ``λ_i``) decays by
``exp(−lr λ_i t / n)`` (flow) or ``(1 − lr λ_i / n)^t`` (GD): directions with
large eigenvalues are fitted first ("spectral bias"). :func:`spectral_bias`
trains a network and compares the observed projections ``v_iᵀ r_t`` with
these predictions computed from ``Θ₀``. For several outputs the per-output
kernel ``trace(Θ)/k`` is used, acting on every output column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_choice, check_square_kernel
from ._common import (
    check_model,
    check_steps,
    gd_train,
    ntk_matrix,
    prepare_xy,
    record_points,
    resolve_lr,
)

__all__ = ["kernel_spectrum", "KernelSpectrum", "residual_decay", "spectral_bias", "SpectralBias"]


@dataclass
class KernelSpectrum:
    """Eigen-decomposition of a symmetric kernel matrix, eigenvalues in decreasing order.

    Attributes
    ----------
    eigenvalues : torch.Tensor (n,)
    eigenvectors : torch.Tensor (n, n)
        Column ``i`` belongs to ``eigenvalues[i]``.
    effective_rank : float
        ``(Σ λ)² / Σ λ²`` (participation ratio) of the non-negative part.
    condition_number : float
        ``λ_max / λ_min`` (``inf`` if ``λ_min ≤ 0``).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    effective_rank: float
    condition_number: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (eigenvectors omitted; they are ``n × n``)."""
        return {"eigenvalues": self.eigenvalues.tolist(), "effective_rank": self.effective_rank,
                "condition_number": self.condition_number if np.isfinite(self.condition_number) else "inf"}


def kernel_spectrum(kernel: Any) -> KernelSpectrum:
    """Eigenvalues (decreasing) and eigenvectors of a symmetric ``(n, n)`` kernel, in float64.

    Examples
    --------
    >>> import torch
    >>> kernel_spectrum(torch.diag(torch.tensor([1.0, 3.0]))).eigenvalues.tolist()
    [3.0, 1.0]
    """
    k = check_square_kernel(kernel, "kernel")
    eps = torch.finfo(k.dtype).eps if k.is_floating_point() else torch.finfo(torch.float64).eps
    k = k.double()
    asym = float((k - k.T).abs().max())
    if asym > 1e3 * eps * max(float(k.abs().max()), 1e-300):
        raise ValueError(f"kernel must be symmetric (max |K − Kᵀ| = {asym:.3g})")
    evals, evecs = torch.linalg.eigh(0.5 * (k + k.T))
    evals, evecs = evals.flip(0), evecs.flip(1)
    pos = evals.clamp_min(0)
    s2 = float(pos.pow(2).sum())
    eff = float(pos.sum()) ** 2 / s2 if s2 > 0 else 0.0
    cond = float(evals[0] / evals[-1]) if float(evals[-1]) > 0 else float("inf")
    return KernelSpectrum(eigenvalues=evals, eigenvectors=evecs, effective_rank=eff, condition_number=cond)


def residual_decay(eigenvalues: Any, lr: float, t: Any, n: int, *, dynamics: str = "gd") -> torch.Tensor:
    """Predicted factor by which each eigen-direction's residual has shrunk after time ``t``.

    Parameters
    ----------
    eigenvalues : tensor (m,)
    lr : float
    t : float or tensor (T,)
        Steps (any real ``t ≥ 0`` for ``"flow"``).
    n : int
        Loss normalisation (number of training examples).
    dynamics : {"gd", "flow"}
        ``(1 − lr λ / n)^t`` or ``exp(−lr λ t / n)``.

    Returns
    -------
    torch.Tensor (T, m), float64

    Examples
    --------
    >>> import torch
    >>> residual_decay(torch.tensor([2.0]), 0.5, [0, 1, 2], 1).flatten().tolist()
    [1.0, 0.0, 0.0]
    """
    check_choice(dynamics, "dynamics", ("gd", "flow"))
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).reshape(1, -1)
    tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    if bool((tt < 0).any()):
        raise ValueError("t must be >= 0")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    a = float(lr) * lam / int(n)
    if dynamics == "flow":
        return torch.exp(-a * tt)
    return (1 - a) ** tt


@dataclass
class SpectralBias:
    """Observed vs predicted residual projections (:func:`spectral_bias`).

    Attributes
    ----------
    eigenvalues : torch.Tensor (n,)
        Of the per-output NTK at initialisation, decreasing.
    steps : list of int
    observed : torch.Tensor (T, n, k)
        ``V ᵀ (f_t − y)`` of the trained network.
    predicted : torch.Tensor (T, n, k)
        ``decay(λ_i, t) · V ᵀ (f_0 − y)`` for a constant kernel.
    lr : float
    dynamics : str
    """

    eigenvalues: torch.Tensor
    steps: list[int]
    observed: torch.Tensor
    predicted: torch.Tensor
    lr: float
    dynamics: str

    def relative_error(self) -> float:
        """``max_t ||observed_t − predicted_t|| / ||observed_0||``."""
        den = float(torch.linalg.norm(self.observed[0]))
        if den == 0:
            return 0.0
        return float(torch.linalg.norm((self.observed - self.predicted).flatten(1), dim=1).max()) / den

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {"eigenvalues": self.eigenvalues.tolist(), "steps": list(self.steps),
                "observed": self.observed.tolist(), "predicted": self.predicted.tolist(), "lr": self.lr,
                "dynamics": self.dynamics}


def spectral_bias(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    lr: float | str = "auto",
    steps: int = 100,
    record_every: int | None = None,
    dynamics: str = "gd",
    method: str = "auto",
) -> SpectralBias:
    """Train a copy of ``model`` by GD on MSE and project its residuals on ``Θ₀``'s eigenvectors.

    Parameters
    ----------
    model : nn.Module
    x, y : tensors
    lr : float or "auto"
    steps, record_every : int
    dynamics : {"gd", "flow"}
        Prediction used (exact for a linear model trained by GD: ``"gd"``).
    method : str
        Empirical NTK method.

    Returns
    -------
    SpectralBias

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 1).double()
    >>> sb = spectral_bias(lin, torch.randn(6, 3), torch.randn(6), steps=20)
    >>> sb.relative_error() < 1e-10
    True
    """
    check_choice(dynamics, "dynamics", ("gd", "flow"))
    check_model(model)
    xt, yt, k = prepare_xy(model, x, y)
    steps = check_steps(steps)
    n = xt.shape[0]
    theta = ntk_matrix(model, xt, method=method) / k  # kernel_spectrum checks symmetry at this dtype
    spec = kernel_spectrum(theta)
    lr_f = resolve_lr(lr, model, xt, 1, method, kernel=theta)
    pts = record_points(steps, record_every)
    v = spec.eigenvectors
    obs: list[torch.Tensor] = []

    def cb(step: int, net: nn.Module, loss: float) -> None:
        r = (net(xt).reshape(n, -1) - yt).double()
        obs.append(v.T @ r)

    gd_train(model, xt, yt, lr_f, steps, pts, cb)
    observed = torch.stack(obs)
    decay = residual_decay(spec.eigenvalues, lr_f, pts, n, dynamics=dynamics)  # (T, n)
    predicted = decay.unsqueeze(-1) * observed[0].unsqueeze(0)
    return SpectralBias(eigenvalues=spec.eigenvalues, steps=pts, observed=observed, predicted=predicted, lr=lr_f,
                        dynamics=dynamics)
