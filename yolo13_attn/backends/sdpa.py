"""``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; PyTorch picks the inner kernel.

The report names the kernel PyTorch would pick for the call's device, dtype and head dim
(flash, memory-efficient, cuDNN or math), as asked of ``torch._fused_sdp_choice``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.reference import from_area_tokens, hyperedge_logits, to_area_tokens
from .base import AreaAttentionBackend, HypergraphBackend, KernelPlan, OpCall
from .naive import NaiveHypergraph
from .registry import register

_SDP_KERNELS = {0: "math", 1: "flash", 2: "memory-efficient", 3: "cuDNN", 4: "overrideable"}


def sdpa_kernel_choice(call: OpCall, seq_q: int = 64, seq_k: int = 64) -> str:
    """The SDPA inner kernel PyTorch selects for a call like ``call`` (probed on small contiguous
    tensors, the layout this backend hands to SDPA)."""
    shape_q, shape_k = (1, 1, seq_q, call.head_dim), (1, 1, seq_k, call.head_dim)
    q = torch.empty(shape_q, device=call.device, dtype=call.dtype)
    k = torch.empty(shape_k, device=call.device, dtype=call.dtype)
    try:
        choice = torch._fused_sdp_choice(q, k, k, None, 0.0, False)
    except (AttributeError, RuntimeError):
        return "unknown (PyTorch does not expose its choice)"
    return _SDP_KERNELS.get(int(choice), f"backend #{int(choice)}")


@register
class SdpaAreaAttention(AreaAttentionBackend):
    name = "sdpa"
    priority, compiled_priority = 40, 30
    deterministic = False
    description = "torch scaled_dot_product_attention on (B*area, heads, N/area, head_dim) copies"

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan(f"sdpa/{sdpa_kernel_choice(call)}", call.dtype)

    @classmethod
    def forward(cls, q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
        b = q.shape[0]
        # contiguous head_dim: with a strided last dimension PyTorch silently takes its math fallback
        qt, kt, vt = (to_area_tokens(t, area).flatten(0, 1).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(qt, kt, vt, scale=scale)
        return from_area_tokens(out.unflatten(0, (b, area)))


@register
class SdpaHypergraph(HypergraphBackend):
    name = "sdpa"
    priority = compiled_priority = 30
    deterministic = False
    # SDPA takes only an additive bias; emulating the multiplicative logit dropout with one (bias = logit *
    # (mask - 1), in the input dtype) failed the 2x rule on fp16 gradients (kernel sweep, hg_core_train):
    # training layers with dropout fall back to the fastest backend that applies the mask itself
    supports_dropout_mask = False
    description = (
        "aggregation as SDPA with the M prototypes as queries; lse from the explicit (B, N, M) logits; "
        "scatter is the reference matmul; no logit dropout"
    )

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        kernel = sdpa_kernel_choice(call, seq_q=8, seq_k=64)
        return KernelPlan(f"sdpa/{kernel} + matmul scatter", call.dtype)

    @classmethod
    def aggregate(cls, x, xp, prototypes, scale, dropout_mask):
        # (B, N, M) logits for the lse: small, so fp32 costs little (float64 inputs keep float64)
        logits = hyperedge_logits(xp, prototypes, scale).to(torch.promote_types(x.dtype, torch.float32))
        q, k, v = (t.unsqueeze(1).contiguous() for t in (prototypes, xp, x))  # x is a strided token view
        he = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return he.squeeze(1), torch.logsumexp(logits, dim=1)

    scatter = NaiveHypergraph.scatter
