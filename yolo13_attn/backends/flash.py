"""``flash``: FlashAttention - the flash-attn 2 package's ``flash_attn_func`` when installed, else
FlashAttention-4 (``flash_attn.cute``) on sm90/sm100 GPUs for calls without autograd, else the FA2
kernel bundled in PyTorch (``aten._scaled_dot_product_flash_attention``). ``flash_impls.py`` holds
the three and the choice; reports say which serves each layer and why.

FlashAttention computes in fp16/bf16; float32 layers are cast to fp16 and back, as the official
YOLOv13 flash path does.
"""

from __future__ import annotations

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
from . import flash_impls
from .base import AreaAttentionBackend, HypergraphBackend, KernelPlan, OpCall
from .naive import NaiveHypergraph
from .registry import BackendUnsupportedError, register

HALF_DTYPES = (torch.float16, torch.bfloat16)


def flash_implementation(device: torch.device | str = "cuda", head_dim: int = 32) -> str:
    """Which implementation the flash backend runs for an inference call at ``head_dim`` (YOLOv13's
    area attention: 32) on ``device``, and why."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device: flash needs one"
    return flash_impls.choice_for(device, head_dim, False).describe()


def prepare(device: torch.device | str, dtype: torch.dtype, head_dim: int) -> str:
    """Compile ahead, outside CUDA-graph capture and ``torch.compile``, what the flash backend's first
    inference call on ``device`` for a ``dtype`` layer at ``head_dim`` would compile (FlashAttention-4's
    kernels; FA2 needs nothing). Returns which implementation serves such calls, and why."""
    return flash_impls.warm_up(device, _FlashDeclaration.compute_dtype(dtype), head_dim).describe()


def flash_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """FlashAttention on ``(batch, seq, heads, head_dim)`` tensors, computed in the half ``dtype`` (cast and
    made contiguous in one copy) by the implementation chosen for this device, head dim and autograd need
    -> ``(out (batch, seq_q, heads, head_dim) in dtype, lse (batch, heads, seq_q) fp32)``."""
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    choice = flash_impls.choice_for(q.device, q.shape[-1], grad)
    if choice.impl is None:
        raise BackendUnsupportedError(f"flash: {choice.reason}")
    q, k, v = (contiguous_as(t, dtype) for t in (q, k, v))
    return choice.impl.attention(q, k, v, scale)


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
        choice = flash_impls.choice_for(call.device, call.head_dim, call.requires_grad)
        return [] if choice.impl is not None else [choice.reason]

    @classmethod
    def prepare(cls, call: OpCall) -> None:
        if call.device_type == "cuda" and not call.requires_grad:
            prepare(call.device, call.dtype, call.head_dim)

    @classmethod
    def compute_dtype(cls, dtype: torch.dtype) -> torch.dtype:
        return dtype if dtype in HALF_DTYPES else torch.float16

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        compute = cls.compute_dtype(call.dtype)
        choice = flash_impls.choice_for(call.device, call.head_dim, call.requires_grad)
        fp32 = "float32 inputs computed in float16, as the official flash path does"
        notes = [choice.reason] + ([] if compute == call.dtype else [fp32])
        return KernelPlan(choice.impl.kernel if choice.impl else "none", compute, "; ".join(notes))


@register
class FlashAreaAttention(_FlashDeclaration, AreaAttentionBackend):
    # under torch.compile its cast-and-copy path measured slower than inductor's own code: auto leaves it out
    priority, compiled_priority = 30, None
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    description = (
        "FlashAttention (FA2 or FA4, see flash_impls) on (B*area, N/area, heads, head_dim) copies; "
        "fp32 computed in fp16"
    )

    @classmethod
    def forward(cls, q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
        if q.numel() == 0:  # not launched on empty batches or sequences: the reference's (empty) answer
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
        "aggregation through FlashAttention (M prototype queries, head dim D <= 256, no logit dropout: it "
        "takes no bias); scatter is the reference matmul"
    )

    @classmethod
    def aggregate(cls, x, xp, prototypes, scale, dropout_mask):
        if x.numel() == 0 or prototypes.numel() == 0:  # not launched on empty inputs: he = 0, lse = -inf for N = 0
            return hypergraph_aggregate_reference(x, xp, prototypes, scale)
        dtype = cls.compute_dtype(x.dtype)
        he, lse = flash_attention(*(t.unsqueeze(2) for t in (prototypes, xp, x)), scale, dtype)
        if torch.is_grad_enabled() and (xp.requires_grad or prototypes.requires_grad):
            # FlashAttention returns lse without a gradient; the scatter needs one, so recompute it differentiably
            lse = torch.logsumexp(hyperedge_logits(xp, prototypes, scale).float(), dim=1)
        return he.squeeze(2).to(x.dtype), lse.reshape(lse.shape[0], -1).float()

    scatter = NaiveHypergraph.scatter
