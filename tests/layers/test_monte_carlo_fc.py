"""Infinite-width kernels against Monte Carlo averages of finite networks.

Tolerance (fixed before looking at results): each entry of the sample mean
of ``S`` empirical kernels must satisfy

    |mean - analytic| <= Z * SE + bias,

* ``SE`` is the entry's standard error from the sample variance
  (``std(ddof=1)/sqrt(S)``); ``Z = 6`` keeps the family-wise false-alarm rate
  of a few hundred checks with Student-t(S - 1) tails small (the seeds are
  fixed, so each test is deterministic);
* ``bias = 2 * L / width * max|K|``: the mean of a finite network's empirical
  kernels differs from the infinite-width limit by O(L / width) (1/width
  corrections accumulating over the ``L`` hidden layers; Hanin & Nica 2019,
  Yaida 2020), with a constant 2 allowed per layer.

The NNGP is averaged over ``K_NNGP`` readout units as well (a wide readout
reduces its sample variance; the per-unit kernel is unchanged).
"""

import pytest
import torch

from ntkit import layers as L
from ntkit import monte_carlo_kernel

F64 = torch.float64
Z = 6.0
K_NNGP = 256  # readout units for NNGP checks (forward passes only: cheap)


def _check(name, ana, mean, se, width, n_hidden):
    bias = 2.0 * n_hidden / width * float(ana.abs().max())
    err = (mean - ana).abs()
    worst = float((err - (Z * se + bias)).max())
    assert worst <= 0, (f"{name}: max |mean-analytic| - bound = {worst:.3g}; z-scores "
                        f"{((mean - ana) / se).abs().max():.2f}; analytic {ana}; mean {mean}; se {se}")


def assert_mc_agrees(build, x, width, n_nngp, n_ntk, n_hidden, x2=None, override=True):
    """``build(k_out)`` makes the architecture with ``k_out`` readout units.

    The NNGP is checked with a wide readout (its sample variance falls like
    1/k_out; the per-unit kernel is the same), the NTK with a single output
    (it concentrates with the width; the empirical NTK costs a backward pass
    per output).
    """
    w = width if override else None
    arch = build(K_NNGP)
    k = arch.kernel(x, x2, get="nngp")
    mc = monte_carlo_kernel(arch, x, x2, n_samples=n_nngp, width=w, seed=11, get="nngp")
    _check("nngp", k.nngp, mc.nngp, mc.nngp_se, width, n_hidden)
    arch1 = build(1)
    k1 = arch1.kernel(x, x2, get="ntk")
    mc1 = monte_carlo_kernel(arch1, x, x2, n_samples=n_ntk, width=w, seed=23, get="ntk")
    _check("ntk", k1.ntk, mc1.ntk, mc1.ntk_se, width, n_hidden)
    return mc, mc1


def _one_hidden(act, w_std=1.3, b_std=0.2):
    return lambda k_out: L.serial(L.Dense(64, W_std=w_std, b_std=b_std), act, L.Dense(k_out, W_std=1.1, b_std=0.1))


DEFAULT_ACTS = [L.Relu(), L.Erf(1.2, 0.8, 0.1), L.Gelu(), L.Sin(1.0, 1.2, 0.3), L.Abs(), L.Polynomial([0.2, 1.0, 0.3])]
SLOW_ACTS = DEFAULT_ACTS + [
    L.LeakyRelu(0.2), L.ABRelu(-0.4, 1.5), L.Sigmoid_like(), L.Cos(), L.Rbf(0.5), L.Exp(0.7, 0.4),
    L.Gaussian(1.0, -0.5), L.Sign(), L.Monomial(2), L.RectifiedMonomial(2), L.Hermite(3),
    L.ElementwiseNumerical(torch.tanh, deg=60),
]


def _inputs(n=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64)


@pytest.mark.parametrize("act", DEFAULT_ACTS, ids=repr)
def test_activation_mc_light(act):
    assert_mc_agrees(_one_hidden(act), _inputs(), width=512, n_nngp=24, n_ntk=6, n_hidden=1)


@pytest.mark.slow
@pytest.mark.parametrize("act", SLOW_ACTS, ids=repr)
def test_activation_mc_heavy(act):
    assert_mc_agrees(_one_hidden(act), _inputs(5), width=1024, n_nngp=64, n_ntk=24, n_hidden=1)


def _deep(act, param, bias, width):
    b = 0.3 if bias else None

    def build(k_out):
        layers = []
        for _ in range(4):
            layers += [L.Dense(width, W_std=1.4, b_std=b, parameterization=param), act]
        layers.append(L.Dense(k_out, W_std=1.1, b_std=b, parameterization=param))
        return L.serial(*layers)

    return build


LIGHT_DEEP = [(L.Relu(), "ntk", True), (L.Erf(), "standard", False)]


@pytest.mark.parametrize("act,param,bias", LIGHT_DEEP, ids=["relu-ntk-bias", "erf-standard-nobias"])
def test_depth5_mc_light(act, param, bias):
    """Depth 5 (4 hidden layers); the standard parameterisation's NTK uses the declared widths."""
    width = 192
    assert_mc_agrees(_deep(act, param, bias, width), _inputs(3, 5, seed=1), width=width, n_nngp=24, n_ntk=6,
                     n_hidden=4, override=False)


@pytest.mark.slow
@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", [L.Relu(), L.Erf()], ids=repr)
def test_depth5_mc_heavy(act, param, bias):
    width = 512
    assert_mc_agrees(_deep(act, param, bias, width), _inputs(5, 5, seed=2), width=width, n_nngp=48, n_ntk=16,
                     n_hidden=4, override=False)


def test_cross_kernel_mc_and_api():
    build = _one_hidden(L.Relu())
    x, y = _inputs(3), _inputs(2, seed=9)
    mc, mc1 = assert_mc_agrees(build, x, width=512, n_nngp=16, n_ntk=4, n_hidden=1, x2=y)
    assert mc.nngp.shape == (3, 2) and mc1.ntk_se.shape == (3, 2) and mc.n_samples == 16
    arch = build(1)
    only = monte_carlo_kernel(arch, x, n_samples=1, width=16, get="ntk")
    assert only.nngp is None and only.ntk_se is None and only.ntk.shape == (3, 3)
    with pytest.raises(ValueError, match="get"):
        monte_carlo_kernel(arch, x, get=("nngp", "cov"))
    with pytest.raises(ValueError, match="n_samples"):
        monte_carlo_kernel(arch, x, n_samples=0)
    with pytest.raises(ValueError, match="x2 has per-example shape"):
        monte_carlo_kernel(arch, x, torch.randn(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        monte_carlo_kernel(arch, torch.full((2, 4), float("nan")))
    with pytest.raises(TypeError, match="arch"):
        monte_carlo_kernel(object(), x)
