"""Conv: exact checks against the finite module, layouts, requirement propagation, tiling, errors.

Independent truth used here: for a network with a *single* parameterised layer (one Conv,
possibly followed by parameter-free linear maps such as pooling), the empirical NTK does not
depend on the weights, so it equals the infinite-width NTK exactly; and it equals the NNGP
of that layer (plus nothing from the inputs). The empirical kernels are computed from scratch
with ``torch.func`` (``empirical_kernels`` below), not with ntkit.
"""

import math

import pytest
import torch
from torch.func import functional_call, jacrev

from ntkit import layers as L
from ntkit.layers import base as layers_base
from ntkit.layers.kernel import input_kernel

# ---- shared test helpers (imported by the other conv/pooling/attention test modules) ----------


def empirical_kernels(net, x1, x2, ntk=True):
    """Channel-averaged empirical (nngp, ntk) of one finite network, all position pairs.

    Outputs ``(n, C, *S)`` give ``(n1, n2, *S, *S)``; flat ``(n, C)`` give ``(n1, n2)``.
    """
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, x):
        return functional_call(net, p, (x,))

    same = x2 is x1  # one forward pass: dropout masks shared by equal examples, as in a real batch
    y1 = f(params, x1)
    y2 = y1 if same else f(params, x2)
    n1, n2, c = x1.shape[0], x2.shape[0], y1.shape[1]
    spatial = tuple(y1.shape[2:])
    p = math.prod(spatial)

    def avg(a, b):
        return torch.einsum("icpk,jcqk->ijpq", a, b) / c

    out = [avg(y1.reshape(n1, c, p, 1), y2.reshape(n2, c, p, 1)).reshape((n1, n2) + spatial + spatial)]
    if ntk:
        j1 = jacrev(f)(params, x1)
        j2 = j1 if same else jacrev(f)(params, x2)
        tot = sum(avg(j1[k].reshape(n1, c, p, -1), j2[k].reshape(n2, c, p, -1)) for k in params)
        out.append(tot.reshape((n1, n2) + spatial + spatial))
    return out


def monte_carlo(arch, x1, x2, n_samples, width, ntk=True, seed0=0):
    """[(mean, standard error)] of the empirical nngp (and ntk) over independent initialisations."""
    samples = [[], []]
    for s in range(n_samples):
        net = arch.init(tuple(x1.shape[1:]), width=width, seed=seed0 + s, dtype=torch.float64)
        for i, kk in enumerate(empirical_kernels(net, x1, x2, ntk=ntk)):
            samples[i].append(kk)
    res = []
    for s in samples[: 2 if ntk else 1]:
        st = torch.stack(s)
        res.append((st.mean(0), st.std(0) / math.sqrt(len(s))))
    return res


def assert_mc_close(exact, mean, se, k_se=5.0, rel_bias=0.0, what=""):
    """Entrywise ``|exact - mean| <= k_se * se + rel_bias * mean|exact|``.

    ``k_se`` standard errors (5: the max over tens of entries of |z| stays below it with
    overwhelming probability for the sample sizes used) cover Monte Carlo noise; ``rel_bias``
    is the O(1/width) finite-width allowance, stated by each caller.
    """
    scale = exact.abs().mean()
    tol = k_se * se + rel_bias * scale + 1e-12
    err = (exact - mean).abs()
    worst = (err / tol).max().item()
    assert worst <= 1.0, (f"{what}: max |exact - mc| / tol = {worst:.2f} (max err {err.max().item():.3g}, "
                          f"max se {se.max().item():.3g}, scale {scale.item():.3g})")


def diag_of_full(t, n_spatial):
    """Equal-position entries ``(n1, n2, *S)`` of a full ``(n1, n2, *S, *S)`` covariance."""
    s = tuple(t.shape[2 : 2 + n_spatial])
    p = math.prod(s)
    return torch.diagonal(t.reshape(t.shape[0], t.shape[1], p, p), dim1=2, dim2=3).reshape(t.shape[:2] + s)


