#!/usr/bin/env python3
"""Where a YOLOv13 training step spends its time and memory: per model layer, forward and backward.

For each model (``--cases n:16:640,x:8:640``) and backend (``naive`` = unpatched, ``fa2path``, ``auto``, ...):

* **Per layer** (each entry of ``model.model``, e.g. ``6 A2C2f``): the layer is run alone on the input it
  receives in a real forward, under AMP (``torch.autocast`` fp16) in training mode: forward time,
  backward time (``torch.autograd.backward`` of a fixed random output gradient), FLOPs of each
  (``torch.utils.flop_counter.FlopCounterMode``), the activation memory the forward keeps alive for
  the backward (allocated after the forward minus before; outputs included), a byte estimate and the
  floor. Bytes are an estimate of compulsory traffic: inputs + outputs + weights for the forward,
  twice that for the backward (read the output gradient and the saved inputs, write the input and
  weight gradients). Floor = max(bytes / bandwidth, FLOPs / tensor-core peak) at the GPU's measured
  peaks (``bench/peaks.py``). Times are CUDA-event medians of back-to-back eager calls, as eager
  training runs them (launch overhead included where it exceeds the GPU work).
* **Whole step** (``model.loss`` + backward, ``bench/train_step.py``): one profiled step, GPU kernel
  time summed by kind (convolution/GEMM, attention, layout copies, normalisation, elementwise,
  reductions, memset, other), and the peak memory above what was allocated before the step.

Outputs (``--out``): ``train_profile.json`` and ``train_profile.md``. GPU only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import _common as C
import torch
import train_step
from kernel_kinds import kind_of
from timing import measure_peak, time_calls
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import FlopCounterMode

import yolo13_attn


def layer_inputs(model: torch.nn.Module, img: torch.Tensor) -> list[tuple]:
    """The positional inputs of every ``model.model[i]`` in one forward of ``model`` (in its current mode) on
    ``img`` under AMP float16, without autograd (detached)."""
    captured: list[tuple] = [()] * len(model.model)

    def hook(i):
        return lambda _m, args: captured.__setitem__(
            i, tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, args)
        )

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(model.model)]
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            model(img)
    finally:
        for h in handles:
            h.remove()
    return captured


def nbytes(tree) -> int:
    """Bytes of every tensor in ``tree``."""
    return sum(t.numel() * t.element_size() for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


def profile_layer(layer: torch.nn.Module, args: tuple) -> dict:
    """Forward/backward time, FLOPs, held memory and bytes of one layer on ``args`` (AMP fp16, training)."""
    args = tree_map(lambda t: t.clone().requires_grad_(t.is_floating_point()) if torch.is_tensor(t) else t, args)
    params = [p for p in layer.parameters() if p.requires_grad]

    def forward():
        with torch.autocast("cuda", dtype=torch.float16):
            return [t for t in tree_leaves(layer(*args)) if isinstance(t, torch.Tensor) and t.requires_grad]

    outs = forward()
    grads = [torch.randn_like(t) for t in outs]

    def step():
        torch.autograd.backward(forward(), grads)

    layer.zero_grad(set_to_none=True)
    fwd_ms = time_calls([forward], "cuda", graph=False, samples=5).median
    step_ms = time_calls([step], "cuda", graph=False, samples=5).median
    del outs
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    outs = forward()
    held = torch.cuda.memory_allocated() - before
    counter = FlopCounterMode(display=False)
    with counter:
        outs = forward()
    fwd_flops = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        torch.autograd.backward(outs, grads)
    fwd_bytes = nbytes(args) + nbytes(outs) + sum(p.numel() * 2 for p in params)
    return {
        "fwd_ms": fwd_ms,
        "bwd_ms": max(step_ms - fwd_ms, 0.0),
        "fwd_gflop": fwd_flops / 1e9,
        "bwd_gflop": counter.get_total_flops() / 1e9,
        "held_mb": held / 1e6,
        "fwd_mb": fwd_bytes / 1e6,
        "bwd_mb": 2 * fwd_bytes / 1e6,
    }


def attention_kind(layer: torch.nn.Module) -> str:
    names = {type(m).__name__ for m in layer.modules()}
    return ", ".join(sorted(names & {"AAttn", "AdaHGComputation"}))


def step_kernels(model, batch) -> tuple[dict[str, float], float]:
    """GPU kernel ms by kind in one profiled training step, and the step's peak memory (MB above before)."""
    step = train_step.make_step(model, batch, torch.float16)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            by_kind[kind_of(event.name)] += event.device_time_total / 1e3
    model.zero_grad(set_to_none=True)
    _, peak = measure_peak(step, "cuda")
    model.zero_grad(set_to_none=True)
    return dict(by_kind), peak


