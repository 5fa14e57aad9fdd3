#!/usr/bin/env python3
"""Whole-model latency of YOLOv13 per attention backend: eager, CUDA graph, torch.compile, training step.

``naive`` is the unpatched model; every other backend (``auto`` included) is
``yolo13_attn.patch(model, C.patch_spec(backend))``. Models: seeded random weights, BN calibrated then fused, eval,
cast to the dtype, ``torch.inference_mode`` (``bench/model_check.py``).

Modes (``--modes``):

* ``eager``: one forward per sample, synchronised (a latency as a caller sees it, Python and launch
  overhead included).
* ``graph``: one forward captured in a CUDA graph, replays timed.
* ``compiled``: ``torch.compile(model)`` (``--compile-mode``), compiled cold - ``torch._dynamo.reset()``
  and Inductor's caches off - then timed like ``eager``. ``compile_s`` = wall time of the calls that
  compiled (the first, and any recompiling one); ``compiled_graphs`` = graphs dynamo captured.
  One eager forward precedes the compile: its output is what the compiled output is compared with,
  and it fills the Detect head's per-shape anchor cache, as the first image of any predict loop does.
* ``compiled_graph``: the compiled forward captured in a CUDA graph, replays timed.
* ``train_step``: forward + backward of the training model through ``model.loss`` under AMP
  (``bench/train_step.py``), all backends in one process, rounds in rotated order, best round kept.
* ``train_step_compiled``: the same step through ``torch.compile(model)`` (what Ultralytics'
  ``train(compile=True)`` runs: the compiled model's forward on the batch dict computes the loss);
  each backend compiles on its first call (a re-patch recompiles), warm-up excluded.

Before timing, per (model, image, dtype, backend): every patched attention layer is checked against
the float64 model (flash rule) and the kernels each attention layer launched are listed
(``yolo13_attn.kernels_by_layer``). Per mode, one profiled call counts the launches of the backend's
own kernels (``<mode>_backend_kernels_seen``): proof of what ran, under ``torch.compile`` too.

Shapes: ``--cases n:1:640,x:16:640,x:4:1280`` (scale:batch:image), or every combination of
``--scales``, ``--batches`` and ``--imgsz``. Without a GPU (or with ``--cpu``): a small, labelled
CPU smoke run into ``bench/results/cpu/``. Outputs: ``bench/model_report.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import re
import sys
import time
import traceback
import warnings
from collections import defaultdict
from dataclasses import dataclass

import _common as C
import model_report as R
import outputs as O
import torch
import train_step
from model_check import Reference, build_base, detections
from timing import measure_peak, time_calls

import yolo13_attn

SCALES = ("n", "s", "l", "x")
TRAIN_MODES = ("train_step", "train_step_compiled")
MODES = ("eager", "graph", "compiled", "compiled_graph", *TRAIN_MODES)
GRAPH_MODES = ("graph", "compiled_graph")
COMPILE_BACKEND_HELP = (
    "torch.compile backend (default inductor). 'eager' only traces with dynamo and runs the captured graph eagerly, "
    "without code generation: the CPU smoke test uses it to exercise the compiled code path in seconds; its timings "
    "say nothing about Inductor"
)


@dataclass(frozen=True)
class Case:
    scale: str
    batch: int
    h: int
    w: int

    @property
    def imgsz(self) -> str:
        return f"{self.h}x{self.w}"


def _hw(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def parse_cases(args, cpu_mode: bool) -> list[Case]:
    """``--cases scale:batch:HxW,...`` or the product of ``--scales``, ``--batches``, ``--imgsz``."""
    if args.cases:
        cases = []
        for item in C.parse_list(args.cases):
            parts = item.split(":")
            if len(parts) != 3 or parts[0] not in SCALES or not parts[1].isdigit():
                raise SystemExit(
                    f"--cases: {item!r} is not scale:batch:image (scale one of {','.join(SCALES)}; e.g. x:16:640)"
                )
            cases.append(Case(parts[0], int(parts[1]), *_hw(parts[2])))
        return cases
    scales = C.parse_list(args.scales, SCALES, "scale") or (["n"] if cpu_mode else list(SCALES))
    batches = [int(b) for b in C.parse_list(args.batches or ("1" if cpu_mode else "1,8,16"))]
    return [Case(s, b, *_hw(args.imgsz or ("320" if cpu_mode else "640"))) for s in scales for b in batches]


def kernel_pattern(backend: str, handle) -> str:
    """The regex of the kernels ``backend`` launches; for ``naive``, any backend's (Inductor may rewrite the
    reference into SDPA)."""
    if handle is None:
        return "|".join(R.BACKEND_KERNELS.values())
    served = sorted({r.backend for r in handle.report()} & set(R.BACKEND_KERNELS))
    return "|".join(R.BACKEND_KERNELS[b] for b in served) or r"(?!)"


def backend_kernels(run, pattern: str, device: str) -> tuple[int, list[str]]:
    """Profile one ``run()``: how many GPU kernels launched (on CPU: outermost operators) match ``pattern``, and
    their names."""
    from torch.profiler import ProfilerActivity, profile

    rx = re.compile(pattern)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])) as prof:
        run()
        if device == "cuda":
            torch.cuda.synchronize()
    if device == "cuda":
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and rx.search(e.name)]
    else:
        names = [
            e.name for e in prof.events() if rx.search(e.name) and not (e.cpu_parent and rx.search(e.cpu_parent.name))
        ]
    return len(names), sorted({R.compact_kernel(n) for n in names})


@contextlib.contextmanager
def _inductor_caches_off():
    """Inductor's FX-graph/autotune caches off, so that every compile is cold (Triton's own kernel cache stays)."""
    config = getattr(torch.compiler, "config", None)
    if not hasattr(config, "force_disable_caches"):  # older torch: the flag lives in Inductor's config
        from torch._inductor import config
    with contextlib.ExitStack() as stack:
        if hasattr(config, "force_disable_caches"):
            stack.enter_context(config.patch(force_disable_caches=True))
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")  # says what we asked for
        yield


def compile_cold(model, x, args, device: str) -> tuple:
    """``torch.compile(model)`` after ``torch._dynamo.reset()``, called until a call compiles nothing new.

    Returns the compiled callable, the seconds spent in the calls that compiled (normally the first
    alone; a recompile counts too) and how many graphs dynamo captured (1: no graph break)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    mode = {"mode": args.compile_mode} if args.compile_backend == "inductor" else {}
    compiled, seconds = torch.compile(model, backend=args.compile_backend, dynamic=False, **mode), 0.0
    with _inductor_caches_off():
        for _ in range(4):
            graphs, t0 = counters["stats"]["unique_graphs"], time.perf_counter()
            compiled(x)
            if device == "cuda":
                torch.cuda.synchronize()
            if counters["stats"]["unique_graphs"] == graphs:
                break
            seconds += time.perf_counter() - t0
    return compiled, seconds, counters["stats"]["unique_graphs"]


