"""A small full-batch trainer that records what NTK theory predicts.

``train(model, x, y, loss="mse", lr=..., steps=...)`` runs full-batch gradient
descent (or momentum/Adam) on ``model`` *in place* and returns a
:class:`TrainingRecord` of tensors at the recorded steps: training (and test)
outputs, loss, distance of the parameters from their initial values (total,
relative and per parameter tensor), and optionally empirical kernels.

Loss conventions match :mod:`ntkit.predict`:

* ``"mse"``: ``L = 1/(2n) sum_i ||f(x_i) - y_i||^2`` (half squared error summed
  over outputs, averaged over examples), so plain GD with step ``lr`` on a
  linearised network follows ``gradient_descent_mse(ntk, y, learning_rate=lr,
  discrete=True)`` step for step, and ``t`` = number of steps;
* ``"cross_entropy"``: ``1/n sum_i CE(f(x_i), y_i)`` with integer labels
  ``(n,)`` or target probabilities ``(n, k)`` (:func:`torch.nn.functional.cross_entropy`);
* a callable ``loss(f, y) -> scalar`` (the same callable works in
  :func:`ntkit.predict.gradient_descent`).

The outputs recorded at step ``k`` are those of the parameters after ``k``
updates (step 0 = initialisation); they come from the forward pass that the
next update uses anyway, so recording outputs is free.
"""

from __future__ import annotations

import math
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._validation import as_input_tensor, check_feature_shapes_match, check_positive

__all__ = ["train", "TrainingRecord"]

_RECORDABLE = ("loss", "outputs", "distance", "kernel")
LossArg = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainingRecord:
    """What :func:`train` measured, one row per recorded step.

    Attributes
    ----------
    steps : LongTensor ``(R,)``
        Number of updates done at each record (0 = initialisation; time ``t`` of
        :mod:`ntkit.predict`).
    loss : Tensor ``(R,)``
        Training loss at each record.
    train_outputs, test_outputs : Tensor ``(R, n, ...)``, ``(R, m, ...)`` or None
        Model outputs on ``x`` / ``x_test``.
    test_loss : Tensor ``(R,)`` or None
        Loss on ``(x_test, y_test)`` when ``y_test`` was given.
    distance, relative_distance : Tensor ``(R,)`` or None
        ``||theta_t - theta_0||`` over all trainable parameters, and divided by ``||theta_0||``.
    param_distance, param_relative_distance : dict of name -> Tensor ``(R,)``
        The same per parameter tensor.
    kernel_train, kernel_test_train : Tensor ``(R, n, n)``, ``(R, m, n)`` or None
        Empirical kernels (per output unit by default; see ``kernel_fn``).
    learning_rate : float
    loss_name : str
    diverged : bool
        Training stopped early because the loss became non-finite.
    """

    steps: torch.Tensor
    loss: torch.Tensor
    train_outputs: torch.Tensor | None = None
    test_outputs: torch.Tensor | None = None
    test_loss: torch.Tensor | None = None
    distance: torch.Tensor | None = None
    relative_distance: torch.Tensor | None = None
    param_distance: dict[str, torch.Tensor] = field(default_factory=dict)
    param_relative_distance: dict[str, torch.Tensor] = field(default_factory=dict)
    kernel_train: torch.Tensor | None = None
    kernel_test_train: torch.Tensor | None = None
    learning_rate: float = 0.0
    loss_name: str = "mse"
    diverged: bool = False

    @property
    def times(self) -> torch.Tensor:
        """``steps`` as float64 (the ``t`` argument of :mod:`ntkit.predict`)."""
        return self.steps.to(torch.float64)

    def __repr__(self) -> str:
        parts = []
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                parts.append(f"{k}=Tensor{tuple(v.shape)}")
            elif isinstance(v, dict):
                parts.append(f"{k}=<{len(v)} tensors>")
            elif v is not None:
                parts.append(f"{k}={v!r}")
        return "TrainingRecord(" + ", ".join(parts) + ")"


def _loss_fn(loss: LossArg) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]:
    if isinstance(loss, str):
        if loss == "mse":
            return (lambda f, y: 0.5 * (f - y).pow(2).sum() / f.shape[0]), "mse"
        if loss == "cross_entropy":
            return (lambda f, y: nn.functional.cross_entropy(f, y)), "cross_entropy"
        raise ValueError(f"loss must be 'mse', 'cross_entropy' or a callable (f, y) -> scalar, got {loss!r}")
    if callable(loss):
        return loss, getattr(loss, "__name__", "callable")
    raise TypeError(f"loss must be a string or a callable (f, y) -> scalar, got {type(loss).__name__}")


