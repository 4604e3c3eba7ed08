"""ntkit.sklearn: estimators against direct computations, the GP kernel's gradients, error messages.

Independent truths: the layer library's kernels (``ntkit.layers``, a separate
implementation of the Dense/ReLU maps), frozen layers by composing a bottom
architecture's NNGP into a top architecture, Monte Carlo empirical NTKs of
finite networks, explicit ``torch.linalg.solve``/``eigh`` formulas, SVC on a
precomputed matrix, ``cross_val_score``, central finite differences.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from sklearn.datasets import load_iris, make_regression  # noqa: E402
from sklearn.gaussian_process import GaussianProcessRegressor  # noqa: E402
from sklearn.gaussian_process.kernels import WhiteKernel  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from ntkit import layers as L  # noqa: E402
from ntkit.sklearn import (  # noqa: E402
    NTKClassifier,
    NTKKernel,
    NTKRegressor,
    fc_relu_kernel,
    fc_relu_kernel_grid,
)

W, B = 1.3, 0.2


def _fc_layers(depth: int, w: float = W, b: float = B) -> list:
    out = []
    for _ in range(depth):
        out += [L.Dense(64, W_std=w, b_std=b), L.Relu()]
    return out


def _fc_arch(depth: int, w: float = W, b: float = B):
    return L.serial(*_fc_layers(depth, w, b), L.Dense(1, W_std=w, b_std=b))


def _x(n: int, d: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


# ---- the FC ReLU kernel ------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_fc_relu_kernel_matches_layers(depth, kind):
    x1, x2 = _x(7), _x(5, seed=1)
    ref = _fc_arch(depth).kernel(x1, x2)
    ref_sym = _fc_arch(depth).kernel(x1)
    mine = fc_relu_kernel(x1, x2, depth=depth, W_std=W, b_std=B, kernel=kind)
    mine_sym = fc_relu_kernel(x1, depth=depth, W_std=W, b_std=B, kernel=kind)
    torch.testing.assert_close(mine, getattr(ref, kind), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mine_sym, getattr(ref_sym, kind), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 3])
def test_fc_relu_diagonal_closed_form(depth):
    """At x = x' ReLU halves the variance and E[relu' relu'] = 1/2, so the recursion is scalar."""
    x = _x(5)
    q = W**2 * (x * x).sum(1) / x.shape[1] + B**2
    theta = q.clone()
    for _ in range(depth):
        q = W**2 * q / 2 + B**2
        theta = W**2 * theta / 2 + q
    torch.testing.assert_close(torch.diagonal(fc_relu_kernel(x, depth=depth, W_std=W, b_std=B)), theta,
                               rtol=1e-14, atol=0)
    torch.testing.assert_close(fc_relu_kernel(x, depth=depth, W_std=W, b_std=B, kernel="nngp", diagonal=True), q,
                               rtol=1e-14, atol=0)


@pytest.mark.parametrize("depth", [1, 3])
def test_frozen_layers_equal_top_ntk_of_bottom_nngp(depth):
    x1, x2 = _x(6), _x(4, seed=2)
    layers = _fc_layers(depth)
    for f in range(1, depth + 1):
        bottom = L.serial(*layers[: 2 * f - 1])  # the first f affine layers (+ activations between)
        top = L.serial(*layers[2 * f - 1:], L.Dense(1, W_std=W, b_std=B))
        kb = bottom.kernel(x1, x2, get="nngp")
        kt = top.kernel(kb.replace(ntk=torch.zeros_like(kb.nngp)))
        mine = fc_relu_kernel(x1, x2, depth=depth, W_std=W, b_std=B, n_fixed_layers=f)
        torch.testing.assert_close(mine, kt.ntk, rtol=1e-12, atol=1e-12)
    # all hidden layers frozen: only the readout trains, so the NTK is the NNGP
    torch.testing.assert_close(fc_relu_kernel(x1, x2, depth=depth, n_fixed_layers=depth),
                               fc_relu_kernel(x1, x2, depth=depth, kernel="nngp"))


