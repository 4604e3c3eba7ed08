"""Closed-form activation kernels against independent numerical truths.

Truths used:
* smooth activations: 2-D Gauss-Hermite quadrature (``ElementwiseNumerical``,
  degree 120, exponentially convergent for analytic functions);
* positively homogeneous (kinked) activations: an angular integral with
  scipy's adaptive ``quad`` split at the kinks (independent of the arc-cosine
  algebra): for (u, v) = R (y1(α), y2(α)) with R² ~ χ²₂,
  E[φ(u)φ(v)] = E[R^{2d}] / (2π) ∫ φ(y1) φ(y2) dα, E[R^{2d}] = 2^d d!;
* Ṫ = ∂T/∂c (Price's theorem) by central finite differences in float64;
* the seed's one-hidden-layer ReLU NTK formula.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from ntkit import layers as L
from ntkit.layers.kernel import input_kernel

F64 = torch.float64

SMOOTH = [
    L.Erf(1.3, 0.7, 0.2), L.Erf(), L.Sigmoid_like(), L.Gelu(), L.Sin(1.2, 0.8, 0.3), L.Cos(0.9, 1.1, 0.2),
    L.Rbf(0.7), L.Exp(0.8, 0.5), L.Gaussian(1.1, -0.6), L.Monomial(3), L.Monomial(0),
    L.Polynomial([0.3, -1.0, 0.5, 0.2]), L.Hermite(4),
]
# (layer, homogeneity degree d, derivative function with degree d-1 or None for Ṫ = 0)
HOMOGENEOUS = [
    (L.Relu(), 1, lambda x: (x > 0) * 1.0),
    (L.LeakyRelu(0.2), 1, lambda x: np.where(x > 0, 1.0, 0.2)),
    (L.ABRelu(-0.5, 2.0), 1, lambda x: np.where(x > 0, 2.0, -0.5)),
    (L.Abs(), 1, lambda x: np.sign(x)),
    (L.Sign(), 0, None),
    (L.RectifiedMonomial(0), 0, None),
    (L.RectifiedMonomial(2), 2, lambda x: 2 * np.maximum(x, 0)),
    (L.RectifiedMonomial(3), 3, lambda x: 3 * np.maximum(x, 0) ** 2),
]


def _triples():
    """(c, v1, v2) covering generic, near ρ = ±1, exactly ±1, tiny and zero variances."""
    rows = []
    g = np.random.default_rng(1)
    for _ in range(12):
        v1, v2 = g.uniform(0.05, 2.5, size=2)
        rho = g.uniform(-1, 1)
        rows.append((rho * math.sqrt(v1 * v2), v1, v2))
    for rho in (1.0, -1.0, 1 - 1e-9, -1 + 1e-9, 0.0):
        rows.append((rho * math.sqrt(0.7 * 1.3), 0.7, 1.3))
    rows.append((0.0, 0.0, 1.1))
    rows.append((0.0, 0.0, 0.0))
    t = torch.tensor(rows, dtype=F64)
    return t[:, 0], t[:, 1], t[:, 2]


def _angular(phi, d, c, v1, v2):
    """E[φ(u)φ(v)] for φ positively homogeneous of degree d, by adaptive angular quadrature."""
    s1 = math.sqrt(v1)
    r = c / s1 if s1 > 0 else 0.0
    s2 = math.sqrt(max(v2 - r * r, 0.0))
    kinks = [math.pi / 2, 3 * math.pi / 2]
    a0 = math.atan2(-r, s2) % math.pi
    kinks += [a0, a0 + math.pi]

    def f(a):
        return float(phi(s1 * math.cos(a)) * phi(r * math.cos(a) + s2 * math.sin(a)))

    val, _ = integrate.quad(f, 0, 2 * math.pi, points=sorted(k for k in kinks if 0 < k < 2 * math.pi),
                            epsabs=1e-13, epsrel=1e-12, limit=200)
    return 2 ** d * math.factorial(d) * val / (2 * math.pi)


@pytest.mark.parametrize("act", SMOOTH, ids=repr)
def test_smooth_closed_forms_match_quadrature(act):
    c, v1, v2 = _triples()
    t, td = act.kernel_fn(c, v1, v2, True)
    tn, tdn = L.ElementwiseNumerical(act.fn, deg=120).kernel_fn(c, v1, v2, True)
    scale = 1 + tn.abs().max()
    torch.testing.assert_close(t.expand_as(tn), tn, atol=1e-10 * scale, rtol=1e-9)
    torch.testing.assert_close(td.expand_as(tdn), tdn, atol=1e-9 * (1 + tdn.abs().max()), rtol=1e-8)
    # diagonal (variance) formula
    v = v1[v1 > 0]
    torch.testing.assert_close(act.diag_fn(v), act.kernel_fn(v, v, v, False)[0].expand_as(v), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("act,d,dphi", HOMOGENEOUS, ids=lambda p: repr(p) if isinstance(p, L.Layer) else "")
def test_kinked_closed_forms_match_angular_integral(act, d, dphi):
    c, v1, v2 = _triples()
    t, td = act.kernel_fn(c, v1, v2, True)

    def phi(x):
        return float(act.fn(torch.tensor(x, dtype=F64)))

    for i in range(len(c)):
        ci, a, b = float(c[i]), float(v1[i]), float(v2[i])
        want = _angular(phi, d, ci, a, b)
        assert abs(float(t[i]) - want) <= 1e-9 * (1 + abs(want)), (i, float(t[i]), want)
        if dphi is None:
            assert float(td[i]) == 0.0
        elif a > 0 and b > 0:
            want_d = _angular(dphi, d - 1, ci, a, b)
            assert abs(float(td[i]) - want_d) <= 1e-9 * (1 + abs(want_d)), (i, float(td[i]), want_d)
    v = v1[v1 > 0]
    torch.testing.assert_close(act.diag_fn(v), act.kernel_fn(v, v, v, False)[0], atol=1e-12, rtol=1e-10)
    # near ρ = 1 kinked kernels are only Hölder-1/2 in c: a relative perturbation δ moves θ by sqrt(2δ)
    tp = act.kernel_fn(v * (1 - 1e-12), v, v, False)[0]
    assert float((tp - act.diag_fn(v)).abs().max()) <= 1e-5 * float(v.max() ** d + 1)


@pytest.mark.parametrize("act", SMOOTH + [h[0] for h in HOMOGENEOUS if h[2] is not None], ids=repr)
def test_tdot_is_derivative_of_t(act):
    """Price's theorem: E[φ'(u)φ'(v)] = ∂/∂c E[φ(u)φ(v)] (away from ρ = ±1)."""
    g = torch.Generator().manual_seed(3)
    v1 = torch.rand(20, generator=g, dtype=F64) * 2 + 0.2
    v2 = torch.rand(20, generator=g, dtype=F64) * 2 + 0.2
    c = (torch.rand(20, generator=g, dtype=F64) * 1.8 - 0.9) * (v1 * v2).sqrt()
    h = 1e-6
    tp = act.kernel_fn(c + h, v1, v2, False)[0]
    tm = act.kernel_fn(c - h, v1, v2, False)[0]
    _, td = act.kernel_fn(c, v1, v2, True)
    fd = (tp - tm) / (2 * h)
    torch.testing.assert_close(td.expand_as(fd), fd, atol=1e-6 * (1 + fd.abs().max()), rtol=1e-6)