def _error(what: str, err: Exception, args, device: str) -> str:
    """``what: Type: first line``; the traceback with ``--verbose``; the GPU synchronised for what follows."""
    if args.verbose:
        traceback.print_exc()
    if device == "cuda":
        torch.cuda.synchronize()
    return f"{what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]


def _time_mode(call, mode: str, args, device: str):
    kw = {"samples": args.samples, "max_total_s": args.mode_budget_s}
    if mode not in GRAPH_MODES:
        return time_calls([call], device, graph=False, min_sample_ms=0.0, **kw)
    timing = time_calls([call], device, graph=True, graph_ms=0.0, min_sample_ms=5.0, **kw)
    if not timing.method.startswith("CUDA-graph"):
        raise RuntimeError(timing.method)
    return timing


def time_modes(model, x, modes, args, device, pattern, rec) -> list[str]:
    """The inference modes of one (backend, case) into ``rec``; returns the errors."""
    errors, calls = [], {"eager": functools.partial(model, x)}
    if any(m.startswith("compiled") for m in modes):
        try:
            eager = detections(model(x)).double()  # also fills the Detect head's anchor cache for this input shape
            compiled, rec["compile_s"], rec["compiled_graphs"] = compile_cold(model, x, args, device)
            calls["compiled"] = functools.partial(compiled, x)
            rec["compiled_max_abs_diff_vs_eager"] = float((detections(compiled(x)).double() - eager).abs().max())
        except Exception as err:  # noqa: BLE001 - a compile failure is a result: recorded, the other modes go on
            errors.append(_error("compile", err, args, device))
    for mode in modes:
        call = calls.get("compiled" if mode.startswith("compiled") else "eager")
        try:
            if call is not None:
                timing, peak = measure_peak(functools.partial(_time_mode, call, mode, args, device), device)
                rec["timing"][mode], rec["peak_mem_mb"][mode] = timing.as_dict(), peak
                if mode in ("eager", "compiled") and not args.no_profile:
                    rec["kernels_seen"][mode], rec["kernels_seen_names"][mode] = backend_kernels(call, pattern, device)
        except Exception as err:  # noqa: BLE001 - e.g. a failed capture: recorded, the other modes go on
            errors.append(_error(mode, err, args, device))
    if "compiled" in calls:  # graphs captured until now: a recompile while timing shows here
        rec["compiled_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return errors


def progress_line(rec: dict, modes: list[str]) -> str:
    line = f"yolov13{rec['scale']} {rec['imgsz']} {rec['dtype']} B{rec['batch']:<3} {rec['backend']:<6}"
    for mode in modes:
        t, pk = rec["timing"].get(mode), rec["peak_mem_mb"].get(mode)
        line += f" {mode} {O.fmt_ms(t['median']) if t else '-'} ms" + (f" ({pk:.0f} MB)" if R.finite(pk) else "")
        line += f" [{rec['kernels_seen'][mode]} backend kernels]" if mode in rec["kernels_seen"] else ""
    line += f" compile {rec['compile_s']:.1f} s, {rec['compiled_graphs']} graph(s)" if "compile_s" in rec else ""
    chk = rec["check"]
    line += f" check {'ok' if chk['pass'] else 'FAIL'}"
    line += f" (worst layer {R.sci(chk.get('err'))} vs bound {R.sci(chk.get('bound'))})"
    return line + ("; errors: " + "; ".join(rec["errors"]) if rec.get("errors") else "")


def run_group(
    ref: Reference, scale: str, cases: list[Case], dtype_name: str, backends, args, device, budget, records
) -> None:
    """Every backend on one (model, image, dtype): check, kernels per layer, then each case's inference modes."""
    dtype, hw = C.DTYPES[dtype_name], (cases[0].h, cases[0].w)
    model = copy.deepcopy(ref.base).to(device=device, dtype=dtype)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ref.baseline(dtype, dtype, model)  # from the unpatched model, before any patching
    modes = [m for m in args.mode_list if m not in TRAIN_MODES]
    for backend in backends:
        common = {
            "model": f"yolov13{scale}",
            "scale": scale,
            "dtype": dtype_name,
            "backend": backend,
            "imgsz": cases[0].imgsz,
        }
        info, handle = {"report": {}, "kernels": {}, "check": {}}, None
        try:
            if budget.exhausted():
                raise TimeoutError("time budget exhausted")
            handle = None if backend == "naive" else yolo13_attn.patch(model, C.patch_spec(backend))
            info["report"] = C.served_by(handle)
            info["check"] = ref.check(model, dtype, handle)
            if not args.no_profile:
                found = yolo13_attn.kernels_by_layer(model, ref.x.to(dtype))
                info["kernels"] = {
                    name: sorted({R.compact_kernel(k) for k in counts}) for name, counts in found.items()
                }
        except Exception as err:  # noqa: BLE001 - declined, out of time or broken: recorded, the next backend goes on
            status = "budget" if isinstance(err, TimeoutError) else "error"
            status = "unsupported" if isinstance(err, yolo13_attn.BackendUnsupportedError) else status
            reason = str(err).split(" -- ", 1)[-1][:400] if status != "error" else _error("check", err, args, device)
            records += [{**common, "batch": c.batch, "status": status, "reason": reason} for c in cases]
            print(f"  yolov13{scale} {cases[0].imgsz} {dtype_name} {backend}: {status}: {reason[:200]}", flush=True)
            if handle is not None:
                handle.undo()
            continue
        ok = info["check"]["pass"]
        for case in cases:
            rec = {**common, "batch": case.batch, **info} | {field: {} for field in R.PER_MODE}
            rec.update(status="ok" if ok else "check-failed", reason="" if ok else R.check_reason(info["check"]))
            records.append(rec)
            if budget.exhausted():
                rec.update(status="budget", reason="time budget exhausted")
                continue
            t0 = time.perf_counter()
            gen = torch.Generator(device=device).manual_seed(case.batch)
            x = torch.rand(case.batch, 3, *hw, generator=gen, device=device).to(dtype)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                rec["errors"] = time_modes(model, x, modes, args, device, kernel_pattern(backend, handle), rec)
            if modes and not rec["timing"]:
                rec["status"], rec["reason"] = "error", "; ".join(rec["errors"])
            print(progress_line(rec, modes) + f" [{time.perf_counter() - t0:.1f}s]", flush=True)
        if handle is not None:
            handle.undo()
    C.free_memory()


def run_train(case: Case, dtype_name: str, backends, args, device, budget, records, mode: str) -> None:
    """``mode`` (``train_step`` or ``train_step_compiled``) of one case into its records (made by ``run_group``),
    per backend."""
    model = train_step.build_train_model(case.scale, args.seed, device)
    batch = train_step.random_batch(case.batch, (case.h, case.w), model.model[-1].nc, device, args.seed)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch["img"] = batch["img"].contiguous(memory_format=torch.channels_last)
    key = (f"yolov13{case.scale}", case.imgsz, dtype_name, case.batch)
    mine = {r["backend"]: r for r in records if R.key(r) == key}

    def profile(backend, handle, step):
        if not args.no_profile:
            rec, seen = mine[backend], backend_kernels(step, kernel_pattern(backend, handle), device)
            rec["kernels_seen"][mode], rec["kernels_seen_names"][mode] = seen

    t0 = time.perf_counter()
    amp = None if dtype_name == "fp32" else C.DTYPES[dtype_name]
    run = [b for b in backends if mine[b]["status"] in ("ok", "check-failed")]
    compiled = mode == "train_step_compiled"
    results = train_step.time_rounds(
        model, batch, amp, run, device, args.rounds, args.steps, budget, profile, compiled=compiled
    )
    for backend, res in results.items():
        rec = mine[backend]
        if "status" in res:
            rec.setdefault("errors", []).append(f"{mode}: {res['status']}: {res['reason']}")
        else:
            rec["timing"][mode], rec["peak_mem_mb"][mode] = res["timing"], res["peak_mem_mb"]
            info = {"loss": res["loss"], "round_medians_ms": res["round_medians"], "report": res["report"]}
            rec.setdefault("train", {})[mode] = info
    cells = [
        f"{b} {r['status']}" if "status" in r else f"{b} {O.fmt_ms(r['timing']['median'])} ms"
        for b, r in results.items()
    ]
    what = f"yolov13{case.scale} {case.imgsz} B{case.batch} {dtype_name}, {args.rounds} rotated rounds"
    print(f"  {mode} {what}: {'; '.join(cells)} [{time.perf_counter() - t0:.1f}s]", flush=True)
    C.free_memory()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--cases", help="comma list of scale:batch:image, e.g. n:1:640,x:16:640,x:4:1280 (image HxW or one number)"
    )
    p.add_argument("--scales", help="comma list of n,s,l,x (with --batches and --imgsz; not with --cases)")
    p.add_argument("--batches", help="comma list (default 1,8,16; CPU 1)")
    p.add_argument("--imgsz", help="HxW or one number (default 640; CPU 320)")
    p.add_argument(
        "--dtypes",
        help="comma list of fp16,bf16,fp32 (default fp16,fp32; CPU fp32); train_step: the AMP dtype, fp32 = no AMP",
    )
    p.add_argument(
        "--modes", help=f"comma list of {','.join(MODES)} (default eager,graph; CPU eager; graph modes need CUDA)"
    )
    modes = ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="model weights and input images in channels_last memory format (NHWC convolutions, no layout transforms)",
    )
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=modes,
        help="torch.compile mode (compiled_graph needs one without Inductor's CUDA graphs)",
    )
    p.add_argument("--compile-backend", default="inductor", help=COMPILE_BACKEND_HELP)
    p.add_argument("--samples", type=int, default=10, help="timing samples per mode")
    p.add_argument(
        "--mode-budget-s",
        type=float,
        default=1.5,
        help="seconds of timing per mode and configuration (at least 3 samples)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="train_step: rounds over all backends (rotated order; best kept)"
    )
    p.add_argument("--steps", type=int, default=5, help="train_step: timed steps per backend and round")
    p.add_argument("--no-profile", action="store_true", help="skip the kernel listing and the backend-kernel counts")
    return p