def test_frozen_layers_match_finite_networks_monte_carlo():
    """Mean empirical NTK over the trained (top) layers' parameters of wide random networks."""
    from ntkit import empirical_ntk

    depth, fixed, width, seeds = 2, 1, 128, 16
    x = _x(3, d=5, seed=3)
    arch = _fc_arch(depth)
    trained = ["layers.2.weight", "layers.2.bias", "layers.4.weight", "layers.4.bias"]
    samples = []
    for s in range(seeds):
        net = arch.init((5,), width=width, seed=s, dtype=torch.float64)
        samples.append(empirical_ntk(net, x, params=trained))
    samples = torch.stack(samples)
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(seeds)
    target = fc_relu_kernel(x, depth=depth, W_std=W, b_std=B, n_fixed_layers=fixed)
    # 5 standard errors of the mean, plus the O(1/width) finite-width bias of E[NTK]
    tol = 5 * se + target.abs() * (2.0 / width)
    assert bool(((mean - target).abs() <= tol).all()), (mean, target, tol)
    # the test discriminates: the all-layers NTK is far outside this band
    full = fc_relu_kernel(x, depth=depth, W_std=W, b_std=B, n_fixed_layers=0)
    assert bool(((mean - full).abs() > tol).any())


def test_grid_matches_layer_composition():
    x1, x2 = _x(5), _x(3, seed=4)
    seen = set()
    for depth, f, k in fc_relu_kernel_grid(x1, x2, max_depth=3, W_std=W, b_std=B):
        seen.add((depth, f))
        layers = _fc_layers(depth)
        if f == 0:
            ref = _fc_arch(depth).kernel(x1, x2).ntk
        else:
            kb = L.serial(*layers[: 2 * f - 1]).kernel(x1, x2, get="nngp")
            ref = L.serial(*layers[2 * f - 1:], L.Dense(1, W_std=W, b_std=B)).kernel(
                kb.replace(ntk=torch.zeros_like(kb.nngp))).ntk
        torch.testing.assert_close(k, ref, rtol=1e-12, atol=1e-12)
    assert seen == {(d, f) for d in (1, 2, 3) for f in range(d + 1)}


def test_diagonal_mode_and_float32():
    x = _x(6)
    for kind in ("ntk", "nngp"):
        full = fc_relu_kernel(x, depth=3, kernel=kind)
        torch.testing.assert_close(fc_relu_kernel(x, depth=3, kernel=kind, diagonal=True), torch.diagonal(full))
        k32 = fc_relu_kernel(x.float(), depth=3, kernel=kind, dtype=torch.float32)
        assert k32.dtype == torch.float32
        torch.testing.assert_close(k32.double(), full, rtol=1e-5, atol=1e-5)


# ---- estimators against direct computation -----------------------------------------------


def _ridge(k: torch.Tensor, diag_reg: float) -> torch.Tensor:
    return k + diag_reg * torch.diagonal(k).mean() * torch.eye(k.shape[0], dtype=k.dtype)


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_regressor_equals_kernel_regression_formula(kind):
    X, y = make_regression(40, 4, noise=0.1, random_state=0)
    Xtr, ytr, Xte = X[:30], y[:30], X[30:]
    arch = _fc_arch(2)
    lam = 1e-3
    reg = NTKRegressor(arch=arch, kernel=kind, diag_reg=lam).fit(Xtr, ytr)
    a, b = torch.as_tensor(Xtr), torch.as_tensor(Xte)
    k = getattr(arch.kernel(a), kind)
    kts = getattr(arch.kernel(b, a), kind)
    expected = kts @ torch.linalg.solve(_ridge(k, lam), torch.as_tensor(ytr))
    np.testing.assert_allclose(reg.predict(Xte), expected.numpy(), rtol=1e-8, atol=1e-8)
    # the built-in network with the same hyperparameters gives the same predictions
    reg2 = NTKRegressor(depth=2, W_std=W, b_std=B, kernel=kind, diag_reg=lam).fit(Xtr, ytr)
    np.testing.assert_allclose(reg2.predict(Xte), reg.predict(Xte), rtol=1e-9, atol=1e-9)


