"""Per-op timing of the hypergraph kernels: aggregation and scatter separately, Triton vs CUDA C++.

``python bench/hypergraph_ops_timing.py [--out FILE]`` on a CUDA machine with triton and the ``cuda`` backend's
extension buildable. Inputs as ``bench/kernel_sweep.py`` builds them for ``hg_core`` (x a transposed view of a
``(B, D, H, W)`` map, xp contiguous, prototypes giving logits of std ~2), float16, three input sets run back to
back inside one CUDA graph (so that x and xp of the large shapes do not stay in L2); the median of
``triton.testing.do_bench_cudagraph`` divided by three. Prints a markdown table (bytes, floor at the copy
bandwidth, 2.98 TB/s on H100 80GB HBM3) and writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

# (label, B, H, W, D, M): YOLOv13 n/l/x AdaHGComputation at P4 (640 and 1280)
SHAPES = [
    ("x 640 B16", 16, 40, 40, 384, 12),
    ("x 640 B8", 8, 40, 40, 384, 12),
    ("x 640 B1", 1, 40, 40, 384, 12),
    ("l 640 B16", 16, 40, 40, 256, 8),
    ("s 640 B16", 16, 40, 40, 128, 6),
    ("n 640 B16", 16, 40, 40, 64, 4),
    ("x 1280 B4", 4, 80, 80, 384, 12),
]
COPY_TBPS = 2.98  # H100 80GB HBM3 device-to-device copy (kernels/NOTES.md)
SETS = 3


def inputs(b, h, w, d, m, dtype=torch.float16):
    from yolo13_attn.ops.reference import hypergraph_scale

    scale = hypergraph_scale(d, d // 16)
    p_std = 2.0 / (scale * math.sqrt(d))
    sets = []
    for _ in range(SETS):
        x = torch.randn(b, d, h, w, device="cuda", dtype=dtype).flatten(2).transpose(1, 2)
        xp = torch.randn(b, h * w, d, device="cuda", dtype=dtype)
        p = (torch.randn(b, m, d, device="cuda") * p_std).to(dtype)
        he = torch.randn(b, m, d, device="cuda", dtype=dtype)
        sets.append((x, xp, p, he))
    return sets, scale


def time_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench_cudagraph(fn, rep=200) / SETS


def shape_rows(label: str, b: int, h: int, w: int, d: int, m: int) -> list[str]:
    """Table rows (aggregate, scatter) of one shape."""
    from yolo13_attn import triton_ops
    from yolo13_attn.cuda_ops import hypergraph as cuda_hg

    sets, scale = inputs(b, h, w, d, m)
    scatter_args = [(xp, p, triton_ops.aggregate_forward(x, xp, p, scale)[1], he) for x, xp, p, he in sets]
    n = h * w
    byts = {"aggregate": 2 * b * n * d * 2 + b * m * d * 2, "scatter": 2 * b * n * d * 2 + 2 * b * m * d * 2}
    runs = {
        "aggregate": {
            "triton": lambda: [triton_ops.aggregate_forward(x, xp, p, scale) for x, xp, p, _ in sets],
            "cuda": lambda: [cuda_hg.aggregate_forward(x, xp, p, scale) for x, xp, p, _ in sets],
        },
        "scatter": {
            "triton": lambda: [triton_ops.scatter_forward(*a, scale) for a in scatter_args],
            "cuda": lambda: [cuda_hg.scatter_forward(*a, scale) for a in scatter_args],
        },
    }
    if d > 128:  # the single-buffered aggregation kernel is built for these widths too
        runs["aggregate"]["cuda 1-stage"] = lambda: [
            cuda_hg.aggregate_forward(x, xp, p, scale, stages=1) for x, xp, p, _ in sets
        ]
    rows = []
    for op, fns in runs.items():
        t = {name: time_ms(fn) for name, fn in fns.items()}
        floor = byts[op] / (COPY_TBPS * 1e9)
        one = f"{t['cuda 1-stage']:.4f}" if "cuda 1-stage" in t else "-"
        rows.append(
            f"| {label} (N={n}, D={d}, M={m}) | {op} | {byts[op] / 1e6:.1f} | {floor:.4f} | {t['triton']:.4f} | "
            f"{t['cuda']:.4f} | {one} | {t['triton'] / t['cuda']:.2f}x | {100 * floor / t['cuda']:.0f}% |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    from yolo13_attn import cuda_ops

    cuda_ops.load_extension()
    lines = [
        f"# Hypergraph ops, {torch.cuda.get_device_name()}, torch {torch.__version__}, float16 (ms, CUDA-graph median)",
        "",
        "| shape | op | bytes (MB) | floor | triton | cuda | cuda 1-stage | cuda vs triton | cuda % of copy bw |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in SHAPES:
        lines += shape_rows(*shape)
        torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
