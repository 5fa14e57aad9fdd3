#!/usr/bin/env python3
"""YOLOv13's grouped downsampling convolutions, grouped against dense (block-diagonal weight), eager and compiled.

The shapes are those of ``model.1`` and ``model.3`` (3x3, stride 2, groups 2 and 4) in YOLOv13-x at
batch 16 and YOLOv13-n at batch 1, 640x640 images, fp16, NCHW and channels-last. Per shape and
layout: PyTorch's grouped convolution (``cudnn.benchmark`` off and on), the ``dense`` backend's form,
the per-group split (convolutions + cat), and the grouped and dense forms followed by SiLU under
``torch.compile``; each a CUDA-graph median, with the kernels one call launched. Before timing, the
dense form's error against a float32 reference is printed beside the grouped one's. GPU only.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from compiled_profile import graph_time

from yolo13_attn.ops import dense_grouped_conv

#: (name, batch, C_in, C_out, H = W of the input, groups)
SHAPES = (
    ("x model.1", 16, 96, 192, 320, 2),
    ("x model.3", 16, 384, 384, 160, 4),
    ("n model.1", 1, 16, 32, 320, 2),
    ("n model.3", 1, 64, 64, 160, 4),
)


def measure(fn) -> tuple[float, list[str]]:
    """CUDA-graph median ms of ``fn`` and the kernels one call launches."""
    ms, kernels = graph_time(fn, max_total_s=1.0)
    return ms, sorted({name[:60] for name in kernels})


def variants(x, w, b, groups):
    dense_silu = torch.compile(lambda t: F.silu(dense_grouped_conv(t, w, b, 2, 1, 1, groups)), dynamic=False)
    grouped_silu = torch.compile(lambda t: F.silu(F.conv2d(t, w, b, 2, 1, 1, groups)), dynamic=False)
    parts = list(zip(x.chunk(groups, 1), w.chunk(groups, 0), b.chunk(groups)))
    return {
        "grouped": lambda: F.conv2d(x, w, b, 2, 1, 1, groups),
        "dense": lambda: dense_grouped_conv(x, w, b, 2, 1, 1, groups),
        "split + cat": lambda: torch.cat([F.conv2d(xi, wi, bi, 2, 1, 1) for xi, wi, bi in parts], 1),
        "grouped + SiLU, compiled": lambda: grouped_silu(x),
        "dense + SiLU, compiled": lambda: dense_silu(x),
    }


def main() -> int:
    if not torch.cuda.is_available():
        print("grouped_conv_timing.py needs a CUDA GPU")
        return 1
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, fp16, CUDA-graph medians")
    for name, batch, c_in, c_out, hw, groups in SHAPES:
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(batch, c_in, hw, hw, device="cuda", dtype=torch.half).contiguous(memory_format=layout)
            w = torch.randn(c_out, c_in // groups, 3, 3, device="cuda", dtype=torch.half).contiguous(
                memory_format=layout
            )
            b = torch.randn(c_out, device="cuda", dtype=torch.half)
            fmt = "NHWC" if layout is torch.channels_last else "NCHW"
            tag = f"{name} B{batch} {c_in}->{c_out} {hw}x{hw} g{groups} {fmt}"
            ref = F.conv2d(x.float(), w.float(), b.float(), 2, 1, 1, groups)
            errors = [
                float((out.float() - ref).abs().max())
                for out in (F.conv2d(x, w, b, 2, 1, 1, groups), dense_grouped_conv(x, w, b, 2, 1, 1, groups))
            ]
            print(f"{tag}: max error vs fp32, grouped {errors[0]:.3g}, dense {errors[1]:.3g}", flush=True)
            with torch.inference_mode():
                for label, fn in variants(x, w, b, groups).items():
                    ms, kernels = measure(fn)
                    print(f"  {label:28s} {ms:7.3f} ms  {kernels}", flush=True)
                torch.backends.cudnn.benchmark = True
                ms, kernels = measure(lambda x=x, w=w, b=b, g=groups: F.conv2d(x, w, b, 2, 1, 1, g))
                torch.backends.cudnn.benchmark = False
                print(f"  {'grouped, cudnn.benchmark':28s} {ms:7.3f} ms  {kernels}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