def pick_modes(args, cpu_mode: bool) -> list[str]:
    modes = C.parse_list(args.modes, MODES, "mode") or (["eager"] if cpu_mode else ["eager", "graph"])
    own_graphs = args.compile_mode in (
        "reduce-overhead",
        "max-autotune",
    )  # Inductor's CUDA graphs: no capture around them
    dropped = [m for m in modes if m in GRAPH_MODES and (cpu_mode or (m == "compiled_graph" and own_graphs))]
    if dropped:
        why = (
            "CUDA graphs need a GPU" if cpu_mode else f"--compile-mode {args.compile_mode} replays its own CUDA graphs"
        )
        print(f"modes {dropped} dropped: {why}")
    return [m for m in modes if m not in dropped] or ["eager"]


def main(argv=None) -> int:
    args, device = C.start_run(build_parser(), argv, replot)
    if device is None:
        return 0
    cpu_mode = device == "cpu"
    cases = parse_cases(args, cpu_mode)
    dtypes = C.parse_list(args.dtypes, list(C.DTYPES), "dtype") or (["fp32"] if cpu_mode else ["fp16", "fp32"])
    args.mode_list = pick_modes(args, cpu_mode)
    backends, skipped = C.choose_backends(C.parse_list(args.backends), cpu_mode, default_auto=True)
    out_dir, env = args.out or C.default_out_dir(cpu_mode), C.environment()
    if cpu_mode:
        print("CPU SMOKE RUN: no GPU in use - small inputs on a shared CPU; not a benchmark.")
    C.announce(env, cpu_mode, out_dir, backends, skipped)
    print(
        f"cases {', '.join(f'{c.scale}:{c.batch}:{c.imgsz}' for c in cases)}; dtypes {dtypes}; modes {args.mode_list}"
    )
    budget, records, params = C.Budget(args.budget_s), [], {}
    groups = defaultdict(list)  # (scale, h, w) -> its cases, in the order given
    for case in cases:
        groups[(case.scale, case.h, case.w)].append(case)
    todo = [(dt, g) for dt in dtypes for g in groups]  # the first dtype of every case first
    try:
        for i, (dtype_name, (scale, h, w)) in enumerate(todo):
            left = None if args.budget_s is None else max(0.0, args.budget_s - budget.elapsed())
            share = C.Budget(None if left is None else left / (len(todo) - i))  # an equal share of what is left
            t0 = time.perf_counter()
            base, params[f"yolov13{scale}"] = build_base(scale, args.seed, (min(h, 160), min(w, 160)))
            x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(args.seed + 7)).to(device)
            ref = Reference(base, x)
            print(
                f"built yolov13{scale}, {params[f'yolov13{scale}']:,} parameters, "
                f"float64 forward at {h}x{w}: {time.perf_counter() - t0:.1f}s"
            )
            run_group(ref, scale, groups[(scale, h, w)], dtype_name, backends, args, device, share, records)
            for mode in [m for m in TRAIN_MODES if m in args.mode_list]:
                for case in groups[(scale, h, w)]:
                    run_train(case, dtype_name, backends, args, device, share, records, mode)
            del ref, base
            C.free_memory()
    except KeyboardInterrupt:
        print("interrupted: writing the configurations that ran", flush=True)
    if args.append:
        records = O.merge_previous(
            out_dir / "model_latency.json", records, lambda r: (*R.key(r), r["backend"]), R.combine
        )
    data = C.results_header("model_latency", "YOLOv13 whole-model latency", device, env, skipped, args, budget)
    data["backends_run"] = C.ordered([r["backend"] for r in records], C.BACKEND_ORDER)
    data["cases"] = [f"{c.scale}:{c.batch}:{c.imgsz}" for c in cases]
    data["dtypes"] = C.ordered([r["dtype"] for r in records], list(C.DTYPES))
    data["modes"] = [m for m in MODES if m in args.mode_list or any(m in r.get("timing", {}) for r in records)]
    data["parameters"], data["configs"] = params, records
    if any(m.startswith("compiled") for m in data["modes"]):
        cold = "torch._dynamo.reset() before each compile, Inductor caches off (Triton's kernel cache stays)"
        data["compile"] = {"backend": args.compile_backend, "mode": args.compile_mode, "cold start": cold}
    if set(TRAIN_MODES) & set(data["modes"]):
        loss = "model.loss(batch): v8DetectionLoss on 8 random boxes per image"
        data["train"] = {"rounds": args.rounds, "steps per round": args.steps, "loss": loss}
    files = R.write_outputs(data, out_dir)
    print(f"\nwrote {', '.join(files)} to {out_dir} in {budget.elapsed():.0f} s\n")
    from summarize import model_summary

    print(model_summary(data))
    return 0


def replot(out_dir) -> None:
    print(
        f"re-rendered {', '.join(R.write_outputs(O.read_json(out_dir / 'model_latency.json'), out_dir))} in {out_dir}"
    )


if __name__ == "__main__":
    sys.exit(main())
