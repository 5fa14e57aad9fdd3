"""CUDA C++ implementations of the ops (the ``cuda`` backend's engine), parallel to ``triton_ops``.

Importing this package builds and loads nothing: :func:`build.load_extension` (called by each op module's
``ensure_loaded``, and ahead of time by the backend's ``prepare`` hook at patch time) loads the prebuilt
``yolo13_attn._C`` or compiles ``csrc/`` just in time; the ``torch.ops.yolo13_attn.cuda_*`` operators exist
from then on.
"""

from .area import (
    EXP_MODES,
    FORWARD_KERNELS,
    area_attention,
    area_attention_backward,
    area_attention_forward,
    ensure_loaded,
)
from .build import CudaExtensionError, availability_reasons, build_info, load_extension

__all__ = [
    "EXP_MODES",
    "FORWARD_KERNELS",
    "CudaExtensionError",
    "area_attention",
    "area_attention_backward",
    "area_attention_forward",
    "availability_reasons",
    "build_info",
    "ensure_loaded",
    "load_extension",
]
