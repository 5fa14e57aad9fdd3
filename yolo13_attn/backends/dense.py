"""``dense``: a grouped convolution as one dense convolution over its block-diagonal weight.

The same sums as the grouped convolution (``ops/grouped_conv.py`` says why), in the convolution
library's fastest kernels: on an H100 in fp16 the two grouped convolutions of YOLOv13-x's backbone
at batch 16 take 0.38-0.40 ms each this way, against 2.0-2.8 ms grouped in channels-last (cuDNN
transforms the whole activation's layout around its grouped kernel) and 0.8-1.4 ms in NCHW, for
g = 2 and 4 times the FLOPs. ``auto`` picks it for inference on CUDA only: on a CPU the extra FLOPs
cost time, and its training step (a g times larger weight-gradient product) has not been measured.
"""

from __future__ import annotations

from ..ops.grouped_conv import dense_grouped_conv
from .base import GroupedConvBackend, KernelPlan, OpCall
from .registry import register


@register
class DenseGroupedConv(GroupedConvBackend):
    name = "dense"
    priority = compiled_priority = 10
    auto_devices = frozenset({"cuda"})
    description = "dense convolution over the block-diagonal weight (the same sums; g times the FLOPs); no CPU backward"

    @classmethod
    def layer_reasons(cls, call: OpCall) -> list[str]:
        reasons = super().layer_reasons(call)
        if call.requires_grad and call.device_type == "cpu":
            reasons.append(
                "no backward on the CPU: oneDNN's dense weight gradient misses the 2x rule against its grouped one "
                "(float32, 7x the grouped kernel's error)"
            )
        return reasons

    @classmethod
    def auto_reasons(cls, call: OpCall) -> list[str]:
        reasons = super().auto_reasons(call)
        if call.requires_grad:
            reasons.append("training (forward + backward) not measured: auto keeps the grouped convolution there")
        return reasons

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        return KernelPlan("dense conv2d, block-diagonal weight", call.dtype)

    @classmethod
    def forward(cls, x, weight, bias, stride, padding, dilation, groups):
        return dense_grouped_conv(x, weight, bias, stride, padding, dilation, groups)
