#!/usr/bin/env python3
"""Whole-model latency: YOLOv13 n/s/l/x per attention backend, eager and CUDA-graph (issue 6).

Each model is built from its yaml on stock Ultralytics (``import yolo13_attn``), given seeded random
weights (``yolo13_attn.testing.randomize_weights``; no weights can be downloaded) with BatchNorm
calibrated on random images (``calibrate_batchnorm``, so activations stay O(1)), BN fused with
``model.fuse()``, put in eval mode, cast to the dtype, and run under ``torch.inference_mode``.
``naive`` is the unpatched model; every other backend is ``yolo13_attn.patch(model, backend)``.

Per (scale, dtype, backend, batch): median latency with p20/p80 in eager mode (wall clock with a
device sync per forward: what a user calling the model sees, Python overhead included) and in
CUDA-graph mode (one forward captured, replays timed with CUDA events), peak memory
(``torch.cuda.max_memory_allocated`` delta), speedup vs the unpatched model. Per (scale, dtype,
backend): the equivalence check of the detections at batch 1 against the float64 model
(``flash_rule``; baseline = the unpatched model in the backend's compute dtype), the patch report,
and the kernels each attention layer launched (``yolo13_attn.kernels_by_layer``: torch.profiler
on one eager forward).

Without a GPU (or with ``--cpu``): a small, clearly labelled CPU smoke run (yolov13n, batch 1,
320x320, fp32, eager only) into ``bench/results/cpu/``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

import _common as C

SCALES = ("n", "s", "l", "x")
MODES = ("eager", "graph")
#: "yolov13x fp16 triton" -> every full kernel name the profiled forward's attention layers launched
KERNEL_NAMES_FULL: dict[str, list[str]] = {}


class _Forward(torch.nn.Module):
    """Wraps a DetectionModel for ``kernels_by_layer`` (see the report: it calls ``model.model`` on
    anything with a ``predict`` attribute, which a DetectionModel has)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.net = model

    def forward(self, x):
        return self.net(x)


