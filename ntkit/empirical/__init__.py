"""Empirical (finite-width) kernels of any ``torch.nn.Module``.

* :func:`empirical_ntk` — Θ(x, x') = J(x) J(x')ᵀ by three exact algorithms
  (:mod:`~ntkit.empirical.jacobian`, :mod:`~ntkit.empirical.ntvp`,
  :mod:`~ntkit.empirical.structured`) and an ``auto`` rule
  (:mod:`~ntkit.empirical.dispatch`);
* :func:`empirical_nngp` — inner products of outputs (or a layer's input features);
* :func:`ntk_vector_product` — the linear operator v ↦ Θ v without forming Θ;
* :func:`pseudo_ntk` — the "sum of logits" approximation (Mohamadi, Bae & Sutherland 2023).

See ``docs/empirical.md`` for conventions, algorithms and costs.
"""

from .dispatch import empirical_ntk
from .nngp import empirical_nngp
from .ntvp import NTKOperator, ntk_vector_product
from .pseudo import pseudo_ntk

__all__ = ["empirical_ntk", "empirical_nngp", "ntk_vector_product", "pseudo_ntk", "NTKOperator"]
