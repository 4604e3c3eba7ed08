"""Plumbing shared by the empirical-kernel algorithms.

* :func:`select_params` turns the ``params`` argument into an ordered
  ``{name: tensor}`` dict of the parameters to differentiate;
* :func:`check_train_mode` refuses batch-dependent models (BatchNorm in train
  mode, active Dropout);
* :func:`prepare_inputs` validates ``x1``/``x2`` against the model;
* :class:`Context` bundles the functional model ``f(params, x) -> (n, k)``;
* :func:`contract_jacobians` contracts per-example Jacobian pieces;
* :func:`run_blocks` drives the tiles (row features cached between tiles).

The model is never mutated: parameters are substituted with
:func:`torch.func.functional_call`, and the only hooks registered anywhere
(by the structured method) are removed before returning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .._validation import as_input_tensor, check_feature_shapes_match
from ..tiling import parse_memory, plan_blocks, progress_bar, tiled

__all__ = [
    "OUTPUTS",
    "METHODS",
    "DEFAULT_MEMORY_BUDGET",
    "ParamsArg",
    "Context",
    "select_params",
    "check_train_mode",
    "prepare_inputs",
    "make_context",
    "contract_jacobians",
    "run_blocks",
]

OUTPUTS = ("trace", "full", "diagonal", "sample_diagonal")
METHODS = ("auto", "jacobian", "ntvp", "structured")
#: Working-memory budget of one tile when neither ``batch_size`` nor ``memory_budget`` is given.
DEFAULT_MEMORY_BUDGET = "1GB"

ParamsArg = (
    None | str | Iterable[str] | Iterable[torch.Tensor] | Callable[[str, torch.Tensor], bool]
)

def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def select_params(model: nn.Module, params: ParamsArg = None) -> dict[str, torch.Tensor]:
    """The parameters to differentiate, as an ordered ``{qualified name: tensor}`` dict.

    Parameters
    ----------
    model : nn.Module
    params : None, str, list of str, list of tensors, or callable
        ``None``: every parameter with ``requires_grad``. Names (as in
        ``model.named_parameters()``) must exist. A callable is called as
        ``params(name, parameter)`` and keeps those returning ``True``. Tensors
        must be parameters of ``model`` (compared by identity). Buffers are
        never selected.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    >>> list(select_params(net, lambda name, p: name.startswith("1.")))
    ['1.weight', '1.bias']
    """
    _check_model(model)
    named = dict(model.named_parameters())
    if params is None:
        sel = {n: p for n, p in named.items() if p.requires_grad}
        if not sel:
            if not named:
                raise ValueError("model has no parameters, so its NTK is zero/undefined")
            raise ValueError(
                "model has no trainable parameters (none has requires_grad=True); "
                "pass params=[...] to differentiate frozen ones explicitly"
            )
        return _check_float(sel)
    if isinstance(params, str):
        params = [params]
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    if callable(params) and not isinstance(params, torch.Tensor):
        sel = {}
        for n, p in named.items():
            keep = params(n, p)
            if not isinstance(keep, bool | torch.Tensor):
                raise TypeError(f"params predicate must return a bool, returned {type(keep).__name__} for {n!r}")
            if bool(keep):
                sel[n] = p
        if not sel:
            raise ValueError(
                f"params predicate selected no parameter; parameter names are {list(named)}"
            )
        return _check_float(sel)
    if isinstance(params, torch.Tensor):
        params = [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(
            "params must be None, a parameter name, a list of names, a list of parameter tensors "
            f"or a predicate callable(name, param) -> bool; got {type(params).__name__}"
        ) from None
    if not items:
        raise ValueError("params is empty: select at least one parameter (or pass None for all)")
    sel = {}
    if all(isinstance(it, str) for it in items):
        missing = [it for it in items if it not in named]
        if missing:
            raise ValueError(f"params names {missing} are not parameters of model; valid names: {list(named)}")
        for it in items:
            sel[it] = named[it]
    elif all(isinstance(it, torch.Tensor) for it in items):
        by_id = {id(p): n for n, p in named.items()}
        for i, it in enumerate(items):
            if id(it) not in by_id:
                raise ValueError(
                    f"params[{i}] (a tensor of shape {tuple(it.shape)}) is not a parameter of model "
                    "(buffers and copies are not accepted)"
                )
            sel[by_id[id(it)]] = it
    else:
        raise TypeError("params must be all names (str) or all parameter tensors, not a mix")
    return _check_float(sel)


def _check_float(sel: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for n, p in sel.items():
        if not p.is_floating_point():
            raise TypeError(f"parameter {n!r} has dtype {p.dtype}; only floating-point parameters can be differentiated")
    dtypes = {p.dtype for p in sel.values()}
    devices = {p.device for p in sel.values()}
    if len(dtypes) > 1:
        raise TypeError(f"selected parameters mix dtypes {sorted(map(str, dtypes))}; cast the model to one dtype")
    if len(devices) > 1:
        raise ValueError(f"selected parameters live on several devices {sorted(map(str, devices))}")
    return sel


def check_train_mode(model: nn.Module, allow_train_mode: bool = False) -> None:
    """Refuse models whose output for one example depends on the rest of the batch.

    BatchNorm in train mode normalises with batch statistics (also in eval mode
    when it keeps no running statistics) and active Dropout draws random masks,
    so Θ would depend on which examples share a batch and on the draw.
    """
    if allow_train_mode:
        return
    bad = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training or m.running_mean is None:
                bad.append(f"{name or '<root>'} ({type(m).__name__})")
        elif isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            bad.append(f"{name or '<root>'} ({type(m).__name__})")
    if bad:
        raise ValueError(
            f"model is in train mode with batch-dependent modules: {', '.join(bad)}. Batch statistics "
            "(BatchNorm) and random masks (Dropout) make f(x), hence the NTK, depend on the other "
            "examples in the batch and on the random draw. Call model.eval() first (BatchNorm then "
            "uses its running statistics), or pass allow_train_mode=True to accept batch-dependent "
            "results (the methods may then disagree with each other)."
        )


def _has_embedding(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Embedding | nn.EmbeddingBag) for m in model.modules())


def prepare_inputs(
    model: nn.Module, ref: torch.Tensor, x1: object, x2: object | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate ``x1``/``x2``: finite, batch-first, same per-example shape, the model's dtype and device.

    Integer inputs are kept as they are for models containing an embedding and
    cast to the parameters' dtype otherwise.
    """
    emb = _has_embedding(model)
    out = []
    for x, name in ((x1, "x1"), (x2, "x2")):
        if x is None:
            out.append(None)
            continue
        if isinstance(x, torch.Tensor) and x.device != ref.device:
            raise ValueError(
                f"{name} is on device {x.device} but the model's parameters are on {ref.device}; "
                f"move it with {name}.to({str(ref.device)!r})"
            )
        t = as_input_tensor(x, name, allow_integer=True)
        if t.is_floating_point():
            if t.dtype != ref.dtype:
                raise TypeError(
                    f"{name} has dtype {t.dtype} but the model's parameters are {ref.dtype}; cast one "
                    f"of them, e.g. {name}.to({ref.dtype}) or model.to({t.dtype})"
                )
        elif not emb:
            t = t.to(ref.dtype)
        t = t.to(ref.device)  # numpy inputs arrive on the CPU
        out.append(t)
    if out[1] is not None:
        check_feature_shapes_match(out[0], out[1], "x1", "x2")
        if out[0].is_floating_point() != out[1].is_floating_point():
            raise TypeError(f"x1 has dtype {out[0].dtype} but x2 has {out[1].dtype}; they must match")
    return out[0], out[1]


