"""Elementwise activations with closed-form infinite-width NNGP and NTK maps.

Notation (see :mod:`ntkit.layers._elementwise`): for each kernel entry the
pre-activations are a centred Gaussian pair ``(u, v)`` with variances
``v1``, ``v2`` and covariance ``c``; ``θ = arccos(c / sqrt(v1 v2))``,
computed as ``atan2(sqrt(v1 v2 - c²), c)`` (stable near ``ρ = ±1``, no
division, ``θ = 0`` for zero-variance inputs). ``T = E[φ(u)φ(v)]`` is the new
NNGP and ``Ṫ = E[φ'(u)φ'(v)] = ∂T/∂c`` multiplies the NTK.

Formulas (derivations in ``docs/layers.md``):

* ``ABRelu(a, b)``  ``φ = a min(x, 0) + b max(x, 0)`` (arc-cosine kernel of
  order 1, Cho & Saul 2009)::

      Ṫ = ((a² + b²)(π - θ) + 2ab θ) / (2π)
      T = (a - b)² sqrt(v1 v2 - c²) / (2π) + c Ṫ

  ``Relu = ABRelu(0, 1)``, ``LeakyRelu(α) = ABRelu(α, 1)``, ``Abs = ABRelu(-1, 1)``.
* ``Erf(a, b, c0)``  ``φ = a erf(b x) + c0`` (Williams 1997), with
  ``D = (1 + 2b² v1)(1 + 2b² v2) - 4b⁴ c²``::

      T = (2a²/π) atan2(2b² c, sqrt(D)) + c0²      Ṫ = 4a²b² / (π sqrt(D))

* ``Sin(a, b, c0)``  ``φ = a sin(b x + c0)``, with ``e± = exp(-b²(v1 + v2 ± 2c)/2)``::

      T = a²/2 (e₋ - cos(2c0) e₊)        Ṫ = a²b²/2 (e₋ + cos(2c0) e₊)

* ``Exp(a, b)``  ``φ = a exp(b x)``: ``T = a² exp(b²(v1 + v2 + 2c)/2)``, ``Ṫ = b² T``.
* ``Gaussian(a, b)``  ``φ = a exp(b x²)``, with ``D = (1 - 2b v1)(1 - 2b v2) - 4b² c²``
  (finite only while ``2 b v < 1``)::

      T = a² / sqrt(D)                    Ṫ = 4a²b² c / D^{3/2}

* ``RectifiedMonomial(d)``  ``φ = max(x, 0)^d``: ``T = (v1 v2)^{d/2} J_d(θ) / (2π)``
  with Cho & Saul's ``J_d``, generated from the recursion
  ``J_d = P_d(cos θ)(π - θ) + Q_d(cos θ) sin θ``,
  ``P_{d+1} = (1 - x²) P_d' + (2d + 1) x P_d``,
  ``Q_{d+1} = P_d + (1 - x²) Q_d' + 2d x Q_d``, ``P_0 = 1``, ``Q_0 = 0``;
  ``Ṫ = d² T_{d-1}``.
* ``Polynomial(coef)`` / ``Monomial(d)`` / ``Hermite(d)``: exact mixed
  moments ``E[u^i v^j] = Σ_p h_{i,p} h_{j,p} p! c^p v1^{(i-p)/2} v2^{(j-p)/2}``
  from the Hermite expansion ``x^i = Σ_p h_{i,p} He_p(x)`` (any variances).
* ``Gelu``  ``φ = x Φ(x)``: ``T`` from the orthant moments of a 4-D Gaussian
  (``Φ(u) = P(g ≤ u)`` for an independent ``g ~ N(0, 1)``), ``Ṫ = ∂T/∂c`` by autograd.
* ``Sign``: ``T = 1 - 2θ/π``. Its derivative is zero almost everywhere and
  autograd through ``torch.sign`` gives zero, so the finite network's NTK gets
  no contribution through it: ``Ṫ = 0`` (the Dirac part is ignored, as is
  ``RectifiedMonomial(0)``'s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validation import check_nonnegative
from ._elementwise import Elementwise, ElementwiseLayer, ElementwiseNumerical, KernelFnOut

__all__ = [
    "Relu", "LeakyRelu", "ABRelu", "Abs", "Erf", "Sigmoid_like", "Gelu", "Sin", "Cos", "Rbf", "Exp",
    "Gaussian", "Sign", "Monomial", "RectifiedMonomial", "Polynomial", "Hermite", "Elementwise",
    "ElementwiseNumerical",
]

_PI = math.pi


def _finite(value: float, name: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def _sin_theta_scaled(c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(v1 v2 - c², 0))`` as a fresh tensor of the broadcast shape."""
    s = v1 * v2
    if s.shape != torch.broadcast_shapes(s.shape, c.shape):
        s = s.expand(torch.broadcast_shapes(s.shape, c.shape)).clone()
    # plain subtract (no fused multiply-add): exactly 0 when c == v1 == v2, so θ = 0 on diagonals
    return s.sub_(c * c).clamp_min_(0.0).sqrt_()


