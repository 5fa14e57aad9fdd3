"""``cuda``: the CUDA C++ kernels of ``csrc/``, built by ``setup.py`` into ``yolo13_attn._C``.

Registered so that the registry, ``auto`` and ``info`` know the slot; until the extension is built
(``YOLO13_ATTN_BUILD_CUDA=1 pip install .``) every call is refused with that reason.
"""

from __future__ import annotations

import importlib.util

from .base import AreaAttentionBackend, HypergraphBackend, KernelPlan, OpCall
from .registry import register


class _CudaDeclaration:
    name = "cuda"
    devices = frozenset({"cuda"})
    priority = compiled_priority = 20

    @classmethod
    def availability_reasons(cls) -> list[str]:
        if importlib.util.find_spec("yolo13_attn._C") is None:
            return ["CUDA extension yolo13_attn._C not built yet (csrc/ holds no kernels for this op yet)"]
        return []

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan("yolo13_attn._C", call.dtype)


@register
class CudaAreaAttention(_CudaDeclaration, AreaAttentionBackend):
    description = "hand-written CUDA C++ (csrc/): not built yet"


@register
class CudaHypergraph(_CudaDeclaration, HypergraphBackend):
    description = "hand-written CUDA C++ (csrc/): not built yet"
