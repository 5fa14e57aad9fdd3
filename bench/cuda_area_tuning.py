#!/usr/bin/env python3
"""Forward-kernel tuning of the ``cuda`` backend's area attention: every kernel of
``csrc/area_attention_fwd.cu`` (``yolo13_attn.cuda_ops.FORWARD_KERNELS``, 0 = the automatic choice, in the
exponential modes ``EXP_MODES`` asked for) beside the Triton kernel, on the area-attention shapes of
``bench/kernel_sweep.py``.

``python bench/cuda_area_tuning.py [--images ...] [--batches 1,8,16] [--kernels 0,1,2] [--exp-modes 2] [--out F]``
on a CUDA machine that can build the extension. Inputs as ``kernel_sweep.py``'s ``area_core`` builds them
(q and k the halves of one conv output, v another, heads views of NCHW maps), rotated over sets larger than
L2, CUDA-graph medians (``bench/timing.py``). Every kernel's output is checked against float64 with the
flash rule first; a failing one is reported ``FAIL`` and its time is not used, a kernel that refuses the
shape ``n/a``. Prints one markdown table
(ms per kernel, the fastest marked) and writes all records to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from kernel_sweep import SCALES, AreaCore, shapes_for
from timing import time_calls

from yolo13_attn import cuda_ops, triton_ops
from yolo13_attn.ops import area_attention_reference
from yolo13_attn.testing import flash_rule

SCALE = 32**-0.5  # head_dim 32


def candidates(kernels: list[int], exp_modes: list[int | None]) -> dict[str, object]:
    """``{name: fn(q, k, v, area, scale) -> out}``: triton, then each CUDA forward kernel (0 = the automatic
    choice) in each exponential mode asked for (``cuda<kernel>/exp<mode>``; None: the dtype's default)."""
    out = {"triton": lambda q, k, v, a, s: triton_ops.area_attention_forward(q, k, v, a, s)[0]}
    for kernel in kernels:
        for mode in exp_modes:
            name = f"cuda{kernel}" + ("" if mode is None else f"/exp{mode}")
            out[name] = lambda q, k, v, a, s, kernel=kernel, mode=mode: cuda_ops.area_attention_forward(
                q, k, v, a, s, kernel=kernel, exp_mode=mode
            )[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="640x640,320x256,1280x1280")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16"))
    parser.add_argument("--kernels", default="all", help="CUDA forward kernels to time, 0 = automatic (default: all)")
    parser.add_argument("--exp-modes", default="default", help="CUDA kernels' exponential modes, e.g. 0,2")
    parser.add_argument("--out", type=Path, help="write every record here (JSON)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("cuda_area_tuning.py times CUDA kernels: it needs a CUDA GPU")
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    l2 = float(torch.cuda.get_device_properties(0).L2_cache_size)
    start = time.perf_counter()
    cuda_ops.ensure_loaded()
    print(f"extension: {cuda_ops.build_info()} ({time.perf_counter() - start:.0f} s)", flush=True)
    kernels = [0, *cuda_ops.FORWARD_KERNELS] if args.kernels == "all" else [int(k) for k in args.kernels.split(",")]
    modes = [None] if args.exp_modes == "default" else [int(m) for m in args.exp_modes.split(",")]
    chosen = candidates(kernels, modes)
    records, names = [], list(chosen)
    configs = [
        (shape, int(b))
        for image in args.images.split(",")
        for shape in shapes_for("area_core", image, list(SCALES))
        for b in args.batches.split(",")
    ]
    for i, (shape, batch) in enumerate(configs):
        group = AreaCore(shape, batch, dtype, "cuda", seed=i, l2_bytes=l2)
        baseline = area_attention_reference(*group.sets[0], shape.area, compute_dtype=dtype)
        row = {"shape": shape.label, "batch": batch, "ms": {}, "check": {}}
        for name, fn in chosen.items():
            try:
                report = flash_rule(fn(*group.sets[0], shape.area, SCALE), group.ref64, baseline)
            except (ValueError, RuntimeError) as exc:  # a kernel that refuses this shape is reported
                row["check"][name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                continue
            row["check"][name] = "ok" if report.ok else f"FAIL {report.candidate:.2e} > {report.bound:.2e}"
            timing = time_calls(
                [lambda s=s, fn=fn, a=shape.area: fn(*s, a, SCALE) for s in group.sets],
                "cuda",
                samples=7,
                max_total_s=0.4,
            )
            row["ms"][name] = timing.median
        records.append(row)
        valid = {n: t for n, t in row["ms"].items() if row["check"][n] == "ok"}
        best = min(valid, key=valid.get)
        print(
            f"[{i + 1}/{len(configs)}] {shape.label} B{batch}: best {best} {valid[best]:.4f} ms, "
            f"triton {valid.get('triton', float('nan')):.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        del group
    if args.out:
        args.out.write_text(json.dumps({"dtype": args.dtype, "gpu": torch.cuda.get_device_name(), "records": records}))
    print("\n| shape | B | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
    for row in records:
        valid = {n: t for n, t in row["ms"].items() if row["check"][n] == "ok"}
        best = min(valid, key=valid.get)
        cells = [
            ("**%.4f**" if n == best else "%.4f") % row["ms"][n]
            if row["check"].get(n) == "ok"
            else ("n/a" if row["check"].get(n, "").startswith("error") else "FAIL")
            for n in names
        ]
        print(f"| {row['shape']} | {row['batch']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
