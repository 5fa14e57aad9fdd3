"""Area attention on the CUDA C++ kernels of ``csrc/``: fake implementations and autograd of the C++ ops.

``csrc/area_attention_fwd.cu`` and ``csrc/area_attention_bwd.cu`` register
``torch.ops.yolo13_attn.cuda_area_attention(q, k, v, area, scale) -> (o, lse)`` and
``torch.ops.yolo13_attn.cuda_area_attention_backward(grad_out, q, k, v, o, lse, area, scale) -> (dq, dk, dv)``
when the extension is loaded. q, k, v are ``(B, heads, head_dim, N)`` strided views (read in place); o, dq,
dk, dv are contiguous ``(B, heads, head_dim, N)`` in the input dtype, lse ``(B, heads, N)`` float32 base 2 -
the same contract as the Triton kernels. This module adds the fake (meta) implementations that
``torch.compile`` traces with and the autograd formula, once, after loading.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernel_glue import area_backward_fake, area_backward_with, area_forward_fake, area_setup_context
from .build import load_extension

FORWARD = "yolo13_attn::cuda_area_attention"
BACKWARD = "yolo13_attn::cuda_area_attention_backward"

_registered = False


def ensure_loaded() -> None:
    """Load (or build) the extension and register the Python side of its area-attention ops, once."""
    global _registered
    if _registered:
        return
    load_extension()
    torch.library.register_fake(FORWARD)(area_forward_fake)
    torch.library.register_fake(BACKWARD)(area_backward_fake)
    backward = area_backward_with(lambda *args: torch.ops.yolo13_attn.cuda_area_attention_backward(*args))
    torch.library.register_autograd(FORWARD, backward, setup_context=area_setup_context)
    _registered = True


HEAD_DIMS = (32,)  #: the head widths the kernels are compiled for (csrc/area_attention_*.cu)


def check_inputs(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> None:
    """Raise ``ValueError`` naming the problem before a call reaches the C++ operator (which checks the same)."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "q, k, v must share one (B, heads, head_dim, N) shape, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"the CUDA kernels take float16 or bfloat16 q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.is_cuda and q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one CUDA device, got {q.device}, {k.device}, {v.device}")
    if q.shape[2] not in HEAD_DIMS:
        raise ValueError(f"the CUDA kernels are built for head_dim {HEAD_DIMS}, got {q.shape[2]}")
    if area < 1 or q.shape[3] % area:
        raise ValueError(f"N={q.shape[3]} is not divisible by area={area}")
    if not 0 < scale < float("inf"):
        raise ValueError(f"scale must be finite and > 0, got {scale}")


def area_attention_forward(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> tuple[Tensor, Tensor]:
    """``(o (B, H, D, N) contiguous, lse (B, H, N) float32 base 2)``; no autograd."""
    check_inputs(q, k, v, area, scale)
    ensure_loaded()
    return torch.ops.yolo13_attn.cuda_area_attention.default(q, k, v, int(area), float(scale))


def area_attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, area: int, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)``, each contiguous ``(B, H, D, N)`` in the input dtype."""
    ensure_loaded()
    return torch.ops.yolo13_attn.cuda_area_attention_backward(grad_out, q, k, v, out, lse, int(area), float(scale))


def area_attention(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
    """Differentiable area attention: ``(B, H, D, N)`` strided q/k/v -> contiguous ``(B, H, D, N)``."""
    check_inputs(q, k, v, area, scale)
    ensure_loaded()
    return torch.ops.yolo13_attn.cuda_area_attention(q, k, v, int(area), float(scale))[0]
