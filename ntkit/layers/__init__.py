"""Infinite-width kernels and matching finite networks, with neural-tangents-style names.

Conventions: inputs are channels-first ``(n, C, *S)`` (``(n, d)`` for flat
data), exactly what the finite ``nn.Module`` from ``arch.init`` consumes.

Examples
--------
>>> import torch
>>> from ntkit import layers as L
>>> arch = L.serial(L.Dense(512, W_std=1.5, b_std=0.05), L.Relu(), L.Dense(1))
>>> x = torch.randn(6, 10, dtype=torch.float64)
>>> k = arch.kernel(x, get=("nngp", "ntk"))
>>> k.ntk.shape
torch.Size([6, 6])
"""

from .activations import *  # noqa: F401,F403
from .activations import __all__ as _act_all
from .attention import *  # noqa: F401,F403
from .attention import __all__ as _attn_all
from .base import *  # noqa: F401,F403
from .base import __all__ as _base_all
from .combinators import *  # noqa: F401,F403
from .combinators import __all__ as _comb_all
from .conv import *  # noqa: F401,F403
from .conv import __all__ as _conv_all
from .dense import *  # noqa: F401,F403
from .dense import __all__ as _dense_all
from .kernel import Kernel, input_kernel  # noqa: F401
from .norm import *  # noqa: F401,F403
from .norm import __all__ as _norm_all
from .pooling import *  # noqa: F401,F403
from .pooling import __all__ as _pool_all

__all__ = sorted(set(_base_all) | {"Kernel", "input_kernel"} | set(_dense_all) | set(_act_all)
                 | set(_comb_all) | set(_conv_all) | set(_pool_all) | set(_norm_all) | set(_attn_all))