# ---- ReLU family ------------------------------------------------------------------------------


class ABRelu(ElementwiseLayer):
    """``φ(x) = a min(x, 0) + b max(x, 0)`` (piecewise linear).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> x = torch.randn(3, 5, dtype=torch.float64)
    >>> ident = L.serial(L.Dense(4), L.ABRelu(1.0, 1.0)).kernel(x)  # a = b = 1 is the identity
    >>> torch.allclose(ident.nngp, x @ x.T / 5)
    True
    """

    def __init__(self, a: float, b: float) -> None:
        self.a = _finite(a, f"{type(self).__name__}: a")
        self.b = _finite(b, f"{type(self).__name__}: b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a, self.b
        if a == 0.0:
            r = torch.relu(x)
            return r if b == 1.0 else r * b
        return torch.where(x > 0, x * b, x * a)

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        a, b = self.a, self.b
        ssin = _sin_theta_scaled(c, v1, v2)  # s sin θ
        theta = torch.atan2(ssin, c)
        # Ṫ = ((a²+b²)(π-θ) + 2ab θ)/(2π) = (a²+b²)/2 + θ (2ab - a² - b²)/(2π)
        tdot = theta.mul_(-((a - b) ** 2) / (2 * _PI)).add_((a * a + b * b) / 2)
        t = ssin.mul_((a - b) ** 2 / (2 * _PI)).addcmul_(c, tdot)
        return t, tdot

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        return v * ((self.a ** 2 + self.b ** 2) / 2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a}, b={self.b})"


class Relu(ABRelu):
    """``φ(x) = max(x, 0)``; the arc-cosine kernel.

    ``T = (sqrt(v1 v2 - c²) + c (π - θ)) / (2π)``, ``Ṫ = (π - θ) / (2π)``.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> k = L.serial(L.Dense(64), L.Relu(), L.Dense(1)).kernel(torch.eye(2, dtype=torch.float64))
    >>> round(float(k.nngp[0, 1]), 6)  # orthogonal inputs, variance 1/2 each: (1/2) / (2π)
    0.079577
    """

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)

    def __repr__(self) -> str:
        return "Relu()"


class LeakyRelu(ABRelu):
    """``φ(x) = x`` for ``x > 0``, ``alpha x`` otherwise.

    Examples
    --------
    >>> from ntkit import layers as L
    >>> L.LeakyRelu(0.1)
    LeakyRelu(alpha=0.1)
    """

    def __init__(self, alpha: float) -> None:
        super().__init__(alpha, 1.0)
        self.alpha = self.a

    def __repr__(self) -> str:
        return f"LeakyRelu(alpha={self.alpha})"


class Abs(ABRelu):
    """``φ(x) = |x|``.

    Examples
    --------
    >>> from ntkit import layers as L
    >>> L.Abs()
    Abs()
    """

    def __init__(self) -> None:
        super().__init__(-1.0, 1.0)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()

    def __repr__(self) -> str:
        return "Abs()"


# ---- erf family ------------------------------------------------------------------------------


