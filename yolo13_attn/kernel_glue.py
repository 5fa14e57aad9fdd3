"""What the Triton and the CUDA C++ op glue (``triton_ops``, ``cuda_ops``) share: argument casts, the fake
(meta) shapes and the autograd formula of area attention.

Both kernel families keep one contract: q, k, v ``(B, heads, head_dim, N)`` strided views; o, dq, dk, dv
contiguous ``(B, heads, head_dim, N)`` in the input dtype; lse ``(B, heads, N)`` float32 (base 2 for
area attention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def as_dtype(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``t`` in ``dtype`` (no copy when it already is; None stays None)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def lse32(lse: Tensor) -> Tensor:
    """A log-sum-exp as the kernels read it: contiguous float32."""
    return lse if lse.dtype == torch.float32 and lse.is_contiguous() else lse.float().contiguous()


def area_forward_fake(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> tuple[Tensor, Tensor]:
    """Shapes of an area-attention forward op: ``(o (B, H, D, N), lse (B, H, N) float32)``."""
    b, h, d, n = q.shape
    return q.new_empty((b, h, d, n)), q.new_empty((b, h, n), dtype=torch.float32)


def area_backward_fake(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, area: int, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Shapes of an area-attention backward op: ``(dq, dk, dv)``, each like q."""
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def area_setup_context(ctx, inputs, output) -> None:
    """Autograd context of ``op(q, k, v, area, scale) -> (o, lse)``: saves q, k, v, o, lse."""
    q, k, v, area, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.area, ctx.scale = area, scale


def area_backward_with(backward_op: Callable[..., tuple[Tensor, Tensor, Tensor]]) -> Callable:
    """The autograd backward of an area-attention forward op whose gradients ``backward_op(grad_out, q, k, v, o,
    lse, area, scale) -> (dq, dk, dv)`` computes (lse gets no gradient)."""

    def backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        dq, dk, dv = backward_op(grad_out, q, k, v, out, lse, ctx.area, ctx.scale)
        return dq, dk, dv, None, None

    return backward
