#!/usr/bin/env python3
"""Where compiled YOLOv13 inference spends its time: torch.compile + CUDA graph, by kernel kind, kernel and layer.

For each case (``--cases x:16:640,n:1:640``) and backend (``naive`` = the unpatched model, the
official-equivalent; ``auto``, ``triton``, ... patched), on the models ``bench/model_latency.py``
times (seeded weights, BN fused, eval, fp16, ``torch.inference_mode``):

* **Whole model**: ``torch.compile(model)`` (default mode, static shapes), its forward captured in
  a CUDA graph; the replay's median time, and the GPU kernels of three profiled replays summed per
  kernel and per kind (``bench/kernel_kinds.py``).
* **Per layer** (``--layers``): every entry of ``model.model`` (``6 A2C2f``, ``9 HyperACE``, ...)
  compiled alone on the input it receives in the model's forward and timed the same way. Inductor
  cannot fuse across the layer boundaries here, so the sum is a little above the whole model; it
  says which layers hold the time. Next to each: FLOPs (``FlopCounterMode`` of the unpatched layer,
  the same math for every backend), compulsory bytes (inputs + outputs + weights, each once) and
  the floor max(bytes / bandwidth, FLOPs / fp16 tensor-core peak) at the GPU's measured peaks
  (``bench/peaks.py``).

``--channels-last`` runs weights and images in ``torch.channels_last``. The outputs are timings,
not checks: ``bench/model_latency.py`` checks each patched model against float64 before timing.

Outputs (``--out``, default ``bench/results/<gpu>-<date>/compiled_profile``): ``compiled_profile.json``,
``compiled_profile.md``. GPU only.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from collections import defaultdict
from pathlib import Path

import _common as C
import torch
from kernel_kinds import KINDS, kind_of
from model_check import build_base
from timing import capture_graph, time_calls
from torch.utils.flop_counter import FlopCounterMode
from train_profile import layer_inputs, nbytes

import yolo13_attn

#: kernels listed per (case, backend), by total time
TOP_KERNELS = 25


def graph_time(call, max_total_s: float = 3.0) -> tuple[float, dict[str, list[float]]]:
    """Median ms of ``call`` replayed from a CUDA graph, and ``{kernel: [ms per replay, launches per replay]}``."""
    timing = time_calls([call], "cuda", graph=True, graph_ms=0.0, min_sample_ms=5.0, max_total_s=max_total_s)
    if not timing.method.startswith("CUDA-graph"):
        raise RuntimeError(timing.method)
    graph, replays = capture_graph([call], 1), 3
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name][0] += event.device_time_total / 1e3 / replays
            kernels[event.name][1] += 1 / replays
    return timing.median, dict(kernels)


def compiled(fn):
    """``torch.compile(fn)`` after a dynamo reset (per-layer compiles of one class must not share a cache)."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def layer_costs(model: torch.nn.Module, inputs: list[tuple], peaks: dict) -> list[dict]:
    """Per layer of the unpatched ``model``: type, GFLOP, compulsory MB and floor ms on ``inputs``."""
    rows = []
    for i, (layer, args) in enumerate(zip(model.model, inputs)):
        counter = FlopCounterMode(display=False)
        with counter:
            out = layer(*args)
        weights = sum(nbytes(t) for t in (*layer.parameters(), *layer.buffers()))
        byts, flops = nbytes(args) + nbytes(out) + weights, counter.get_total_flops()
        floor = max(byts / peaks["bw_Bps"], flops / peaks["flops"]["fp16"]) * 1e3
        row = {"index": i, "type": type(layer).__name__, "gflop": flops / 1e9, "mb": byts / 1e6}
        rows.append(row | {"floor_ms": floor})
    return rows


def profile_case(base, case: tuple, backends: list[str], args, peaks: dict) -> dict:
    scale, batch, (h, w) = case
    model = copy.deepcopy(base).to(device="cuda", dtype=torch.float16)
    x = torch.rand(batch, 3, h, w, generator=torch.Generator("cuda").manual_seed(batch), device="cuda").half()
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    result = {"model": f"yolov13{scale}", "batch": batch, "imgsz": f"{h}x{w}", "backends": {}}
    with torch.inference_mode():
        inputs = layer_inputs(model, x)  # also fills the Detect head's anchor cache for this shape
        if args.layers:
            result["layers"] = layer_costs(model, inputs, peaks)
        for backend in backends:
            handle = None if backend == "naive" else yolo13_attn.patch(model, C.patch_spec(backend))
            try:
                whole = compiled(model)
                ms, kernels = graph_time(functools.partial(whole, x))
                rec = {"compiled_graph_ms": ms, "kernels": kernels, "layer_ms": []}
                if handle is not None:
                    rec["served_by"] = C.served_by(handle)
                if args.layers:
                    for layer, layer_args in zip(model.model, inputs):
                        part = compiled(layer)
                        ms_layer, layer_kernels = graph_time(functools.partial(part, *layer_args), 0.5)
                        rec["layer_ms"].append(ms_layer)
                        rec.setdefault("layer_launches", []).append(round(sum(n for _, n in layer_kernels.values())))
            finally:
                if handle is not None:
                    handle.undo()
                torch._dynamo.reset()
            result["backends"][backend] = rec
            kinds = by_kind(kernels)
            print(
                f"  yolov13{scale} {h}x{w} B{batch} {backend}: compiled+graph {ms:.3f} ms; "
                + ", ".join(f"{k} {v:.2f}" for k, v in kinds.items() if v >= 0.005),
                flush=True,
            )
            C.free_memory()
    return result