def _match_targets(y: Any, out: torch.Tensor, loss_name: str, name: str) -> torch.Tensor:
    """Targets shaped like the outputs (MSE) or as labels/probabilities (cross-entropy)."""
    if not isinstance(y, torch.Tensor):
        y = as_input_tensor(y, name, allow_integer=True)
    y = y.to(out.device)
    if y.shape[0] != out.shape[0]:
        raise ValueError(f"{name} has {y.shape[0]} rows but the model produced {out.shape[0]} outputs")
    if loss_name == "callable":
        return y.to(out.dtype) if y.is_floating_point() else y
    if loss_name == "cross_entropy":
        if not y.is_floating_point():
            return y.long()
        return y.to(out.dtype).reshape(out.shape)
    if not y.is_floating_point():
        y = y.to(out.dtype)
    if y.shape != out.shape:
        if y.numel() != out.numel():
            raise ValueError(f"{name} has shape {tuple(y.shape)} but the model's outputs are {tuple(out.shape)}")
        y = y.reshape(out.shape)
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return y.to(out.dtype)


def _make_optimizer(optimizer: Any, params: list[nn.Parameter], lr: float, momentum: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr)
        if optimizer == "momentum":
            return torch.optim.SGD(params, lr=lr, momentum=momentum)
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        raise ValueError(f"optimizer must be 'sgd', 'momentum', 'adam' or a callable params -> Optimizer, "
                         f"got {optimizer!r}")
    if callable(optimizer):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError("optimizer(params) must return a torch.optim.Optimizer")
        return opt
    raise TypeError(f"optimizer must be a string or a callable, got {type(optimizer).__name__}")


