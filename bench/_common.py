"""Shared machinery of the benchmarks: environment, timing, memory, profiling, output files.

Imported by ``bench/kernel_sweep.py`` and ``bench/model_latency.py`` (run as scripts, so ``bench/``
is on ``sys.path``). Nothing here sets ``TRITON_INTERPRET``: the scripts time what the machine
offers; on a CPU-only machine the Triton backend is reported unavailable (or, if the caller set
the interpreter, skipped unless asked for by name: the interpreter is a correctness tool).
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import itertools
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CPU_RESULTS = RESULTS / "cpu"

# ---- the floors (shared/perf-anchors.md, shared/gpu-notes.md: one H100 80GB HBM3) -------------
PEAK_BW = 2.98e12  #: bytes/s, device-to-device copy (read + written)
PEAK_FLOPS = {  #: FLOP/s per dtype of the inputs
    "fp16": 790e12,  # dense tensor-core fp16/bf16 (measured bf16 matmul)
    "bf16": 790e12,
    "fp32": 67e12,  # plain FP32 FMA (non-tensor); the triton backend computes fp32 in IEEE fp32 (no TF32)
}
L2_BYTES = 50e6  #: H100 L2; rotating inputs should exceed it
CSV_COLUMNS = ["op", "backend", "shape", "dtype", "batch", "metric", "median", "p20", "p80", "device", "versions", "date"]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def parse_list(text: str | None, allowed: Sequence[str] | None = None, what: str = "value") -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` (None stays None); unknown names raise SystemExit listing the valid ones."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise SystemExit(f"unknown {what}(s) {bad}; valid: {', '.join(allowed)}")
    return items


# ---- environment ------------------------------------------------------------------------------


def has_gpu() -> bool:
    return torch.cuda.is_available()


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if has_gpu() else "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_out_dir(cpu_mode: bool) -> Path:
    """``bench/results/cpu/`` (git-ignored) for the CPU smoke run, else ``bench/results/<gpu-slug>-<date>/``."""
    return CPU_RESULTS if cpu_mode else RESULTS / f"{slug(gpu_name())}-{today()}"


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown (no git)"


def environment() -> dict:
    """``yolo13_attn.__main__.environment()`` plus what the timings depend on."""
    import yolo13_attn
    from yolo13_attn.__main__ import environment as lib_environment

    env = dict(lib_environment())
    env["yolo13_attn"] = getattr(yolo13_attn, "__version__", "?")
    env["git"] = _git_revision()
    env["platform"] = platform.platform()
    env["cpu count"] = str(os.cpu_count())
    env["torch threads"] = str(torch.get_num_threads())
    env["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET", "")
    env["cudnn.allow_tf32"] = str(torch.backends.cudnn.allow_tf32)
    env["cuda.matmul.allow_tf32"] = str(torch.backends.cuda.matmul.allow_tf32)
    env["cudnn.benchmark"] = str(torch.backends.cudnn.benchmark)
    if has_gpu():
        props = torch.cuda.get_device_properties(0)
        env["gpu memory GiB"] = f"{props.total_memory / 2**30:.1f}"
        env["gpu SMs"] = str(props.multi_processor_count)
        env["gpu capability"] = f"{props.major}.{props.minor}"
    return env


def versions_string(env: dict) -> str:
    keys = ("torch", "triton", "ultralytics", "yolo13_attn", "git")
    return ";".join(f"{k}={env.get(k, '?')}" for k in keys)


def device_string(env: dict) -> str:
    return env.get("gpu", "none") if has_gpu() and env.get("gpu", "none") != "none" else f"cpu ({platform.processor() or platform.machine()})"


def backend_availability() -> dict[str, dict[str, dict]]:
    """``yolo13_attn.available_backends()`` minus the long descriptions: op -> backend -> {available, reasons}."""
    import yolo13_attn

    out = {}
    for op, entries in yolo13_attn.available_backends().items():
        out[op] = {name: {"available": e["available"], "reasons": list(e["reasons"]), "description": e["description"]} for name, e in entries.items()}
    return out


def triton_interpreted() -> bool:
    """True when the triton backend would run in the Triton interpreter (CPU): slow, never timed by default."""
    if has_gpu():
        return False
    try:
        from yolo13_attn.backends.triton import _interpreted

        return bool(_interpreted())
    except Exception:
        return False


def choose_backends(requested: list[str] | None, cpu_mode: bool) -> tuple[list[str], dict[str, str]]:
    """The backends to run, naive first then flash (the two baselines); skipped ones with the reason.

    A backend is run when either op has it available. Unavailable ones are skipped with the
    reasons ``available_backends()`` gives. On CPU the Triton interpreter is skipped unless named.
    """
    avail = backend_availability()
    names = []
    for op_entries in avail.values():
        for name in op_entries:
            if name not in names:
                names.append(name)
    order = ["naive", "flash"] + [n for n in names if n not in ("naive", "flash")]
    wanted = requested or order
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; valid: {', '.join(names)}")
    chosen, skipped = [], {}
    for name in [n for n in order if n in wanted]:
        entries = [avail[op][name] for op in avail if name in avail[op]]
        if not any(e["available"] for e in entries):
            reasons = sorted({r for e in entries for r in e["reasons"]})
            skipped[name] = "unavailable: " + "; ".join(reasons)
            continue
        if name == "triton" and cpu_mode and triton_interpreted() and not requested:
            skipped[name] = "Triton interpreter on CPU (a correctness tool, far too slow to time); pass --backends triton to include it"
            continue
        chosen.append(name)
    return chosen, skipped


# ---- timing -----------------------------------------------------------------------------------


@dataclass
class Timing:
    """Per-call milliseconds: median and the 20th/80th percentiles over ``samples``."""

    median: float
    p20: float
    p80: float
    samples: list[float] = field(default_factory=list)
    method: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def timing_from_samples(samples: list[float], method: str) -> Timing:
    return Timing(quantile(samples, 0.5), quantile(samples, 0.2), quantile(samples, 0.8), [round(s, 6) for s in samples], method)


def time_cpu(calls: Sequence[Callable[[], object]], budget_s: float = 0.3, min_reps: int = 3, max_reps: int = 50) -> Timing:
    """``time.perf_counter`` per call, rotating over ``calls``; stops after ``budget_s`` (>= ``min_reps``)."""
    calls[0]()
    samples: list[float] = []
    start = time.perf_counter()
    for call in itertools.islice(itertools.cycle(calls), max_reps):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= min_reps and time.perf_counter() - start > budget_s:
            break
    return timing_from_samples(samples, f"time.perf_counter, {len(samples)} calls, median")


def _sync() -> None:
    torch.cuda.synchronize()


def time_cuda_graph(calls: Sequence[Callable[[], object]], samples: int = 15, sample_ms: float = 2.0,
                    graph_ms: float = 2.0, max_graph_calls: int = 256, max_total_s: float = 3.0) -> Timing:
    """CUDA-graph replay timing: one graph holds ``k`` calls cycling through ``calls`` (different input
    sets, so inputs do not stay in L2), each sample times ``r`` back-to-back replays with CUDA events,
    per-call time = elapsed / (r * k). ``samples`` samples (fewer when a sample is long)."""
    for call in calls:  # warm-up: Triton compiles, cuBLAS/cuDNN pick algorithms
        call()
    _sync()
    n_est = max(len(calls), 3)
    t0 = time.perf_counter()
    for call in itertools.islice(itertools.cycle(calls), n_est):
        call()
    _sync()
    eager_ms = (time.perf_counter() - t0) * 1e3 / n_est
    k = int(min(max_graph_calls, max(len(calls), math.ceil(graph_ms / max(eager_ms, 1e-3)))))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs recommends
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    _sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in itertools.islice(itertools.cycle(calls), k):
            call()
    graph.replay()
    _sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    replay_ms = max(start.elapsed_time(end), 1e-4)
    reps = max(1, math.ceil(sample_ms / replay_ms))
    n_samples = int(max(5, min(samples, max_total_s * 1e3 / (reps * replay_ms))))
    out = []
    for _ in range(n_samples):
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / (reps * k))
    del graph
    return timing_from_samples(out, f"cuda-graph replay: {k} calls/graph over {len(calls)} input sets, {reps} replays/sample, {n_samples} samples, median")


def time_do_bench(calls: Sequence[Callable[[], object]]) -> Timing:
    """``triton.testing.do_bench`` median with p20/p80 (it flushes L2 between calls), rotating over ``calls``."""
    import triton.testing

    cycle = itertools.cycle(calls)
    med, p20, p80 = triton.testing.do_bench(lambda: next(cycle)(), warmup=10, rep=40, quantiles=[0.5, 0.2, 0.8])
    return Timing(med, p20, p80, [], "triton.testing.do_bench (L2 flushed per call), median")


def time_gpu(calls: Sequence[Callable[[], object]], use_graph: bool = True, **kw) -> Timing:
    """CUDA graphs first; ``do_bench`` (then plain events) when capture fails. The method is recorded."""
    error = ""
    if use_graph:
        try:
            return time_cuda_graph(calls, **kw)
        except Exception as exc:  # capture not possible (host sync, unsupported op): fall back, say why
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            _sync()
            torch.cuda.empty_cache()
    try:
        timing = time_do_bench(calls)
    except Exception as exc:
        timing = time_events(calls)
        error += f"; do_bench failed: {type(exc).__name__}"
    if error:
        timing.method += f" (graph capture failed: {error})"
    return timing


def time_events(calls: Sequence[Callable[[], object]], samples: int = 15) -> Timing:
    """Plain CUDA-event timing per call (eager launches; includes CPU launch gaps)."""
    for call in calls:
        call()
    _sync()
    out = []
    for call in itertools.islice(itertools.cycle(calls), samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return timing_from_samples(out, "CUDA events per eager call, median")


def time_wall(call: Callable[[], object], device: str, budget_s: float = 1.0, min_reps: int = 3, max_reps: int = 20, warmup: int = 2) -> Timing:
    """Wall-clock per call with a device sync around each (eager model latency as a user sees it)."""
    sync = _sync if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    samples = []
    start = time.perf_counter()
    while len(samples) < max_reps:
        t0 = time.perf_counter()
        call()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= min_reps and time.perf_counter() - start > budget_s:
            break
    return timing_from_samples(samples, f"wall clock with device sync, {len(samples)} calls, median")


def input_sets(bytes_per_set: float, *, min_sets: int = 2, max_sets: int = 32, max_bytes: float = 2e9, target: float = 3 * L2_BYTES) -> int:
    """How many input sets to rotate so that their total exceeds ~3x L2 (within memory caps)."""
    want = math.ceil(target / max(bytes_per_set, 1.0))
    cap = max(1, int(max_bytes // max(bytes_per_set, 1.0)))
    return max(1, min(max_sets, cap, max(min_sets, want)))


# ---- memory -----------------------------------------------------------------------------------


def measure_peak(call: Callable[[], object], device: str) -> tuple[object, float]:
    """Run ``call`` once; return its output and the peak extra device memory it needed, in MB
    (``torch.cuda.max_memory_allocated`` minus what was allocated before; NaN on CPU)."""
    if device != "cuda":
        return call(), float("nan")
    _sync()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = call()
    _sync()
    return out, (torch.cuda.max_memory_allocated() - before) / 1e6


def free_memory() -> None:
    gc.collect()
    if has_gpu():
        torch.cuda.empty_cache()


# ---- profiling: which kernels ran -------------------------------------------------------------


def _short(name: str, width: int = 160) -> str:
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def compact_kernel(name: str, width: int = 100) -> str:
    """A readable kernel name: no ``void``, no argument list, shorter namespaces, at most ``width`` chars."""
    name = re.sub(r"\s+", " ", name).strip().removeprefix("void ")
    depth = 0
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and i > 0 and not name.startswith("(anonymous", i):
            name = name[:i]  # the argument list
            break
    for old, new in (("at::native::", ""), ("(anonymous namespace)::", ""), ("c10::Half", "Half"), ("c10::BFloat16", "BFloat16"), ("std::array<char*, ", "array<")):
        name = name.replace(old, new)
    name = name.strip()
    return name if len(name) <= width else name[: width - 3] + "..."


def profile_kernels(run: Callable[[], object], ranges: dict[str, object] | None, device: str) -> dict:
    """Profile one call of ``run`` with ``torch.profiler``.

    ``ranges`` maps a label to an ``nn.Module``: a forward pre-/post-hook pair opens and closes a
    ``record_function`` range named ``bench::<label>`` around each of its forwards. Returns
    ``{"model": [distinct kernel names], "layers": {label: [distinct kernel names]}}``. On CUDA the
    names are the GPU kernels (each attributed to a layer through the profiler's CPU-op tree); on
    CPU, which has no kernels, the ``aten::``/custom ops run inside each range.
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    handles, open_ranges = [], {}
    for label, module in (ranges or {}).items():
        def pre(_m, _args, label=label):
            ctx = record_function(f"bench::{label}")
            ctx.__enter__()
            open_ranges[label] = ctx

        def post(_m, _args, _out, label=label):
            ctx = open_ranges.pop(label, None)
            if ctx is not None:
                ctx.__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            run()
            if device == "cuda":
                _sync()
    finally:
        for h in handles:
            h.remove()
    events = list(prof.events())
    gpu = device == "cuda"

    def is_op(ev) -> bool:
        return ev.name.startswith(("aten::", "yolo13_attn::"))

    def kernels_under(event) -> list[str]:
        """GPU: every kernel launched inside ``event``; CPU: the outermost ops inside it."""
        found, stack = [], list(reversed(getattr(event, "cpu_children", [])))
        if gpu:
            found.extend(k.name for k in getattr(event, "kernels", []))
        while stack:
            ev = stack.pop()
            if gpu:
                found.extend(k.name for k in getattr(ev, "kernels", []))
            elif is_op(ev):
                found.append(ev.name)
                continue
            stack.extend(reversed(getattr(ev, "cpu_children", [])))
        return found

    layers: dict[str, list[str]] = {}
    for ev in events:
        if ev.name.startswith("bench::"):
            label = ev.name.removeprefix("bench::")
            names = layers.setdefault(label, [])
            for n in kernels_under(ev):
                if _short(n) not in names:
                    names.append(_short(n))
    if gpu:
        model = []
        for ev in events:
            if ev.device_type == torch.autograd.DeviceType.CUDA and _short(ev.name) not in model:
                model.append(_short(ev.name))
    else:
        model = sorted({ev.name for ev in events if is_op(ev) and (ev.cpu_parent is None or not is_op(ev.cpu_parent))})
    return {"model": model, "layers": layers, "what": "CUDA kernels" if gpu else "top-level CPU ops (no GPU)"}


# ---- budget -----------------------------------------------------------------------------------


class Budget:
    """Wall-clock budget: configurations not started before it runs out are listed as skipped."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exhausted(self) -> bool:
        return self.seconds is not None and self.elapsed() > self.seconds


# ---- output files -----------------------------------------------------------------------------


def _num(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _num(row.get(k)) for k in CSV_COLUMNS})


def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    return obj


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=1) + "\n")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ms(ms: float | None) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    return f"{ms:.4f}" if ms < 1 else f"{ms:.3f}" if ms < 100 else f"{ms:.1f}"


def fmt_x(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def matplotlib_pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (plots are then skipped, with a note)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except Exception:
        return None


def progress(msg: str) -> None:
    print(msg, flush=True)


def header_lines(title: str, env: dict, extra: dict | None = None) -> list[str]:
    lines = [f"# {title}", ""]
    for key in ("gpu", "torch", "triton", "ultralytics", "yolo13_attn", "git", "flash backend uses", "date"):
        if key in env:
            lines.append(f"- {key}: {env[key]}")
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    lines.append("")
    return lines



def report_compute_dtypes(handle) -> set[torch.dtype]:
    """The dtypes a patch handle's layers compute in."""
    return {getattr(torch, r.compute_dtype, None) for r in handle.report()} - {None}


def _add_run_arguments(p) -> None:
    """The flags both scripts share: where results go, budgets, CPU smoke-mode threads, replotting."""
    p.add_argument("--cpu", action="store_true", help="force the CPU smoke mode even with a GPU")
    p.add_argument("--out", type=Path, help="results folder (default bench/results/<gpu>-<date>/ or bench/results/cpu/)")
    p.add_argument("--budget-s", type=float, help="stop starting new configurations after this many seconds (the rest are listed as not run)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the CPU smoke mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replot", type=Path, metavar="DIR", help="re-render markdown/PNG/CSV from the JSON in DIR and exit")
    p.add_argument("--verbose", action="store_true")


def start_run(parser, argv, replot: Callable[[Path], object]) -> tuple[object, tuple[bool, str] | None]:
    """Add the shared flags, parse ``argv``, then handle ``--replot`` (mode None: nothing more to do)
    or pick the mode ``(cpu_mode, device)``.

    The CPU smoke mode uses ``--threads`` torch threads (default one: no OpenMP barriers stalling
    on a shared, preempted CPU).
    """
    _add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.replot:
        replot(args.replot)
        return args, None
    cpu_mode = args.cpu or not has_gpu()
    if cpu_mode:
        torch.set_num_threads(args.threads)
    return args, (cpu_mode, "cpu" if cpu_mode else "cuda")