@pytest.fixture
def one_thread():
    """Tiny ops run fastest (and fairly on a shared machine) single-threaded."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- exact: one Conv layer ---------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_single_conv_2d_equals_exact_empirical_kernel(padding, strides, param):
    arch = L.Conv(3, (3, 2), strides=strides, padding=padding, W_std=1.3, b_std=0.4, parameterization=param)
    x1, x2 = torch.randn(2, 2, 7, 6, dtype=torch.float64), torch.randn(3, 2, 7, 6, dtype=torch.float64)
    net = arch.init((2, 7, 6), seed=1, dtype=torch.float64)
    _, th = empirical_kernels(net, x1, x2)
    full = arch.apply_kernel(input_kernel(x1, x2, diagonal_spatial=False))
    diag = arch.apply_kernel(input_kernel(x1, x2, diagonal_spatial=True))
    assert full.ntk.shape == th.shape  # finite module and kernel agree on output size
    torch.testing.assert_close(full.ntk, th)
    torch.testing.assert_close(diag.ntk, diag_of_full(th, 2))
    if param == "ntk":  # one layer: NNGP = NTK (inputs carry no NTK)
        torch.testing.assert_close(full.nngp, full.ntk)



@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("strides", [1, 3])
def test_single_conv_1d_and_var(padding, strides):
    arch = L.Conv(2, 4, strides=strides, padding=padding, W_std=0.7, b_std=0.3)
    x = torch.randn(3, 2, 9, dtype=torch.float64)
    net = arch.init((2, 9), seed=2, dtype=torch.float64)
    nngp_e, th = empirical_kernels(net, x, x)
    k = arch.apply_kernel(input_kernel(x, None))
    torch.testing.assert_close(k.ntk, th)
    torch.testing.assert_close(k.var1, torch.stack([th[i, i] for i in range(3)]))
    assert net(x).shape[-1] == (math.ceil(9 / strides) if padding != "VALID" else (9 - 4) // strides + 1)


def test_same_padding_puts_extra_on_the_right():
    # L=4, f=2, s=1: SAME pads 1 element in total, on the right (TF/JAX convention)
    x = torch.zeros(1, 1, 4, dtype=torch.float64)
    x[0, 0, 3] = 1.0
    net = L.Conv(1, 2, padding="SAME").init((1, 4), seed=0, dtype=torch.float64)
    w = net.weight.detach()[0, 0] / math.sqrt(2)
    y = net(x)[0, 0]
    torch.testing.assert_close(y, torch.tensor([0.0, 0.0, w[1].item(), w[0].item()], dtype=torch.float64))


def test_deep_linear_conv_mc_and_flatten_path_equals_full_path(one_thread):
    """Two stacked convolutions (weights now random) against Monte Carlo; diag path == full path."""
    arch = L.serial(L.Conv(4, (2, 2), padding="SAME", W_std=1.1, b_std=0.2), L.Conv(3, (3, 3), strides=2,
                                                                                   padding="CIRCULAR"))
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    full = arch.apply_kernel(input_kernel(x, None, diagonal_spatial=False))
    diag = arch.apply_kernel(input_kernel(x, None, diagonal_spatial=True))
    torch.testing.assert_close(diag.nngp, diag_of_full(full.nngp, 2))
    torch.testing.assert_close(diag.ntk, diag_of_full(full.ntk, 2))
    (m, se), (mt, st) = monte_carlo(arch, x, x, n_samples=40, width=48)
    # linear network: the NNGP is exact in expectation at any width (no allowance); the NTK's
    # second-layer backprop term too (E[W W^T] = I), so only sampling noise remains
    assert_mc_close(full.nngp, m, se, what="linear conv nngp")
    assert_mc_close(full.ntk, mt, st, what="linear conv ntk")


def test_relu_cnn_flatten_path_equals_full_path_then_diagonal():
    """Computed both ways: Layer.kernel (diagonal layout) vs layers applied to the full input kernel."""
    body = [L.Conv(8, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), L.Relu(), L.Conv(8, (2, 2), strides=2,
                                                                                        padding="VALID"), L.Erf()]
    arch = L.serial(*body, L.Flatten(), L.Dense(1))
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    k = arch.kernel(x)
    full = L.serial(*body).apply_kernel(input_kernel(x, None, diagonal_spatial=False))
    want = L.serial(L.Flatten(), L.Dense(1)).apply_kernel(full)  # Flatten takes the full layout's diagonal
    torch.testing.assert_close(k.nngp, want.nngp)
    torch.testing.assert_close(k.ntk, want.ntk)
    # ... and equals taking the diagonal by hand and averaging it
    torch.testing.assert_close(k.nngp, diag_of_full(full.nngp, 2).mean((2, 3)))


def test_flatten_architecture_builds_only_diagonal_kernels(monkeypatch):
    arch = L.serial(L.Conv(16, (3, 3), padding="SAME"), L.Relu(), L.Conv(16, (3, 3), padding="SAME"), L.Relu(),
                    L.Flatten(), L.Dense(1))
    assert arch.needs_full_spatial(False) is False
    seen = []

    def spy(*a, **kw):
        out = input_kernel(*a, **kw)
        seen.append((kw.get("diagonal_spatial"), tuple(out.nngp.shape)))
        return out

    monkeypatch.setattr(layers_base, "input_kernel", spy)
    x = torch.randn(4, 3, 16, 16)
    # a leading Identity makes the raw input kernel explicit (a leading Conv builds its kernel from patches)
    L.serial(L.Identity(), arch).kernel(x)
    assert seen and all(d is True and s == (4, 4, 16, 16) for d, s in seen)
    first = []
    conv_inputs = L.Conv._apply_inputs

    def spy_conv(self, *a, **kw):
        out, owned = conv_inputs(self, *a, **kw)
        first.append((out.diagonal_spatial, tuple(out.nngp.shape)))
        return out, owned

    monkeypatch.setattr(L.Conv, "_apply_inputs", spy_conv)
    arch.kernel(x)
    assert first == [(True, (4, 4, 16, 16))]
    # the planner's per-pair estimate is O(|S|), not O(|S|^2)
    per_pair, _ = arch._bytes_per_pair((3, 16, 16), False, 4)
    assert per_pair < 64 * 256 * 4
    gap = L.serial(L.Conv(16, (3, 3), padding="SAME"), L.Relu(), L.GlobalAvgPool(), L.Dense(1))
    assert gap.needs_full_spatial(False) is True
    assert gap._bytes_per_pair((3, 16, 16), True, 4)[0] >= 256 * 256 * 4


def test_memory_budget_tiles_give_identical_results():
    arch = L.serial(L.Conv(8, (3, 3), padding="SAME", b_std=0.1), L.Relu(), L.AvgPool((2, 2)),
                    L.Conv(8, (3, 3), padding="CIRCULAR"), L.Relu(), L.GlobalAvgPool(), L.Dense(1))
    x1 = torch.randn(7, 2, 6, 6, dtype=torch.float64)
    x2 = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    one = arch.kernel(x1)
    per_pair, _ = arch._bytes_per_pair((2, 6, 6), True, 8)
    small = arch.kernel(x1, memory_budget=int(per_pair * 6))
    torch.testing.assert_close(small.nngp, one.nngp)
    torch.testing.assert_close(small.ntk, one.ntk)
    torch.testing.assert_close(small.var1, one.var1)
    cross = arch.kernel(x1, x2)
    cross_small = arch.kernel(x1, x2, batch_size=2)
    torch.testing.assert_close(cross_small.ntk, cross.ntk)


# ---- errors ------------------------------------------------------------------------------------


def test_conv_wrong_input_rank():
    with pytest.raises(ValueError, match=r"Conv with a 2-D filter .* needs inputs \(n, C, H, W\)"):
        L.Conv(4, (3, 3)).kernel(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="needs inputs"):
        L.Conv(4, (3, 3)).init((3, 8))


def test_conv_filter_larger_than_valid_input():
    with pytest.raises(ValueError, match="larger than the input's spatial size 4 with padding='VALID'"):
        L.Conv(4, (5, 3)).kernel(torch.randn(2, 3, 4, 8))
    L.Conv(4, (5, 3), padding="SAME").kernel(torch.randn(2, 3, 4, 8))  # fine with SAME


@pytest.mark.parametrize("kwargs, match", [
    ({"padding": "FULL"}, "padding must be one of"),
    ({"strides": 0}, "strides must be a positive int"),
    ({"strides": (1, 2, 3)}, "strides must be a positive int or a tuple of 2"),
    ({"W_std": -1.0}, "W_std must be a finite number >= 0"),
    ({"parameterization": "mup"}, "parameterization must be one of"),
])
def test_conv_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.Conv(4, (3, 3), **kwargs)


def test_conv_on_flat_kernel_and_list():
    k = input_kernel(torch.randn(2, 5), None)
    with pytest.raises(ValueError, match="flat/flattened kernel"):
        L.Conv(2, 3).apply_kernel(k)
    with pytest.raises(ValueError, match="single input"):
        L.Conv(2, 3).apply_kernel([k, k])


@pytest.mark.parametrize("tail", [[], [L.AvgPool((2, 2), strides=1)]])
def test_tiled_spatial_outputs_mirror_correctly(tail):
    """Symmetric tiling of kernels that stay spatial (diagonal or full layout) assembles exactly."""
    arch = L.serial(L.Conv(4, (2, 3), padding="SAME", b_std=0.1), L.Relu(), L.Conv(4, (3, 2)), *tail)
    x = torch.randn(5, 2, 4, 5, dtype=torch.float64)
    one = arch.kernel(x, memory_budget=None)
    tiles = arch.kernel(x, batch_size=2)
    assert one.nngp.ndim == (4 if not tail else 6)
    torch.testing.assert_close(tiles.nngp, one.nngp)
    torch.testing.assert_close(tiles.ntk, one.ntk)
