"""The minimum-norm solution of the linearised model (seed 004): ``Δθ = Φ⁺ r``.

``Φ`` is the ``(n k) × P`` Jacobian of the outputs on the training inputs at
``θ₀`` (rows ordered example-major, output-minor) and ``r = y − f(θ₀)`` the
residual the linearised model ``f₀ + Φ Δθ`` must fit (``subtract_initial=False``
fits ``y`` itself, as the seed writes it). When ``Φ`` has full row rank,

    Δθ = Φ⁺ r = Φᵀ (Φ Φᵀ)⁻¹ r = Φᵀ Θ⁻¹ r,

with ``Θ = Φ Φᵀ`` the empirical NTK, so ``Δθ`` needs only ``Θ`` (``n k × n k``)
and one vector-Jacobian product ``Φᵀ α`` (``method="kernel"``): ``Φ`` is never
formed. Rank-deficient ``Θ`` is handled with its pseudo-inverse (eigenvalues
below ``rcond · λ_max`` dropped), which still gives the minimum-norm least-
squares solution. ``method="dense"`` forms ``Φ`` and uses an SVD (small models;
a cross-check).

The seed's bound: ``||Δθ|| ≤ ||Φ⁺||_op ||r|| = ||r|| / σ_min(Φ)``, i.e.
``O(sqrt(n) / σ_min)`` for ``O(1)`` targets, with ``σ_min(Φ) = sqrt(λ_min(Θ))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import jacrev, vjp, vmap

from .._validation import check_choice, check_positive
from ._common import check_model, detached, functional, prepare_xy, trainable

__all__ = ["min_norm_solution", "MinNormSolution"]


@dataclass
class MinNormSolution:
    """Result of :func:`min_norm_solution`.

    Attributes
    ----------
    delta : dict name -> torch.Tensor
        ``Δθ`` per trainable parameter (same shapes as the parameters).
    norm : float
        ``||Δθ||₂``.
    sigma_min, sigma_max : float
        Smallest non-zero / largest singular value of ``Φ`` (rank ``rank``).
    rank : int
        Numerical rank of ``Φ`` (equal to ``n k`` when ``Φ`` has full row rank).
    residual_norm : float
        ``||r||`` with ``r = y − f(θ₀)`` (or ``y``).
    bound : float
        ``||r|| / σ_min`` (seed 004: ``||Δθ|| ≤`` this).
    sqrt_n_over_sigma : float
        ``sqrt(n) / σ_min``.
    n : int
        Number of examples.
    """

    delta: dict[str, torch.Tensor]
    norm: float
    sigma_min: float
    sigma_max: float
    rank: int
    residual_norm: float
    bound: float
    sqrt_n_over_sigma: float
    n: int

    def flat(self) -> torch.Tensor:
        """``Δθ`` as one vector (parameter order of the model)."""
        return torch.cat([v.reshape(-1) for v in self.delta.values()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (``delta`` as nested lists)."""
        d = {k: v for k, v in vars(self).items() if k != "delta"}
        d["delta"] = {k: v.tolist() for k, v in self.delta.items()}
        return d


def min_norm_solution(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    subtract_initial: bool = True,
    method: str = "kernel",
    rcond: float = 1e-10,
    ntk_method: str = "auto",
) -> MinNormSolution:
    """Minimum-norm ``Δθ`` with ``f(θ₀) + Φ Δθ = y`` for the linearised model.

    Parameters
    ----------
    model : nn.Module
        Linearised at its current parameters ``θ₀`` (w.r.t. trainable ones).
    x, y : tensors
        Inputs ``(n, ...)`` and targets ``(n,)`` / ``(n, k)``.
    subtract_initial : bool
        Fit ``y − f(θ₀)`` (default; the linearised model interpolates ``y``) or
        ``y`` itself (seed 004's ``Δθ = Φ⁺ y``).
    method : {"kernel", "dense"}
        ``Φᵀ Θ⁺ r`` via the NTK and one VJP (never forms ``Φ``), or the SVD of
        the explicit Jacobian.
    rcond : float
        Relative cutoff for zero singular values (of ``Θ`` for ``"kernel"``,
        i.e. ``σ² < rcond σ_max²``; of ``Φ`` squared for ``"dense"``).
    ntk_method : str
        Passed to :func:`ntkit.empirical_ntk` by ``method="kernel"``.

    Returns
    -------
    MinNormSolution

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
    >>> x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    >>> sol = min_norm_solution(net, x, y)
    >>> sol.rank, sol.norm <= sol.bound * (1 + 1e-9)
    (5, True)
    """
    check_choice(method, "method", ("kernel", "dense"))
    check_positive(rcond, "rcond")
    check_model(model)
    xt, yt, k = prepare_xy(model, x, y)
    n = xt.shape[0]
    p0 = detached(trainable(model))
    f = functional(model)
    with torch.no_grad():
        f0 = f(p0, xt)
    r = (yt - f0) if subtract_initial else yt
    r64 = r.double().reshape(-1)  # example-major, output-minor
    rnorm = float(torch.linalg.norm(r64))
    if method == "kernel":
        from ..empirical import empirical_ntk

        if k == 1:
            theta = empirical_ntk(model, xt, output="trace", method=ntk_method)
        else:
            theta = empirical_ntk(model, xt, output="full", method=ntk_method).permute(0, 2, 1, 3).reshape(n * k, n * k)
        evals, evecs = torch.linalg.eigh(theta.double())
        lam_max = float(evals.max())
        if not lam_max > 0:
            raise ValueError("the empirical NTK is zero on x: the linearised model cannot fit anything")
        keep = evals > rcond * lam_max
        inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
        alpha = evecs @ (inv * (evecs.T @ r64))
        _, pull = vjp(lambda p: f(p, xt), p0)
        (delta,) = pull(alpha.reshape(n, k).to(f0.dtype))
        sig = evals[keep].clamp_min(0).sqrt()
        smin, smax, rank = float(sig.min()), float(sig.max()), int(keep.sum())
    else:
        jac = vmap(jacrev(lambda p, xi: f(p, xi.unsqueeze(0))[0]), in_dims=(None, 0))(p0, xt)
        phi = torch.cat([jac[name].reshape(n * k, -1) for name in p0], 1).double()
        u, s, vh = torch.linalg.svd(phi, full_matrices=False)
        keep = s**2 > rcond * float(s.max()) ** 2
        if not bool(keep.any()):
            raise ValueError("the Jacobian is zero on x: the linearised model cannot fit anything")
        sol = vh[keep].T @ ((u[:, keep].T @ r64) / s[keep])
        delta, i = {}, 0
        for name, p in p0.items():
            delta[name] = sol[i:i + p.numel()].reshape(p.shape).to(p.dtype)
            i += p.numel()
        smin, smax, rank = float(s[keep].min()), float(s.max()), int(keep.sum())
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in delta.values()))
    return MinNormSolution(delta={k_: v.detach() for k_, v in delta.items()}, norm=norm, sigma_min=smin,
                           sigma_max=smax, rank=rank, residual_norm=rnorm, bound=rnorm / smin,
                           sqrt_n_over_sigma=math.sqrt(n) / smin, n=n)
