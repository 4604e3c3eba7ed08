"""Empirical (finite-width) kernels of any ``torch.nn.Module``."""

from .dispatch import empirical_ntk
from .nngp import empirical_nngp

__all__ = ["empirical_ntk", "empirical_nngp"]