def _default_kernel(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
    from .empirical import empirical_ntk
    from .linearize import TaylorExpanded

    # the structured method inspects submodules, which a Taylor expansion does not call directly
    method = "jacobian" if isinstance(model, TaylorExpanded) else "auto"
    k = empirical_ntk(model, x1, x2, output="trace", method=method)
    with torch.no_grad():
        out = model(x1[:1])
    return k / max(1, out[0].numel())


def train(
    model: nn.Module,
    x: Any,
    y: Any,
    loss: LossArg = "mse",
    *,
    lr: float,
    steps: int,
    record: str | Sequence[str] = ("loss", "outputs", "distance"),
    record_every: int = 1,
    x_test: Any = None,
    y_test: Any = None,
    kernel_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    optimizer: str | Callable[[list[nn.Parameter]], torch.optim.Optimizer] = "sgd",
    momentum: float = 0.9,
    progress: bool = False,
) -> TrainingRecord:
    """Full-batch training of ``model`` on ``(x, y)``, recording NTK-relevant quantities.

    Parameters
    ----------
    model : nn.Module
        Trained in place (pass ``copy.deepcopy(model)`` to keep the original);
        works with :func:`ntkit.linearize` models too.
    x, y : tensors
        Training inputs ``(n, ...)`` and targets (shaped like the outputs for MSE;
        labels ``(n,)`` or probabilities for cross-entropy).
    loss : {"mse", "cross_entropy"} or callable
        See the module docstring for the normalisation.
    lr : float
        Learning rate.
    steps : int
        Number of full-batch updates.
    record : str or sequence of {"loss", "outputs", "distance", "kernel"}
        What to record (the loss is always recorded).
    record_every : int
        Record at steps ``0, r, 2r, ...`` and always at the last step.
    x_test, y_test : tensors, optional
        Test inputs (outputs/kernels recorded on them) and targets (test loss).
    kernel_fn : callable, optional
        ``kernel_fn(model, x1, x2_or_None) -> (n1, n2)``; default: the empirical
        NTK per output unit, ``ntkit.empirical_ntk(model, x1, x2, output="trace") / k``.
    optimizer : {"sgd", "momentum", "adam"} or callable
        ``"sgd"`` is plain gradient descent; ``"momentum"`` heavy ball
        (``torch.optim.SGD(momentum=momentum)``); a callable gets the list of
        trainable parameters.
    momentum : float
        For ``optimizer="momentum"``.
    progress : bool
        Show a tqdm progress bar (if installed).

    Returns
    -------
    TrainingRecord

    Examples
    --------
    >>> import torch, ntkit as nk
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
    >>> rec = nk.train(net, x, y, lr=0.1, steps=20, record_every=10)
    >>> rec.steps.tolist(), rec.train_outputs.shape
    ([0, 10, 20], torch.Size([3, 8, 1]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    lr = check_positive(lr, "lr")
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    steps = int(steps)
    if isinstance(record_every, bool) or int(record_every) != record_every or record_every < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    rec_set = {record} if isinstance(record, str) else set(record)
    for r in rec_set:
        if r not in _RECORDABLE:
            raise ValueError(f"record must contain only {list(_RECORDABLE)}, got {r!r}")
    loss_f, loss_name = _loss_fn(loss)
    params_named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params_named:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    p_dtype = params_named[0][1].dtype
    xt = as_input_tensor(x, "x", allow_integer=True)
    if xt.is_floating_point():
        xt = xt.to(p_dtype)
    xs = None
    if x_test is not None:
        xs = as_input_tensor(x_test, "x_test", allow_integer=True)
        if xs.is_floating_point():
            xs = xs.to(p_dtype)
        check_feature_shapes_match(xt, xs, "x", "x_test")
    if y_test is not None and xs is None:
        raise ValueError("y_test was given without x_test")
    kfn = kernel_fn if kernel_fn is not None else _default_kernel
    opt = _make_optimizer(optimizer, [p for _, p in params_named], lr, float(momentum))

    theta0 = {n: p.detach().clone() for n, p in params_named}
    norm0 = {n: float(t.norm()) for n, t in theta0.items()}
    total0 = math.sqrt(sum(v * v for v in norm0.values()))

    rows: dict[str, list[Any]] = {k: [] for k in ("steps", "loss", "out", "tout", "tloss", "dist", "pd", "kt",
                                                  "kst")}
    y_m = None
    ys_m = None

    def take_record(k: int, out: torch.Tensor, loss_val: torch.Tensor) -> None:
        nonlocal ys_m
        rows["steps"].append(k)
        rows["loss"].append(float(loss_val.detach()))
        if "outputs" in rec_set:
            rows["out"].append(out.detach().clone())
        if xs is not None and ("outputs" in rec_set or y_test is not None):
            with torch.no_grad():
                tout = model(xs)
            if "outputs" in rec_set:
                rows["tout"].append(tout.detach().clone())
            if y_test is not None:
                if ys_m is None:
                    ys_m = _match_targets(y_test, tout, loss_name if isinstance(loss, str) else "callable",
                                          "y_test")
                with torch.no_grad():
                    rows["tloss"].append(float(loss_f(tout, ys_m)))
        if "distance" in rec_set:
            with torch.no_grad():
                d = {n: float((p - theta0[n]).norm()) for n, p in params_named}
            rows["pd"].append(d)
            rows["dist"].append(math.sqrt(sum(v * v for v in d.values())))
        if "kernel" in rec_set:
            rows["kt"].append(kfn(model, xt, None).detach().clone())
            if xs is not None:
                rows["kst"].append(kfn(model, xs, xt).detach().clone())

    it: Any = range(steps)
    if progress:
        from .tiling import progress_bar

        it = progress_bar(it, total=steps, desc="train")
    diverged = False
    for k in it:
        opt.zero_grad(set_to_none=True)
        out = model(xt)
        if y_m is None:
            y_m = _match_targets(y, out, loss_name if isinstance(loss, str) else "callable", "y")
        lv = loss_f(out, y_m)
        if lv.numel() != 1:
            raise ValueError("loss(f, y) must return a scalar")
        if k % record_every == 0:
            take_record(k, out, lv)
        if not bool(torch.isfinite(lv)):
            diverged = True
            warnings.warn(f"training diverged: the loss is {float(lv.detach())} at step {k}; stopping", RuntimeWarning,
                          stacklevel=2)
            break
        lv.backward()
        opt.step()
    if not diverged:
        with torch.no_grad():
            out = model(xt)
            if y_m is None:
                y_m = _match_targets(y, out, loss_name if isinstance(loss, str) else "callable", "y")
            lv = loss_f(out, y_m)
        if not rows["steps"] or rows["steps"][-1] != steps:
            take_record(steps, out, lv)

    def stack(key: str) -> torch.Tensor | None:
        return torch.stack(rows[key]) if rows[key] else None

    dist = torch.tensor(rows["dist"], dtype=torch.float64) if rows["dist"] else None
    pdist = {n: torch.tensor([d[n] for d in rows["pd"]], dtype=torch.float64) for n, _ in params_named} \
        if rows["pd"] else {}
    return TrainingRecord(
        steps=torch.tensor(rows["steps"], dtype=torch.long),
        loss=torch.tensor(rows["loss"], dtype=torch.float64),
        train_outputs=stack("out"),
        test_outputs=stack("tout"),
        test_loss=torch.tensor(rows["tloss"], dtype=torch.float64) if rows["tloss"] else None,
        distance=dist,
        relative_distance=None if dist is None else dist / max(total0, 1e-300),
        param_distance=pdist,
        param_relative_distance={n: v / max(norm0[n], 1e-300) for n, v in pdist.items()},
        kernel_train=stack("kt"),
        kernel_test_train=stack("kst"),
        learning_rate=lr,
        loss_name=loss_name,
        diverged=diverged,
    )


class _CallableModule(types.ModuleType):
    """Importing ``ntkit.train`` as a module rebinds ``ntkit.train`` to it; keep it callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> TrainingRecord:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
