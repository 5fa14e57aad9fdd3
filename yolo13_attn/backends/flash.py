"""``flash``: FlashAttention-2 - the flash-attn package's ``flash_attn_func`` when installed, else the
FA2 kernel bundled in PyTorch (``aten._scaled_dot_product_flash_attention``). Reports say which.

FA2 computes in fp16/bf16; float32 layers are cast to fp16 and back, as the official YOLOv13
flash path does.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import Tensor

from ..ops.reference import (
    area_attention_reference,
    contiguous_as,
    from_area_tokens,
    hyperedge_logits,
    hypergraph_aggregate_reference,
    to_area_tokens,
)
from .base import AreaAttentionBackend, HypergraphBackend, KernelPlan, OpCall
from .naive import NaiveHypergraph
from .registry import register

HALF_DTYPES = (torch.float16, torch.bfloat16)


#: decided once at import, so the per-call path does no package lookups (and traces under torch.compile)
FLASH_ATTN_INSTALLED = importlib.util.find_spec("flash_attn") is not None


def flash_implementation() -> str:
    """Which FA2 the ``flash`` backend calls on this machine."""
    return "flash_attn.flash_attn_func" if FLASH_ATTN_INSTALLED else "torch bundled FA2 (aten._scaled_dot_product_flash_attention)"


def flash_attn_func() -> Callable[..., object]:
    """The flash-attn package's ``flash_attn_func`` (tests substitute a contract-checking double)."""
    from flash_attn import flash_attn_func as func

    return func


def flash_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """FA2 on ``(batch, seq, heads, head_dim)`` tensors, computed in the half ``dtype`` (cast and made
    contiguous in one copy) -> ``(out (batch, seq_q, heads, head_dim) in dtype, lse (batch, heads, seq_q) fp32)``."""
    q, k, v = (contiguous_as(t, dtype) for t in (q, k, v))
    if FLASH_ATTN_INSTALLED:
        out, lse, _ = flash_attn_func()(q, k, v, softmax_scale=scale, return_attn_probs=True)
        return out, lse
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, False, False, scale=scale
    )[:2]
    return out.transpose(1, 2), lse


class _FlashDeclaration:
    """What both flash ops declare: CUDA, half compute, head_dim <= 256 and a multiple of 8, sm80+."""

    name = "flash"
    devices = frozenset({"cuda"})
    max_head_dim = 256
    head_dim_multiple = 8
    deterministic = True
    # fp32 layers are served in fp16 only when asked for explicitly: auto never lowers precision
    auto_dtypes = frozenset(HALF_DTYPES)

    @classmethod
    def availability_reasons(cls) -> list[str]:
        return [] if torch.cuda.is_available() else ["no CUDA device visible to PyTorch"]

    @classmethod
    def extra_reasons(cls, call: OpCall) -> list[str]:
        if call.device_type == "cuda" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(call.device)
            if major < 8:
                return [f"FA2 needs compute capability >= 8.0, {call.device} has {major}.{minor}"]
        return []

    @classmethod
    def compute_dtype(cls, dtype: torch.dtype) -> torch.dtype:
        return dtype if dtype in HALF_DTYPES else torch.float16

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        compute = cls.compute_dtype(call.dtype)
        note = "" if compute == call.dtype else "float32 inputs computed in float16, as the official flash path does"
        return KernelPlan(flash_implementation(), compute, note)


@register
class FlashAreaAttention(_FlashDeclaration, AreaAttentionBackend):
    # under torch.compile its cast-and-copy path measured slower than inductor's own code: auto leaves it out
    priority, compiled_priority = 30, None
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    description = "FlashAttention-2 on (B*area, N/area, heads, head_dim) copies; fp32 computed in fp16"

    @classmethod
    def forward(cls, q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
        if q.numel() == 0:  # FA2 is not launched on empty batches or sequences: the reference's (empty) answer
            return area_attention_reference(q, k, v, area, scale)
        b, dtype = q.shape[0], cls.compute_dtype(q.dtype)
        # (B, area, h, n, d) -> (B*area, n, h, d): the layout flash_attn_func takes
        qt, kt, vt = (to_area_tokens(t, area).flatten(0, 1).transpose(1, 2) for t in (q, k, v))
        out, _ = flash_attention(qt, kt, vt, scale, dtype)
        return from_area_tokens(out.transpose(1, 2).unflatten(0, (b, area)), q.dtype)


@register
class FlashHypergraph(_FlashDeclaration, HypergraphBackend):
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    priority, compiled_priority = 40, None
    supports_dropout_mask = False
    description = (
        "aggregation through FA2 (M prototype queries, head dim D <= 256, no logit dropout: FA2 takes "
        "no bias); scatter is the reference matmul"
    )

    @classmethod
    def aggregate(cls, x, xp, prototypes, scale, dropout_mask):
        if x.numel() == 0 or prototypes.numel() == 0:  # not launched on empty inputs: he = 0, lse = -inf for N = 0
            return hypergraph_aggregate_reference(x, xp, prototypes, scale)
        dtype = cls.compute_dtype(x.dtype)
        he, lse = flash_attention(*(t.unsqueeze(2) for t in (prototypes, xp, x)), scale, dtype)
        if torch.is_grad_enabled() and (xp.requires_grad or prototypes.requires_grad):
            # FA2 returns lse without a gradient; the scatter needs one, so recompute it differentiably
            lse = torch.logsumexp(hyperedge_logits(xp, prototypes, scale).float(), dim=1)
        return he.squeeze(2).to(x.dtype), lse.reshape(lse.shape[0], -1).float()

    scatter = NaiveHypergraph.scatter