def detections(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def build_base(scale: str, seed: int, calib_hw: tuple[int, int]) -> tuple[torch.nn.Module, int]:
    """YOLOv13-<scale>: random seeded weights, BN calibrated, then fused; eval, float32, CPU."""
    from ultralytics import YOLO

    from yolo13_attn.testing import randomize_weights

    model = YOLO(f"yolov13{scale}.yaml").model
    n_params = sum(p.numel() for p in model.parameters())
    randomize_weights(model, seed=seed)
    try:
        from yolo13_attn.testing import calibrate_batchnorm

        images = torch.rand(2, 3, *calib_hw, generator=torch.Generator().manual_seed(seed + 1))
        calibrate_batchnorm(model, images)
    except ImportError:  # older library: random BN statistics only
        pass
    model.fuse(verbose=False)
    return model.eval(), n_params


def kernels_per_layer(model: torch.nn.Module, x: torch.Tensor, device: str) -> tuple[dict[str, list[str]], str]:
    """``{layer: [distinct kernel names]}`` from one profiled forward, and which tool produced it."""
    try:
        from yolo13_attn import kernels_by_layer

        found = kernels_by_layer(_Forward(model), x)
        return {name.removeprefix("net."): [k for k, _ in counts.most_common()] for name, counts in found.items()}, "yolo13_attn.kernels_by_layer"
    except ImportError:
        import yolo13_attn

        ranges = dict(yolo13_attn.attention_layers(model)) if hasattr(yolo13_attn, "attention_layers") else {}
        with torch.no_grad():
            found = C.profile_kernels(lambda: model(x), ranges, device)
        return found["layers"], "bench/_common.profile_kernels"


def compact_kernels(per_layer: dict[str, list[str]]) -> dict[str, list[str]]:
    """``{layer: sorted distinct compact kernel names}`` (``_common.compact_kernel``)."""
    return {name: sorted({C.compact_kernel(k) for k in kernels}) for name, kernels in per_layer.items()}


def group_layers(per_layer: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """Layers with identical kernel sets, grouped: ``[("model.6.* (4 layers)", kernels), ...]``."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, kernels in compact_kernels(per_layer).items():
        groups[tuple(kernels)].append(name)
    out = []
    for kernels, names in groups.items():
        prefix = ".".join(names[0].split(".")[:2]) if len(names) > 1 else names[0]
        label = f"{prefix}.* ({len(names)} layers)" if len(names) > 1 else names[0]
        out.append((label, list(kernels)))
    return out


def time_graph(call, device: str, samples: int) -> tuple[C.Timing, float]:
    """CUDA-graph timing of one forward (and the peak extra memory of warm-up + capture, MB)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    timing = C.time_cuda_graph([call], samples=samples, sample_ms=5.0, graph_ms=0.0, max_total_s=1.5)
    peak = (torch.cuda.max_memory_allocated() - before) / 1e6
    return timing, peak


def reference_forward(model64: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, tuple]]:
    """Detections of the float64 model and ``{attention layer: (its input, its output)}`` of that forward."""
    import yolo13_attn

    captured, hooks = {}, []
    for name, layer in yolo13_attn.attention_layers(model64):
        hooks.append(layer.register_forward_hook(lambda m, args, out, name=name: captured.__setitem__(name, (args[0], out))))
    try:
        with torch.inference_mode():
            det = detections(model64(x))
    finally:
        for h in hooks:
            h.remove()
    return det, captured


def check_model(model, dtype, ref64, layer_refs, x_check, baseline) -> dict:
    """The flash rule per attention layer (its float64-forward input; baseline: the unpatched layer in the
    baseline dtype), as tests/test_model_equivalence.py, plus the detections (informational with random
    weights: whole-model rounding differences are amplified, and fp16 detections can overflow)."""
    from yolo13_attn.testing import flash_rule

    base_det, base_layers, base_dt = baseline
    modules = dict(model.named_modules())
    layers = {}
    with torch.inference_mode():
        for name, (inp, out64) in layer_refs.items():
            rep = flash_rule(modules[name](inp.to(dtype)), out64, base_layers[name])
            layers[name] = {"err": rep.candidate, "bound": rep.bound, "baseline_err": rep.baseline, "pass": rep.ok}
        det = flash_rule(detections(model(x_check.to(dtype))), ref64, base_det)
    worst = max(layers, key=lambda n: layers[n]["err"] / layers[n]["bound"] if layers[n]["bound"] else math.inf) if layers else None
    finite = math.isfinite(det.baseline)
    check = {"pass": all(v["pass"] for v in layers.values()) and (det.ok or not finite), "baseline_dtype": C.dtype_name(base_dt), "batch": 1,
             "layers_checked": len(layers), "worst_layer": worst, "layers": layers,
             "detections": {"err": det.candidate, "bound": det.bound, "baseline_err": det.baseline, "pass": det.ok, "baseline_finite": finite},
             "note": "per attention layer on its float64-forward input, plus detections vs the float64 model"}
    if worst is not None:
        check.update(err=layers[worst]["err"], bound=layers[worst]["bound"], baseline_err=layers[worst]["baseline_err"])
    return check


def run_scale_dtype(scale, dtype_name, base, ref64, layer_refs, x_check, backends, args, device, budget, records, imgsz):
    dtype = C.DTYPES[dtype_name]
    import yolo13_attn
    from yolo13_attn.backends import BackendUnsupportedError

    model = copy.deepcopy(base).to(device=device, dtype=dtype)
    baselines = {}

    def baseline(dt: torch.dtype):
        """(detections, {layer: output}, dt) of the unpatched model computing in ``dt``, cast to the dtype."""
        if dt not in baselines:
            m = model if dt == dtype else copy.deepcopy(base).to(device=device, dtype=dt)
            modules = dict(m.named_modules())
            with torch.inference_mode():
                det = detections(m(x_check.to(dt))).to(dtype)
                layers = {name: modules[name](inp.to(dt)).to(dtype) for name, (inp, _) in layer_refs.items()}
            baselines[dt] = (det, layers, dt)
        return baselines[dt]

    baseline(dtype)  # unpatched, before any patching
    for backend in backends:
        common = {"model": f"yolov13{scale}", "scale": scale, "dtype": dtype_name, "backend": backend, "imgsz": imgsz}
        if budget.exhausted():
            for batch in args.batch_list:
                records.append({**common, "batch": batch, "status": "budget", "reason": "time budget exhausted"})
            continue
        handle, info = None, {"report": [], "kernels": {}, "check": {}}
        try:
            if backend != "naive":
                handle = yolo13_attn.patch(model, backend)
                info["report"] = [vars(r) for r in handle.report()]
                compute = C.report_compute_dtypes(handle)
            else:
                info["report"] = [{"name": "(all attention layers)", "backend": "naive (unpatched)", "kernel": "reference"}]
                compute = set()
            from yolo13_attn.testing import baseline_dtype

            base_dt = baseline_dtype(dtype, *compute)
            info["check"] = check_model(model, dtype, ref64, layer_refs, x_check, baseline(base_dt))
            if not args.no_profile:
                t0 = time.perf_counter()
                full, info["kernels_tool"] = kernels_per_layer(model, x_check.to(dtype), device)
                info["kernels"] = compact_kernels(full)
                KERNEL_NAMES_FULL[f"yolov13{scale} {dtype_name} {backend}"] = sorted({k for ks in full.values() for k in ks})
                info["profile_s"] = time.perf_counter() - t0
        except BackendUnsupportedError as err:
            for batch in args.batch_list:
                records.append({**common, "batch": batch, "status": "unsupported", "reason": str(err).split(" -- ", 1)[-1][:400]})
            C.progress(f"  yolov13{scale} {dtype_name} {backend}: unsupported: {str(err)[:200]}")
            continue
        except Exception as err:
            for batch in args.batch_list:
                records.append({**common, "batch": batch, "status": "error", "reason": f"{type(err).__name__}: {err}"[:400]})
            C.progress(f"  yolov13{scale} {dtype_name} {backend}: error: {type(err).__name__}: {str(err)[:200]}")
            if args.verbose:
                traceback.print_exc()
            if handle is not None:
                handle.undo()
            continue
        for batch in args.batch_list:
            rec = {**common, "batch": batch, **info, "timing": {}, "peak_mem_mb": {}, "status": "ok" if info["check"].get("pass", True) else "check-failed",
                   "reason": "" if info["check"].get("pass", True) else _check_reason(info["check"])}
            if budget.exhausted():
                rec.update(status="budget", reason="time budget exhausted")
                records.append(rec)
                continue
            t0 = time.perf_counter()
            gen = torch.Generator(device=device).manual_seed(batch)
            x = torch.rand(batch, 3, *args.hw, generator=gen, device=device).to(dtype)
            errors = []
            with torch.inference_mode():
                for mode in args.mode_list:
                    try:
                        if mode == "eager":
                            _, peak = C.measure_peak(lambda: model(x), device)
                            timing = C.time_wall(lambda: model(x), device, budget_s=args.eager_budget_s, min_reps=5, max_reps=30, warmup=2)
                        else:
                            timing, peak = time_graph(lambda: model(x), device, args.samples)
                        rec["timing"][mode] = timing.as_dict()
                        rec["peak_mem_mb"][mode] = peak
                    except Exception as err:
                        errors.append(f"{mode}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300])
                        if args.verbose:
                            traceback.print_exc()
                        if device == "cuda":
                            torch.cuda.synchronize()
            if errors:
                rec["errors"] = errors
                if not rec["timing"]:
                    rec["status"], rec["reason"] = "error", "; ".join(errors)
            records.append(rec)
            line = f"yolov13{scale} {imgsz} {dtype_name} B{batch:<3} {backend:<6}"
            for mode in args.mode_list:
                t = rec["timing"].get(mode)
                line += f" {mode} {C.fmt_ms(t['median']):>8} ms [{C.fmt_ms(t['p20'])}, {C.fmt_ms(t['p80'])}]" if t else f" {mode} -"
                pk = rec["peak_mem_mb"].get(mode)
                if pk is not None and math.isfinite(pk):
                    line += f" ({pk:.0f} MB)"
            chk = info["check"]
            line += f" check {'ok' if chk.get('pass') else 'FAIL'} (worst layer {_e(chk.get('err'))} vs bound {_e(chk.get('bound'))})"
            if errors:
                line += " errors: " + "; ".join(errors)
            C.progress(line + f" [{time.perf_counter() - t0:.1f}s]")
            del x
        if handle is not None:
            handle.undo()
    del model
    C.free_memory()


def _e(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def _check_reason(chk: dict) -> str:
    bad = [f"{n}: {_e(v['err'])} > {_e(v['bound'])}" for n, v in chk.get("layers", {}).items() if not v["pass"]]
    det = chk.get("detections", {})
    if det and not det.get("pass") and det.get("baseline_finite", True):
        bad.append(f"detections: {_e(det.get('err'))} > {_e(det.get('bound'))}")
    return "flash rule failed: " + "; ".join(bad)


def add_speedups(records: list[dict]) -> None:
    naive = {}
    for r in records:
        if r["backend"] == "naive" and r.get("timing"):
            naive[(r["model"], r["dtype"], r["batch"])] = r["timing"]
    for r in records:
        base = naive.get((r["model"], r["dtype"], r["batch"]))
        if not base or not r.get("timing"):
            continue
        r["speedup_vs_naive"] = {m: base[m]["median"] / t["median"] for m, t in r["timing"].items() if m in base}


def csv_rows(records, device, versions, date):
    rows = []
    for r in records:
        if r["status"] in ("unsupported", "budget") or not r.get("timing"):
            continue
        base = {"op": r["model"], "backend": r["backend"], "shape": r["imgsz"], "dtype": r["dtype"], "batch": r["batch"],
                "device": device, "versions": versions, "date": date}
        chk = r.get("check") or {}
        if chk:
            rows.append({**base, "metric": "check_pass", "median": int(bool(chk.get("pass")))})
            rows.append({**base, "metric": "check_err", "median": chk.get("err")})
            rows.append({**base, "metric": "check_bound", "median": chk.get("bound")})
        for mode, t in r["timing"].items():
            rows.append({**base, "metric": f"{mode}_ms", "median": t["median"], "p20": t["p20"], "p80": t["p80"]})
            sp = r.get("speedup_vs_naive", {}).get(mode)
            if sp is not None:
                rows.append({**base, "metric": f"{mode}_speedup_vs_naive", "median": sp})
            pk = r.get("peak_mem_mb", {}).get(mode)
            if pk is not None and math.isfinite(pk):
                rows.append({**base, "metric": f"{mode}_peak_mem_mb", "median": pk})
    return rows


def markdown(data: dict) -> str:
    env, records = data["environment"], data["configs"]
    gpu = data["device_kind"] == "cuda"
    title = "Model latency" + ("" if gpu else " - CPU SMOKE RUN (not a benchmark: yolov13n, batch 1, 320x320, fp32, eager, shared CPU)")
    lines = C.header_lines(title, env, {"date": data["date"], "image": data["imgsz"], "weights": "seeded random (randomize_weights + calibrate_batchnorm), BN fused, eval, inference_mode",
                                        "eager": "wall clock per forward with a device sync (Python overhead included), median [p20, p80]",
                                        "graph": "CUDA-graph replay of one captured forward, CUDA events, median [p20, p80]" if gpu else "not run on CPU"})
    for name, why in data["skipped_backends"].items():
        lines.append(f"- backend `{name}` skipped: {why}")
    lines += ["", "Cells: median ms [p20-p80] (speedup vs naive = unpatched). `FAIL`: detections failed the flash rule at batch 1.", ""]
    backends = data["backends_run"]
    for mode in data["modes"]:
        lines += [f"## {mode}", ""]
        by = defaultdict(dict)
        for r in records:
            by[(r["model"], r["dtype"], r["batch"])][r["backend"]] = r
        rows = []
        for (model, dtype, batch), per in by.items():
            row = [model, dtype, str(batch)]
            for b in backends:
                r = per.get(b)
                if r is None:
                    row.append("")
                elif r["status"] in ("unsupported", "budget", "error") and not r.get("timing"):
                    row.append({"unsupported": "n/s", "budget": "not run"}.get(r["status"], "error"))
                elif mode not in r.get("timing", {}):
                    row.append("-")
                else:
                    t = r["timing"][mode]
                    cell = f"{C.fmt_ms(t['median'])} [{C.fmt_ms(t['p20'])}-{C.fmt_ms(t['p80'])}]"
                    sp = r.get("speedup_vs_naive", {}).get(mode)
                    if b != "naive" and sp is not None:
                        cell += f" ({C.fmt_x(sp)})"
                    if r["status"] == "check-failed":
                        cell += " FAIL"
                    row.append(cell)
            rows.append(row)
        lines += [C.md_table(["model", "dtype", "B"] + backends, rows), ""]
    if gpu:
        lines += ["## Peak memory (MB, max_memory_allocated delta; eager / graph)", ""]
        rows = []
        by = defaultdict(dict)
        for r in records:
            by[(r["model"], r["dtype"], r["batch"])][r["backend"]] = r
        for (model, dtype, batch), per in by.items():
            row = [model, dtype, str(batch)]
            for b in backends:
                pk = (per.get(b) or {}).get("peak_mem_mb") or {}
                row.append(" / ".join(f"{pk[m]:.0f}" if m in pk and pk[m] is not None and math.isfinite(pk[m]) else "-" for m in data["modes"]))
            rows.append(row)
        lines += [C.md_table(["model", "dtype", "B"] + backends, rows), ""]
    lines += ["## Equivalence check at batch 1 (flash rule against the float64 model)", "",
              "Per attention layer: each patched layer on the input it sees in the float64 forward (baseline: the unpatched layer "
              "in the baseline dtype), as tests/test_model_equivalence.py; `worst layer` = the layer closest to its bound. "
              "Detections: the whole model's output - informational with seeded random weights (rounding is amplified through "
              "the network; fp16 detections of the larger models can overflow, making the bound infinite).", ""]
    seen, rows = set(), []
    for r in records:
        key = (r["model"], r["dtype"], r["backend"])
        if key in seen or not r.get("check"):
            continue
        seen.add(key)
        c = r["check"]
        det = c.get("detections") or ({"err": c.get("err"), "bound": c.get("bound")} if "layers" not in c else {})
        layers = f"{c['layers_checked']} layers, worst {_e(c.get('err'))} <= {_e(c.get('bound'))}" if "layers" in c else "not run (older result)"
        rows.append([r["model"], r["dtype"], r["backend"], "ok" if c["pass"] else "FAIL", layers,
                     f"{_e(det.get('err'))} / {_e(det.get('bound'))}", c.get("baseline_dtype", "")])
    lines += [C.md_table(["model", "dtype", "backend", "check", "attention layers", "detections err / bound", "baseline dtype"], rows), ""]
    lines += ["## Kernels that ran, per attention layer (one profiled eager forward at batch 1)", ""]
    seen = set()
    for r in records:
        key = (r["model"], r["dtype"], r["backend"])
        if key in seen or not r.get("kernels"):
            continue
        seen.add(key)
        lines.append(f"**{r['model']} {r['dtype']} {r['backend']}** ({r.get('kernels_tool', '')}):")
        lines.append("")
        for label, kernels in group_layers(r["kernels"]):
            lines.append(f"- {label}: " + ", ".join(f"`{k}`" for k in kernels))
        lines.append("")
    problems = [r for r in records if r["status"] in ("error", "check-failed") or r.get("errors")]
    if problems:
        lines += ["## Errors and check failures", ""]
        lines += [f"- {r['model']} {r['dtype']} B{r['batch']} {r['backend']}: {r['status']}: {r.get('reason', '')} {'; '.join(r.get('errors', []))}" for r in problems]
        lines.append("")
    unsupported = sorted({(r["model"], r["dtype"], r["backend"], r.get("reason", "")) for r in records if r["status"] == "unsupported"})
    if unsupported:
        lines += ["## Declined", ""] + [f"- {m} {d} {b}: {why}" for m, d, b, why in unsupported] + [""]
    return "\n".join(lines)


def plots(data: dict, out_dir: Path) -> list[str]:
    plt = C.matplotlib_pyplot()
    if plt is None:
        return []
    records = [r for r in data["configs"] if r.get("timing")]
    if not records:
        return []
    modes = [m for m in data["modes"] if any(m in r["timing"] for r in records)]
    dtypes = [d for d in data["dtypes"] if any(r["dtype"] == d for r in records)]
    backends = [b for b in data["backends_run"] if any(r["backend"] == b for r in records)]
    groups = list(dict.fromkeys((r["model"], r["batch"]) for r in records))
    fig, axes = plt.subplots(len(modes), len(dtypes), figsize=(max(6, 0.7 * len(groups) * len(dtypes) + 3), 4.2 * len(modes)), squeeze=False)
    width = 0.8 / max(1, len(backends))
    for i, mode in enumerate(modes):
        for j, dtype in enumerate(dtypes):
            ax = axes[i][j]
            for bi, b in enumerate(backends):
                ys, errs_lo, errs_hi, bad = [], [], [], []
                for model, batch in groups:
                    r = next((r for r in records if r["model"] == model and r["batch"] == batch and r["dtype"] == dtype and r["backend"] == b), None)
                    t = r["timing"].get(mode) if r else None
                    ys.append(t["median"] if t else float("nan"))
                    errs_lo.append(t["median"] - t["p20"] if t else 0)
                    errs_hi.append(t["p80"] - t["median"] if t else 0)
                    bad.append(bool(r) and r["status"] != "ok")
                bars = ax.bar([x + bi * width for x in range(len(groups))], ys, width, yerr=[errs_lo, errs_hi], label=b, capsize=2)
                for bar, flag in zip(bars, bad):
                    if flag:
                        bar.set_hatch("xx")
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))])
            ax.set_xticklabels([f"{m.removeprefix('yolov13')} B{b}" for m, b in groups], rotation=45, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms per forward")
            ax.set_title(f"{mode} {dtype} {data['imgsz']}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    title = f"YOLOv13 latency on {data['device']} (bars: median, whiskers p20-p80, hatched: check failed)"
    fig.suptitle(title if data["device_kind"] == "cuda" else "CPU SMOKE RUN - " + title, fontsize=10)
    fig.tight_layout()
    path = out_dir / "model_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def write_outputs(data: dict, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = data["environment"]
    C.write_csv(out_dir / "model_latency.csv", csv_rows(data["configs"], data["device"], C.versions_string(env), data["date"]))
    data["plots"] = plots(data, out_dir)
    if not data["plots"]:
        data["plots_note"] = "no plot: matplotlib not importable here or nothing timed (re-render with --replot DIR)"
    C.write_json(out_dir / "model_latency.json", data)
    (out_dir / "model_latency.md").write_text(markdown(data))
    return ["model_latency.csv", "model_latency.json", "model_latency.md", *data["plots"]]


def replot(out_dir: Path) -> None:
    import json

    data = json.loads((out_dir / "model_latency.json").read_text())
    full = data.setdefault("kernel_names_full", {})
    for r in data["configs"]:  # results written before the names were compacted
        if r.get("kernels"):
            key = f"{r['model']} {r['dtype']} {r['backend']}"
            names = {k for ks in r["kernels"].values() for k in ks}
            if any(C.compact_kernel(k) != k for k in names):
                full.setdefault(key, sorted(names))
            r["kernels"] = compact_kernels(r["kernels"])
    print(f"re-rendered {', '.join(write_outputs(data, out_dir))} in {out_dir}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", help="comma list of n,s,l,x")
    p.add_argument("--batches", help="comma list, default 1,8,16")
    p.add_argument("--dtypes", help="comma list of fp16,bf16,fp32 (default fp16,fp32)")
    p.add_argument("--backends", help="comma list (default: every available backend; naive = unpatched)")
    p.add_argument("--modes", help="comma list of eager,graph")
    p.add_argument("--imgsz", default=None, help="HxW or one number (default 640; CPU 320)")
    p.add_argument("--eager-budget-s", type=float, default=1.0, help="seconds of eager timing per configuration")
    p.add_argument("--samples", type=int, default=10, help="CUDA-graph timing samples")
    p.add_argument("--no-profile", action="store_true", help="skip the per-layer kernel listing")
    return p


def main(argv=None) -> int:
    args, mode = C.start_run(build_parser(), argv, replot)
    if mode is None:
        return 0
    cpu_mode, device = mode
    scales = C.parse_list(args.scales, SCALES, "scale") or (["n"] if cpu_mode else list(SCALES))
    args.batch_list = [int(b) for b in (C.parse_list(args.batches) or ([1] if cpu_mode else [1, 8, 16]))]
    dtypes = C.parse_list(args.dtypes, list(C.DTYPES), "dtype") or (["fp32"] if cpu_mode else ["fp16", "fp32"])
    args.mode_list = C.parse_list(args.modes, MODES, "mode") or (["eager"] if cpu_mode else list(MODES))
    if cpu_mode and "graph" in args.mode_list:
        print("CUDA graphs need a GPU: graph mode dropped")
        args.mode_list = [m for m in args.mode_list if m != "graph"] or ["eager"]
    size = args.imgsz or ("320" if cpu_mode else "640")
    h, _, w = size.partition("x")
    args.hw = (int(h), int(w or h))
    imgsz = f"{args.hw[0]}x{args.hw[1]}"
    backends, skipped = C.choose_backends(C.parse_list(args.backends), cpu_mode)
    out_dir = args.out or C.default_out_dir(cpu_mode)
    env = C.environment()
    if cpu_mode:
        print("CPU SMOKE RUN: no GPU in use - yolov13n, batch 1, eager, fp32 on a shared CPU; not a benchmark.")
    print(f"device: {env.get('gpu') if not cpu_mode else 'cpu'}; torch {env['torch']}; results -> {out_dir}")
    print(f"backends: {', '.join(backends)}; scales {scales}; batches {args.batch_list}; dtypes {dtypes}; modes {args.mode_list}; {imgsz}")
    for name, why in skipped.items():
        print(f"  skipping backend {name}: {why}")
    budget = C.Budget(args.budget_s)
    records: list[dict] = []
    models: dict[str, dict] = {}
    check_gen = torch.Generator().manual_seed(args.seed + 7)
    x_check = torch.rand(1, 3, *args.hw, generator=check_gen).to(device)
    for dtype_name in dtypes:  # fp16 of every scale first: the budget cuts the least important part
        for scale in scales:
            if budget.exhausted():
                for b in backends:
                    for batch in args.batch_list:
                        records.append({"model": f"yolov13{scale}", "scale": scale, "dtype": dtype_name, "backend": b, "imgsz": imgsz, "batch": batch,
                                        "status": "budget", "reason": "time budget exhausted"})
                continue
            if scale not in models:
                t0 = time.perf_counter()
                base, n_params = build_base(scale, args.seed, (min(args.hw[0], 160), min(args.hw[1], 160)))
                with torch.inference_mode():
                    model64 = copy.deepcopy(base).to(device=device, dtype=torch.float64)
                    ref64, layer_refs = reference_forward(model64, x_check.double())
                    del model64
                models[scale] = {"base": base, "ref64": ref64, "layer_refs": layer_refs, "params": n_params}
                C.progress(f"built yolov13{scale}: {n_params:,} parameters (+ float64 reference forward) in {time.perf_counter() - t0:.1f}s")
            entry = models[scale]
            run_scale_dtype(scale, dtype_name, entry["base"], entry["ref64"], entry["layer_refs"], x_check, backends, args, device, budget, records, imgsz)
    add_speedups(records)
    data = {
        "script": "model_latency",
        "title": "YOLOv13 whole-model latency" + (" (CPU smoke run, not a benchmark)" if cpu_mode else ""),
        "date": C.today(),
        "created": C.now_iso(),
        "device_kind": device,
        "device": C.device_string(env),
        "environment": env,
        "backends": C.backend_availability(),
        "backends_run": backends,
        "skipped_backends": skipped,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "scales": scales, "batches": args.batch_list, "dtypes": dtypes, "modes": args.mode_list, "imgsz": imgsz,
        "parameters": {f"yolov13{s}": e["params"] for s, e in models.items()},
        "kernel_names_full": KERNEL_NAMES_FULL,
        "elapsed_s": budget.elapsed(),
        "configs": records,
    }
    files = write_outputs(data, out_dir)
    print(f"\nwrote {', '.join(files)} to {out_dir} in {budget.elapsed():.0f} s")
    print_summary(data)
    return 0


def print_summary(data: dict) -> None:
    print("\nmodel latency (median ms; speedup vs unpatched):")
    for r in data["configs"]:
        if not r.get("timing"):
            continue
        cells = []
        for mode in data["modes"]:
            t = r["timing"].get(mode)
            if t:
                sp = r.get("speedup_vs_naive", {}).get(mode)
                cells.append(f"{mode} {C.fmt_ms(t['median'])}" + (f" ({C.fmt_x(sp)})" if sp and r["backend"] != "naive" else ""))
        flag = "" if r["status"] == "ok" else f" [{r['status']}]"
        print(f"  {r['model']} {r['dtype']} B{r['batch']:<3} {r['backend']:<6} " + "  ".join(cells) + flag)


if __name__ == "__main__":
    sys.exit(main())