def test_one_hidden_layer_relu_matches_seed_formula():
    """Seed 000: k∞(x, x') = x·x' (π - arccos ρ)/(2π) for h(x) = Σ_j a_j σ(w_j·x)/√N, gradient in W.

    Our Dense(N) divides by √d (channel-averaged covariances), so with
    ``arch = serial(Dense(N), Relu(), Dense(1))`` (NTK parameterisation, no bias):
      * the first layer's NTK contribution is (x·x'/d)(π - θ)/(2π) — the
        seed's formula divided by d;
      * the readout weights add their NNGP term, the arc-cosine kernel
        ‖x‖‖x'‖ (sin θ + (π - θ) cos θ)/(2π d).
    """
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=F64)
    x[3] = 2.5 * x[1]  # ρ = 1 exactly
    x[4] = -x[2]  # ρ = -1
    d = x.shape[1]
    k = L.serial(L.Dense(100), L.Relu(), L.Dense(1)).kernel(x)
    dots = x @ x.T
    norms = x.norm(dim=1)
    rho = (dots / (norms[:, None] * norms[None, :])).clamp(-1, 1)
    theta = torch.arccos(rho)
    seed_ntk = dots * (math.pi - theta) / (2 * math.pi)
    arccos_nngp = norms[:, None] * norms[None, :] * (torch.sin(theta) + (math.pi - theta) * rho) / (2 * math.pi)
    torch.testing.assert_close(k.nngp, arccos_nngp / d, atol=1e-12, rtol=1e-7)
    # at ρ = -1 the Gram matrix's rounding (~1e-16) moves θ by ~1e-8: absolute tolerance 1e-8 * scale
    atol = 1e-8 * float(seed_ntk.abs().max())
    torch.testing.assert_close(k.ntk, seed_ntk / d + arccos_nngp / d, atol=atol, rtol=1e-7)
    # only the first layer's weights: subtract the readout's NNGP term
    torch.testing.assert_close(k.ntk - k.nngp, seed_ntk / d, atol=atol, rtol=1e-7)


