"""Single-machine approximations for large n: Nyström and ReLU random features.

Both give features ``Φ`` (n × r) with ``K ≈ Φ Φᵀ``, so that the kernel
ridge solve ``α = (K + λI)⁻¹ y`` costs O(n r²) time and O(n r) memory
instead of O(n³) / O(n²), via the push-through identity
``(ΦΦᵀ + λI)⁻¹ y = (y − Φ (ΦᵀΦ + λI)⁻¹ Φᵀ y) / λ`` and predictions
``f(x*) = Φ(x*) w`` with ``w = (ΦᵀΦ + λI)⁻¹ Φᵀ y``.

* :func:`nystrom` — any kernel (an ntkit architecture, an ``nn.Module``'s
  empirical NTK, or a callable): only the ``n × r`` columns ``K[:, S]`` at
  ``r`` landmarks are computed, never K.
* :func:`relu_random_features` — the infinite-width NNGP/NTK of a fully
  connected ReLU network (formula in its docstring), by sampling random
  layers: unbiased per layer, error O(1/√m).

Accuracy against the exact solve is measured in ``tests/distributed/test_approx.py``
and tabulated in ``docs/scaling.md``.

Examples
--------
>>> import torch
>>> from ntkit.distributed import nystrom
>>> x = torch.randn(200, 3, dtype=torch.float64)
>>> rbf = lambda a, b: torch.exp(-torch.cdist(a, a if b is None else b) ** 2 / 2)
>>> ny = nystrom(rbf, x, 60, seed=0)
>>> K = rbf(x, None)
>>> err = torch.linalg.matrix_norm(K - ny.features @ ny.features.T) / torch.linalg.matrix_norm(K)
>>> bool(err < 0.1)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._validation import as_input_tensor, check_feature_shapes_match

__all__ = ["FeatureApproximation", "nystrom", "relu_random_features", "ntk_relu_fc"]


class FeatureApproximation:
    """Features ``Φ`` with ``K ≈ Φ Φᵀ`` and the ridge solve / prediction they allow.

    Attributes
    ----------
    features : torch.Tensor
        ``(n, r)`` float64 features of the training inputs.
    """

    def __init__(self, features: torch.Tensor, transform: Any) -> None:
        self.features = features
        self._transform = transform

    @property
    def rank(self) -> int:
        """Number of features ``r``."""
        return int(self.features.shape[1])

    def transform(self, x_new: Any) -> torch.Tensor:
        """Features ``Φ(x_new)`` of new inputs (``K(x_new, x) ≈ Φ(x_new) Φᵀ``)."""
        return self._transform(x_new)

    def _weights(self, y: torch.Tensor, ridge: float) -> torch.Tensor:
        ridge = float(ridge)
        if not (math.isfinite(ridge) and ridge > 0):
            raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
        P = self.features
        A = P.T @ P + ridge * torch.eye(P.shape[1], dtype=P.dtype)
        chol = torch.linalg.cholesky(A)
        return torch.cholesky_solve(P.T @ y, chol)

    def _y(self, y: Any) -> torch.Tensor:
        yt = as_input_tensor(y, "y", dtype=torch.float64)
        if yt.shape[0] != self.features.shape[0] or yt.ndim > 2:
            raise ValueError(f"y must have shape ({self.features.shape[0]},) or "
                             f"({self.features.shape[0]}, k), got {tuple(yt.shape)}")
        return yt

    def solve(self, y: Any, ridge: float) -> torch.Tensor:
        """``α ≈ (K + ridge·I)⁻¹ y`` with ``K ≈ ΦΦᵀ`` (exact for the approximate kernel)."""
        yt = self._y(y)
        Y = yt[:, None] if yt.ndim == 1 else yt
        alpha = (Y - self.features @ self._weights(Y, ridge)) / float(ridge)
        return alpha[:, 0] if yt.ndim == 1 else alpha

    def predict(self, x_new: Any, y: Any, ridge: float) -> torch.Tensor:
        """Kernel ridge prediction ``K(x_new, x)(K + ridge·I)⁻¹ y`` with the approximate kernel."""
        yt = self._y(y)
        Y = yt[:, None] if yt.ndim == 1 else yt
        out = self.transform(x_new) @ self._weights(Y, ridge)
        return out[:, 0] if yt.ndim == 1 else out


def _kernel_fn(source: Any, get: str, memory_budget: Any) -> Any:
    from ..layers.base import Layer

    if isinstance(source, Layer):
        if get not in ("ntk", "nngp"):
            raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}")
        return lambda a, b: getattr(source.kernel(a, b, get=get, memory_budget=memory_budget), get)
    if isinstance(source, nn.Module):
        from ..empirical import empirical_nngp, empirical_ntk

        if get == "ntk":
            return lambda a, b: empirical_ntk(source, a, b, output="trace", memory_budget=memory_budget).detach()
        if get == "nngp":
            return lambda a, b: empirical_nngp(source, a, b).detach()
        raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}")
    if callable(source):
        return source
    raise TypeError("source must be an ntkit layer, a torch.nn.Module or a callable fn(a, b) -> tensor, got "
                    f"{type(source).__name__}")


def nystrom(
    source: Any,
    x: Any,
    num_landmarks: int,
    *,
    get: str = "ntk",
    seed: int = 0,
    landmarks: Sequence[int] | None = None,
    rcond: float = 1e-10,
    memory_budget: int | str | None = None,
) -> FeatureApproximation:
    """Nyström features ``Φ = K[:, S] W^{-1/2}`` from ``r`` landmark inputs ``S`` (``W = K[S, S]``).

    Only ``K[:, S]`` (n × r) is computed. ``ΦΦᵀ = K[:, S] W⁺ K[S, :]`` equals
    K on the landmark rows/columns; its error elsewhere shrinks as r grows
    (and is zero once r reaches the rank of K).

    Parameters
    ----------
    source : ntkit layer, nn.Module or callable
        The kernel: ``arch.kernel``, the empirical NTK/NNGP of a module, or
        ``fn(a, b)`` returning ``(len(a), len(b))`` with ``b=None`` meaning ``a``.
    x : tensor or array
        Training inputs ``(n, ...)``.
    num_landmarks : int
        ``r`` (ignored when ``landmarks`` is given).
    get : {"ntk", "nngp"}
        For layers/modules.
    seed : int
        Seed of the uniform landmark draw (a private generator).
    landmarks : sequence of int, optional
        Explicit landmark indices.
    rcond : float
        Eigenvalues of ``W`` below ``rcond·max`` are dropped (r may shrink).
    memory_budget : optional
        Passed to the kernel computation.

    Returns
    -------
    FeatureApproximation
        ``.features`` (n × r'), ``.solve(y, ridge)``, ``.predict(x_new, y, ridge)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(30, 2, dtype=torch.float64)
    >>> lin = lambda a, b: a @ (a if b is None else b).T
    >>> ny = nystrom(lin, x, 5)
    >>> ny.rank, bool(torch.allclose(ny.features @ ny.features.T, x @ x.T))
    (2, True)
    """
    xt = as_input_tensor(x, "x", min_ndim=2)
    if not xt.is_floating_point():
        xt = xt.to(torch.float64)
    n = xt.shape[0]
    if landmarks is None:
        if int(num_landmarks) != num_landmarks or num_landmarks < 1:
            raise ValueError(f"num_landmarks must be a positive integer, got {num_landmarks!r}")
        g = torch.Generator().manual_seed(int(seed))
        S = torch.randperm(n, generator=g)[: min(int(num_landmarks), n)].sort().values
    else:
        S = torch.as_tensor(list(landmarks), dtype=torch.long)
        if S.numel() == 0 or int(S.min()) < 0 or int(S.max()) >= n or S.unique().numel() != S.numel():
            raise ValueError(f"landmarks must be distinct indices in [0, {n}), got {list(landmarks)[:10]}...")
    fn = _kernel_fn(source, get, memory_budget)
    xs = xt[S]
    with torch.no_grad() if not isinstance(source, nn.Module) else _Null():
        C = fn(xt, xs).to(torch.float64)
        W = fn(xs, None).to(torch.float64)
    W = 0.5 * (W + W.T)
    evals, evecs = torch.linalg.eigh(W)
    keep = evals > rcond * evals.max().clamp_min(1e-300)
    proj = evecs[:, keep] / evals[keep].sqrt()  # W^{-1/2} on the kept subspace
    features = C @ proj

    def transform(x_new: Any) -> torch.Tensor:
        xn = as_input_tensor(x_new, "x_new", dtype=xt.dtype, min_ndim=2)
        check_feature_shapes_match(xt, xn)
        return fn(xn, xs).to(torch.float64) @ proj

    out = FeatureApproximation(features, transform)
    out.landmarks = S
    return out


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _check_relu_args(depth: int, W_std: float, b_std: float) -> None:
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer (number of hidden ReLU layers), got {depth!r}")
    for name, v in (("W_std", W_std), ("b_std", b_std)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


def ntk_relu_fc(x1: Any, x2: Any = None, *, depth: int = 1, W_std: float = 1.0, b_std: float = 0.0,
                get: str = "ntk") -> torch.Tensor:
    """Exact infinite-width NNGP/NTK of a fully connected ReLU net (the target of :func:`relu_random_features`).

    With ``Σ⁰ = W_std² x·x'/d + b_std²``, ``Θ⁰ = Σ⁰`` and for each of the
    ``depth`` hidden layers (u, v jointly Gaussian with covariance from Σ^{h-1}):
    ``Σʰ = W_std² E[relu(u) relu(v)] + b_std²``, ``Σ̇ʰ = W_std² E[1(u>0) 1(v>0)]``,
    ``Θʰ = Σʰ + Θ^{h-1} Σ̇ʰ``. Returns ``Σ^depth`` (nngp) or ``Θ^depth`` (ntk),
    via the arc-cosine closed forms. (NTK parameterisation; the last affine layer is the readout.)

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> ntk_relu_fc(x, depth=2).shape
    torch.Size([4, 4])
    """
    _check_relu_args(depth, W_std, b_std)
    a = as_input_tensor(x1, "x1", min_ndim=2).to(torch.float64).flatten(1)
    b = a if x2 is None else as_input_tensor(x2, "x2", min_ndim=2).to(torch.float64).flatten(1)
    check_feature_shapes_match(a, b)
    d = a.shape[1]
    w2, b2 = float(W_std) ** 2, float(b_std) ** 2
    s = w2 * (a @ b.T) / d + b2
    sa = w2 * (a * a).sum(1) / d + b2
    sb = w2 * (b * b).sum(1) / d + b2
    theta = s.clone()
    for _ in range(int(depth)):
        norm = torch.sqrt(sa[:, None] * sb[None, :]).clamp_min(1e-300)
        c = (s / norm).clamp(-1.0, 1.0)
        ang = torch.arccos(c)
        s_new = w2 * norm * (torch.sqrt((1 - c * c).clamp_min(0)) + (math.pi - ang) * c) / (2 * math.pi) + b2
        sdot = w2 * (math.pi - ang) / (2 * math.pi)
        theta = s_new + theta * sdot
        s = s_new
        sa = w2 * sa / 2 + b2
        sb = w2 * sb / 2 + b2
    if get == "nngp":
        return s
    if get == "ntk":
        return theta
    raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}")


def relu_random_features(
    x: Any,
    num_features: int,
    *,
    depth: int = 1,
    W_std: float = 1.0,
    b_std: float = 0.0,
    get: str = "ntk",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> FeatureApproximation:
    """Random features whose inner products estimate :func:`ntk_relu_fc` (NNGP or NTK).

    Layer by layer with ``m = num_features`` random units: ``u = G φ^{h-1}(x)``
    (``G`` i.i.d. N(0,1)), NNGP features ``φʰ = [W_std relu(u)/√m, b_std]``,
    and NTK features ``ψʰ = [φʰ, (H ψ^{h-1}) ⊙ W_std 1(u>0)/√m]`` with an
    independent Gaussian ``H``: the elementwise product of independent
    features is an unbiased feature map of the product kernel ``Θ^{h-1} Σ̇ʰ``,
    so the dimension stays ``2m + 1`` instead of growing multiplicatively.
    For ``depth = 1`` the estimate is unbiased; its error is O(1/√m).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(50, 4, dtype=torch.float64)
    >>> rf = relu_random_features(x, 20000, depth=1, seed=0)
    >>> K = ntk_relu_fc(x, depth=1)
    >>> bool((rf.features @ rf.features.T - K).abs().max() < 0.1 * K.abs().max())
    True
    """
    _check_relu_args(depth, W_std, b_std)
    if int(num_features) != num_features or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}")
    xt = as_input_tensor(x, "x", min_ndim=2).to(dtype).flatten(1)
    m = int(num_features)
    d = xt.shape[1]
    g = torch.Generator().manual_seed(int(seed))
    draws: list[tuple[torch.Tensor, torch.Tensor]] = []
    dim_phi, dim_psi = d + 1, d + 1
    for _ in range(int(depth)):
        G = torch.randn(dim_phi, m, generator=g, dtype=torch.float64).to(dtype)
        H = torch.randn(dim_psi, m, generator=g, dtype=torch.float64).to(dtype) if get == "ntk" else None
        draws.append((G, H))
        dim_phi, dim_psi = m + 1, (m + 1) + m

    def feats(xn: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(xn.shape[0], 1, dtype=dtype)
        phi = torch.cat([float(W_std) * xn / math.sqrt(d), float(b_std) * ones], 1)
        psi = phi
        for G, H in draws:
            u = phi @ G
            new_phi = torch.cat([float(W_std) * torch.relu(u) / math.sqrt(m), float(b_std) * ones], 1)
            if H is not None:
                psi = torch.cat([new_phi, (psi @ H) * (float(W_std) * (u > 0).to(dtype) / math.sqrt(m))], 1)
            phi = new_phi
        return (psi if get == "ntk" else phi).to(torch.float64)

    def transform(x_new: Any) -> torch.Tensor:
        xn = as_input_tensor(x_new, "x_new", min_ndim=2).to(dtype).flatten(1)
        check_feature_shapes_match(xt, xn)
        return feats(xn)

    return FeatureApproximation(feats(xt), transform)
