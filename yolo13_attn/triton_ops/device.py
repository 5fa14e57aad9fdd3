"""Launch on the tensor's GPU (Triton launches on the *current* device)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def device_guard(t: Tensor):
    """``torch.cuda.device(t.device)`` for CUDA tensors off the current device; a no-op otherwise."""
    if t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
