"""Structured-derivatives algorithm: the exact empirical NTK from layer structure.

For a layer ``y = W a + b`` the per-example gradient of output ``f_a`` is an
outer product, ``∂f_a(x)/∂W = Σ_t g_{a,t}(x) a_t(x)ᵀ`` with ``a_t`` the layer's
input at position ``t`` (sequence position, conv patch, ...) and ``g_{a,t}`` the
gradient of ``f_a`` with respect to the layer's output there. Hence

    Θ_W[i, j, a, b] = Σ_{t,t'} (a_t(x_i) · a_t'(x_j)) (g_{a,t}(x_i) · g_{b,t'}(x_j)),
    Θ_b[i, j, a, b] = (Σ_t g_{a,t}(x_i)) · (Σ_t' g_{b,t'}(x_j)).

With a single position (a dense layer on flat inputs) the trace kernel is
``(A1 A2ᵀ + 1) ⊙ (G1 G2ᵀ)`` with ``G`` the ``(n, k·width)`` output gradients:
``O(n² (d_in + k d_out))`` work instead of ``O(n² k P)``.

* ``nn.Linear`` (any leading dims) — inputs ``a_t``;
* ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, any stride/dilation/padding mode,
  not ``padding='same'``) — unfolded patches (``torch.nn.functional.unfold``;
  1-D convs as 2-D with a height-1 kernel);
* ``nn.Embedding`` — ``a_t`` is the one-hot token, so ``a_t · a_t' = 1[id_t = id'_t']``
  (the ``padding_idx`` row gets no gradient);
* affine weight and bias of ``nn.LayerNorm``, ``nn.GroupNorm`` and eval-mode
  ``nn.BatchNorm*d`` — per-example gradients are elementwise products
  ``Σ g ⊙ x̂`` and are formed directly.

Layer inputs are captured with forward hooks; the output gradients ``g`` come
from ``k`` batched reverse passes through the whole batch (one per output unit,
``torch.autograd.grad(..., is_grads_batched=True)``) with respect to zero
"probes" added to every such layer's output. For each layer with more than
one position, the pairwise form above is used or the per-example weight
gradients ``Σ_t g_t ⊗ a_t`` are formed and contracted, whichever needs fewer
FLOPs. Every other selected parameter — unknown module types, modified
``forward`` methods, shared (tied) parameters, a known layer whose parameters
are also used outside its ``forward`` — falls back to per-example autograd
Jacobians for those parameters only. A one-off check on two examples compares
the reconstructed parameter gradient of a random output combination with
autograd's and sends any layer that disagrees to the fallback, so the result
is the exact kernel, not an approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ._common import Context, contract_jacobians, run_blocks
from .jacobian import jacobians

__all__ = ["Site", "analyse", "compute", "StructuredPlan"]

_NORM_KINDS = ("layernorm", "groupnorm", "batchnorm")


def _forward_is(m: nn.Module, base: type) -> bool:
    # an instance attribute ``forward`` (monkeypatched) overrides the class method
    return type(m).forward is base.forward and "forward" not in vars(m)


def _ntkit_kind(m: nn.Module) -> str | None:
    """Rule for the finite modules built by :mod:`ntkit.layers` (exact type, unmodified forward)."""
    from ..layers.conv import _ConvModule  # lazy: ntkit.layers imports ntkit.empirical indirectly
    from ..layers.dense import _DenseModule

    if type(m) is _DenseModule and _forward_is(m, _DenseModule):
        return "ntk_dense"
    if type(m) is _ConvModule and _forward_is(m, _ConvModule):
        if m.weight.ndim in (3, 4):  # 1-D and 2-D filters (unfold is 2-D only)
            return "ntk_conv"
    return None


def _scales(site: Site) -> tuple[float, float]:
    """(weight, bias) multipliers applied inside the module's forward (1 for torch layers)."""
    if site.kind in ("ntk_dense", "ntk_conv"):
        return float(site.module.w_scale), float(site.module.b_scale)
    return 1.0, 1.0


