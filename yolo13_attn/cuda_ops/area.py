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
FORWARD_CONFIG = "yolo13_attn::cuda_area_attention_config"
BACKWARD = "yolo13_attn::cuda_area_attention_backward"

_registered = False


def ensure_loaded() -> None:
    """Load (or build) the extension and register the Python side of its area-attention ops, once."""
    global _registered
    if _registered:
        return
    load_extension()
    torch.library.register_fake(FORWARD)(area_forward_fake)
    torch.library.register_fake(FORWARD_CONFIG)(
        lambda q, k, v, area, scale, kernel, exp_mode: area_forward_fake(q, k, v, area, scale)
    )
    torch.library.register_fake(BACKWARD)(area_backward_fake)
    backward = area_backward_with(lambda *args: torch.ops.yolo13_attn.cuda_area_attention_backward(*args))
    torch.library.register_autograd(FORWARD, backward, setup_context=area_setup_context)
    _registered = True


HEAD_DIMS = (32,)  #: the head widths the kernels are compiled for (csrc/area_attention_*.cu)

RESIDENT_MAX_TOKENS = 640  #: kResidentRows of csrc/area_attention_fwd.cu
RESIDENT_KERNELS = (1, 6)  #: the FORWARD_KERNELS that hold a whole chunk, so refuse longer ones

#: the forward kernels of csrc/area_attention_fwd.cu by number (``kernel=`` of area_attention_forward; 0 = the
#: automatic choice per shape, see kernel_for there)
FORWARD_KERNELS = {
    1: "resident: the whole chunk's K/V in shared memory (chunks of at most 640 tokens)",
    2: "tiled: 64 query rows x 64-key blocks, 2 stages (any chunk)",
    3: "wgmma: 64 query rows x 32-key blocks, 3 stages (sm90, channel-major 16-byte-copyable operands; else 2)",
    4: "wgmma: 64 query rows x 32-key blocks, 2 stages (sm90, channel-major 16-byte-copyable operands; else 2)",
    5: "wgmma: 64 query rows x 64-key blocks, 4 stages (sm90, channel-major 16-byte-copyable operands; else 2)",
    6: "resident with registers for 3 blocks per SM and up to 8 warps per block (chunks of at most 640 tokens)",
}

#: how the mma.sync kernels (1, 2) compute P and its row sums (``exp_mode=``; None = 2 for float16, 0 for
#: bfloat16, whose 8-bit P blurs the row sums and so the lse of short chunks; the wgmma kernels always use 2)
EXP_MODES = {
    0: "fp32 exponentials, row sums added in fp32 (bfloat16 default)",
    1: "exponentials on packed halves, row sums on the tensor cores (float16; bfloat16 takes mode 2)",
    2: "fp32 exponentials rounded to P's dtype, row sums of that P on the tensor cores (float16 default)",
}


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


def area_attention_forward(
    q: Tensor, k: Tensor, v: Tensor, area: int, scale: float, *, kernel: int = 0, exp_mode: int | None = None
) -> tuple[Tensor, Tensor]:
    """``(o (B, H, D, N) contiguous, lse (B, H, N) float32 base 2)``; no autograd.

    ``kernel`` picks one of :data:`FORWARD_KERNELS` (tests and tuning; 0 = the automatic choice) and
    ``exp_mode`` one of :data:`EXP_MODES` (None: the default for the dtype)."""
    check_inputs(q, k, v, area, scale)
    if kernel and kernel not in FORWARD_KERNELS:
        raise ValueError(f"kernel must be 0 (automatic) or one of {sorted(FORWARD_KERNELS)}, got {kernel}")
    if kernel in RESIDENT_KERNELS and q.shape[3] // area > RESIDENT_MAX_TOKENS:
        raise ValueError(
            f"the resident kernel takes chunks of at most {RESIDENT_MAX_TOKENS} tokens, got {q.shape[3] // area}"
        )
    if exp_mode is not None and exp_mode not in EXP_MODES:
        raise ValueError(f"exp_mode must be None or one of {sorted(EXP_MODES)}, got {exp_mode}")
    ensure_loaded()
    return torch.ops.yolo13_attn.cuda_area_attention_config.default(
        q, k, v, int(area), float(scale), int(kernel), -1 if exp_mode is None else int(exp_mode)
    )


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
