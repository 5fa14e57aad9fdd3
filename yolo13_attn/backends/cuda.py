"""``cuda``: the CUDA C++ kernels of ``csrc/`` (``yolo13_attn.cuda_ops``).

The kernels come prebuilt (``YOLO13_ATTN_BUILD_CUDA=1 pip install .`` builds ``yolo13_attn._C``) or are
compiled just in time for the current GPU when ``patch()`` prepares a layer for this backend (cached; see
``cuda_ops/build.py``). Availability is answered without building: a CUDA device, and either the prebuilt
module or a compiler (nvcc via ``CUDA_HOME``, ninja). The ops are ``torch.library`` custom ops with fake
implementations and autograd, so patched models compile with ``torch.compile`` and capture into CUDA graphs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import AreaAttentionBackend, HypergraphBackend, KernelPlan, OpCall
from .registry import register


class _CudaDeclaration:
    name = "cuda"
    devices = frozenset({"cuda"})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    # after triton: measured slower than triton on 62 of 63 area shapes, faster than FA2 on 58
    # (bench/results/nvidia-h100-80gb-hbm3-2026-11-25/cuda)
    priority = compiled_priority = 20
    deterministic = True  # no atomics: dq has its own kernel

    @classmethod
    def availability_reasons(cls) -> list[str]:
        from ..cuda_ops import build

        return build.availability_reasons()

    @classmethod
    def prepare(cls, call: OpCall) -> None:
        if call.device_type == "cuda" and not cls.not_supported_reasons(call):
            cls._ensure_loaded()

    @classmethod
    def _ensure_loaded(cls) -> None:
        raise NotImplementedError


@register
class CudaAreaAttention(_CudaDeclaration, AreaAttentionBackend):
    min_head_dim = max_head_dim = 32  # all of YOLOv13's area-attention layers; the only width compiled
    supports_backward = True
    description = (
        "CUDA C++ area attention (csrc/area_attention_*.cu): reads the strided channel-major (B, heads, 32, N) "
        "q/k/v in place (16-byte cp.async where the strides allow); forward kernel chosen per shape: Hopper "
        "wgmma for small grids on sm90, otherwise mma.sync m16n8k16 with the chunk's K/V resident in shared "
        "memory (<= 640 tokens) or streamed; online softmax in exp2 with fp32 accumulation; FA2-style backward "
        "(delta, dk/dv and dq kernels, no atomics)"
    )

    @classmethod
    def _ensure_loaded(cls) -> None:
        from ..cuda_ops import area

        area.ensure_loaded()

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        kernel = "cuda area_attention_fwd_{wgmma,resident,tiled}_kernel (per shape)" + (
            " + delta/dkdv/dq kernels" if call.requires_grad else ""
        )
        note = (
            "fp32 accumulation, softmax maxima and exponentials; wgmma on sm90 for small grids, mma.sync otherwise; "
            "row sums of the rounded P on the tensor cores"
        )
        return KernelPlan(kernel, call.dtype, note)

    @classmethod
    def forward(cls, q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
        from ..cuda_ops import area as ops

        return ops.area_attention(q, k, v, area, scale)


@register
class CudaHypergraph(_CudaDeclaration, HypergraphBackend):
    """Served by ``yolo13_attn/cuda_ops/hypergraph.py`` (the signatures of ``triton_ops/hypergraph.py``)."""

    min_head_dim = 16
    max_head_dim = 512
    head_dim_multiple = 8
    supports_backward = False
    supports_dropout_mask = True
    description = (
        "CUDA C++ hypergraph (csrc/hypergraph_*.cu): aggregation split over N (online softmax per split + a "
        "combine kernel), scatter with the recomputed weights; mma.sync tensor cores, fp32 accumulation, logit "
        "dropout mask applied in-kernel, up to 16 hyperedges; forward only"
    )

    @classmethod
    def _ensure_loaded(cls) -> None:
        from ..cuda_ops import hypergraph

        hypergraph.ensure_loaded()

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan("cuda hypergraph_aggregate / hypergraph_scatter", call.dtype, "fp32 accumulation")

    @classmethod
    def aggregate(cls, x, xp, prototypes, scale, dropout_mask):
        from ..cuda_ops import hypergraph

        return hypergraph.hypergraph_aggregate(x, xp, prototypes, scale, dropout_mask)

    @classmethod
    def scatter(cls, xp, prototypes, lse, he, scale, dropout_mask):
        from ..cuda_ops import hypergraph

        return hypergraph.hypergraph_scatter(xp, prototypes, lse, he, scale, dropout_mask)