def test_numerical_accuracy_as_documented():
    rho = torch.linspace(-1, 1, 101, dtype=F64)
    one = torch.ones_like(rho)
    for act, deg, tol_t, tol_d in [(L.Erf(), 50, 1e-10, 1e-8), (L.Gelu(), 25, 1e-8, 1e-7), (L.Relu(), 100, 2e-3, 3e-2)]:
        t0, d0 = act.kernel_fn(rho, one, one, True)
        t, d = L.ElementwiseNumerical(act.fn, deg).kernel_fn(rho, one, one, True)
        assert float((t - t0).abs().max()) < tol_t
        assert float((d - d0).abs().max()) < tol_d


@pytest.mark.parametrize("act", [L.Erf(), L.Gelu(), L.Sin(1.0, 1.3, 0.4), L.Polynomial([0.1, 1.0, 0.3])], ids=repr)
def test_whole_network_closed_form_equals_numerical(act):
    x = torch.randn(6, 4, dtype=F64)
    x2 = torch.randn(3, 4, dtype=F64)
    num = L.ElementwiseNumerical(act.fn, deg=150)

    def net(a):
        return L.serial(L.Dense(32, W_std=1.3, b_std=0.2), a, L.Dense(32, W_std=0.9, b_std=0.1), a,
                        L.Dense(1, W_std=1.1))

    for xx in (None, x2):
        k1 = net(act).kernel(x, xx)
        k2 = net(num).kernel(x, xx)
        torch.testing.assert_close(k1.nngp, k2.nngp, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(k1.ntk, k2.ntk, atol=1e-10, rtol=1e-9)


def test_relu_network_kinked_numerical_agrees_loosely():
    x = torch.randn(5, 3, dtype=F64)
    arch = L.serial(L.Dense(8), L.Relu(), L.Dense(1))
    num = L.serial(L.Dense(8), L.ElementwiseNumerical(torch.relu, deg=100), L.Dense(1))
    k1, k2 = arch.kernel(x), num.kernel(x)
    scale = float(k1.ntk.abs().max())
    assert float((k1.nngp - k2.nngp).abs().max()) < 2e-3 * scale
    assert float((k1.ntk - k2.ntk).abs().max()) < 3e-2 * scale


def test_elementwise_user_formula_autograd_derivative():
    # φ = x²: T = v1 v2 + 2c², Ṫ = 4c
    sq = L.Elementwise(lambda x: x * x, lambda c, v1, v2: v1 * v2 + 2 * c * c)
    x = torch.randn(4, 3, dtype=F64)
    k1 = L.serial(L.Dense(8), sq, L.Dense(1)).kernel(x)
    k2 = L.serial(L.Dense(8), L.Monomial(2), L.Dense(1)).kernel(x)
    torch.testing.assert_close(k1.nngp, k2.nngp)
    torch.testing.assert_close(k1.ntk, k2.ntk)
    explicit = L.Elementwise(lambda x: x * x, lambda c, v1, v2: v1 * v2 + 2 * c * c, lambda c, v1, v2: 4 * c)
    torch.testing.assert_close(L.serial(L.Dense(8), explicit, L.Dense(1)).kernel(x).ntk, k2.ntk)
    with pytest.raises(TypeError, match="nngp_fn"):
        L.Elementwise(torch.relu, "not callable")


def _spatial_arch(act):
    return L.serial(L.Dense(16, W_std=1.4, b_std=0.3), act, L.Dense(16, W_std=1.2, b_std=0.1), act, L.Dense(2))


@pytest.mark.parametrize("act", [L.Relu(), L.Erf(2.0, 0.5, 0.1), L.Gelu(), L.Sign(), L.RectifiedMonomial(2)], ids=repr)
def test_layouts_agree(act):
    """Full spatial, diagonal spatial and flat layouts give the same numbers."""
    x = torch.randn(3, 4, 2, 3, dtype=F64)
    y = torch.randn(2, 4, 2, 3, dtype=F64)
    arch = _spatial_arch(act)
    full = arch.apply_kernel(input_kernel(x, y))
    diag = arch.apply_kernel(input_kernel(x, y, diagonal_spatial=True))
    assert full.nngp.shape == (3, 2, 2, 3, 2, 3) and diag.nngp.shape == (3, 2, 2, 3)
    for name in ("nngp", "ntk"):
        f = getattr(full, name).reshape(3, 2, 6, 6)
        torch.testing.assert_close(torch.diagonal(f, dim1=2, dim2=3).reshape(3, 2, 2, 3), getattr(diag, name))
    v = full.var1.reshape(3, 6, 6)
    torch.testing.assert_close(torch.diagonal(v, dim1=1, dim2=2).reshape(3, 2, 3), diag.var1)
    # entry (h, w) x (h', w') of the full layout is the flat kernel of the per-position feature vectors
    for (h, w, h2, w2) in [(0, 1, 1, 2), (1, 0, 1, 0)]:
        flat = arch.apply_kernel(input_kernel(x[:, :, h, w], y[:, :, h2, w2]))
        torch.testing.assert_close(full.nngp[:, :, h, w, h2, w2], flat.nngp)
        torch.testing.assert_close(full.ntk[:, :, h, w, h2, w2], flat.ntk)
    # self covariance in the full layout: var1[i, s, s'] equals the x-vs-x kernel entries
    xx = arch.apply_kernel(input_kernel(x, None))
    torch.testing.assert_close(xx.var1, torch.stack([xx.nngp[i, i] for i in range(3)]))


ALL = SMOOTH + [h[0] for h in HOMOGENEOUS]


@pytest.mark.parametrize("act", ALL, ids=repr)
def test_symmetry_psd_and_blocks(act):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 5, generator=g, dtype=F64)
    arch = L.serial(L.Dense(64, W_std=1.2, b_std=0.2), act, L.Dense(64, W_std=0.8, b_std=0.1), act, L.Dense(1))
    if isinstance(act, L.Exp | L.Gaussian):  # keep moments moderate
        arch = L.serial(L.Dense(64, W_std=0.5), act, L.Dense(1, W_std=0.5))
    k = arch.kernel(x)
    for name in ("nngp", "ntk"):
        m = getattr(k, name)
        assert torch.isfinite(m).all()
        torch.testing.assert_close(m, m.T, atol=1e-12 * float(m.abs().max()), rtol=0)
        ev = torch.linalg.eigvalsh((m + m.T) / 2)
        assert float(ev.min()) >= -1e-10 * float(torch.trace(m)), (name, float(ev.min()))
    torch.testing.assert_close(k.var1, torch.diagonal(k.nngp), atol=1e-12, rtol=1e-10)
    kb = arch.kernel(x[:5], x[5:])
    torch.testing.assert_close(kb.nngp, k.nngp[:5, 5:], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(kb.ntk, k.ntk[:5, 5:], atol=1e-12, rtol=1e-10)


def test_zero_inputs_and_float32():
    x = torch.randn(5, 4, dtype=F64)
    x[2] = 0.0
    for act in [L.Relu(), L.Erf(), L.Sign(), L.Gelu(), L.RectifiedMonomial(2), L.Abs()]:
        k = L.serial(L.Dense(8), act, L.Dense(8), act, L.Dense(1)).kernel(x)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all(), repr(act)
        k32 = L.serial(L.Dense(8), act, L.Dense(8), act, L.Dense(1)).kernel(x.float())
        assert k32.nngp.dtype == torch.float32
        torch.testing.assert_close(k32.ntk.double(), k.ntk, atol=1e-5, rtol=1e-4)


def test_finite_modules_apply_the_activation():
    x = torch.linspace(-2, 2, 9, dtype=F64).reshape(1, 9)
    for act, ref in [(L.Relu(), torch.relu(x)), (L.LeakyRelu(0.1), torch.nn.functional.leaky_relu(x, 0.1)),
                     (L.Abs(), x.abs()), (L.Erf(2.0, 0.5, 1.0), 2 * torch.erf(0.5 * x) + 1),
                     (L.Gelu(), x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))), (L.Sign(), torch.sign(x)),
                     (L.Hermite(2), (x * x - 1) / math.sqrt(2)), (L.RectifiedMonomial(2), torch.relu(x) ** 2),
                     (L.Rbf(0.5), math.sqrt(2) * torch.sin(x + math.pi / 4))]:
        torch.testing.assert_close(act.init((9,), dtype=F64)(x), ref)
    # Sigmoid_like stays within 0.03 of the logistic function
    xs = torch.linspace(-8, 8, 401, dtype=F64)
    assert float((L.Sigmoid_like().fn(xs) - torch.sigmoid(xs)).abs().max()) < 0.03


