"""Area attention on the Triton kernels: launchers, the ``torch.library`` custom ops and autograd.

* :func:`area_attention_forward` / :func:`area_attention_backward`: plain launchers; they take
  optional ``out=`` buffers (tests pass NaN-poisoned ones to catch unwritten elements).
* ``torch.ops.yolo13_attn.triton_area_attention`` (forward, returns ``(o, lse)``) and
  ``torch.ops.yolo13_attn.triton_area_attention_backward``: custom ops with fake (meta)
  implementations, so ``torch.compile`` traces through them without graph breaks and CUDA graphs
  capture them (no host syncs: shapes and tile choices are plain Python ints).
* :func:`area_attention`: the differentiable entry point (autograd registered on the op).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from ..kernel_glue import area_backward_fake, area_backward_with, area_forward_fake, area_setup_context
from .configs import area_bwd_config, area_fwd_config, with_overrides
from .device import device_guard


def _check(q: Tensor, k: Tensor, v: Tensor, area: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "q, k, v must share one (B, heads, head_dim, N) shape, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if area < 1 or q.shape[3] % area:
        raise ValueError(f"N={q.shape[3]} is not divisible by area={area}")


def area_attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    area: int,
    scale: float,
    *,
    out: Tensor | None = None,
    lse: Tensor | None = None,
    config: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """``(o (B, H, D, N) contiguous, lse (B, H, N) float32 base-2)`` of area attention."""
    _check(q, k, v, area)
    if not scale > 0:
        raise ValueError(f"the Triton area attention kernel needs a positive scale, got {scale}")
    b, h, d, n = q.shape
    out = torch.empty((b, h, d, n), dtype=q.dtype, device=q.device) if out is None else out
    lse = torch.empty((b, h, n), dtype=torch.float32, device=q.device) if lse is None else lse
    if out.shape != q.shape or not out.is_contiguous() or lse.shape != (b, h, n) or not lse.is_contiguous():
        raise ValueError("out must be contiguous (B, H, D, N) and lse contiguous (B, H, N) float32")
    if q.numel():
        cfg = with_overrides(area_fwd_config(n // area, d, q.dtype), config)
        with device_guard(q):
            kernels.area_attention_fwd.launch_area_attention_fwd(q, k, v, out, lse, area, scale, **cfg.launch_kwargs())
    return out, lse


def area_attention_backward(
    do: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    area: int,
    scale: float,
    *,
    dq: Tensor | None = None,
    dk: Tensor | None = None,
    dv: Tensor | None = None,
    config: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)``, each contiguous ``(B, H, D, N)`` in the input dtype."""
    b, h, d, n = q.shape
    dq, dk, dv = (torch.empty((b, h, d, n), dtype=q.dtype, device=q.device) if t is None else t for t in (dq, dk, dv))
    if q.numel():
        cfg = with_overrides(area_bwd_config(n // area, d, q.dtype), config)
        delta = torch.empty((b, h, n), dtype=torch.float32, device=q.device)
        with device_guard(q):
            kernels.area_attention_bwd.launch_area_attention_bwd(
                do, q, k, v, out, lse, delta, dq, dk, dv, area, scale, **cfg.launch_kwargs()
            )
    return dq, dk, dv


# ---- torch.library custom ops -------------------------------------------------------------------


@torch.library.custom_op("yolo13_attn::triton_area_attention", mutates_args=())
def _area_op(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> tuple[Tensor, Tensor]:
    return area_attention_forward(q, k, v, area, scale)


_area_op.register_fake(area_forward_fake)


@torch.library.custom_op("yolo13_attn::triton_area_attention_backward", mutates_args=())
def _area_bwd_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, area: int, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    return area_attention_backward(do, q, k, v, out, lse, area, scale)


_area_bwd_op.register_fake(area_backward_fake)
_area_op.register_autograd(
    area_backward_with(lambda *args: torch.ops.yolo13_attn.triton_area_attention_backward(*args)),
    setup_context=area_setup_context,
)


def area_attention(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
    """Differentiable area attention: ``(B, H, D, N)`` strided q/k/v -> contiguous ``(B, H, D, N)``."""
    return torch.ops.yolo13_attn.triton_area_attention(q, k, v, int(area), float(scale))[0]
