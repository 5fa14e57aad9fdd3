"""Proof of what ran: the GPU kernels each patchable layer (attention, grouped convolution) launched in one forward.

Forward hooks can say which Python function was called, not which kernel the GPU executed
(SDPA picks its kernel inside C++; a fallback may be silent). Here the hooks only open and close
a profiler range per layer; the PyTorch profiler records the kernels launched inside it.
Without CUDA the "kernels" are the operators called directly inside the layer
(``aten::scaled_dot_product_attention``, ``aten::matmul``, ``yolo13_attn::...``).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.autograd.profiler import record_function

from .integration.ultralytics_api import is_yolo
from .patching import patchable_layers

RANGE_PREFIX = "yolo13_attn::layer::"


def _descendants(event) -> list:
    stack, found = list(event.cpu_children), []
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(child.cpu_children)
    return found


def _kernels_of(event) -> Counter:
    """Device kernels under a profiler range; the top-level CPU operators when no device kernel ran."""
    device = Counter(k.name for e in (event, *_descendants(event)) for k in getattr(e, "kernels", []))
    return device or Counter(child.name for child in event.cpu_children)


@torch.no_grad()
def kernels_by_layer(model: nn.Module, *inputs: torch.Tensor) -> dict[str, Counter]:
    """Run ``model(*inputs)`` once under the profiler; return ``{layer name: Counter(kernel name)}``.

    ``model`` may be a YOLO object, a DetectionModel or any module with patchable layers
    (patched or not). Layer names are those of ``named_modules()``.
    """
    layers = patchable_layers(model)
    ranges: dict[str, record_function] = {}
    hooks = []
    for name, layer in layers:

        def enter(_module, _args, name=name):
            ranges[name] = record_function(RANGE_PREFIX + name)
            ranges[name].__enter__()

        def leave(_module, _args, _output, name=name):
            ranges.pop(name).__exit__(None, None, None)

        hooks += [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    forward = model.model if is_yolo(model) else model
    try:
        with torch.profiler.profile(activities=activities) as prof:
            forward(*inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
    finally:
        for hook in hooks:
            hook.remove()
    found: dict[str, Counter] = {name: Counter() for name, _ in layers}
    for event in prof.events():
        if event.name.startswith(RANGE_PREFIX):
            found[event.name.removeprefix(RANGE_PREFIX)] += _kernels_of(event)
    return found


def format_kernels_by_layer(found: dict[str, Counter]) -> str:
    """One line per layer: ``name: kernel x count, ...``."""
    return "\n".join(
        f"{name}: " + ", ".join(f"{k} x{n}" for k, n in kernels.most_common()) for name, kernels in found.items()
    )
