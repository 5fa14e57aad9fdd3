"""``triton``: the fused, layout-aware Triton kernels of ``kernels/`` (``yolo13_attn.kernels``).

The entry points go through ``yolo13_attn.triton_ops``: ``torch.library`` custom ops with fake
implementations and registered autograd, so a patched model compiles with ``torch.compile``
without graph breaks and captures into CUDA graphs (no host syncs when launching).

Devices: CUDA; plus CPU only when ``TRITON_INTERPRET=1`` was set before triton was imported (the
Triton interpreter then runs the same kernels on CPU tensors - slowly, for tests). The
interpreter has no bfloat16. Importing this module does not import triton; the first
availability check does.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from .base import AreaAttentionBackend, HypergraphBackend, KernelPlan, OpCall
from .registry import register


def _env_interpret() -> bool:
    """Triton's own reading of ``TRITON_INTERPRET`` (``1``/``true``/``on``/``yes``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")


#: decided once, at import: the kernels are decorated (compiled vs interpreted) when first imported
_INTERPRET_AT_IMPORT = _env_interpret()


@functools.cache
def _import_error() -> str | None:
    """Why the Triton ops cannot be imported (None when they can)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    try:
        from .. import triton_ops  # noqa: F401
    except Exception as exc:
        return f"the Triton kernels failed to import ({type(exc).__name__}: {exc})"
    return None


def _ops():
    from .. import triton_ops

    return triton_ops


def _interpreted() -> bool:
    return _import_error() is None and _ops().interpreted()


class _TritonDeclaration:
    name = "triton"
    priority = compiled_priority = 10  # the fused, layout-aware kernels lead
    devices = frozenset({"cuda", "cpu"} if _INTERPRET_AT_IMPORT else {"cuda"})
    auto_devices = frozenset({"cuda"})  # the interpreter serves explicit requests (tests), never auto
    # full IEEE fp32 (no TF32) is no faster than the reference on H100 (bench/results): auto takes it for half types
    auto_dtypes = frozenset({torch.float16, torch.bfloat16})
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    supports_backward = True
    supports_dropout_mask = True
    deterministic = True  # no atomics: dq has its own kernel, split-N partials are summed in order

    @classmethod
    def availability_reasons(cls) -> list[str]:
        error = _import_error()
        if error:
            return [error]
        if not torch.cuda.is_available() and not _interpreted():
            return ["no CUDA device visible to PyTorch and TRITON_INTERPRET=1 was not set before triton was imported"]
        return []

    @classmethod
    def extra_reasons(cls, call: OpCall) -> list[str]:
        reasons = []
        if call.device_type == "cpu" and "cpu" in cls.devices:
            if not _interpreted():
                reasons.append(
                    "CPU needs the Triton interpreter, but the kernels were imported without TRITON_INTERPRET=1"
                )
            if call.dtype == torch.bfloat16:
                reasons.append("the Triton interpreter (CPU) has no bfloat16")
        if call.device_type == "cuda" and torch.cuda.is_available() and call.dtype == torch.bfloat16:
            major, minor = torch.cuda.get_device_capability(call.device)
            if major < 8:
                reasons.append(f"bfloat16 tl.dot needs compute capability >= 8.0, {call.device} has {major}.{minor}")
        return reasons

    @classmethod
    def _note(cls, call: OpCall) -> str:
        notes = ["fp32 accumulation and softmax"]
        if call.dtype == torch.float32:
            notes.append("float32 dots in full IEEE fp32 (no TF32)")
        if call.device_type == "cpu":
            notes.append("Triton interpreter on CPU")
        return "; ".join(notes)


@register
class TritonAreaAttention(_TritonDeclaration, AreaAttentionBackend):
    min_head_dim = 16
    max_head_dim = 128
    head_dim_multiple = 8
    description = (
        "fused Triton area attention (kernels/area_attention_*.py): reads the strided channel-major "
        "(B, heads, head_dim, N) q/k/v in place, online softmax per chunk, output written as a contiguous "
        "(B, C, H, W)-viewable tensor; fp16/bf16 on tensor cores with fp32 accumulation, float32 in full "
        "IEEE fp32 (no TF32); fused FA2-style Triton backward (saved lse, delta preprocess, dk/dv and dq "
        "kernels, no atomics)" + ("; running in the Triton interpreter" if _INTERPRET_AT_IMPORT else "")
    )

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        kernel = "triton area_attention_fwd_kernel" + (" + FA2-style bwd kernels" if call.requires_grad else "")
        return KernelPlan(kernel, call.dtype, cls._note(call))

    @classmethod
    def forward(cls, q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
        return _ops().area_attention(q, k, v, area, scale)


@register
class TritonHypergraph(_TritonDeclaration, HypergraphBackend):
    min_head_dim = 16
    max_head_dim = 512
    head_dim_multiple = 8
    description = (
        "fused Triton hypergraph (kernels/hypergraph_*.py): aggregation = logits against the M prototypes, "
        "online softmax over the vertices split across programs + a combine pass, weighted sum of x; "
        "scatter = recomputed weights exp(logit - lse) times he; logit dropout mask applied in-kernel; "
        "fused Triton backward for both (per-vertex grads in-kernel, the N-reductions dP/dhe/dlse as "
        "split partials summed by torch); fp16/bf16 on tensor cores with fp32 accumulation, float32 in "
        "full IEEE fp32 (no TF32)" + ("; running in the Triton interpreter" if _INTERPRET_AT_IMPORT else "")
    )

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        kernel = "triton hypergraph_aggregate (split-N + combine) / hypergraph_scatter"
        if call.requires_grad:
            kernel += " + hypergraph_bwd"
        return KernelPlan(kernel, call.dtype, cls._note(call))

    @classmethod
    def aggregate(cls, x, xp, prototypes, scale, dropout_mask):
        return _ops().hypergraph_aggregate(x, xp, prototypes, scale, dropout_mask)

    @classmethod
    def scatter(cls, xp, prototypes, lse, he, scale, dropout_mask):
        return _ops().hypergraph_scatter(xp, prototypes, lse, he, scale, dropout_mask)