def test_regressor_finite_time_formula_and_limit():
    X, y = make_regression(25, 3, noise=0.1, random_state=1)
    Y = np.stack([y, -0.5 * y + 1.0], axis=1)  # two targets
    Xtr, Ytr, Xte = X[:20], Y[:20], X[20:]
    eta, t, n = 0.7, 5.0, 20
    reg = NTKRegressor(depth=2, t=t, learning_rate=eta, diag_reg=0.0).fit(Xtr, Ytr)
    a, b = torch.as_tensor(Xtr), torch.as_tensor(Xte)
    k = fc_relu_kernel(a, depth=2)
    kts = fc_relu_kernel(b, a, depth=2)
    lam, v = torch.linalg.eigh(k)
    # gradient flow on 1/(2n)||f - y||^2 from f = 0: f_t(x) = k(x, X) V diag((1 - e^{-eta t lam / n}) / lam) V^T y
    coef = v @ torch.diag(-torch.expm1(-eta * t * lam / n) / lam) @ v.T @ torch.as_tensor(Ytr)
    np.testing.assert_allclose(reg.predict(Xte), (kts @ coef).numpy(), rtol=1e-7, atol=1e-8)
    # a long time approaches the converged (t=None) predictor
    long = NTKRegressor(depth=2, t=1e9, diag_reg=1e-4).fit(Xtr, Ytr).predict(Xte)
    conv = NTKRegressor(depth=2, t=None, diag_reg=1e-4).fit(Xtr, Ytr).predict(Xte)
    np.testing.assert_allclose(long, conv, rtol=1e-6, atol=1e-6)


def test_regressor_normalize_y():
    X, y = make_regression(30, 3, random_state=2)
    y = y + 100.0
    reg = NTKRegressor(normalize_y=True, diag_reg=1e-3).fit(X[:20], y[:20])
    a, b = torch.as_tensor(X[:20]), torch.as_tensor(X[20:])
    k, kts = fc_relu_kernel(a), fc_relu_kernel(b, a)
    yt = torch.as_tensor(y[:20])
    mu, sd = yt.mean(), yt.std(unbiased=False)
    expected = kts @ torch.linalg.solve(_ridge(k, 1e-3), (yt - mu) / sd) * sd + mu
    np.testing.assert_allclose(reg.predict(X[20:]), expected.numpy(), rtol=1e-8)


