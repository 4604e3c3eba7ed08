"""Empirical NNGP kernel: inner products of network outputs or of a layer's input features."""

from __future__ import annotations

import torch
from torch import nn

from ..tiling import progress_bar
from ._common import _check_model, check_train_mode, prepare_inputs

__all__ = ["empirical_nngp"]


def _features(
    model: nn.Module, x: torch.Tensor, layer: str | None, batch_size: int | None, progress: bool, name: str
) -> torch.Tensor:
    module = None
    if layer is not None:
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ValueError(f"layer={layer!r} is not a submodule of model; valid names: {[n for n in modules if n]}")
        module = modules[layer]
    n = x.shape[0]
    b = n if batch_size is None else int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    chunks = []
    starts = list(range(0, n, b))
    for s in progress_bar(starts, total=len(starts), enabled=progress, desc=f"NNGP features ({name})"):
        captured: list[torch.Tensor] = []
        handle = None
        if module is not None:
            def hook(mod: nn.Module, args: tuple, out: object, captured: list = captured) -> None:
                if not args or not isinstance(args[0], torch.Tensor):
                    raise TypeError(f"layer={layer!r} was not called with a tensor as first input")
                captured.append(args[0])

            handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = model(x[s : s + b])
        finally:
            if handle is not None:
                handle.remove()
        if module is not None:
            if len(captured) != 1:
                raise ValueError(
                    f"layer={layer!r} was called {len(captured)} times in one forward pass; it must be called exactly once"
                )
            feat = captured[0]
        else:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"model must return a single tensor, got {type(out).__name__}")
            feat = out
        chunks.append(feat.reshape(feat.shape[0], -1))
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, 0)


def empirical_nngp(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    layer: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Empirical NNGP kernel of a finite network: averaged inner products of outputs (or features).

    With ``layer=None``::

        K[i, j] = (1/k) Σ_a f_a(x1_i) f_a(x2_j),

    where ``f(x)`` is the model's output for one example flattened to ``k``
    numbers, i.e. the inner product of the outputs averaged over output
    units. For a network with i.i.d. random readout weights this is an
    unbiased one-sample estimate of the infinite-width NNGP kernel of the
    outputs. With ``layer="name"`` the features are instead the (flattened)
    *input* of that submodule, captured with a forward hook, and
    ``K = φ(x1) φ(x2)ᵀ / width`` with ``width`` the number of features.

    Parameters
    ----------
    model : nn.Module
        Any module mapping a batch ``(n, ...)`` to ``(n, ...)``.
    x1, x2 : Tensor
        Batches of inputs with equal per-example shapes; ``x2=None`` means ``x1``.
    layer : str, optional
        Qualified name (as in ``model.named_modules()``) of the module whose
        input features to use; it must be called exactly once per forward.
    batch_size : int, optional
        Run the forward passes in chunks of this many examples.
    progress : bool
        Show a progress bar over the chunks.
    allow_train_mode : bool
        Accept a model in train mode with BatchNorm/Dropout (batch-dependent result).

    Returns
    -------
    Tensor
        ``(n1, n2)`` kernel in the model's dtype.

    Examples
    --------
    >>> import torch, ntkit as nk
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(4, 3)
    >>> K = nk.empirical_nngp(net, x)
    >>> torch.allclose(K, net(x) @ net(x).T / 2)
    True
    >>> nk.empirical_nngp(net, x, layer="2").shape   # the 8 hidden ReLU features
    torch.Size([4, 4])
    """
    _check_model(model)
    check_train_mode(model, allow_train_mode)
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), torch.empty(0))
    x1t, x2t = prepare_inputs(model, ref, x1, x2)
    f1 = _features(model, x1t, layer, batch_size, progress, "x1")
    f2 = f1 if x2t is None else _features(model, x2t, layer, batch_size, progress, "x2")
    if not f1.is_floating_point():
        raise TypeError(f"features are {f1.dtype}; they must be floating point")
    return f1 @ f2.T / f1.shape[1]