def _site_kind(m: nn.Module) -> str | None:
    """The structured rule that applies to module ``m``, or ``None``."""
    kind = _ntkit_kind(m)
    if kind is not None:
        return kind
    if isinstance(m, nn.Linear) and _forward_is(m, nn.Linear):
        return "linear"
    for base in (nn.Conv1d, nn.Conv2d):
        if isinstance(m, base) and _forward_is(m, base):
            if type(m)._conv_forward is not base._conv_forward or m.groups != 1:
                return None
            if isinstance(m.padding, str) and m.padding != "valid":
                return None
            return "conv"
    if isinstance(m, nn.Embedding) and _forward_is(m, nn.Embedding):
        if m.max_norm is None and not m.scale_grad_by_freq:
            return "embedding"
        return None
    if isinstance(m, nn.LayerNorm) and _forward_is(m, nn.LayerNorm):
        return "layernorm"
    if isinstance(m, nn.GroupNorm) and _forward_is(m, nn.GroupNorm):
        return "groupnorm"
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m).forward is nn.modules.batchnorm._BatchNorm.forward:
        if not m.training and m.running_mean is not None and m.running_var is not None:
            return "batchnorm"
    return None


@dataclass
class Site:
    """A module whose selected weight/bias are handled by a structured rule."""

    name: str
    module: nn.Module
    kind: str
    weight: str | None  # qualified name of the selected weight (None: not selected)
    bias: str | None
    T: int = 0  # positions per example (summed over calls)
    D: int = 0  # input features per position
    O: int = 0  # output features per position
    calls: int = 0
    strategy: str = "pair"  # "pair": Σ_tt' (A·A)(G·G); "jac": per-example weight gradients

    @property
    def n_params(self) -> int:
        n = 0
        if self.weight is not None:
            n += self.module.weight.numel()
        if self.bias is not None:
            n += self.module.bias.numel()
        return n


@dataclass
class StructuredPlan:
    """Result of :func:`analyse`: structured sites, fallback parameters, sizes for the cost model."""

    sites: list[Site]
    fallback: dict[str, torch.Tensor]
    probe_numel: int = 0  # Σ |layer outputs| per example (memory of the output gradients)
    forward_flops: float = 0.0  # rough multiply-adds of one forward pass, per example
    notes: list[str] = field(default_factory=list)


def _classify(model: nn.Module, params: dict[str, torch.Tensor]) -> tuple[list[Site], dict[str, torch.Tensor]]:
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mname, m in model.named_modules():
        for role, p in m._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mname, m, role))
    sites: dict[int, Site] = {}
    fallback: dict[str, torch.Tensor] = {}
    orig = dict(model.named_parameters())
    for pname, p in params.items():
        own = owners.get(id(orig[pname]), [])
        if len(own) == 1 and own[0][2] in ("weight", "bias"):
            mname, m, role = own[0]
            kind = _site_kind(m)
            if kind is not None:
                site = sites.setdefault(id(m), Site(mname, m, kind, None, None))
                setattr(site, role, pname)
                continue
        fallback[pname] = p
    return list(sites.values()), fallback


# ----------------------------------------------------------------------------------------------
# capture: layer inputs and output gradients