def test_classifier_kernel_regression_and_svm_equal_direct():
    X, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]  # string labels
    Xtr, ytr, Xte = X[::2], labels[::2], X[1::2]
    lam = 1e-2
    clf = NTKClassifier(depth=3, n_fixed_layers=1, diag_reg=lam).fit(Xtr, ytr)
    a, b = torch.as_tensor(Xtr), torch.as_tensor(Xte)
    layers = _fc_layers(3, math.sqrt(2.0), 0.1)
    top = L.serial(*layers[1:], L.Dense(1, W_std=math.sqrt(2.0), b_std=0.1))

    def k_of(u, v=None):
        kb = L.serial(layers[0]).kernel(u, v, get="nngp")
        return top.kernel(kb.replace(ntk=torch.zeros_like(kb.nngp))).ntk

    k, kts = k_of(a), k_of(b, a)
    codes = np.unique(ytr, return_inverse=True)[1]
    onehot = torch.as_tensor(np.eye(3)[codes] - 1.0 / 3)
    f = kts @ torch.linalg.solve(_ridge(k, lam), onehot)
    np.testing.assert_allclose(clf.decision_function(Xte), f.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(clf.predict(Xte), clf.classes_[f.argmax(1).numpy()])
    assert clf.score(Xte, labels[1::2]) > 0.9

    svm = NTKClassifier(depth=3, n_fixed_layers=1, solver="svm", C=3.0).fit(Xtr, ytr)
    ref = SVC(kernel="precomputed", C=3.0).fit(k.numpy(), codes)
    np.testing.assert_array_equal(svm.predict(Xte), clf.classes_[ref.predict(kts.numpy())])
    np.testing.assert_allclose(svm.decision_function(Xte), ref.decision_function(kts.numpy()), rtol=1e-5,
                               atol=1e-7)


def test_binary_decision_function_sign():
    X, y = load_iris(return_X_y=True)
    m = y < 2
    clf = NTKClassifier().fit(X[m], y[m])
    dec = clf.decision_function(X[m])
    assert dec.shape == (int(m.sum()),)
    np.testing.assert_array_equal(clf.predict(X[m]), clf.classes_[(dec > 0).astype(int)])


def test_gridsearch_over_depth_in_pipeline():
    X, y = load_iris(return_X_y=True)
    X, y = X[::2], y[::2]
    pipe = make_pipeline(StandardScaler(), NTKClassifier(diag_reg=1e-3))
    cv = KFold(3, shuffle=True, random_state=0)
    gs = GridSearchCV(pipe, {"ntkclassifier__depth": [1, 4]}, cv=cv).fit(X, y)
    assert gs.best_params_["ntkclassifier__depth"] in (1, 4)
    for depth, score in zip(gs.cv_results_["param_ntkclassifier__depth"], gs.cv_results_["mean_test_score"],
                            strict=True):
        direct = cross_val_score(make_pipeline(StandardScaler(), NTKClassifier(depth=depth, diag_reg=1e-3)),
                                 X, y, cv=cv).mean()
        assert score == pytest.approx(direct, abs=1e-12)
    assert gs.score(X, y) > 0.9


@parametrize_with_checks([NTKRegressor(), NTKClassifier()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks([NTKClassifier(solver="svm"), NTKRegressor(t=3.0, kernel="nngp")])
def test_sklearn_estimator_checks_variants(estimator, check):
    check(estimator)


# ---- the Gaussian-process kernel -----------------------------------------------------------


@pytest.mark.parametrize("kind,fixed", [("ntk", 0), ("ntk", 1), ("nngp", 0)])
def test_ntkkernel_gradient_matches_central_differences(kind, fixed):
    X = _x(6, d=3, seed=5).numpy()
    X[3] = X[1]  # a duplicated point: correlation exactly 1 off the diagonal too
    kern = NTKKernel(depth=2, W_std=1.2, b_std=0.3, kernel=kind, n_fixed_layers=fixed)
    K, G = kern(X, eval_gradient=True)
    assert G.shape == (6, 6, 2)
    np.testing.assert_allclose(K, fc_relu_kernel(X, depth=2, W_std=1.2, b_std=0.3, kernel=kind,
                                                 n_fixed_layers=fixed).numpy())
    h = 1e-5
    for i in range(2):
        tp, tm = kern.theta.copy(), kern.theta.copy()
        tp[i] += h
        tm[i] -= h
        fd = (kern.clone_with_theta(tp)(X) - kern.clone_with_theta(tm)(X)) / (2 * h)
        np.testing.assert_allclose(G[..., i], fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(kern.diag(X), np.diag(K), rtol=1e-12)
    assert not kern.is_stationary()


def test_ntkkernel_fixed_hyperparameter_and_theta():
    kern = NTKKernel(W_std=2.0, b_std=0.5, b_std_bounds="fixed")
    np.testing.assert_allclose(kern.theta, [math.log(2.0)])
    X = _x(4).numpy()
    K, G = kern(X, eval_gradient=True)
    assert G.shape == (4, 4, 1)
    Kx = kern(X, X[:2])
    assert Kx.shape == (4, 2)
    np.testing.assert_allclose(Kx, K[:, :2], rtol=1e-12)
    with pytest.raises(ValueError, match="Y is None"):
        kern(X, X, eval_gradient=True)


def test_gpr_fits_hyperparameters_and_improves_marginal_likelihood():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 2))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] ** 2 + 0.05 * rng.normal(size=20)
    kernel = NTKKernel(depth=2, W_std=0.3, b_std=2.0) + WhiteKernel(0.1, noise_level_bounds=(1e-4, 1.0))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(X, y)
    lml0 = gp.log_marginal_likelihood(gp.kernel.theta)
    assert gp.log_marginal_likelihood_value_ > lml0 + 1.0
    fitted = gp.kernel_.k1
    assert (fitted.W_std, fitted.b_std) != (0.3, 2.0)
    # the analytic LML gradient (built from our dK/dtheta) vanishes at an interior optimum or points out of the box
    _, grad = gp.log_marginal_likelihood(gp.kernel_.theta, eval_gradient=True)
    bounds = gp.kernel_.bounds
    interior = (gp.kernel_.theta > bounds[:, 0] + 1e-3) & (gp.kernel_.theta < bounds[:, 1] - 1e-3)
    assert np.all(np.abs(grad[interior]) < 1e-2 * max(1.0, abs(gp.log_marginal_likelihood_value_)))
    mean, std = gp.predict(X[:5], return_std=True)
    assert np.all(np.isfinite(mean)) and np.all(std >= 0)


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("params,match", [
    ({"W_std": -1.0}, "W_std"),
    ({"W_std": 0.0}, "W_std"),
    ({"b_std": -0.1}, "b_std"),
    ({"depth": 0}, "depth"),
    ({"depth": 2.5}, "depth"),
    ({"kernel": "rbf"}, "kernel"),
    ({"n_fixed_layers": 3}, "n_fixed_layers"),
    ({"diag_reg": -1.0}, "diag_reg"),
    ({"t": -1.0}, "t"),
    ({"dtype": "float16"}, "dtype"),
])
def test_bad_hyperparameters_raise(params, match):
    X, y = load_iris(return_X_y=True)
    for est in (NTKRegressor(**params), NTKClassifier(**params)):
        with pytest.raises(ValueError, match=match):
            est.fit(X, y)
    with pytest.raises(ValueError, match="solver"):
        NTKClassifier(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="C"):
        NTKClassifier(solver="svm", C=0.0).fit(X, y)
    with pytest.raises(ValueError, match="n_fixed_layers"):
        NTKRegressor(arch=_fc_arch(1), n_fixed_layers=1).fit(X, y)
    with pytest.raises(TypeError, match="arch"):
        NTKRegressor(arch="fc").fit(X, y)


def test_bad_kernel_hyperparameters_raise():
    X = _x(3).numpy()
    with pytest.raises(ValueError, match="W_std"):
        NTKKernel(W_std=-1.0)(X)
    with pytest.raises(ValueError, match="depth"):
        NTKKernel(depth=0)(X)
    with pytest.raises(ValueError, match="kernel"):
        NTKKernel(kernel="foo")(X)
    with pytest.raises(ValueError, match="b_std"):
        NTKKernel(b_std=0.0)(X)
    NTKKernel(b_std=0.0, b_std_bounds="fixed")(X)  # fine when not optimised
    with pytest.raises(ValueError, match="depth"):
        fc_relu_kernel(X, depth=0)


def test_nan_inputs_raise_naming_x():
    X, y = load_iris(return_X_y=True)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    for est in (NTKRegressor(), NTKClassifier(), NTKClassifier(solver="svm")):
        with pytest.raises(ValueError, match="Input X contains NaN"):
            est.fit(Xn, y)
        est.fit(X, y)
        with pytest.raises(ValueError, match="Input X contains NaN"):
            est.predict(Xn)
    with pytest.raises(ValueError, match="X contains 1 non-finite"):
        NTKKernel()(Xn)


def test_import_ntkit_does_not_import_sklearn():
    code = "import sys, ntkit, ntkit.layers; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_in_blocks_equals_one_block(monkeypatch):
    import ntkit.sklearn as sk

    X, y = load_iris(return_X_y=True)
    kr = NTKClassifier().fit(X[::2], y[::2])
    svm = NTKClassifier(solver="svm").fit(X[::2], y[::2])
    whole = kr.decision_function(X), svm.decision_function(X)
    monkeypatch.setattr(sk, "_PREDICT_BLOCK", 7)
    # test rows equal to training rows have correlation 1 up to rounding, where the arc-cosine's
    # sqrt singularity turns eps-level differences in the inner products (BLAS blocking) into ~sqrt(eps)
    np.testing.assert_allclose(kr.decision_function(X), whole[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(svm.decision_function(X), whole[1], rtol=1e-6, atol=1e-8)
    new = X[1::2]  # no coincident points: agreement to rounding
    np.testing.assert_allclose(kr.decision_function(new), whole[0][1::2], rtol=1e-11, atol=1e-13)