def profile_model(scale: str, batch: int, imgsz: int, backends: list[str], peaks: dict) -> dict:
    model = train_step.build_train_model(scale, 0, "cuda")
    data = train_step.random_batch(batch, (imgsz, imgsz), model.model[-1].nc, "cuda", 0)
    inputs = layer_inputs(model, data["img"])
    result = {"model": f"yolov13{scale}", "batch": batch, "imgsz": imgsz, "backends": {}}
    for backend in backends:
        handle = None if backend == "naive" else yolo13_attn.patch(model, C.patch_spec(backend))
        layers = []
        for i, (layer, args) in enumerate(zip(model.model, inputs)):
            row = {"index": i, "type": type(layer).__name__, "attention": attention_kind(layer)}
            row |= profile_layer(layer, args)
            byts = (row["fwd_mb"] + row["bwd_mb"]) * 1e6
            flops = (row["fwd_gflop"] + row["bwd_gflop"]) * 1e9
            row["floor_ms"] = max(byts / peaks["bw_Bps"], flops / peaks["flops"]["fp16"]) * 1e3
            layers.append(row)
            model.zero_grad(set_to_none=True)
        kinds, peak = step_kernels(model, data)
        result["backends"][backend] = {"layers": layers, "step_kernel_ms": kinds, "step_peak_mb": peak}
        print(f"  yolov13{scale} B{batch} {backend}: {summary_line(layers, kinds, peak)}", flush=True)
        if handle is not None:
            handle.undo()
        C.free_memory()
    return result


def summary_line(layers: list[dict], kinds: dict[str, float], peak: float) -> str:
    fwd, bwd = sum(r["fwd_ms"] for r in layers), sum(r["bwd_ms"] for r in layers)
    att = sum(r["fwd_ms"] + r["bwd_ms"] for r in layers if r["attention"])
    return (
        f"layers fwd {fwd:.1f} + bwd {bwd:.1f} ms (attention layers {att:.1f} ms), "
        f"step kernels {sum(kinds.values()):.1f} ms, peak {peak:.0f} MB"
    )


def markdown(data: dict) -> str:
    lines = ["# Training-step profile per layer", ""]
    lines += [f"- {k}: {data['env'][k]}" for k in ("gpu", "torch", "triton", "ultralytics", "date") if k in data["env"]]
    lines += ["", __doc__.split("\n\n", 1)[1].split("\n\nOutputs")[0], ""]
    for res in data["results"]:
        for backend, r in res["backends"].items():
            lines += [f"## {res['model']} batch {res['batch']} {res['imgsz']}x{res['imgsz']}: {backend}", ""]
            lines += [summary_line(r["layers"], r["step_kernel_ms"], r["step_peak_mb"]), ""]
            head = "| # | layer | attention | fwd ms | bwd ms | fwd GFLOP | bwd GFLOP | MB moved (est.) | floor ms |"
            lines += [head + " held MB |", "|" + "---|" * 10]
            for row in r["layers"]:
                lines.append(
                    f"| {row['index']} | {row['type']} | {row['attention']} "
                    f"| {row['fwd_ms']:.3f} | {row['bwd_ms']:.3f} "
                    f"| {row['fwd_gflop']:.2f} | {row['bwd_gflop']:.2f} | {row['fwd_mb'] + row['bwd_mb']:.0f} "
                    f"| {row['floor_ms']:.3f} | {row['held_mb']:.0f} |"
                )
            total = sum(r["step_kernel_ms"].values())
            lines += ["", "GPU kernel time of one whole step by kind:", "", "| kind | ms | share |", "|---|---|---|"]
            for kind, ms in sorted(r["step_kernel_ms"].items(), key=lambda kv: -kv[1]):
                lines.append(f"| {kind} | {ms:.2f} | {100 * ms / total:.0f}% |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="n:16:640,x:8:640", help="scale:batch:imgsz list")
    p.add_argument("--backends", default="naive,fa2path,auto", help="comma list (naive = unpatched)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_profile.py needs a CUDA GPU")
        return 1
    from peaks import measure_peaks

    peaks = measure_peaks()
    data = {"env": C.environment(), "peaks": peaks, "results": []}
    for case in args.cases.split(","):
        scale, batch, imgsz = case.split(":")
        data["results"].append(profile_model(scale, int(batch), int(imgsz), args.backends.split(","), peaks))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_profile.json").write_text(json.dumps(data, indent=1, default=str))
    (args.out / "train_profile.md").write_text(markdown(data))
    print(f"wrote train_profile.json, train_profile.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
