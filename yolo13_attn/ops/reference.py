"""The one reference implementation of YOLOv13's two attention-like ops.

Everything else is measured against these functions: the unpatched layers call them, the
``naive`` backend is them, the tests run them in float64 as ground truth and in the input dtype
as the "plain PyTorch" error baseline, and fallbacks land here.

Layouts are the ones the convolutions produce, so that fused kernels can read them in place:

* Area attention works on per-head *channel-major* views ``(B, heads, head_dim, N)``: for a
  ``(B, C, H, W)`` convolution output ``t``, ``t.unflatten(1, (heads, head_dim)).flatten(3)`` is such
  a view without a copy (NCHW or channels-last). Token ``n = h * W + w``; with ``area > 1`` the N
  tokens are cut into ``area`` contiguous chunks of ``N // area`` tokens and attention never
  crosses a chunk.
* The hypergraph ops work on token-major ``(B, N, D)`` tensors (what ``nn.Linear`` consumes) with
  ``M`` hyperedge prototypes ``(B, M, D)``. The vertex -> hyperedge step is attention with the M
  prototypes as queries (softmax over the N vertices); the hyperedge -> vertex step reuses the
  same weights ``exp(logit - lse)`` without renormalising over the M hyperedges.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "area_attention_reference",
    "hyperedge_logits",
    "hypergraph_aggregate_reference",
    "hypergraph_scatter_reference",
    "hypergraph_scale",
]


def to_area_tokens(t: Tensor, area: int) -> Tensor:
    """``(B, h, d, N)`` -> ``(B, area, h, N // area, d)``, a view (``area`` a validated int dividing N)."""
    return t.unflatten(3, (area, t.shape[3] // area)).permute(0, 3, 1, 4, 2)


def from_area_tokens(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``(B, area, h, n, d)`` -> ``(B, h, d, area * n)``, contiguous (cast to ``dtype`` in the same
    copy): the inverse of :func:`to_area_tokens`."""
    return contiguous_as(t.permute(0, 2, 4, 1, 3), dtype or t.dtype).flatten(3)


def contiguous_as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` as a contiguous tensor of ``dtype`` with at most one copy (``.to(dtype).contiguous()``
    copies twice when ``t`` is a permuted view and the dtype changes)."""
    if t.dtype == dtype:
        return t.contiguous()
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)


def area_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    area: int = 1,
    scale: float | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Softmax attention inside each of ``area`` horizontal strips of the token sequence.

    Args:
        q, k, v: ``(B, heads, head_dim, N)``, any strides; ``N % area == 0``.
        area: number of contiguous token chunks; attention never crosses a chunk.
        scale: logit scale, ``head_dim ** -0.5`` by default.
        compute_dtype: dtype the matmuls and softmax run in (``None``: the input dtype, i.e.
            plain PyTorch). The result is returned in the input dtype.

    Returns:
        ``(B, heads, head_dim, N)``, contiguous, dtype of ``q``.
    """
    scale = q.shape[2] ** -0.5 if scale is None else scale
    dtype = compute_dtype or q.dtype
    qt, kt, vt = (to_area_tokens(t.to(dtype), area) for t in (q, k, v))
    weights = torch.softmax((qt @ kt.transpose(-1, -2)) * scale, dim=-1)
    return from_area_tokens(weights @ vt).to(q.dtype)


def hypergraph_scale(embed_dim: int, num_heads: int) -> float:
    """Logit scale of AdaHyperedgeGen: the mean over heads of per-head dot products / sqrt(head_dim).

    ``mean_h <x_h, p_h> / sqrt(D // heads) == <x, p> / (heads * sqrt(D // heads))``.
    """
    return 1.0 / (num_heads * math.sqrt(embed_dim // num_heads))


def hyperedge_logits(xp: Tensor, prototypes: Tensor, scale: float, dropout_mask: Tensor | None = None) -> Tensor:
    """Vertex-hyperedge logits ``(B, N, M)`` = ``scale * xp @ prototypes^T`` (times the dropout mask).

    Args:
        xp: ``(B, N, D)`` projected vertex features.
        prototypes: ``(B, M, D)`` per-image hyperedge prototypes.
        dropout_mask: ``(B, N, M)`` multiplicative logit mask (0 or ``1/(1-p)``), or None.
    """
    logits = (xp @ prototypes.transpose(-1, -2)) * scale
    return logits if dropout_mask is None else logits * dropout_mask.to(logits.dtype)


def hypergraph_aggregate_reference(
    x: Tensor,
    xp: Tensor,
    prototypes: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Vertex -> hyperedge: ``he[b, m] = sum_n softmax_n(logits[b, :, m])[n] * x[b, n]``.

    Args:
        x: ``(B, N, D)`` vertex features (the values), any strides.
        xp: ``(B, N, D)`` projected vertex features (the keys).
        prototypes: ``(B, M, D)`` hyperedge prototypes (the queries).
        scale: logit scale (:func:`hypergraph_scale`).
        dropout_mask: ``(B, N, M)`` multiplicative logit mask or None (eval).
        compute_dtype: dtype of the arithmetic (``None``: the input dtype).

    Returns:
        ``he`` ``(B, M, D)`` in the dtype of ``x`` and ``lse`` ``(B, M)`` float32 (float64 for float64
        arithmetic), the log-sum-exp of the logits over the N vertices.
    """
    dtype = compute_dtype or x.dtype
    logits = hyperedge_logits(xp.to(dtype), prototypes.to(dtype), scale, dropout_mask)
    lse = torch.logsumexp(logits, dim=1)  # (B, M)
    weights = torch.exp(logits - lse.unsqueeze(1))  # (B, N, M), columns sum to 1
    he = weights.transpose(1, 2) @ x.to(dtype)
    return he.to(x.dtype), lse.to(torch.promote_types(lse.dtype, torch.float32))


def hypergraph_scatter_reference(
    xp: Tensor,
    prototypes: Tensor,
    lse: Tensor,
    he: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Hyperedge -> vertex with the aggregation's weights: ``xn[b, n] = sum_m exp(logit - lse[b, m]) he[b, m]``.

    Args:
        xp, prototypes, scale, dropout_mask: as for :func:`hypergraph_aggregate_reference`.
        lse: ``(B, M)`` log-sum-exp returned by the aggregation.
        he: ``(B, M, D)`` hyperedge features (after ``edge_proj``).

    Returns:
        ``(B, N, D)`` in the dtype of ``he``.
    """
    dtype = compute_dtype or he.dtype
    logits = hyperedge_logits(xp.to(dtype), prototypes.to(dtype), scale, dropout_mask)
    weights = torch.exp(logits - lse.to(dtype).unsqueeze(1))
    return (weights @ he.to(dtype)).to(he.dtype)