class Erf(ElementwiseLayer):
    """``φ(x) = a erf(b x) + c`` (Williams 1997).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> k = L.serial(L.Dense(8), L.Erf()).kernel(torch.ones(1, 3, dtype=torch.float64))
    >>> round(float(k.nngp), 6)  # (2/π) asin(2/3)
    0.464559
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a = _finite(a, "Erf: a")
        self.b = _finite(b, "Erf: b")
        self.c = _finite(c, "Erf: c")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.erf(x * self.b) if self.b != 1.0 else torch.erf(x)
        if self.a != 1.0:
            out = out * self.a
        return out + self.c if self.c != 0.0 else out

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        a, b, c0 = self.a, self.b, self.c
        b2 = 2 * b * b
        p1 = v1 * b2 + 1.0
        p2 = v2 * b2 + 1.0
        d = p1 * p2
        if d.shape != torch.broadcast_shapes(d.shape, c.shape):
            d = d.expand(torch.broadcast_shapes(d.shape, c.shape)).clone()
        r = d.addcmul_(c, c, value=-(b2 * b2)).clamp_min_(1e-30).sqrt_()  # sqrt(D) > 0
        t = torch.atan2(c * b2, r).mul_(2 * a * a / _PI)
        if c0:
            t.add_(c0 * c0)
        tdot = r.reciprocal_().mul_(2 * a * a * b2 / _PI) if need_dot else None
        return t, tdot

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        b2 = 2 * self.b * self.b
        x = v * b2
        t = torch.asin(x / (x + 1.0)).mul_(2 * self.a * self.a / _PI)
        return t.add_(self.c * self.c) if self.c else t

    def __repr__(self) -> str:
        return f"Erf(a={self.a}, b={self.b}, c={self.c})"


#: slope-matched erf approximation of the logistic sigmoid: 1/2 + 1/2 erf(√π x / 4)
_SIGMOID_B = math.sqrt(math.pi) / 4


class Sigmoid_like(Erf):  # noqa: N801 (neural-tangents-style public name)
    """An erf-shaped stand-in for the logistic sigmoid: ``φ(x) = 1/2 + 1/2 erf(√π x / 4)``.

    The scale ``√π/4`` matches the sigmoid's value and slope (1/4) at 0; the
    maximum deviation from ``1/(1 + e^{-x})`` is about 0.02. Kernels are the
    exact ``Erf(1/2, √π/4, 1/2)`` ones (the finite module uses this φ, not the
    logistic function).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> float(L.Sigmoid_like().fn(torch.tensor(0.0)))
    0.5
    """

    def __init__(self) -> None:
        super().__init__(0.5, _SIGMOID_B, 0.5)

    def __repr__(self) -> str:
        return "Sigmoid_like()"


# ---- trigonometric / exponential ------------------------------------------------------------


class Sin(ElementwiseLayer):
    """``φ(x) = a sin(b x + c)``.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> k = L.serial(L.Dense(4), L.Sin()).kernel(torch.ones(1, 2, dtype=torch.float64))
    >>> round(float(k.nngp), 6)  # (1 - e^{-2}) / 2
    0.432332
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a = _finite(a, f"{type(self).__name__}: a")
        self.b = _finite(b, f"{type(self).__name__}: b")
        self.c = _finite(c, f"{type(self).__name__}: c")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x * self.b + self.c) * self.a

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        a, b, c0 = self.a, self.b, self.c
        h = -b * b / 2
        s = v1 + v2
        em = torch.add(s, c, alpha=-2.0).mul_(h).exp_()  # e₋
        ep = torch.add(s, c, alpha=2.0).mul_(h).exp_()  # e₊
        k2 = math.cos(2 * c0)
        tdot = None
        if need_dot:
            tdot = torch.add(em, ep, alpha=k2).mul_(a * a * b * b / 2)
        t = em.add_(ep, alpha=-k2).mul_(a * a / 2)
        return t, tdot

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        a, b, c0 = self.a, self.b, self.c
        ep = torch.mul(v, -2 * b * b).exp_()
        return ep.mul_(-math.cos(2 * c0)).add_(1.0).mul_(a * a / 2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a}, b={self.b}, c={self.c})"


