"""``naive``: the reference math (matmul + softmax) with float32 accumulation for half inputs."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.reference import area_attention_reference, hypergraph_aggregate_reference, hypergraph_scatter_reference
from .base import AreaAttentionBackend, HypergraphBackend, KernelPlan, OpCall
from .registry import register


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@register
class NaiveAreaAttention(AreaAttentionBackend):
    name = "naive"
    description = "reference matmul + softmax (ops/reference.py), fp32 accumulation for fp16/bf16"

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan("matmul + softmax (reference)", accumulation_dtype(call.dtype))

    @classmethod
    def forward(cls, q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
        return area_attention_reference(q, k, v, area, scale, compute_dtype=accumulation_dtype(q.dtype))


@register
class NaiveHypergraph(HypergraphBackend):
    name = "naive"
    description = "reference matmul + softmax over vertices (ops/reference.py), fp32 accumulation for fp16/bf16"

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan("matmul + logsumexp (reference)", accumulation_dtype(call.dtype))

    @classmethod
    def aggregate(cls, x, xp, prototypes, scale, dropout_mask):
        return hypergraph_aggregate_reference(x, xp, prototypes, scale, dropout_mask, accumulation_dtype(x.dtype))

    @classmethod
    def scatter(cls, xp, prototypes, lse, he, scale, dropout_mask):
        return hypergraph_scatter_reference(xp, prototypes, lse, he, scale, dropout_mask, accumulation_dtype(he.dtype))
