"""Lazy training: how much the NTK and the weights move during training, and how that scales with width.

Measured quantities (``Θ_t`` the empirical NTK, trace over outputs, on the
training inputs; ``θ_t`` the parameters after ``t`` full-batch GD steps on
``L = 1/(2n) Σ ||f − y||²``):

* relative kernel change ``||Θ_t − Θ_0||_F / ||Θ_0||_F``;
* per-layer relative weight change ``||θ_t^l − θ_0^l|| / ||θ_0^l||`` where a
  "layer" is a module owning parameters (weight and bias together).

In the NTK parameterisation both shrink like ``width^(-1/2)`` for a fixed
training time (Jacot et al. 2018; Lee et al. 2019 find kernel change between
``1/sqrt(width)`` and ``1/width``), which :func:`lazy_scaling` measures with a
log-log fit over widths and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._common import (
    check_model,
    check_steps,
    detached,
    gd_train,
    layer_groups,
    ntk_matrix,
    prepare_xy,
    record_points,
    resolve_lr,
    sq_dist,
    sq_norm,
    trainable,
)
from ._fit import PowerLawFit, fit_power_law

__all__ = [
    "kernel_change",
    "weight_change",
    "lazy_training",
    "lazy_scaling",
    "LazyTrainingTrace",
    "LazyScaling",
]


def _rel_fro(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(torch.linalg.norm(b.double()))
    if den == 0:
        raise ValueError("the reference kernel is identically zero; its relative change is undefined")
    return float(torch.linalg.norm((a - b).double())) / den


def kernel_change(model_0: nn.Module, model_t: nn.Module, x: Any, *, method: str = "auto") -> float:
    """Relative Frobenius change ``||Θ_t − Θ_0||_F / ||Θ_0||_F`` of the empirical NTK on ``x``.

    Parameters
    ----------
    model_0, model_t : nn.Module
        The same architecture at initialisation and after training.
    x : tensor (n, ...)
        Inputs on which both kernels are evaluated.
    method : str
        Passed to :func:`ntkit.empirical_ntk`.

    Examples
    --------
    >>> import torch, copy
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> kernel_change(net, copy.deepcopy(net), torch.randn(4, 3))
    0.0
    """
    check_model(model_0, "model_0")
    check_model(model_t, "model_t")
    x0, _, _ = prepare_xy(model_0, x, None)
    return _rel_fro(ntk_matrix(model_t, x0, method=method), ntk_matrix(model_0, x0, method=method))


def weight_change(model_0: nn.Module, model_t: nn.Module, *, by: str = "layer", relative: bool = True
                  ) -> dict[str, float]:
    """Per-layer (or per-tensor) weight change ``||θ_t − θ_0|| / ||θ_0||``.

    Parameters
    ----------
    model_0, model_t : nn.Module
        Same architecture (same parameter names and shapes).
    by : {"layer", "tensor"}
        Group parameters by owning module (weight and bias together) or not.
    relative : bool
        Divide by ``||θ_0||``; a group whose initial norm is zero raises
        ``ValueError`` (use ``relative=False``).

    Examples
    --------
    >>> import torch, copy
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Linear(8, 1))
    >>> sorted(weight_change(net, copy.deepcopy(net)).items())
    [('0', 0.0), ('1', 0.0)]
    """
    if by not in ("layer", "tensor"):
        raise ValueError(f"by must be 'layer' or 'tensor', got {by!r}")
    p0, pt = trainable(check_model(model_0, "model_0")), trainable(check_model(model_t, "model_t"))
    if list(p0) != list(pt) or any(p0[n].shape != pt[n].shape for n in p0):
        raise ValueError("model_0 and model_t must have the same trainable parameter names and shapes")
    groups = layer_groups(p0) if by == "layer" else {n: [n] for n in p0}
    return _group_changes(p0, pt, groups, relative)


def _group_changes(p0: dict[str, torch.Tensor], pt: dict[str, torch.Tensor], groups: dict[str, list[str]],
                   relative: bool) -> dict[str, float]:
    out = {}
    for g, names in groups.items():
        d = math.sqrt(sq_dist(pt, p0, names))
        if relative:
            n0 = math.sqrt(sq_norm(p0, names))
            if n0 == 0:
                raise ValueError(f"layer {g!r} has zero initial norm; its relative change is undefined "
                                 "(use relative=False)")
            d /= n0
        out[g] = d
    return out


@dataclass
class LazyTrainingTrace:
    """What :func:`lazy_training` records at each recorded step.

    Attributes
    ----------
    steps : list of int
    loss : list of float
        ``1/(2n) Σ ||f − y||²`` on the training set.
    kernel_change : list of float
        ``||Θ_t − Θ_0||_F / ||Θ_0||_F`` at the steps in ``kernel_steps``.
    kernel_steps : list of int
        Steps at which the kernel was recomputed (a subset of ``steps``).
    weight_change : dict layer -> list of float
        Relative per-layer change ``||θ_t^l − θ_0^l|| / ||θ_0^l||`` (layers with
        zero initial norm are omitted here; see ``weight_distance``).
    weight_distance : dict layer -> list of float
        Absolute per-layer distance ``||θ_t^l − θ_0^l||``.
    total_weight_change : list of float
        ``||θ_t − θ_0|| / ||θ_0||`` over all trainable parameters.
    lr : float
        Step size used.
    test_mse, test_error : list of float
        On ``(x_test, y_test)`` if given (else empty): mean ``||f − y||²`` and
        the classification error (sign for one output, argmax for several).
    """

    steps: list[int]
    loss: list[float]
    kernel_change: list[float]
    kernel_steps: list[int]
    weight_change: dict[str, list[float]]
    weight_distance: dict[str, list[float]]
    total_weight_change: list[float]
    lr: float
    test_mse: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {
            "steps": list(self.steps), "loss": list(self.loss), "kernel_change": list(self.kernel_change),
            "kernel_steps": list(self.kernel_steps),
            "weight_change": {k: list(v) for k, v in self.weight_change.items()},
            "weight_distance": {k: list(v) for k, v in self.weight_distance.items()},
            "total_weight_change": list(self.total_weight_change), "lr": self.lr,
            "test_mse": list(self.test_mse), "test_error": list(self.test_error),
        }


def _class_error(out: torch.Tensor, y: torch.Tensor) -> float:
    if out.shape[1] == 1:
        return float((torch.sign(out) != torch.sign(y)).double().mean())
    return float((out.argmax(1) != y.argmax(1)).double().mean())


def lazy_training(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    lr: float | str = "auto",
    steps: int = 100,
    record_every: int | None = None,
    kernel_every: int | None = None,
    x_test: Any | None = None,
    y_test: Any | None = None,
    method: str = "auto",
    loss_scale: float = 1.0,
) -> LazyTrainingTrace:
    """Train a copy of ``model`` by full-batch GD on MSE and record kernel and weight changes.

    Parameters
    ----------
    model : nn.Module
        Not modified (a deep copy is trained).
    x, y : tensors
        Training inputs ``(n, ...)`` and targets ``(n,)`` or ``(n, k)``.
    lr : float or "auto"
        GD step on ``L = 1/(2n) Σ ||f − y||²``; ``"auto"`` = ``n / λ_max(Θ₀)``.
    steps : int
        Number of GD steps.
    record_every : int, optional
        Record loss and weights every this many steps (default: about 20 records).
    kernel_every : int, optional
        Recompute the NTK at every ``kernel_every``-th recorded step (default:
        only at the first and last, since each kernel costs ``O(n² P)``);
        ``kernel_change`` is aligned with ``kernel_steps``.
    x_test, y_test : tensors, optional
        Held-out set for test MSE / classification error.
    method : str
        Empirical NTK method (see :func:`ntkit.empirical_ntk`).
    loss_scale : float
        Multiply the loss by this (used by the α-scaling experiment).

    Returns
    -------
    LazyTrainingTrace

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    >>> tr = lazy_training(net, torch.randn(8, 3), torch.randn(8), steps=5)
    >>> len(tr.kernel_change), tr.kernel_change[0]
    (2, 0.0)
    """
    check_model(model)
    xt, yt, k = prepare_xy(model, x, y)
    steps = check_steps(steps)
    pts = record_points(steps, record_every)
    if kernel_every is None:
        kpts = {pts[0], pts[-1]}
    else:
        if int(kernel_every) != kernel_every or kernel_every < 1:
            raise ValueError(f"kernel_every must be a positive integer, got {kernel_every!r}")
        kpts = set(pts[:: int(kernel_every)]) | {pts[-1]}
    xte = yte = None
    if (x_test is None) != (y_test is None):
        raise ValueError("pass both x_test and y_test, or neither")
    if x_test is not None:
        xte, yte, _ = prepare_xy(model, x_test, y_test, "x_test", "y_test")
    k0 = ntk_matrix(model, xt, method=method)
    lr_f = resolve_lr(lr, model, xt, k, method, kernel=k0 if k == 1 else None)
    p0 = detached(trainable(model))
    groups = layer_groups(p0)
    zero = {g for g, names in groups.items() if sq_norm(p0, names) == 0}
    total0 = math.sqrt(sq_norm(p0))
    if total0 == 0:
        raise ValueError("model's trainable parameters are all zero at initialisation; relative change undefined")
    tr = LazyTrainingTrace(steps=[], loss=[], kernel_change=[], kernel_steps=[], weight_change={g: [] for g in groups if g not in zero},
                           weight_distance={g: [] for g in groups}, total_weight_change=[], lr=lr_f)

    def cb(step: int, net: nn.Module, loss: float) -> None:
        pt = trainable(net)
        tr.steps.append(step)
        tr.loss.append(loss)
        dist = _group_changes(p0, pt, groups, relative=False)
        for g, d in dist.items():
            tr.weight_distance[g].append(d)
            if g not in zero:
                tr.weight_change[g].append(d / math.sqrt(sq_norm(p0, groups[g])))
        tr.total_weight_change.append(math.sqrt(sq_dist(pt, p0)) / total0)
        if step in kpts:
            kt = k0 if step == 0 else ntk_matrix(net, xt, method=method)
            tr.kernel_change.append(_rel_fro(kt, k0))
            tr.kernel_steps.append(step)
        if xte is not None:
            out = net(xte).reshape(xte.shape[0], -1)
            tr.test_mse.append(float((out - yte).double().pow(2).sum(1).mean()))
            tr.test_error.append(_class_error(out, yte))

    gd_train(model, xt, yt, lr_f, steps, pts, cb, loss_scale=loss_scale)
    return tr


@dataclass
class LazyScaling:
    """Final kernel and weight changes over widths and seeds (:func:`lazy_scaling`).

    Attributes
    ----------
    widths, seeds : list of int
    kernel_change : np.ndarray (n_widths, n_seeds)
        ``||Θ_T − Θ_0||_F / ||Θ_0||_F`` after ``steps`` steps.
    weight_change : dict layer -> np.ndarray (n_widths, n_seeds)
        Relative per-layer weight change after ``steps`` steps.
    loss : np.ndarray (n_widths, n_seeds)
        Final training loss.
    test_mse, test_error : np.ndarray (n_widths, n_seeds) or None
    kernel_fit : PowerLawFit
        Log-log fit of kernel change against width (all seeds as points).
    weight_fits : dict layer -> PowerLawFit
    steps : int
    lrs : np.ndarray (n_widths, n_seeds)
    """

    widths: list[int]
    seeds: list[int]
    kernel_change: np.ndarray
    weight_change: dict[str, np.ndarray]
    loss: np.ndarray
    kernel_fit: PowerLawFit
    weight_fits: dict[str, PowerLawFit]
    steps: int
    lrs: np.ndarray
    test_mse: np.ndarray | None = None
    test_error: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return {
            "widths": list(self.widths), "seeds": list(self.seeds), "steps": self.steps,
            "kernel_change": self.kernel_change.tolist(),
            "weight_change": {k: v.tolist() for k, v in self.weight_change.items()},
            "loss": self.loss.tolist(), "lrs": self.lrs.tolist(),
            "kernel_fit": self.kernel_fit.to_dict(),
            "weight_fits": {k: v.to_dict() for k, v in self.weight_fits.items()},
            "test_mse": None if self.test_mse is None else self.test_mse.tolist(),
            "test_error": None if self.test_error is None else self.test_error.tolist(),
        }


def check_widths(widths: Sequence[int], name: str = "widths") -> list[int]:
    ws = list(widths)
    if len(ws) < 2:
        raise ValueError(f"{name} needs at least two widths to fit a slope, got {ws!r}")
    for w in ws:
        if isinstance(w, bool) or int(w) != w or w < 1:
            raise ValueError(f"{name} must hold positive integers, got {w!r}")
    if len(set(ws)) < 2:
        raise ValueError(f"{name} must hold at least two distinct widths, got {ws!r}")
    return [int(w) for w in ws]


def check_seeds(seeds: Sequence[int]) -> list[int]:
    ss = list(seeds)
    if not ss:
        raise ValueError("seeds must hold at least one seed")
    for s in ss:
        if isinstance(s, bool) or int(s) != s:
            raise ValueError(f"seeds must hold integers, got {s!r}")
    return [int(s) for s in ss]


def lazy_scaling(
    arch: Any,
    x: Any,
    y: Any,
    widths: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    *,
    steps: int = 100,
    lr: float | str = "auto",
    dtype: torch.dtype = torch.float32,
    x_test: Any | None = None,
    y_test: Any | None = None,
    method: str = "auto",
    progress: bool = False,
) -> LazyScaling:
    """Kernel change and per-layer weight change after training, against width.

    For each width and seed, ``arch.init(x.shape[1:], width=w, seed=s)`` is
    trained by :func:`lazy_training` for ``steps`` steps and the final changes
    are kept; slopes are fitted by :func:`fit_power_law` (all seeds as points).

    Parameters
    ----------
    arch : ntkit layer (e.g. ``L.serial(...)``)
        Anything with ``init(input_shape, width=, seed=, dtype=)``.
    x, y : tensors
        Training data.
    widths : sequence of int (>= 2 distinct)
    seeds : sequence of int
    steps : int
        Same number of steps at every width (fixed training time).
    lr : float or "auto"
        See :func:`lazy_training` (``"auto"`` adapts to each network's Θ₀).
    dtype : torch.dtype
    x_test, y_test : tensors, optional
    method : str
        Empirical NTK method.
    progress : bool
        Print one line per (width, seed).

    Returns
    -------
    LazyScaling

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Dense(64), L.Relu(), L.Dense(1))
    >>> res = lazy_scaling(arch, torch.randn(10, 3), torch.randn(10), widths=[32, 128], seeds=[0], steps=5)
    >>> res.kernel_change.shape
    (2, 1)
    """
    ws, ss = check_widths(widths), check_seeds(seeds)
    if not hasattr(arch, "init"):
        raise TypeError(f"arch must be an ntkit layer with .init(...), got {type(arch).__name__}")
    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    shape = tuple(xt.shape[1:])
    kc = np.zeros((len(ws), len(ss)))
    loss = np.zeros_like(kc)
    lrs = np.zeros_like(kc)
    tmse = np.zeros_like(kc) if x_test is not None else None
    terr = np.zeros_like(kc) if x_test is not None else None
    wc: dict[str, np.ndarray] = {}
    for i, w in enumerate(ws):
        for j, s in enumerate(ss):
            net = arch.init(shape, width=w, seed=s, dtype=dtype)
            tr = lazy_training(net, xt, y, lr=lr, steps=steps, record_every=max(steps, 1), x_test=x_test,
                               y_test=y_test, method=method)
            kc[i, j] = tr.kernel_change[-1]
            loss[i, j] = tr.loss[-1]
            lrs[i, j] = tr.lr
            for g, v in tr.weight_change.items():
                wc.setdefault(g, np.zeros_like(kc))[i, j] = v[-1]
            if tmse is not None:
                tmse[i, j] = tr.test_mse[-1]
                terr[i, j] = tr.test_error[-1]
            if progress:
                print(f"width {w:6d} seed {s}: kernel change {kc[i, j]:.4g}, loss {loss[i, j]:.4g}", flush=True)
    wx = np.repeat(np.asarray(ws, dtype=float), len(ss))
    kfit = fit_power_law(wx, kc.ravel()) if steps > 0 else None
    wfits = {g: fit_power_law(wx, v.ravel()) for g, v in wc.items()} if steps > 0 else {}
    return LazyScaling(widths=ws, seeds=ss, kernel_change=kc, weight_change=wc, loss=loss, kernel_fit=kfit,
                       weight_fits=wfits, steps=steps, lrs=lrs, test_mse=tmse, test_error=terr)
