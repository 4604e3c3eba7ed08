"""Convergence of finite-width kernels to the infinite-width ones, and its rate.

For each width ``w`` and seed ``s`` the network ``arch.init(x.shape[1:],
width=w, seed=s)`` is drawn and its empirical kernel compared with the
analytic one from ``arch.kernel(x)``:

    distance(w, s) = ||K_emp − K_∞||_F / ||K_∞||_F.

* ``"ntk"``: ``K_emp = empirical_ntk(net, x, output="trace") / k`` (the NTK of
  one output unit, averaged over the ``k`` outputs) against ``arch.kernel(x).ntk``.
* ``"nngp"``: the kernel of the *readout's input features* ``φ`` given the
  finite hidden layers, ``σw² φ φᵀ / width + σb²`` with the readout ``Dense``'s
  ``W_std``/``b_std``; this is the output covariance over the readout weights
  conditional on the hidden layers (a single draw of the outputs ``f fᵀ``
  would not converge with width). ``arch`` must then be ``serial(..., Dense)``.

Fluctuations of both are ``O(width^(-1/2))`` (central limit theorem), so a
log-log fit over widths should give a slope near ``−½``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import as_input_tensor, check_choice
from ._fit import PowerLawFit, fit_power_law
from .lazy import check_seeds, check_widths

__all__ = ["kernel_convergence", "KernelConvergence", "relative_distance"]


def relative_distance(k_emp: Any, k_ref: Any) -> float:
    """``||K_emp − K_ref||_F / ||K_ref||_F`` (computed in float64).

    Examples
    --------
    >>> import torch
    >>> round(relative_distance(torch.eye(2) * 1.1, torch.eye(2)), 6)
    0.1
    """
    a = torch.as_tensor(k_emp).double()
    b = torch.as_tensor(k_ref).double()
    if a.shape != b.shape:
        raise ValueError(f"kernels must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    den = float(torch.linalg.norm(b))
    if den == 0:
        raise ValueError("the reference kernel is identically zero; the relative distance is undefined")
    return float(torch.linalg.norm(a - b)) / den


@dataclass
class KernelConvergence:
    """Result of :func:`kernel_convergence`.

    Attributes
    ----------
    widths, seeds : list of int
    kernel : str
        ``"ntk"`` or ``"nngp"``.
    distance : np.ndarray (n_widths, n_seeds)
        Relative Frobenius distance to the infinite-width kernel.
    fit : PowerLawFit
        Log-log fit of distance against width (all seeds as points).
    """

    widths: list[int]
    seeds: list[int]
    kernel: str
    distance: np.ndarray
    fit: PowerLawFit

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {"widths": list(self.widths), "seeds": list(self.seeds), "kernel": self.kernel,
                "distance": self.distance.tolist(), "fit": self.fit.to_dict()}


def _readout(arch: Any) -> tuple[Any, Any, int]:
    from ..layers.base import Serial, serial
    from ..layers.dense import Dense

    if not isinstance(arch, Serial) or not isinstance(arch.layers[-1], Dense) or len(arch.layers) < 2:
        raise ValueError("kernel='nngp' needs arch = serial(..., Dense(k)) ending in a Dense readout layer")
    return serial(*arch.layers[:-1]), arch.layers[-1], len(arch.layers) - 1


def kernel_convergence(
    arch: Any,
    x: Any,
    widths: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    *,
    kernel: str = "ntk",
    dtype: torch.dtype = torch.float64,
    method: str = "auto",
) -> KernelConvergence:
    """Relative distance between empirical and infinite-width kernels over widths and seeds.

    Parameters
    ----------
    arch : ntkit layer
        With ``.kernel`` and ``.init`` (e.g. ``L.serial(L.Dense(..), L.Relu(), L.Dense(1))``).
    x : tensor (n, ...)
    widths : sequence of int (>= 2 distinct)
    seeds : sequence of int
    kernel : {"ntk", "nngp"}
    dtype : torch.dtype
        Of the finite networks and the analytic kernel.
    method : str
        Empirical NTK method (see :func:`ntkit.empirical_ntk`).

    Returns
    -------
    KernelConvergence

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Dense(64), L.Relu(), L.Dense(1))
    >>> res = kernel_convergence(arch, torch.randn(4, 3), widths=[64, 256], seeds=[0, 1])
    >>> res.distance.shape
    (2, 2)
    """
    check_choice(kernel, "kernel", ("ntk", "nngp"))
    ws, ss = check_widths(widths), check_seeds(seeds)
    if not (hasattr(arch, "init") and hasattr(arch, "kernel")):
        raise TypeError(f"arch must be an ntkit layer with .kernel and .init, got {type(arch).__name__}")
    xt = as_input_tensor(x, "x", dtype=dtype, min_ndim=2)
    shape = tuple(xt.shape[1:])
    if kernel == "ntk":
        ref = arch.kernel(xt, get="ntk").ntk
    else:
        prefix, readout, ro_index = _readout(arch)
        q = prefix.kernel(xt, get="nngp").nngp
        b2 = 0.0 if readout.b_std is None else float(readout.b_std) ** 2
        ref = float(readout.W_std) ** 2 * q + b2
    if ref.ndim != 2:
        raise ValueError(f"the architecture's kernel has shape {tuple(ref.shape)}; flat (n, n) kernels only "
                         "(end the architecture with Flatten/pooling and a Dense readout)")
    dist = np.zeros((len(ws), len(ss)))
    from ..empirical import empirical_nngp, empirical_ntk

    for i, w in enumerate(ws):
        for j, s in enumerate(ss):
            net = arch.init(shape, width=w, seed=s, dtype=dtype)
            if kernel == "ntk":
                with torch.no_grad():
                    k = net(xt[:1]).reshape(1, -1).shape[1]
                emp = empirical_ntk(net, xt, output="trace", method=method) / k
            else:
                phi_k = empirical_nngp(net, xt, layer=f"layers.{ro_index}")
                emp = float(readout.W_std) ** 2 * phi_k + b2
            dist[i, j] = relative_distance(emp, ref)
    wx = np.repeat(np.asarray(ws, dtype=float), len(ss))
    return KernelConvergence(widths=ws, seeds=ss, kernel=kernel, distance=dist, fit=fit_power_law(wx, dist.ravel()))
