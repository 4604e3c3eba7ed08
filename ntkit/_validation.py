"""Input checks shared by every public entry point.

Every check raises a ``ValueError`` or ``TypeError`` whose message names the
argument and says what was expected, so errors surface at the boundary in the
user's terms rather than deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "as_input_tensor",
    "check_finite",
    "check_feature_shapes_match",
    "check_positive",
    "check_nonnegative",
    "check_choice",
    "check_square_kernel",
]


def as_input_tensor(
    x: object,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    min_ndim: int = 1,
    allow_integer: bool = False,
) -> torch.Tensor:
    """Convert ``x`` to a tensor and check it is a finite batch of inputs.

    Parameters
    ----------
    x : array-like
        A torch tensor or numpy array; the first axis indexes examples.
    name : str
        The argument's name, used in error messages.
    dtype, device : optional
        Cast to this dtype / move to this device after validation.
    min_ndim : int
        Minimum number of dimensions (1 = just a batch axis).
    allow_integer : bool
        Accept integer tensors (token ids for embedding models) as they are.

    Examples
    --------
    >>> as_input_tensor([[1.0, 2.0]], "x1").shape
    torch.Size([1, 2])
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray | list | tuple):
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array, could not convert it: {exc}") from None
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if t.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s) (batch first), got shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: its first (batch) axis has length 0")
    if t.is_complex():
        raise TypeError(f"{name} must be real, got dtype {t.dtype}")
    if t.dtype == torch.bool:
        raise TypeError(f"{name} must be numeric, got dtype torch.bool")
    if t.is_floating_point():
        check_finite(t, name)
    elif not allow_integer:
        t = t.to(torch.get_default_dtype())
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or inf, saying how many and where the first is."""
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n_bad = int(bad.sum())
            first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
            raise ValueError(
                f"{name} contains {n_bad} non-finite value(s) (NaN or inf); first at index {first}"
            )


def check_feature_shapes_match(x1: torch.Tensor, x2: torch.Tensor, name1: str = "x1", name2: str = "x2") -> None:
    """Both batches must share their per-example shape, dtype kind and device."""
    if tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
        raise ValueError(
            f"{name2} has per-example shape {tuple(x2.shape[1:])} but {name1} has "
            f"{tuple(x1.shape[1:])}; they must match"
        )
    if x1.device != x2.device:
        raise ValueError(f"{name1} is on {x1.device} but {name2} is on {x2.device}; put both on one device")


def check_positive(value: float, name: str) -> float:
    """``value`` must be a finite number > 0."""
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_nonnegative(value: float, name: str) -> float:
    """``value`` must be a finite number >= 0."""
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_choice(value: object, name: str, choices: Sequence[object]) -> object:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_square_kernel(k: torch.Tensor, name: str) -> torch.Tensor:
    """A train-train kernel: 2-D, square, finite."""
    if not isinstance(k, torch.Tensor):
        k = torch.as_tensor(np.asarray(k))
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) matrix, got shape {tuple(k.shape)}")
    check_finite(k, name)
    return k
