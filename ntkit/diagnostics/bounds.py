"""The NTK generalisation bound of seed 003 (Arora et al. 2019; Cao & Gu 2019) and kernel-target alignment.

Two-layer ReLU NTK (Arora, Du, Hu, Li, Wang 2019, "Fine-grained analysis ...",
their eq. for ``H^∞``): for unit-norm inputs ``||x_i|| = 1``,

    H^∞_ij = E_{w ~ N(0, I)}[ x_iᵀx_j · 1{wᵀx_i ≥ 0, wᵀx_j ≥ 0} ]
           = x_iᵀx_j (π − arccos(x_iᵀx_j)) / (2π).

This is the kernel of the *first-layer* weights of
``f(x) = m^(-1/2) Σ_r a_r relu(w_rᵀ x)`` with fixed ``a_r = ±1`` (seed 000's
``k_∞``). The data-dependent part of their generalisation bound (for labels
``|y_i| ≤ 1``, a 1-Lipschitz loss bounded in [0, 1], width and steps large
enough) is

    sqrt(2 yᵀ (H^∞)⁻¹ y / n),

to which an ``O(sqrt(log(n / (λ₀ δ)) / n))`` term is added that we do not
compute. Labels that the kernel finds "smooth" (large projections on top
eigenvectors) give a small bound; random labels a large one.

Kernel-target alignment (Cristianini et al. 2002) of a kernel ``K`` with
labels ``y`` (``n × k``): ``A = <K, y yᵀ>_F / (||K||_F ||y yᵀ||_F)``; with
``centered=True`` both matrices are first centred, ``H K H`` and ``H y yᵀ H``
with ``H = I − 11ᵀ/n`` (Cortes et al. 2012).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import as_input_tensor, check_square_kernel

__all__ = ["two_layer_relu_ntk", "generalization_bound", "kernel_target_alignment", "GeneralizationBound"]


def two_layer_relu_ntk(x1: Any, x2: Any | None = None, *, normalize: bool = False, atol: float = 1e-6
                       ) -> torch.Tensor:
    """Arora et al.'s ``H^∞_ij = x_iᵀx_j (π − arccos(x_iᵀx_j)) / (2π)`` for unit-norm inputs.

    Parameters
    ----------
    x1 : tensor (n1, d)
    x2 : tensor (n2, d), optional (default ``x1``)
    normalize : bool
        Scale rows to unit norm first; otherwise rows must already have norm 1
        (within ``atol``), as the formula assumes.
    atol : float
        Tolerance of the unit-norm check.

    Returns
    -------
    torch.Tensor (n1, n2), float64

    Examples
    --------
    >>> import torch
    >>> two_layer_relu_ntk(torch.eye(2)).tolist()
    [[0.5, 0.0], [0.0, 0.5]]
    """
    a = as_input_tensor(x1, "x1", dtype=torch.float64, min_ndim=2)
    a = a.reshape(a.shape[0], -1)
    b = a if x2 is None else as_input_tensor(x2, "x2", dtype=torch.float64, min_ndim=2)
    b = b.reshape(b.shape[0], -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x2 has {b.shape[1]} features but x1 has {a.shape[1]}; they must match")
    for t, nm in ((a, "x1"), (b, "x2")):
        norms = t.norm(dim=1)
        if normalize:
            if bool((norms == 0).any()):
                raise ValueError(f"{nm} has an all-zero row, which cannot be normalised to unit norm")
        elif float((norms - 1).abs().max()) > atol:
            raise ValueError(f"{nm} rows must have unit norm for H^∞ (max | ||x|| − 1 | = "
                             f"{float((norms - 1).abs().max()):.3g}); pass normalize=True to rescale them")
    if normalize:
        a = a / a.norm(dim=1, keepdim=True)
        b = b / b.norm(dim=1, keepdim=True)
    c = (a @ b.T).clamp(-1.0, 1.0)
    return c * (math.pi - torch.arccos(c)) / (2 * math.pi)


@dataclass
class GeneralizationBound:
    """Result of :func:`generalization_bound`.

    Attributes
    ----------
    bound : float
        ``sqrt(2 yᵀ H⁻¹ y / n)``.
    quadratic_form : float
        ``yᵀ H⁻¹ y``.
    lambda_min, lambda_max : float
        Extreme eigenvalues of ``H`` (``λ₀`` of the theorem is ``lambda_min``).
    n : int
    """

    bound: float
    quadratic_form: float
    lambda_min: float
    lambda_max: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return dict(vars(self))


def _labels(y: Any, n: int, name: str = "y") -> torch.Tensor:
    yt = as_input_tensor(y, name, dtype=torch.float64)
    if yt.shape[0] != n:
        raise ValueError(f"{name} has {yt.shape[0]} rows but the kernel is {n} × {n}")
    return yt.reshape(n, -1)


def generalization_bound(y: Any, x: Any | None = None, *, kernel: Any | None = None, normalize: bool = False
                         ) -> GeneralizationBound:
    """``sqrt(2 yᵀ H⁻¹ y / n)`` with ``H`` the two-layer ReLU NTK of ``x`` (or any given ``kernel``).

    Parameters
    ----------
    y : tensor (n,) or (n, k)
        Labels; for ``k > 1`` the quadratic form is summed over columns
        (``trace(Yᵀ H⁻¹ Y)``). The theorem assumes ``|y_i| ≤ 1``.
    x : tensor (n, d), optional
        Unit-norm inputs; ``H = two_layer_relu_ntk(x)``.
    kernel : tensor (n, n), optional
        Use this positive-definite matrix as ``H`` instead.
    normalize : bool
        Passed to :func:`two_layer_relu_ntk`.

    Returns
    -------
    GeneralizationBound

    Examples
    --------
    >>> import torch
    >>> round(generalization_bound(torch.tensor([1.0, -1.0]), torch.eye(2)).bound, 6)
    2.0
    """
    if (x is None) == (kernel is None):
        raise ValueError("pass exactly one of x (inputs) or kernel (an (n, n) matrix)")
    h = two_layer_relu_ntk(x, normalize=normalize) if x is not None else check_square_kernel(
        torch.as_tensor(kernel), "kernel").double()
    n = h.shape[0]
    yt = _labels(y, n)
    h = 0.5 * (h + h.T)
    evals = torch.linalg.eigvalsh(h)
    lmin, lmax = float(evals.min()), float(evals.max())
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0 or lmin <= 1e-12 * max(lmax, 1e-300):
        raise ValueError(f"the kernel matrix is not positive definite (λ_min = {lmin:.3g}, λ_max = {lmax:.3g}); "
                         "duplicate or parallel inputs make H singular and the bound infinite")
    z = torch.cholesky_solve(yt, chol)
    q = float((yt * z).sum())
    return GeneralizationBound(bound=math.sqrt(2 * q / n), quadratic_form=q, lambda_min=lmin, lambda_max=lmax, n=n)


def kernel_target_alignment(kernel: Any, y: Any, *, centered: bool = False) -> float:
    """Alignment ``<K, y yᵀ>_F / (||K||_F ||y yᵀ||_F)`` of a kernel matrix with labels.

    Parameters
    ----------
    kernel : tensor (n, n)
    y : tensor (n,) or (n, k) (``y yᵀ`` is then ``Y Yᵀ``, e.g. one-hot labels)
    centered : bool
        Centre both matrices with ``H = I − 11ᵀ/n`` first.

    Returns
    -------
    float in [−1, 1]

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([1.0, -1.0, 1.0])
    >>> kernel_target_alignment(torch.outer(y, y), y)
    1.0
    """
    k = check_square_kernel(torch.as_tensor(kernel) if not isinstance(kernel, np.ndarray) else kernel,
                            "kernel").double()
    n = k.shape[0]
    yt = _labels(y, n)
    t = yt @ yt.T
    if centered:
        hmat = torch.eye(n, dtype=torch.float64) - 1.0 / n
        k = hmat @ k @ hmat
        t = hmat @ t @ hmat
    nk, nt = float(torch.linalg.norm(k)), float(torch.linalg.norm(t))
    if nk == 0 or nt == 0:
        raise ValueError("alignment is undefined: the (centred) kernel or label matrix is zero")
    return float((k * t).sum()) / (nk * nt)