@dataclass
class Context:
    """Everything an algorithm needs: the functional model and the selected parameters."""

    model: nn.Module
    params: dict[str, torch.Tensor]  # detached selected parameters
    k: int  # flattened outputs per example (after the optional projection)
    out_shape: tuple[int, ...]  # per-example output shape of the model
    proj: torch.Tensor | None = None  # (k, k_model) linear map applied to the flat outputs
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)  # all other parameters, detached
    randomness: str = "error"
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def flat(self, out: torch.Tensor) -> torch.Tensor:
        """Model output ``(n, ...)`` -> ``(n, k)`` (projected when ``proj`` is set)."""
        out = out.reshape(out.shape[0], -1)
        if self.proj is not None:
            out = out @ self.proj.T
        return out

    def fn(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``f(params, x)`` for a batch ``x``: flattened outputs of shape ``(n, k)``."""
        return self.flat(functional_call(self.model, {**self.frozen, **self.params, **params}, (x,)))

    def fn_single(self, params: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        """``f(params, x_i)`` of one example (no batch axis): shape ``(k,)``."""
        return self.fn(params, xi.unsqueeze(0))[0]


def make_context(
    model: nn.Module,
    x1: torch.Tensor,
    sel: dict[str, torch.Tensor],
    proj: torch.Tensor | None = None,
    allow_train_mode: bool = False,
) -> Context:
    """Run the model on one example to learn its output shape and build the :class:`Context`."""
    with torch.no_grad():
        out = model(x1[:1])
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"model must return a single tensor, got {type(out).__name__}; wrap it to select one output"
        )
    if not out.is_floating_point():
        raise TypeError(f"model output must be floating point, got {out.dtype}")
    if out.ndim == 0 or out.shape[0] != 1:
        raise ValueError(
            f"model output must keep the batch axis first: for a batch of 1 it returned shape {tuple(out.shape)}"
        )
    k_model = int(math.prod(out.shape[1:]))
    ref = next(iter(sel.values()))
    if proj is not None:
        proj = proj.to(dtype=ref.dtype, device=ref.device)
        if proj.shape[1] != k_model:
            raise ValueError(f"projection has {proj.shape[1]} columns but the model has {k_model} outputs")
    k = k_model if proj is None else int(proj.shape[0])
    return Context(
        model=model,
        params={n: p.detach() for n, p in sel.items()},
        frozen={n: p.detach() for n, p in model.named_parameters() if n not in sel},
        k=k,
        out_shape=tuple(out.shape[1:]),
        proj=proj,
        randomness="different" if allow_train_mode else "error",
        dtype=ref.dtype,
        device=ref.device,
    )


def contract_jacobians(
    J1: list[torch.Tensor], J2: list[torch.Tensor] | None, full: bool
) -> torch.Tensor:
    """Σ over pieces of per-example Jacobian products.

    Each piece has shape ``(n, k, p)``. With ``J2`` given the result is
    ``(n1, n2, k, k)`` (``full``) or ``(n1, n2)`` (trace over outputs). With
    ``J2=None`` only the ``x = x'`` blocks are formed: ``(n1, k, k)`` or ``(n1,)``.
    """
    out = None
    for idx, a in enumerate(J1):
        n1, k = a.shape[0], a.shape[1]
        if J2 is None:
            if full:
                r = torch.bmm(a, a.transpose(1, 2))
            else:
                r = a.reshape(n1, -1).pow(2).sum(1)
        else:
            b = J2[idx]
            n2 = b.shape[0]
            if full:
                r = (a.reshape(n1 * k, -1) @ b.reshape(n2 * k, -1).T).reshape(n1, k, n2, k).permute(0, 2, 1, 3)
            else:
                r = a.reshape(n1, -1) @ b.reshape(n2, -1).T
        out = r if out is None else out + r
    return out


def run_blocks(
    features: Callable[[torch.Tensor], Any],
    pair: Callable[[Any, Any], torch.Tensor],
    diag: Callable[[Any], torch.Tensor],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    diagonal_only: bool,
    bytes_per_row: float,
    bytes_per_pair: float,
    batch_size: int | None,
    memory_budget: int | str | None,
    progress: bool,
    desc: str,
) -> torch.Tensor:
    """Compute a kernel tile by tile.

    ``features(x_block)`` prepares per-example quantities (e.g. Jacobians),
    ``pair(F1, F2)`` returns the ``(b1, b2, ...)`` tile and ``diag(F)`` the
    ``(b, ...)`` diagonal blocks. Row features are computed once per row block;
    when ``x2`` is ``None`` the kernel is symmetric and only upper tiles are run.
    """
    budget = memory_budget
    if batch_size is None and memory_budget is None:
        budget = DEFAULT_MEMORY_BUDGET
    n1 = x1.shape[0]
    if diagonal_only:
        if batch_size is not None:
            b, _ = plan_blocks(n1, 1, 0.0, None, batch_size)
        else:
            per = bytes_per_row + bytes_per_pair
            bb = parse_memory(budget)
            if per > bb:
                raise MemoryError(
                    f"memory_budget={bb} bytes is too small: one example needs about {int(per)} bytes"
                )
            b = max(1, min(n1, int(bb // max(per, 1.0))))
        pieces = []
        starts = list(range(0, n1, b))
        for s in progress_bar(starts, total=len(starts), enabled=progress, desc=desc):
            pieces.append(diag(features(x1[s : s + b])))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 0)
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    n2 = xb.shape[0]
    b1, b2 = plan_blocks(n1, n2, bytes_per_pair, budget, batch_size, bytes_per_row)
    cache: dict[tuple[str, int, int], Any] = {}  # the two most recent feature blocks

    def feat(which: str, x: torch.Tensor, sl: slice) -> Any:
        key = (which, sl.start, sl.stop)
        if key in cache:
            cache[key] = cache.pop(key)  # mark as most recent
            return cache[key]
        while len(cache) >= 2:
            cache.pop(next(iter(cache)))
        cache[key] = features(x[sl])
        return cache[key]

    def tile(s1: slice, s2: slice) -> torch.Tensor:
        f1 = feat("x1", x1, s1)
        f2 = feat("x1" if symmetric else "x2", xb, s2)
        return pair(f1, f2)

    return tiled(tile, n1, n2, b1, b2, symmetric=symmetric, progress=progress, desc=desc)
