"""``naive``: the reference math (matmul + softmax) in the input dtype - the official non-flash math.

PyTorch's half-precision matmul and softmax kernels accumulate in float32; intermediates are
stored in the input dtype, as the official YOLOv13 code does. This is also the plain-PyTorch
baseline of the equivalence rule.
"""

from __future__ import annotations

from torch import Tensor

from ..ops.grouped_conv import grouped_conv_reference
from ..ops.reference import area_attention_reference, hypergraph_aggregate_reference, hypergraph_scatter_reference
from .base import AreaAttentionBackend, GroupedConvBackend, HypergraphBackend, KernelPlan, OpCall
from .registry import register


@register
class NaiveAreaAttention(AreaAttentionBackend):
    name = "naive"
    priority = compiled_priority = 100  # serves every call: the last resort
    description = "reference matmul + softmax (ops/reference.py) in the input dtype, as the official code"

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan("matmul + softmax (reference)", call.dtype)

    @classmethod
    def forward(cls, q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
        return area_attention_reference(q, k, v, area, scale)


@register
class NaiveHypergraph(HypergraphBackend):
    name = "naive"
    priority = compiled_priority = 100
    description = "reference matmul + softmax over vertices (ops/reference.py) in the input dtype, as the official code"

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan("matmul + logsumexp (reference)", call.dtype)

    @classmethod
    def aggregate(cls, x, xp, prototypes, scale, dropout_mask):
        return hypergraph_aggregate_reference(x, xp, prototypes, scale, dropout_mask)

    @classmethod
    def scatter(cls, xp, prototypes, lse, he, scale, dropout_mask):
        return hypergraph_scatter_reference(xp, prototypes, lse, he, scale, dropout_mask)


@register
class NaiveGroupedConv(GroupedConvBackend):
    name = "naive"
    priority = compiled_priority = 100
    description = "the grouped convolution as PyTorch runs it (F.conv2d with groups), as the official code"

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan("F.conv2d with groups (reference)", call.dtype)

    @classmethod
    def forward(cls, x, weight, bias, stride, padding, dilation, groups):
        return grouped_conv_reference(x, weight, bias, stride, padding, dilation, groups)