class Cos(Sin):
    """``φ(x) = a cos(b x + c)`` (``Sin`` with phase ``c + π/2``).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> float(L.Cos().fn(torch.tensor(0.0)))
    1.0
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        super().__init__(a, b, c)
        self._phase = self.c + _PI / 2

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x * self.b + self.c) * self.a

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        return Sin(self.a, self.b, self._phase).kernel_fn(c, v1, v2, need_dot)

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        return Sin(self.a, self.b, self._phase).diag_fn(v)


class Rbf(Sin):
    """Random-Fourier-feature activation ``φ(x) = √2 sin(sqrt(2γ) x + π/4)``.

    Its NNGP is the Gaussian (RBF) kernel of the pre-activations,
    ``T = exp(-γ (v1 + v2 - 2c))`` — for a ``Dense`` layer on raw inputs
    ``exp(-γ W_std² ||x - x'||² / d)`` — and ``Ṫ = 2γ T``.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    >>> k = L.serial(L.Dense(8), L.Rbf(0.5)).kernel(x)
    >>> round(float(k.nngp[0, 1]), 6)  # exp(-0.5 * ||x - x'||² / 2)
    0.606531
    """

    def __init__(self, gamma: float = 1.0) -> None:
        self.gamma = check_nonnegative(gamma, "Rbf: gamma")
        super().__init__(math.sqrt(2.0), math.sqrt(2.0 * self.gamma), _PI / 4)

    def __repr__(self) -> str:
        return f"Rbf(gamma={self.gamma})"


class Exp(ElementwiseLayer):
    """``φ(x) = a exp(b x)``.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> k = L.serial(L.Dense(4), L.Exp()).kernel(torch.ones(1, 1, dtype=torch.float64))
    >>> round(float(k.nngp), 6)  # E[e^{2u}] = e^{2 v}, v = 1
    7.389056
    """

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        self.a = _finite(a, "Exp: a")
        self.b = _finite(b, "Exp: b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x * self.b) * self.a

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        a, b = self.a, self.b
        t = torch.add(v1 + v2, c, alpha=2.0).mul_(b * b / 2).exp_().mul_(a * a)
        return t, (t * (b * b) if need_dot else None)

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        return torch.mul(v, 2 * self.b ** 2).exp_().mul_(self.a ** 2)

    def __repr__(self) -> str:
        return f"Exp(a={self.a}, b={self.b})"


class Gaussian(ElementwiseLayer):
    """``φ(x) = a exp(b x²)`` (a bump for ``b < 0``).

    The kernel is finite only while ``2 b v < 1`` for every variance ``v``
    (always for ``b ≤ 0``); otherwise a ``ValueError`` is raised.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> k = L.serial(L.Dense(4), L.Gaussian(1.0, -0.5)).kernel(torch.ones(1, 1, dtype=torch.float64))
    >>> round(float(k.nngp), 6)  # 1/sqrt(1 + 2 v), v = 1
    0.57735
    """

    def __init__(self, a: float = 1.0, b: float = -1.0) -> None:
        self.a = _finite(a, "Gaussian: a")
        self.b = _finite(b, "Gaussian: b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x * x * self.b) * self.a

    def _check(self, v: torch.Tensor) -> None:
        if self.b > 0 and bool((v * (2 * self.b) >= 1).any()):
            raise ValueError(f"Gaussian(b={self.b}): E[exp(2b u²)] is infinite for a pre-activation variance "
                             f"≥ 1/(2b) = {1 / (2 * self.b):g}; use a smaller b or smaller weights")

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        a, b = self.a, self.b
        self._check(v1)
        self._check(v2)
        d = (1.0 - v1 * (2 * b)) * (1.0 - v2 * (2 * b))
        d = d.expand(torch.broadcast_shapes(d.shape, c.shape)).clone()
        d.addcmul_(c, c, value=-4 * b * b).clamp_min_(1e-300 if c.dtype == torch.float64 else 1e-30)
        rs = d.rsqrt_()  # D^{-1/2}
        tdot = None
        if need_dot:
            tdot = rs.pow(3).mul_(c).mul_(4 * a * a * b * b)
        return rs.mul_(a * a), tdot

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        self._check(v)
        return torch.mul(v, -4 * self.b).add_(1.0).rsqrt_().mul_(self.a ** 2)

    def __repr__(self) -> str:
        return f"Gaussian(a={self.a}, b={self.b})"


class Sign(ElementwiseLayer):
    """``φ(x) = sign(x)``: ``T = 1 - 2θ/π``; ``Ṫ = 0`` (see module docstring).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> L.serial(L.Dense(4), L.Sign()).kernel(x).nngp
    tensor([[1., 0.],
            [0., 1.]], dtype=torch.float64)
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        ssin = _sin_theta_scaled(c, v1, v2)
        t = torch.atan2(ssin, c).mul_(-2 / _PI).add_(1.0)
        # zero variance: sign(0) = 0, so the covariance is 0
        zero = (v1 * v2) == 0
        if bool(zero.any()):
            t = t.masked_fill_(zero.expand(t.shape), 0.0)
        return t, (torch.zeros_like(t) if need_dot else None)

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        return (v > 0).to(v.dtype)

    def __repr__(self) -> str:
        return "Sign()"


# ---- polynomials -----------------------------------------------------------------------------


def _hermite_coefs(i: int) -> list[float]:
    """``h[p]`` with ``x^i = Σ_p h[p] He_p(x)`` (nonzero for ``p ≡ i mod 2``)."""
    h = [0.0] * (i + 1)
    for m in range(i // 2 + 1):
        p = i - 2 * m
        h[p] = math.factorial(i) / (math.factorial(m) * 2 ** m * math.factorial(p))
    return h


def _mixed_moment_terms(i: int, j: int) -> list[tuple[float, int, int, int]]:
    """``E[u^i v^j] = Σ coef c^p v1^e1 v2^e2`` as ``(coef, p, e1, e2)`` terms."""
    if (i - j) % 2:
        return []
    hi, hj = _hermite_coefs(i), _hermite_coefs(j)
    out = []
    for p in range(i % 2, min(i, j) + 1, 2):
        out.append((hi[p] * hj[p] * math.factorial(p), p, (i - p) // 2, (j - p) // 2))
    return out


def _poly_kernel(coef: Sequence[float], c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """``E[P(u) P(v)]`` for ``P(x) = Σ coef[i] x^i``."""
    shape = torch.broadcast_shapes(c.shape, v1.shape, v2.shape)
    out = torch.zeros(shape, dtype=c.dtype, device=c.device)
    # group terms by (p, e1, e2)
    terms: dict[tuple[int, int, int], float] = {}
    for i, ai in enumerate(coef):
        if ai == 0:
            continue
        for j, aj in enumerate(coef):
            if aj == 0:
                continue
            for w, p, e1, e2 in _mixed_moment_terms(i, j):
                terms[(p, e1, e2)] = terms.get((p, e1, e2), 0.0) + ai * aj * w
    for (p, e1, e2), w in terms.items():
        if w == 0:
            continue
        term = c.pow(p) if p else torch.ones_like(c)
        if e1:
            term = term * v1.pow(e1)
        if e2:
            term = term * v2.pow(e2)
        out.add_(term, alpha=w)
    return out


class Polynomial(ElementwiseLayer):
    """``φ(x) = Σ_i coef[i] x^i`` with exact Gaussian moments (any variances).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> k = L.serial(L.Dense(4), L.Polynomial([0.0, 0.0, 1.0])).kernel(torch.ones(1, 1, dtype=torch.float64))
    >>> float(k.nngp)  # E[u⁴] = 3 for u ~ N(0, 1)
    3.0
    """

    def __init__(self, coef: Sequence[float]) -> None:
        vals = [_finite(a, "Polynomial: coef entries") for a in coef]
        if not vals:
            raise ValueError("Polynomial: coef must contain at least one coefficient")
        self.coef = vals
        self._dcoef = [i * a for i, a in enumerate(vals)][1:] or [0.0]

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x, self.coef[-1])
        for a in reversed(self.coef[:-1]):  # Horner
            out = out * x + a
        return out

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        t = _poly_kernel(self.coef, c, v1, v2)
        return t, (_poly_kernel(self._dcoef, c, v1, v2) if need_dot else None)

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        return _poly_kernel(self.coef, v, v, v)

    def __repr__(self) -> str:
        return f"Polynomial(coef={self.coef})"


class Monomial(Polynomial):
    """``φ(x) = x^d``.

    Examples
    --------
    >>> from ntkit import layers as L
    >>> L.Monomial(3).coef
    [0.0, 0.0, 0.0, 1.0]
    """

    def __init__(self, degree: int) -> None:
        if isinstance(degree, bool) or int(degree) != degree or degree < 0:
            raise ValueError(f"Monomial: degree must be a non-negative integer, got {degree!r}")
        self.degree = int(degree)
        super().__init__([0.0] * self.degree + [1.0])

    def __repr__(self) -> str:
        return f"Monomial(degree={self.degree})"


class Hermite(Polynomial):
    """Normalised probabilists' Hermite polynomial ``φ(x) = He_d(x) / sqrt(d!)``.

    For unit-variance pre-activations ``T = c^d`` and ``Ṫ = d c^{d-1}``; for
    other variances the exact polynomial moments are used.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> x = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1) * 2
    >>> k = L.serial(L.Dense(4), L.Hermite(3)).kernel(x)
    >>> q = x @ x.T / 4
    >>> torch.allclose(k.nngp, q ** 3)
    True
    """

    def __init__(self, degree: int) -> None:
        if isinstance(degree, bool) or int(degree) != degree or degree < 0:
            raise ValueError(f"Hermite: degree must be a non-negative integer, got {degree!r}")
        self.degree = d = int(degree)
        # He_d(x) = d! Σ_m (-1)^m x^{d-2m} / (m! (d-2m)! 2^m)
        coef = [0.0] * (d + 1)
        for m in range(d // 2 + 1):
            coef[d - 2 * m] = (-1) ** m * math.factorial(d) / (math.factorial(m) * math.factorial(d - 2 * m) * 2 ** m)
        norm = math.sqrt(math.factorial(d))
        super().__init__([a / norm for a in coef])

    def __repr__(self) -> str:
        return f"Hermite(degree={self.degree})"


def _poly_mul(p: list[float], q: list[float]) -> list[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _poly_add(p: list[float], q: list[float]) -> list[float]:
    n = max(len(p), len(q))
    return [(p[i] if i < len(p) else 0.0) + (q[i] if i < len(q) else 0.0) for i in range(n)]


def _poly_der(p: list[float]) -> list[float]:
    return [i * a for i, a in enumerate(p)][1:] or [0.0]


def _arccos_polys(d: int) -> tuple[list[float], list[float]]:
    """``(P_d, Q_d)`` with Cho & Saul's ``J_d(θ) = P_d(cos θ)(π - θ) + Q_d(cos θ) sin θ``."""
    p, q = [1.0], [0.0]
    w = [1.0, 0.0, -1.0]  # 1 - x²
    for n in range(d):
        p_new = _poly_add(_poly_mul(w, _poly_der(p)), _poly_mul([0.0, 2.0 * n + 1], p))
        q_new = _poly_add(_poly_add(p, _poly_mul(w, _poly_der(q))), _poly_mul([0.0, 2.0 * n], q))
        p, q = p_new, q_new
    return p, q


def _horner(coef: list[float], x: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(x, coef[-1])
    for a in reversed(coef[:-1]):
        out.mul_(x).add_(a)
    return out


class RectifiedMonomial(ElementwiseLayer):
    """``φ(x) = max(x, 0)^d``: the arc-cosine kernel of order ``d`` (Cho & Saul 2009).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> x = torch.randn(3, 4, dtype=torch.float64)
    >>> a = L.serial(L.Dense(4), L.RectifiedMonomial(1)).kernel(x)
    >>> b = L.serial(L.Dense(4), L.Relu()).kernel(x)
    >>> torch.allclose(a.ntk, b.ntk) and torch.allclose(a.nngp, b.nngp)
    True
    """

    def __init__(self, degree: int) -> None:
        if isinstance(degree, bool) or int(degree) != degree or degree < 0:
            raise ValueError(f"RectifiedMonomial: degree must be a non-negative integer, got {degree!r}")
        self.degree = int(degree)
        self._polys = [_arccos_polys(n) for n in range(self.degree + 1)]

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        if self.degree == 0:
            return (x > 0).to(x.dtype)
        r = torch.relu(x)
        return r if self.degree == 1 else r.pow(self.degree)

    def _t(self, n: int, rho: torch.Tensor, theta: torch.Tensor, sin: torch.Tensor,
           scale: torch.Tensor) -> torch.Tensor:
        p, q = self._polys[n]
        j = _horner(p, rho).mul_(_PI - theta).add_(_horner(q, rho).mul_(sin))
        sc = scale.pow(n / 2) if n else torch.ones_like(scale)
        return j.mul_(sc).div_(2 * _PI)

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        d = self.degree
        prod = (v1 * v2).expand(torch.broadcast_shapes(c.shape, v1.shape, v2.shape))
        ssin = _sin_theta_scaled(c, v1, v2)
        theta = torch.atan2(ssin, c)
        rho, sin = torch.cos(theta), torch.sin(theta)
        t = self._t(d, rho, theta, sin, prod)
        if d == 0:  # zero variance: 1(0 > 0) = 0
            zero = prod == 0
            if bool(zero.any()):
                t = t.masked_fill_(zero, 0.0)
        tdot = None
        if need_dot:
            tdot = self._t(d - 1, rho, theta, sin, prod).mul_(d * d) if d >= 1 else torch.zeros_like(t)
        return t, tdot

    def diag_fn(self, v: torch.Tensor) -> torch.Tensor:
        # E[relu(u)^{2d}] = v^d (2d - 1)!! / 2  (1/2 for d = 0)
        d = self.degree
        dfact = math.prod(range(2 * d - 1, 0, -2)) if d else 1
        return v.pow(d) * (dfact / 2) if d else (v > 0).to(v.dtype) * 0.5

    def __repr__(self) -> str:
        return f"RectifiedMonomial(degree={self.degree})"


# ---- GELU ------------------------------------------------------------------------------------


def _orthant_quadratic(m11: torch.Tensor, m22: torch.Tensor, m12: torch.Tensor, k1: tuple, k2: tuple,
                       cxy: torch.Tensor) -> torch.Tensor:
    """``E[X Y 1(A > 0) 1(B > 0)]`` for a centred Gaussian ``(X, Y, A, B)``.

    ``m`` is the covariance of ``(A, B)``, ``k1 = (Cov(X, A), Cov(X, B))``,
    ``k2`` likewise for ``Y``, ``cxy = Cov(X, Y)``. Write ``X = α·(A, B) + r``
    with ``r`` independent of ``(A, B)``; then the expectation is
    ``αᵀ M αʹ + Cov(r, r') P(A > 0, B > 0)`` with ``M = E[Z Zᵀ 1(Z > 0)]``.
    """
    det = m11 * m22 - m12 * m12
    i11, i22, i12 = m22 / det, m11 / det, -m12 / det
    ax = (i11 * k1[0] + i12 * k1[1], i12 * k1[0] + i22 * k1[1])
    ay = (i11 * k2[0] + i12 * k2[1], i12 * k2[0] + i22 * k2[1])
    s = torch.sqrt(m11 * m22)
    theta = torch.atan2(torch.sqrt(det.clamp_min(0)), m12)
    sin, cos = torch.sin(theta), torch.cos(theta)
    p = (_PI - theta) / (2 * _PI)
    e11 = m11 * (_PI - theta + sin * cos) / (2 * _PI)
    e22 = m22 * (_PI - theta + sin * cos) / (2 * _PI)
    e12 = s * (sin + (_PI - theta) * cos) / (2 * _PI)
    quad = ax[0] * ay[0] * e11 + ax[1] * ay[1] * e22 + (ax[0] * ay[1] + ax[1] * ay[0]) * e12
    resid = cxy - (k1[0] * ay[0] + k1[1] * ay[1])
    return quad + resid * p


def _gelu_nngp(c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """``E[uΦ(u) vΦ(v)]``: ``Φ(u) = P(u - g > 0)``, ``g, h ~ N(0, 1)`` independent."""
    shape = torch.broadcast_shapes(c.shape, v1.shape, v2.shape)
    v1, v2, c = v1.expand(shape), v2.expand(shape), c.expand(shape)
    # A = u - g, B = v - h
    return _orthant_quadratic(v1 + 1.0, v2 + 1.0, c, (v1, c), (c, v2), c)


class Gelu(ElementwiseLayer):
    """``φ(x) = x Φ(x)`` (exact GELU, ``Φ`` the standard normal CDF).

    ``T`` is exact (Gaussian orthant moments, see module docstring);
    ``Ṫ = ∂T/∂c`` by autograd (Price's theorem).

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> k = L.serial(L.Dense(4), L.Gelu()).kernel(torch.ones(1, 1, dtype=torch.float64))
    >>> round(float(k.nngp), 6)  # E[(uΦ(u))²], u ~ N(0, 1): 1/3 + 1/(2π√3)
    0.425221
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)

    def kernel_fn(self, c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, need_dot: bool) -> KernelFnOut:
        if not need_dot:
            return _gelu_nngp(c, v1, v2), None
        from ._elementwise import _grad_wrt_c

        return _grad_wrt_c(_gelu_nngp, c, v1, v2)

    def __repr__(self) -> str:
        return "Gelu()"
