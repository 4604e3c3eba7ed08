"""Multi-head self-attention over all positions, at infinite width (Hron et al., 2020).

Inputs are channels-first ``(n, C, *S)``; attention runs over the flattened
positions (the sequence ``T`` of ``(n, C, T)`` inputs). With *linear scaling*
(query-key products divided by the key width ``d_k`` instead of ``sqrt(d_k)``)
the logits of every head concentrate, as the widths grow, on the deterministic

``G(x)_{ab} = W_query_std * W_key_std * q_x(a, b)``  (shared query/key weights),

where ``q_x`` is the input's channel-averaged covariance between positions
``a`` and ``b``. With *independent* query and key weights the same average
has mean zero, so ``G = 0`` (uniform softmax attention, and an identity
mechanism that outputs zeros) — hence ``tie_query_key=True`` by default,
which is the regime in which linear scaling gives a non-trivial kernel. The
attention matrix ``A(x) = softmax(G(x))`` (or ``G(x)`` itself for
``"IDENTITY"``) is then a fixed function of the input, the values are
Gaussian, and with ``sigma^2 = W_out_std^2 * W_value_std^2``:

``nngp'(x, x') = sigma^2 * A(x) q(x, x') A(x')^T + b_std^2``

``ntk'(x, x') = 2 nngp' - b_std^2 + sigma^2 * A(x) ntk(x, x') A(x')^T``

(output and value weights each contribute ``nngp' - b_std^2``, the bias
``b_std^2``; gradients through the logits are ``O(1/d_k)`` and vanish). All
heads share the same limit, so ``n_heads`` does not change the kernel. No
positional embeddings are added. The NTK parameterisation is used.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_choice, check_nonnegative
from .base import BuildContext, KernelOrList, Layer, ShapeOrList

__all__ = ["GlobalSelfAttention"]

_MECHANISMS = ("SOFTMAX", "IDENTITY")


class _AttentionModule(nn.Module):
    def __init__(self, wq: torch.Tensor, wk: torch.Tensor | None, wv: torch.Tensor, wo: torch.Tensor,
                 bias: torch.Tensor | None, stds: tuple[float, float, float, float], b_std: float,
                 mechanism: str) -> None:
        super().__init__()
        self.w_query = nn.Parameter(wq)  # (heads, C, d_k); also the key weights when tied
        self.w_key = None if wk is None else nn.Parameter(wk)
        self.w_value = nn.Parameter(wv)  # (heads, C, d_v)
        self.w_out = nn.Parameter(wo)  # (heads * d_v, C_out)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.q_std, self.k_std, self.v_std, self.o_std = stds
        self.b_std, self.mechanism = b_std, mechanism

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        spatial = tuple(x.shape[2:])
        h = x.reshape(n, c, -1).transpose(1, 2)  # (n, T, C)
        d_k = self.w_query.shape[-1]
        q = torch.einsum("ntc,hck->nhtk", h, self.w_query) * (self.q_std / math.sqrt(c))
        wk = self.w_query if self.w_key is None else self.w_key
        k = torch.einsum("ntc,hck->nhtk", h, wk) * (self.k_std / math.sqrt(c))
        logits = q @ k.transpose(-1, -2) / d_k  # linear scaling
        att = torch.softmax(logits, dim=-1) if self.mechanism == "SOFTMAX" else logits
        v = torch.einsum("ntc,hcv->nhtv", h, self.w_value) * (self.v_std / math.sqrt(c))
        heads = att @ v  # (n, H, T, d_v)
        cat = heads.transpose(1, 2).reshape(n, heads.shape[2], -1)  # (n, T, H d_v)
        out = cat @ self.w_out * (self.o_std / math.sqrt(cat.shape[-1]))
        if self.bias is not None:
            out = out + self.b_std * self.bias
        return out.transpose(1, 2).reshape((n, out.shape[-1]) + spatial)


class GlobalSelfAttention(Layer):
    """Multi-head self-attention across all positions, linear (``1/d_k``) logit scaling.

    Parameters
    ----------
    n_chan_out : int
        Output channels (the readout keeps it; hidden ones are overridden by ``width``).
    n_chan_key, n_chan_val : int
        Per-head query/key and value widths of the finite module (``width`` overrides both).
    n_heads : int
        Number of heads.
    linear_scaling : bool
        Must be ``True``: the ``1/sqrt(d_k)`` regime has random logits in the
        limit and is not implemented.
    W_key_std, W_value_std, W_out_std, W_query_std : float
        Weight scales (NTK parameterisation: weights ~ N(0, 1), scaled by ``std / sqrt(fan_in)``).
    b_std : float, optional
        Output bias scale; ``None`` for no bias.
    attention_mechanism : {"SOFTMAX", "IDENTITY"}
        Softmax over keys, or the raw logits.
    tie_query_key : bool
        Share query and key weights (default), see the module docstring.

    Examples
    --------
    >>> import torch
    >>> from ntkit import layers as L
    >>> arch = L.serial(L.Conv(16, 1), L.GlobalSelfAttention(16, 16, 16, n_heads=2), L.GlobalAvgPool())
    >>> arch.kernel(torch.randn(3, 4, 5), get="nngp").nngp.shape
    torch.Size([3, 3])
    """

    is_affine = True
    _fresh_output = True  # outputs are newly allocated

    _tape_ok = True
    _reads_full_vars = True  # the attention matrices come from each input's full self covariance

    def __init__(self, n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int = 1,
                 linear_scaling: bool = True, W_key_std: float = 1.0, W_value_std: float = 1.0,
                 W_out_std: float = 1.0, W_query_std: float = 1.0, b_std: float | None = None,
                 attention_mechanism: str = "SOFTMAX", tie_query_key: bool = True) -> None:
        for name, v in (("n_chan_out", n_chan_out), ("n_chan_key", n_chan_key), ("n_chan_val", n_chan_val),
                        ("n_heads", n_heads)):
            if int(v) != v or v < 1:
                raise ValueError(f"GlobalSelfAttention: {name} must be a positive integer, got {v!r}")
        if not linear_scaling:
            raise ValueError("GlobalSelfAttention: only linear_scaling=True (logits / n_chan_key) is supported; "
                             "with 1/sqrt(n_chan_key) the limit's attention weights are random")
        self.n_chan_out, self.n_chan_key, self.n_chan_val = int(n_chan_out), int(n_chan_key), int(n_chan_val)
        self.n_heads = int(n_heads)
        self.linear_scaling = True
        self.W_key_std = check_nonnegative(W_key_std, "GlobalSelfAttention: W_key_std")
        self.W_value_std = check_nonnegative(W_value_std, "GlobalSelfAttention: W_value_std")
        self.W_out_std = check_nonnegative(W_out_std, "GlobalSelfAttention: W_out_std")
        self.W_query_std = check_nonnegative(W_query_std, "GlobalSelfAttention: W_query_std")
        self.b_std = None if b_std is None else check_nonnegative(b_std, "GlobalSelfAttention: b_std")
        self.attention_mechanism = str(check_choice(str(attention_mechanism).upper(),
                                                    "GlobalSelfAttention: attention_mechanism", _MECHANISMS))
        self.tie_query_key = bool(tie_query_key)

    def _check_shape(self, shape: ShapeOrList) -> tuple[int, ...]:
        if isinstance(shape, list):
            raise ValueError("GlobalSelfAttention needs a single input, got a list of branches")
        if len(shape) < 2:
            raise ValueError(f"GlobalSelfAttention needs inputs (n, C, T) (or (n, C, *S)) with positions to "
                             f"attend over; got a flat per-example shape {tuple(shape)}")
        return tuple(shape)

    def output_shape(self, shape: ShapeOrList) -> ShapeOrList:
        shape = self._check_shape(shape)
        return (self.n_chan_out,) + shape[1:]

    def needs_full_spatial(self, full_out: bool) -> bool:
        return True

    def _attention(self, var: torch.Tensor, p: int) -> torch.Tensor:
        """Deterministic attention matrices ``(n, P, P)`` from full self covariances."""
        n = var.shape[0]
        if self.tie_query_key:
            g = var.reshape(n, p, p) * (self.W_query_std * self.W_key_std)
        else:
            g = var.new_zeros(n, p, p)
        return torch.softmax(g, dim=-1) if self.attention_mechanism == "SOFTMAX" else g

    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        if isinstance(k, list):
            raise ValueError("GlobalSelfAttention needs a single input, got a list of branches")
        shape = self._check_shape(k.shape)
        if k.diagonal_spatial:
            raise ValueError("GlobalSelfAttention needs the full spatial covariance but received a diagonal-only "
                             "kernel; the layout requirement was not propagated")
        p = math.prod(shape[1:])
        n1, n2 = k.n1, k.n2
        a1 = self._attention(k.var1, p)
        a2 = a1 if k.var2 is k.var1 else self._attention(k.var2, p)
        s2 = (self.W_out_std * self.W_value_std) ** 2
        b2 = 0.0 if self.b_std is None else self.b_std ** 2

        def sandwich(t: torch.Tensor) -> torch.Tensor:
            t = t.reshape(n1, n2, p, p)
            t = torch.matmul(a1.unsqueeze(1), t)
            return torch.matmul(t, a2.transpose(1, 2).unsqueeze(0))

        def self_sandwich(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return torch.matmul(torch.matmul(a, v.reshape(-1, p, p)), a.transpose(1, 2))

        full_shape = lambda t, lead: t.reshape(lead + shape[1:] + shape[1:])  # noqa: E731
        nngp = None if k.nngp is None else sandwich(k.nngp).mul_(s2)
        ntk = None
        if k.ntk is not None and nngp is not None:
            ntk = sandwich(k.ntk).mul_(s2).add_(nngp, alpha=2.0).add_(b2)
        if nngp is not None:
            nngp = nngp.add_(b2)
        var1, var2 = self._map_vars(
            k, lambda v: full_shape(self_sandwich(v, a1 if v is k.var1 else a2).mul_(s2).add_(b2), (v.shape[0],)))
        return k.replace(
            nngp=None if nngp is None else full_shape(nngp, (n1, n2)),
            ntk=None if ntk is None else full_shape(ntk, (n1, n2)),
            var1=var1, var2=var2,
            shape=self.output_shape(shape), is_gaussian=True,
        )

    def _bytes_per_pair(self, shape: ShapeOrList, full: bool, itemsize: int) -> tuple[float, ShapeOrList]:
        out = self.output_shape(shape)
        p = math.prod(shape[1:])
        return float(6 * p * p * itemsize), out

    def build(self, shape: ShapeOrList, ctx: BuildContext) -> nn.Module:
        shape = self._check_shape(shape)
        c = shape[0]
        d_k = self.n_chan_key if ctx.width is None else ctx.width
        d_v = self.n_chan_val if ctx.width is None else ctx.width
        c_out = ctx.out_channels(self, self.n_chan_out)
        h = self.n_heads
        wq = ctx.normal(h, c, d_k)
        wk = None if self.tie_query_key else ctx.normal(h, c, d_k)
        wv = ctx.normal(h, c, d_v)
        wo = ctx.normal(h * d_v, c_out)
        bias = None if self.b_std is None else ctx.normal(c_out)
        stds = (self.W_query_std, self.W_key_std, self.W_value_std, self.W_out_std)
        return _AttentionModule(wq, wk, wv, wo, bias, stds, 0.0 if self.b_std is None else self.b_std,
                                self.attention_mechanism)