def _capture(
    ctx: Context,
    sites: list[Site],
    x: torch.Tensor,
    cot: torch.Tensor | None,
    grad_params: dict[str, torch.Tensor] | None = None,
) -> tuple[list[list[tuple[Any, torch.Tensor]]], dict[str, torch.Tensor]]:
    """Forward ``x`` with probes on every site; return per-site ``[(input, grad)]`` per call.

    ``cot`` is ``(c, n, k)``: ``c`` cotangents of the flat outputs, batched; the
    gradients come back with shape ``(n, c, *layer_output_shape)``. With
    ``grad_params`` (name -> leaf tensor) their gradients for a single
    cotangent are also returned (used by the consistency check).
    """
    records: list[list[list[Any]]] = [[] for _ in sites]

    def make_hook(idx: int):
        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor:
            inp = args[0] if args else kwargs.get("input", None)
            z = torch.zeros_like(out).requires_grad_(True)
            records[idx].append([inp.detach() if isinstance(inp, torch.Tensor) else None, z])
            return out + z

        return hook

    params = {n: p.detach() for n, p in ctx.model.named_parameters()}
    if grad_params:
        params.update(grad_params)
    handles = [s.module.register_forward_hook(make_hook(i), with_kwargs=True) for i, s in enumerate(sites)]
    try:
        with torch.enable_grad():
            out = ctx.flat(functional_call(ctx.model, params, (x,)))
    finally:
        for h in handles:
            h.remove()
    zs = [rec[1] for recs in records for rec in recs]
    pgrads: dict[str, torch.Tensor] = {}
    if grad_params:
        names = list(grad_params)
        g = torch.autograd.grad(out, zs + [grad_params[n] for n in names], grad_outputs=cot[0],
                                allow_unused=True, materialize_grads=True)
        grads = [gi.unsqueeze(1) for gi in g[: len(zs)]]
        pgrads = dict(zip(names, g[len(zs):], strict=True))
    elif zs:
        grads = _batched_grads(out, zs, cot)
    else:
        grads = []
    it = iter(grads)
    result = [[(rec[0], next(it)) for rec in recs] for recs in records]
    return result, pgrads