def test_activation_errors():
    with pytest.raises(ValueError, match="degree"):
        L.Monomial(-1)
    with pytest.raises(ValueError, match="a must be a finite"):
        L.Erf(a=float("nan"))
    with pytest.raises(ValueError, match="deg"):
        L.ElementwiseNumerical(torch.tanh, deg=0)
    with pytest.raises(ValueError, match="list of branches"):
        L.serial(L.FanOut(2), L.Relu()).kernel(torch.randn(2, 3))
    with pytest.raises(ValueError, match="infinite"):
        L.serial(L.Dense(4, W_std=3.0), L.Gaussian(1.0, 0.5)).kernel(torch.ones(2, 3))


@pytest.mark.parametrize("act", [L.Relu(), L.Erf(), L.Gelu(), L.RectifiedMonomial(2)], ids=repr)
def test_blocked_and_in_place_paths_equal_plain(act, monkeypatch):
    """Row-blocked, in-place evaluation (used inside arch.kernel) = one-shot out-of-place evaluation."""
    x = torch.randn(23, 4, 3, dtype=F64)
    arch = L.serial(L.Dense(8, b_std=0.2), act, L.Dense(8), act, L.Dense(1))
    for diag in (False, True):
        plain = arch.apply_kernel(input_kernel(x, None, diagonal_spatial=diag))
        monkeypatch.setattr(type(act), "_BLOCK", 50)  # several rows per block, ragged last block
        owned = arch._apply_owned(input_kernel(x, None, diagonal_spatial=diag), True)[0]
        monkeypatch.undo()
        torch.testing.assert_close(owned.nngp, plain.nngp, atol=1e-13, rtol=1e-12)
        torch.testing.assert_close(owned.ntk, plain.ntk, atol=1e-13, rtol=1e-12)