def by_kind(kernels: dict[str, list[float]]) -> dict[str, float]:
    """Kernel ms per replay summed by kind, in ``KINDS`` order (``other`` last)."""
    out = dict.fromkeys([k for k, _ in KINDS] + ["other"], 0.0)
    for name, (ms, _) in kernels.items():
        out[kind_of(name)] += ms
    return out


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [
        "# Compiled YOLOv13 inference: where the time goes",
        "",
        f"- gpu: {env.get('gpu')}; torch {env.get('torch')}; triton {env.get('triton')}; date {data['date']}",
        f"- layout: {'channels_last' if data['args']['channels_last'] else 'contiguous (NCHW)'}; fp16; "
        "torch.compile default mode, CUDA-graph replay",
        f"- peaks: {data['peaks']['bw_Bps'] / 1e12:.2f} TB/s, fp16 {data['peaks']['flops']['fp16'] / 1e12:.0f} TFLOP/s",
        "",
    ]
    for res in data["results"]:
        names = list(res["backends"])
        title = f"{res['model']} batch {res['batch']} {res['imgsz']}"
        lines += [f"## {title}", "", "| kernel kind (ms per forward) | " + " | ".join(names) + " |"]
        lines.append("|---" * (len(names) + 1) + "|")
        kinds = {b: by_kind(r["kernels"]) for b, r in res["backends"].items()}
        for kind in next(iter(kinds.values())):
            if any(k[kind] >= 0.005 for k in kinds.values()):
                lines.append(f"| {kind} | " + " | ".join(f"{kinds[b][kind]:.3f}" for b in names) + " |")
        lines.append("| **kernels, sum** | " + " | ".join(f"{sum(kinds[b].values()):.3f}" for b in names) + " |")
        lines.append(
            "| **compiled + graph, median** | "
            + " | ".join(f"{res['backends'][b]['compiled_graph_ms']:.3f}" for b in names)
            + " |"
        )
        lines.append("")
        if "layers" in res:
            lines += [f"### {title}: per layer, each compiled alone (ms)", ""]
            lines.append(
                "| layer | GFLOP | MB | floor | " + " | ".join(names) + " | launches (last) | floor / time (last) |"
            )
            lines.append("|---" * (len(names) + 6) + "|")
            for j, row in enumerate(res["layers"]):
                times = [res["backends"][b]["layer_ms"][j] for b in names]
                lines.append(
                    f"| {row['index']} {row['type']} | {row['gflop']:.2f} | {row['mb']:.1f} | {row['floor_ms']:.3f} | "
                    + " | ".join(f"{t:.3f}" for t in times)
                    + f" | {res['backends'][names[-1]]['layer_launches'][j]} | {row['floor_ms'] / times[-1]:.2f} |"
                )
            lines.append("")
        for b in names:
            top = sorted(res["backends"][b]["kernels"].items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
            lines += [f"### {title}, {b}: top kernels", "", "| kernel | kind | launches | ms |", "|---|---|---|---|"]
            lines += [f"| `{name[:110]}` | {kind_of(name)} | {n:.0f} | {ms:.3f} |" for name, (ms, n) in top]
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="x:16:640,n:1:640", help="comma list of scale:batch:image, e.g. x:4:1280")
    p.add_argument("--backends", default="naive,auto", help="comma list (naive = unpatched)")
    p.add_argument("--channels-last", action="store_true", help="weights and images in torch.channels_last")
    p.add_argument("--layers", action="store_true", help="also compile and time every layer alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<gpu>-<date>/compiled_profile)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("compiled_profile.py needs a CUDA GPU")
        return 1
    from peaks import measure_peaks

    out = args.out or C.default_out_dir(False) / "compiled_profile"
    backends = C.parse_list(args.backends)
    data = {"environment": C.environment(), "date": C.today(), "args": vars(args) | {"out": str(out)}}
    data |= {"peaks": measure_peaks(), "results": []}
    bases = {}
    for item in C.parse_list(args.cases):
        scale, batch, img = item.split(":")
        hw = tuple(int(v) for v in (img.split("x") * 2)[:2])
        if (scale, hw) not in bases:
            bases[(scale, hw)] = build_base(scale, args.seed, hw)[0]
        data["results"].append(profile_case(bases[(scale, hw)], (scale, int(batch), hw), backends, args, data["peaks"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "compiled_profile.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "compiled_profile.md").write_text(markdown(data))
    print(f"wrote compiled_profile.json, compiled_profile.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
