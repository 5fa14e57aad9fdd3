"""Hypergraph aggregation / scatter on the Triton kernels: launchers, custom ops and autograd.

* :func:`aggregate_forward`, :func:`scatter_forward`, :func:`aggregate_backward`,
  :func:`scatter_backward`: plain launchers with optional ``out`` buffers (tests poison them).
* ``torch.ops.yolo13_attn.triton_hypergraph_aggregate`` / ``..._scatter`` and their
  ``..._backward`` ops: ``torch.library`` custom ops with fake implementations (torch.compile,
  CUDA graphs) and registered autograd. ``lse`` is a differentiable output of the aggregation and
  a differentiable input of the scatter, so ``d lse`` flows from the scatter back into the
  aggregation (``d logits += softmax * dlse``). The dropout mask gets no gradient.

All floating inputs of one op are brought to one compute dtype (``x.dtype`` for the aggregation,
``he.dtype`` for the scatter) - a copy only when a caller mixes dtypes; gradients are returned in
each input's own dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from ..kernel_glue import as_dtype, lse32
from .configs import hypergraph_aggregate_config, hypergraph_bwd_config, hypergraph_scatter_config, with_overrides
from .device import device_guard


def aggregate_forward(
    x: Tensor,
    xp: Tensor,
    prototypes: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    *,
    he: Tensor | None = None,
    lse: Tensor | None = None,
    config: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """``he (B, M, D)`` in x's dtype and ``lse (B, M)`` float32 (natural log)."""
    b, n, d = x.shape
    m = prototypes.shape[1]
    xp, prototypes = as_dtype(xp, x.dtype), as_dtype(prototypes, x.dtype)
    he = torch.empty((b, m, d), dtype=x.dtype, device=x.device) if he is None else he
    lse = torch.empty((b, m), dtype=torch.float32, device=x.device) if lse is None else lse
    if b * m * d == 0:
        return he, lse
    if n == 0:  # no vertices: lse = -inf (torch.logsumexp of nothing) and he = 0 (a sum of nothing), as the reference
        return he.zero_(), lse.fill_(float("-inf"))
    cfg = with_overrides(hypergraph_aggregate_config(b, n, m, d, x.dtype, x.device), config)
    splits = -(-n // cfg.tokens_per_split)
    workspace = None
    if splits > 1:
        workspace = (
            torch.empty((b, splits, m, d), dtype=torch.float32, device=x.device),
            torch.empty((b, splits, m), dtype=torch.float32, device=x.device),
            torch.empty((b, splits, m), dtype=torch.float32, device=x.device),
        )
    with device_guard(x):
        kernels.hypergraph_aggregate.launch_hypergraph_aggregate(
            x, xp, prototypes, dropout_mask, he, lse, scale, workspace=workspace, **cfg.launch_kwargs()
        )
    return he, lse


def scatter_forward(
    xp: Tensor,
    prototypes: Tensor,
    lse: Tensor,
    he: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    *,
    out: Tensor | None = None,
    config: dict | None = None,
) -> Tensor:
    """``xn (B, N, D)`` in he's dtype, contiguous."""
    b, n, d = xp.shape
    m = prototypes.shape[1]
    xp, prototypes = as_dtype(xp, he.dtype), as_dtype(prototypes, he.dtype)
    out = torch.empty((b, n, d), dtype=he.dtype, device=he.device) if out is None else out
    if out.numel() == 0:
        return out
    cfg = with_overrides(hypergraph_scatter_config(b, n, m, d, he.dtype, he.device), config)
    with device_guard(he):
        kernels.hypergraph_scatter.launch_hypergraph_scatter(
            xp, prototypes, lse32(lse), he, dropout_mask, out, scale, **cfg.launch_kwargs(split=False)
        )
    return out


def _reduce(part: Tensor, splits: int, dtype: torch.dtype) -> Tensor:
    """Sum the split-N partials ``(B, S, ...)``; with one split the kernel already wrote the result."""
    return as_dtype(part.squeeze(1), dtype) if splits == 1 else part.sum(1).to(dtype)


def aggregate_backward(
    dhe: Tensor,
    dlse: Tensor | None,
    x: Tensor,
    xp: Tensor,
    prototypes: Tensor,
    he: Tensor,
    lse: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    *,
    dx: Tensor | None = None,
    dxp: Tensor | None = None,
    config: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dxp, dprototypes)`` of the aggregation, given ``dhe`` and (optionally) ``dlse``."""
    b, n, d = x.shape
    m = prototypes.shape[1]
    dtype = x.dtype
    xp_c, p_c = as_dtype(xp, dtype), as_dtype(prototypes, dtype)
    dx = torch.empty((b, n, d), dtype=dtype, device=x.device) if dx is None else dx
    dxp_c = torch.empty((b, n, d), dtype=dtype, device=x.device) if dxp is None or dxp.dtype != dtype else dxp
    cfg = with_overrides(hypergraph_bwd_config(b, n, m, d, dtype, x.device), config)
    splits = max(1, -(-n // cfg.tokens_per_split))
    dp_part = torch.empty((b, splits, m, d), dtype=torch.float32 if splits > 1 else dtype, device=x.device)
    if n and b * m * d:
        with device_guard(x):
            kernels.hypergraph_bwd.launch_hypergraph_bwd(
                xp_c,
                p_c,
                lse32(lse),
                dropout_mask,
                dhe,
                he,
                None if dlse is None else lse32(dlse),
                x,
                dxp_c,
                dx,
                dp_part,
                None,
                None,
                scale,
                aggregate=True,
                **cfg.launch_kwargs(),
            )
    else:  # nothing to launch (B, N, M or D is 0): every gradient is a sum of nothing
        for t in (dx, dxp_c, dp_part):
            t.zero_()
    if dxp is not None and dxp is not dxp_c:
        dxp.copy_(dxp_c)
        dxp_c = dxp
    return dx, as_dtype(dxp_c, xp.dtype), _reduce(dp_part, splits, prototypes.dtype)


def scatter_backward(
    dxn: Tensor,
    xp: Tensor,
    prototypes: Tensor,
    lse: Tensor,
    he: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    *,
    dxp: Tensor | None = None,
    config: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dxp, dprototypes, dlse, dhe)`` of the scatter, given ``dxn``."""
    b, n, d = xp.shape
    m = prototypes.shape[1]
    dtype = he.dtype
    xp_c, p_c = as_dtype(xp, dtype), as_dtype(prototypes, dtype)
    dxn = as_dtype(dxn, dtype)
    dxp_c = torch.empty((b, n, d), dtype=dtype, device=he.device) if dxp is None or dxp.dtype != dtype else dxp
    cfg = with_overrides(hypergraph_bwd_config(b, n, m, d, dtype, he.device), config)
    splits = max(1, -(-n // cfg.tokens_per_split))
    part_dtype = torch.float32 if splits > 1 else dtype
    dp_part = torch.empty((b, splits, m, d), dtype=part_dtype, device=he.device)
    dhe_part = torch.empty((b, splits, m, d), dtype=part_dtype, device=he.device)
    dlse_part = torch.empty((b, splits, m), dtype=torch.float32, device=he.device)
    if n and b * m * d:
        with device_guard(he):
            kernels.hypergraph_bwd.launch_hypergraph_bwd(
                xp_c,
                p_c,
                lse32(lse),
                dropout_mask,
                he,
                None,
                None,
                dxn,
                dxp_c,
                None,
                dp_part,
                dhe_part,
                dlse_part,
                scale,
                aggregate=False,
                **cfg.launch_kwargs(),
            )
    else:  # nothing to launch (B, N, M or D is 0): every gradient is a sum of nothing
        for t in (dxp_c, dp_part, dhe_part, dlse_part):
            t.zero_()
    if dxp is not None and dxp is not dxp_c:
        dxp.copy_(dxp_c)
        dxp_c = dxp
    return (
        as_dtype(dxp_c, xp.dtype),
        _reduce(dp_part, splits, prototypes.dtype),
        _reduce(dlse_part, splits, lse.dtype),
        _reduce(dhe_part, splits, he.dtype),
    )


# ---- torch.library custom ops -------------------------------------------------------------------


@torch.library.custom_op("yolo13_attn::triton_hypergraph_aggregate", mutates_args=())
def _aggregate_op(
    x: Tensor, xp: Tensor, prototypes: Tensor, scale: float, dropout_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    return aggregate_forward(x, xp, prototypes, scale, dropout_mask)


@_aggregate_op.register_fake
def _(x, xp, prototypes, scale, dropout_mask):
    b, _, d = x.shape
    m = prototypes.shape[1]
    return x.new_empty((b, m, d)), x.new_empty((b, m), dtype=torch.float32)


@torch.library.custom_op("yolo13_attn::triton_hypergraph_aggregate_backward", mutates_args=())
def _aggregate_bwd_op(
    dhe: Tensor,
    dlse: Tensor | None,
    x: Tensor,
    xp: Tensor,
    prototypes: Tensor,
    he: Tensor,
    lse: Tensor,
    scale: float,
    dropout_mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    return aggregate_backward(dhe, dlse, x, xp, prototypes, he, lse, scale, dropout_mask)


@_aggregate_bwd_op.register_fake
def _(dhe, dlse, x, xp, prototypes, he, lse, scale, dropout_mask):
    return x.new_empty(x.shape), xp.new_empty(xp.shape), prototypes.new_empty(prototypes.shape)


def _aggregate_setup(ctx, inputs, output):
    x, xp, prototypes, scale, dropout_mask = inputs
    he, lse = output
    ctx.save_for_backward(x, xp, prototypes, he, lse, dropout_mask)
    ctx.scale = scale


def _aggregate_backward(ctx, dhe, dlse):
    x, xp, prototypes, he, lse, dropout_mask = ctx.saved_tensors
    dhe = torch.zeros_like(he) if dhe is None else dhe
    dx, dxp, dp = torch.ops.yolo13_attn.triton_hypergraph_aggregate_backward(
        dhe, dlse, x, xp, prototypes, he, lse, ctx.scale, dropout_mask
    )
    return dx, dxp, dp, None, None


_aggregate_op.register_autograd(_aggregate_backward, setup_context=_aggregate_setup)


@torch.library.custom_op("yolo13_attn::triton_hypergraph_scatter", mutates_args=())
def _scatter_op(
    xp: Tensor, prototypes: Tensor, lse: Tensor, he: Tensor, scale: float, dropout_mask: Tensor | None
) -> Tensor:
    return scatter_forward(xp, prototypes, lse, he, scale, dropout_mask)


@_scatter_op.register_fake
def _(xp, prototypes, lse, he, scale, dropout_mask):
    b, n, d = xp.shape
    return he.new_empty((b, n, d))


@torch.library.custom_op("yolo13_attn::triton_hypergraph_scatter_backward", mutates_args=())
def _scatter_bwd_op(
    dxn: Tensor, xp: Tensor, prototypes: Tensor, lse: Tensor, he: Tensor, scale: float, dropout_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return scatter_backward(dxn, xp, prototypes, lse, he, scale, dropout_mask)


@_scatter_bwd_op.register_fake
def _(dxn, xp, prototypes, lse, he, scale, dropout_mask):
    return (
        xp.new_empty(xp.shape),
        prototypes.new_empty(prototypes.shape),
        lse.new_empty(lse.shape),
        he.new_empty(he.shape),
    )


def _scatter_setup(ctx, inputs, output):
    xp, prototypes, lse, he, scale, dropout_mask = inputs
    ctx.save_for_backward(xp, prototypes, lse, he, dropout_mask)
    ctx.scale = scale


def _scatter_backward(ctx, dxn):
    xp, prototypes, lse, he, dropout_mask = ctx.saved_tensors
    dxp, dp, dlse, dhe = torch.ops.yolo13_attn.triton_hypergraph_scatter_backward(
        dxn, xp, prototypes, lse, he, ctx.scale, dropout_mask
    )
    return dxp, dp, dlse, dhe, None, None


_scatter_op.register_autograd(_scatter_backward, setup_context=_scatter_setup)


def hypergraph_aggregate(
    x: Tensor, xp: Tensor, prototypes: Tensor, scale: float, dropout_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Differentiable vertex -> hyperedge aggregation: ``(he (B, M, D), lse (B, M) float32)``."""
    return torch.ops.yolo13_attn.triton_hypergraph_aggregate(x, xp, prototypes, float(scale), dropout_mask)


def hypergraph_scatter(
    xp: Tensor, prototypes: Tensor, lse: Tensor, he: Tensor, scale: float, dropout_mask: Tensor | None = None
) -> Tensor:
    """Differentiable hyperedge -> vertex scatter: ``xn (B, N, D)`` in he's dtype."""
    return torch.ops.yolo13_attn.triton_hypergraph_scatter(xp, prototypes, lse, he, float(scale), dropout_mask)