def _batched_grads(out: torch.Tensor, zs: list[torch.Tensor], cot: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of ``<cot[c], out>`` wrt each probe for every ``c``, shaped ``(n, c, ...)``."""
    c = cot.shape[0]
    if c == 1:
        g = torch.autograd.grad(out, zs, grad_outputs=cot[0], allow_unused=True, materialize_grads=True)
        return [gi.unsqueeze(1) for gi in g]
    try:
        g = torch.autograd.grad(out, zs, grad_outputs=cot, is_grads_batched=True, retain_graph=True,
                                allow_unused=True, materialize_grads=True)
        return [gi.movedim(0, 1) for gi in g]
    except RuntimeError:  # an op without a batching rule: one reverse pass per output
        per = [torch.autograd.grad(out, zs, grad_outputs=cot[i], retain_graph=True, allow_unused=True,
                                   materialize_grads=True) for i in range(c)]
        return [torch.stack([p[j] for p in per], 1) for j in range(len(zs))]


# ----------------------------------------------------------------------------------------------
# per-site features


def _linear_like(site: Site, calls: list[tuple[Any, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` of shape ``(n, T, D)`` (token ids ``(n, T)`` for embeddings) and ``G`` ``(n, c, T, O)``."""
    m = site.module
    As, Gs = [], []
    for inp, g in calls:
        n, c = g.shape[0], g.shape[1]
        if site.kind == "linear":
            As.append(inp.reshape(n, -1, inp.shape[-1]))
            Gs.append(g.reshape(n, c, -1, g.shape[-1]))
        elif site.kind == "ntk_dense":  # features on axis 1 of (n, C, *S): positions are S
            As.append(inp.reshape(n, inp.shape[1], -1).transpose(1, 2))
            Gs.append(g.reshape(n, c, g.shape[2], -1).transpose(2, 3))
        elif site.kind == "ntk_conv":  # explicit F.pad (constant or circular), then a strided, unpadded conv
            if any(m._pad):
                inp = F.pad(inp, m._pad, mode="circular" if m.circular else "constant")
            ks, st = tuple(m.weight.shape[2:]), tuple(m.strides)
            if len(ks) == 1:
                inp = inp.unsqueeze(2)
                ks, st = (1, ks[0]), (1, st[0])
            As.append(F.unfold(inp, ks, stride=st).transpose(1, 2))
            Gs.append(g.reshape(n, c, g.shape[2], -1).transpose(2, 3))
        elif site.kind == "embedding":
            ids = inp.reshape(n, -1)
            if m.padding_idx is not None:
                ids = ids.masked_fill(ids == m.padding_idx, -1)  # -1: matches nothing, no gradient
            As.append(ids)
            Gs.append(g.reshape(n, c, -1, g.shape[-1]))
        else:  # conv
            one_d = isinstance(m, nn.Conv1d)
            pad = m.padding if not isinstance(m.padding, str) else (0,) * (1 if one_d else 2)
            if m.padding_mode != "zeros":
                inp = F.pad(inp, m._reversed_padding_repeated_twice, mode=m.padding_mode)
                pad = (0,) * (1 if one_d else 2)
            ks, st, dl = m.kernel_size, m.stride, m.dilation
            if one_d:
                inp = inp.unsqueeze(2)
                ks, st, dl, pad = (1, ks[0]), (1, st[0]), (1, dl[0]), (0, pad[0])
            patches = F.unfold(inp, ks, dilation=dl, padding=pad, stride=st)  # (n, D, L)
            As.append(patches.transpose(1, 2))
            Gs.append(g.reshape(n, c, g.shape[2], -1).transpose(2, 3))
    A, G = (As[0], Gs[0]) if len(As) == 1 else (torch.cat(As, 1), torch.cat(Gs, 2))
    ws, _ = _scales(site)
    if ws != 1.0:  # y = ws·(W a) + ...: fold the weight scale into the inputs
        A = A * ws
    return A, G


def _norm_jacobians(site: Site, calls: list[tuple[Any, torch.Tensor]]) -> list[torch.Tensor]:
    """Per-example gradients ``(n, c, p)`` of a normalisation layer's weight and bias."""
    m = site.module
    jw = jb = None
    for inp, g in calls:
        n, c = g.shape[0], g.shape[1]
        if site.kind == "layernorm":
            xhat = F.layer_norm(inp, m.normalized_shape, None, None, m.eps)
            p = math.prod(m.normalized_shape)
            xh = xhat.reshape(n, -1, p)
            gg = g.reshape(n, c, -1, p)
            w = torch.einsum("nctp,ntp->ncp", gg, xh) if site.weight else None
            b = gg.sum(2) if site.bias else None
        else:
            if site.kind == "groupnorm":
                xhat = F.group_norm(inp, m.num_groups, None, None, m.eps)
            else:
                shape = (1, -1) + (1,) * (inp.ndim - 2)
                xhat = (inp - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
            C = xhat.shape[1]
            xh = xhat.reshape(n, C, -1)
            gg = g.reshape(n, c, C, -1)
            w = torch.einsum("ncqs,nqs->ncq", gg, xh) if site.weight else None
            b = gg.sum(3) if site.bias else None
        jw = w if jw is None else (jw + w if w is not None else jw)
        jb = b if jb is None else (jb + b if b is not None else jb)
    return [j for j in (jw, jb) if j is not None]


@dataclass
class _Feat:
    lin: list[tuple[Site, torch.Tensor, torch.Tensor]]  # pair-strategy sites: (site, A, G)
    jac: list[torch.Tensor]  # per-example Jacobian pieces (n, k, p)


def _site_features(sites: list[Site], captured: list[list[tuple[Any, torch.Tensor]]]) -> _Feat:
    lin, jac = [], []
    for site, calls in zip(sites, captured, strict=True):
        if not calls:
            continue
        if site.kind in _NORM_KINDS:
            jac.extend(_norm_jacobians(site, calls))
            continue
        A, G = _linear_like(site, calls)
        n, c, T, O = G.shape
        bs = _scales(site)[1]
        if site.strategy == "pair":
            if T == 1 or site.weight is not None:  # bias-only, several positions: the Σ_t g_t term below
                lin.append((site, A, G))
            if T > 1 and site.bias is not None:
                jac.append(G.sum(2) * bs if bs != 1.0 else G.sum(2))
            continue
        if site.weight is not None:
            if site.kind == "embedding":
                V = site.module.num_embeddings
                oh = F.one_hot(A.clamp_min(0), V).to(G.dtype) * (A >= 0).unsqueeze(-1).to(G.dtype)
                jac.append(torch.einsum("ncto,ntv->ncvo", G, oh).reshape(n, c, -1))
            else:
                jac.append(torch.einsum("ncto,ntd->ncod", G, A).reshape(n, c, -1))
        if site.bias is not None:
            jac.append(G.sum(2) * bs if bs != 1.0 else G.sum(2))
    return _Feat(lin, jac)


# ----------------------------------------------------------------------------------------------
# contractions of the pairwise ("pair") sites


def _aa(site: Site, A1: torch.Tensor, A2: torch.Tensor | None) -> torch.Tensor:
    """Input products: ``(n1, n2, T, T)``, or ``(n, T, T)`` for the diagonal (``A2=None``)."""
    if site.kind == "embedding":
        if A2 is None:
            eq = A1[:, :, None] == A1[:, None, :]
            valid = (A1 >= 0)[:, :, None]
        else:
            eq = A1[:, None, :, None] == A2[None, :, None, :]
            valid = (A1 >= 0)[:, None, :, None]
        return (eq & valid).to(torch.get_default_dtype() if not torch.is_floating_point(A1) else A1.dtype)
    if A2 is None:
        return torch.einsum("itd,isd->its", A1, A1)
    return torch.einsum("itd,jsd->ijts", A1, A2)


def _pair_site(site: Site, A1, G1, A2, G2, full: bool) -> torch.Tensor:
    n1, k, T, O = G1.shape
    n2 = G2.shape[0]
    AA = _aa(site, A1, A2).to(G1.dtype) if site.weight is not None else None
    if T == 1:
        bs2 = _scales(site)[1] ** 2
        if AA is None:
            AA = torch.full((), bs2, dtype=G1.dtype, device=G1.device)
        else:
            AA = AA[:, :, 0, 0]
            if site.bias is not None:
                AA = AA + bs2
        g1, g2 = G1[:, :, 0], G2[:, :, 0]
        if full:
            GG = (g1.reshape(n1 * k, O) @ g2.reshape(n2 * k, O).T).reshape(n1, k, n2, k).permute(0, 2, 1, 3)
            return AA[..., None, None] * GG if AA.ndim else AA * GG
        return AA * (g1.reshape(n1, -1) @ g2.reshape(n2, -1).T)
    if full:
        GG = (G1.reshape(n1 * k * T, O) @ G2.reshape(n2 * k * T, O).T).reshape(n1, k, T, n2, k, T)
        return torch.einsum("ijts,iatjbs->ijab", AA, GG)
    GG = (G1.permute(0, 2, 1, 3).reshape(n1 * T, k * O) @ G2.permute(0, 2, 1, 3).reshape(n2 * T, k * O).T)
    return torch.einsum("ijts,itjs->ij", AA, GG.reshape(n1, T, n2, T))


def _diag_site(site: Site, A, G, full: bool) -> torch.Tensor:
    n, k, T, O = G.shape
    AA = _aa(site, A, None).to(G.dtype) if site.weight is not None else None
    if T == 1:
        bs2 = _scales(site)[1] ** 2
        if AA is None:
            AA = torch.full((n,), bs2, dtype=G.dtype, device=G.device)
        else:
            AA = AA[:, 0, 0] + (bs2 if site.bias is not None else 0)
        g = G[:, :, 0]
        if full:
            return AA[:, None, None] * torch.bmm(g, g.transpose(1, 2))
        return AA * g.reshape(n, -1).pow(2).sum(1)
    if full:
        return torch.einsum("its,iato,ibso->iab", AA, G, G)
    return torch.einsum("its,iato,iaso->i", AA, G, G)


def _pair(F1: _Feat, F2: _Feat, full: bool) -> torch.Tensor:
    out = contract_jacobians(F1.jac, F2.jac, full) if F1.jac else None
    for (site, A1, G1), (_, A2, G2) in zip(F1.lin, F2.lin, strict=True):
        r = _pair_site(site, A1, G1, A2, G2, full)
        out = r if out is None else out + r
    return out


def _diag(F1: _Feat, full: bool) -> torch.Tensor:
    out = contract_jacobians(F1.jac, None, full) if F1.jac else None
    for site, A, G in F1.lin:
        r = _diag_site(site, A, G, full)
        out = r if out is None else out + r
    return out


# ----------------------------------------------------------------------------------------------
# analysis and the driver


def _reconstruct(site: Site, calls: list[tuple[Any, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Σ over examples of the per-example parameter gradients implied by the structured rule."""
    m = site.module
    out: dict[str, torch.Tensor] = {}
    if site.kind in _NORM_KINDS:
        pieces = _norm_jacobians(site, calls)
        names = [nm for nm in (site.weight, site.bias) if nm is not None]
        for nm, j in zip(names, pieces, strict=True):
            out[nm] = j[:, 0].sum(0)
        return out
    A, G = _linear_like(site, calls)
    g = G[:, 0]  # (n, T, O)
    if site.weight is not None:
        if site.kind == "embedding":
            V = m.num_embeddings
            oh = F.one_hot(A.clamp_min(0), V).to(g.dtype) * (A >= 0).unsqueeze(-1).to(g.dtype)
            out[site.weight] = torch.einsum("nto,ntv->vo", g, oh)
        else:
            out[site.weight] = torch.einsum("nto,ntd->od", g, A)
    if site.bias is not None:
        out[site.bias] = g.sum((0, 1)) * _scales(site)[1]
    return out


def analyse(ctx: Context, x: torch.Tensor) -> StructuredPlan:
    """Classify the selected parameters and validate the structured rules on (up to) two examples.

    A site whose input cannot be captured, or whose reconstructed gradient of
    a random output combination disagrees with autograd's (its parameters are
    also used outside its ``forward``, say), is moved to the fallback.
    """
    sites, fallback = _classify(ctx.model, ctx.params)
    plan = StructuredPlan(sites=[], fallback=dict(fallback))
    xs = x[: min(2, x.shape[0])]
    if sites:
        leaves = {}
        for s in sites:
            for nm in (s.weight, s.bias):
                if nm is not None:
                    leaves[nm] = ctx.params[nm].detach().clone().requires_grad_(True)
        gen = torch.Generator(device="cpu").manual_seed(1234)
        r = torch.randn((1, xs.shape[0], ctx.k), generator=gen, dtype=ctx.dtype).to(ctx.device)
        captured, true = _capture(ctx, sites, xs, r, grad_params=leaves)
        tol = 100 * math.sqrt(torch.finfo(ctx.dtype).eps)
        for site, calls in zip(sites, captured, strict=True):
            ok = all(inp is not None for inp, _ in calls)
            if ok and calls:
                try:
                    rec = _reconstruct(site, calls)
                except (RuntimeError, ValueError, IndexError):
                    ok = False
                else:
                    for nm, val in rec.items():
                        t = true[nm]
                        err = float((val.reshape(t.shape) - t).norm())
                        if not err <= tol * max(float(t.norm()), 1e-30) + 1e-300:
                            ok = False
                            plan.notes.append(f"{site.name}: parameters also used outside its forward")
            elif ok:  # never called: its gradient must be zero
                ok = all(float(true[nm].abs().max()) == 0 for nm in (site.weight, site.bias) if nm is not None)
            if not ok:
                for nm in (site.weight, site.bias):
                    if nm is not None:
                        plan.fallback[nm] = ctx.params[nm]
                continue
            if not calls:
                continue
            A, G = (None, None) if site.kind in _NORM_KINDS else _linear_like(site, calls)
            site.calls = len(calls)
            if G is not None:
                site.T, site.O = G.shape[2], G.shape[3]
                site.D = site.module.num_embeddings if site.kind == "embedding" else A.shape[-1]
            else:
                site.T, site.O, site.D = 1, site.n_params, 1
            plan.probe_numel += sum(g[0].numel() for _, g in calls)
            plan.forward_flops += site.T * site.D * site.O if site.kind != "embedding" else site.T * site.O
            plan.sites.append(site)
    plan.forward_flops += sum(p.numel() for p in plan.fallback.values())
    return plan


def choose_strategies(plan: StructuredPlan, n1: int, n2: int, k: int, full: bool, diagonal_only: bool) -> None:
    """For every multi-position site pick "pair" or "jac", whichever needs fewer multiply-adds."""
    pairs = n1 if diagonal_only else n1 * n2
    nrows = n1 if diagonal_only else n1 + n2
    kk = k * k if full else k
    for s in plan.sites:
        if s.kind in _NORM_KINDS or s.T <= 1 or s.weight is None:
            s.strategy = "pair"
            continue
        d_pair = 1 if s.kind == "embedding" else s.D
        pair_cost = pairs * s.T * s.T * (d_pair + kk * s.O) + pairs * kk * s.T * s.T
        jac_cost = nrows * k * s.T * s.O * s.D + pairs * kk * s.O * s.D
        s.strategy = "pair" if pair_cost < jac_cost else "jac"


def site_costs(plan: StructuredPlan, n1: int, n2: int, k: int, full: bool, diagonal_only: bool) -> tuple[float, float, float]:
    """(multiply-adds, bytes per row, bytes per pair) of the structured contraction, in elements."""
    pairs = n1 if diagonal_only else n1 * n2
    nrows = n1 if diagonal_only else n1 + n2
    kk = k * k if full else k
    flops = 0.0
    per_row = float(plan.probe_numel * (k + 2))
    per_pair = 0.0
    for s in plan.sites:
        if s.kind in _NORM_KINDS:
            flops += nrows * k * s.T * s.O + pairs * kk * s.O
            per_row += k * s.O
        elif s.strategy == "pair":
            d_pair = 1 if s.kind == "embedding" else s.D
            flops += pairs * s.T * s.T * (d_pair + kk * s.O) + pairs * kk * s.T * s.T
            per_row += s.T * (s.D if s.kind != "embedding" else 1) + k * s.T * s.O
            per_pair = max(per_pair, 2.0 * s.T * s.T * kk)
        else:
            flops += nrows * k * s.T * s.O * s.D + pairs * kk * s.O * s.D
            per_row += k * s.O * s.D + s.T * s.D + k * s.T * s.O
    pf = sum(p.numel() for p in plan.fallback.values())
    if pf:
        flops += nrows * k * 3 * plan.forward_flops + pairs * kk * pf
        per_row += 2.5 * k * pf
    return flops, per_row, per_pair


def compute(
    ctx: Context,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    output: str,
    batch_size: int | None,
    memory_budget: int | str | None,
    progress: bool,
    plan: StructuredPlan | None = None,
    force_strategy: str | None = None,
) -> torch.Tensor:
    """The empirical NTK from layer structure (see :func:`ntkit.empirical_ntk`).

    ``force_strategy`` ("pair" or "jac") overrides the FLOP-based choice for
    multi-position layers (for tests).
    """
    full = output in ("full", "diagonal")
    diagonal_only = output in ("diagonal", "sample_diagonal")
    if plan is None:
        plan = analyse(ctx, x1)
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    choose_strategies(plan, x1.shape[0], n2, ctx.k, full, diagonal_only)
    if force_strategy is not None:
        for site in plan.sites:
            if site.kind not in _NORM_KINDS and site.weight is not None and site.T > 1:
                site.strategy = force_strategy
    _, per_row, per_pair = site_costs(plan, x1.shape[0], n2, ctx.k, full, diagonal_only)
    s = ctx.itemsize
    per_pair += ctx.k * ctx.k if full else 1
    sites = plan.sites
    fb = plan.fallback
    eye = torch.eye(ctx.k, dtype=ctx.dtype, device=ctx.device)

    def features(x: torch.Tensor) -> _Feat:
        feat = _Feat([], [])
        if sites:
            cot = eye[:, None, :].expand(ctx.k, x.shape[0], ctx.k)
            captured, _ = _capture(ctx, sites, x, cot)
            feat = _site_features(sites, captured)
        if fb:
            feat.jac.extend(jacobians(ctx, x, fb))
        return feat

    return run_blocks(
        features,
        lambda a, b: _pair(a, b, full),
        lambda a: _diag(a, full),
        x1,
        x2,
        diagonal_only,
        per_row * s,
        per_pair * s,
        batch_size,
        memory_budget,
        progress,
        "eNTK (structured)",
    )
