"""Where the kernels run: on the tensor's GPU (Triton launches on the *current* device), or in Triton's CPU
interpreter."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .. import kernels


def device_guard(t: Tensor):
    """``torch.cuda.device(t.device)`` for CUDA tensors off the current device; a no-op otherwise."""
    if t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def interpreted() -> bool:
    """True when the kernels were decorated under ``TRITON_INTERPRET=1`` (they run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernels.area_attention_fwd.area_attention_fwd_kernel, InterpretedFunction)
