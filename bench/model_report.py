"""The outputs of ``bench/model_latency.py``: speedups, the long-format CSV, markdown, the PNG.

A record is one (model, image, dtype, backend, batch) with ``timing[mode]`` (median, p20, p80 ms),
``peak_mem_mb[mode]``, ``kernels_seen[mode]``, ``compile_s``, ``compiled_graphs``, the batch-1
``check`` and the per-layer ``kernels``. CSV metrics: ``<mode>_ms``, ``<mode>_speedup_vs_naive``,
``<mode>_peak_mem_mb`` (``train_peak_mem_mb`` for ``train_step``), ``<mode>_backend_kernels_seen``,
``compile_s``, ``compiled_graphs`` (graphs dynamo captured: 1 = no graph break, no recompile),
``check_pass``/``check_err``/``check_bound``.
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from pathlib import Path

import outputs as O
from plots import Panel, speedup_figure

#: default ``<mode>_peak_mem_mb``
MEM_METRIC = {"train_step": "train_peak_mem_mb", "train_step_compiled": "train_compiled_peak_mem_mb"}
#: names of each backend's own kernels (GPU kernel names; on CPU, operator names)
BACKEND_KERNELS = {
    "triton": r"area_attention_\w*kernel|hypergraph_\w*kernel",
    "flash": r"flash_fwd|flash_bwd",
    "sdpa": r"fort_native_sdpa|fmha|MemEffAttention|flash_fwd|flash_bwd|scaled_dot_product",
}
MODE_NOTES = {
    "eager": "one forward at a time, synchronised (Python and launch overhead included)",
    "graph": "one forward captured in a CUDA graph, replays timed",
    "compiled": "torch.compile, compiled cold (dynamo reset, Inductor caches off), then one call at a time",
    "compiled_graph": "the compiled forward captured in a CUDA graph, replays timed",
    "train_step": "forward + backward through model.loss under AMP autocast, rounds rotated over backends, best round",
    "train_step_compiled": "the train_step through torch.compile(model) (as train(compile=True)), warm-up excluded",
}
CELLS_NOTE = (
    "Cells: median ms [p20-p80] (speedup vs naive = unpatched). `FAIL`: an attention layer failed the flash rule "
    "at batch 1; `n/s`: the backend declines a layer of the model; `not run`: time budget."
)
CHECK_NOTE = (
    "Per attention layer: each patched layer on the input it sees in the float64 forward (baseline: the unpatched "
    "layer in the baseline dtype); `worst` = the layer closest to its bound. Detections: the whole model's output, "
    "reported, not judged: with seeded random weights rounding grows through the network, and fp16 detections of "
    "the larger models can overflow."
)
CHECK_HEAD = ["model", "image", "dtype", "backend", "check", "attention layers", "detections err / bound", "baseline"]


def key(r: dict) -> tuple:
    return (r["model"], r["imgsz"], r["dtype"], r["batch"])


PER_MODE = ("timing", "peak_mem_mb", "kernels_seen", "kernels_seen_names")


def combine(old: dict, new: dict) -> dict:
    """One configuration timed by two runs (``--append``): the modes of both, the newer run's where both timed one."""
    if not new.get("timing"):
        return old if old.get("timing") else new
    return {**old, **new} | {f: {**old.get(f, {}), **new.get(f, {})} for f in PER_MODE}


def add_speedups(records: list[dict]) -> None:
    """``speedup_vs_naive[mode]`` = the unpatched model's median / this median (same model, image, dtype, batch)."""
    naive = {key(r): r["timing"] for r in records if r["backend"] == "naive" and r.get("timing")}
    for r in records:
        base = naive.get(key(r), {})
        r["speedup_vs_naive"] = {
            m: base[m]["median"] / t["median"] for m, t in r.get("timing", {}).items() if m in base
        }


def finite(x) -> bool:
    return x is not None and math.isfinite(x)


def csv_rows(data: dict) -> list[dict]:
    rows = []
    for r in data["configs"]:
        if not r.get("timing"):
            continue
        items = O.check_items(r.get("check")) + [(k, r[k]) for k in ("compile_s", "compiled_graphs") if k in r]
        for mode, t in r["timing"].items():
            extra = [(f"{mode}_speedup_vs_naive", r.get("speedup_vs_naive", {}).get(mode))]
            extra.append((MEM_METRIC.get(mode, f"{mode}_peak_mem_mb"), r.get("peak_mem_mb", {}).get(mode)))
            extra.append((f"{mode}_backend_kernels_seen", r.get("kernels_seen", {}).get(mode)))
            items += [(f"{mode}_ms", t["median"], t["p20"], t["p80"])] + [(m, v) for m, v in extra if finite(v)]
        rows += O.long_rows(data, (r["model"], r["backend"], r["imgsz"], r["dtype"], r["batch"]), items)
    return rows


def by_config(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    by = defaultdict(dict)
    for r in records:
        by[key(r)][r["backend"]] = r
    return by


def mode_cell(r: dict | None, mode: str) -> str:
    """``median [p20-p80] (speedup)`` (+ ``FAIL``), or why there is no time: ``n/s``, ``not run``, ``error``, ``-``."""
    t = (r or {}).get("timing", {}).get(mode)
    if not r:
        return ""
    if t is None:
        return {"unsupported": "n/s", "budget": "not run"}.get(r["status"], "error" if r.get("errors") else "-")
    sp = r.get("speedup_vs_naive", {}).get(mode) if r["backend"] != "naive" else None
    cell = f"{O.fmt_ms(t['median'])} [{O.fmt_ms(t['p20'])}-{O.fmt_ms(t['p80'])}]" + (f" ({O.fmt_x(sp)})" if sp else "")
    return cell + (" FAIL" if r["status"] == "check-failed" else "")


def _config_table(by: dict, backends: list[str], cell) -> str:
    """One row per (model, image, dtype, batch), one column per backend; ``cell(record or {})``."""
    rows = [[*k, *(cell(per.get(b, {})) for b in backends)] for k, per in by.items()]
    return O.md_table(["model", "image", "dtype", "B", *backends], rows)


def sci(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def check_reason(chk: dict) -> str:
    bad = [f"{n}: {sci(v['err'])} > {sci(v['bound'])}" for n, v in chk.get("layers", {}).items() if not v["pass"]]
    return "flash rule failed: " + "; ".join(bad)


def _check_rows(records: list[dict]) -> list[list]:
    rows, seen = [], set()
    for r in records:
        k = (r["model"], r["imgsz"], r["dtype"], r["backend"])
        if k not in seen and r.get("check"):
            seen.add(k)
            c = r["check"]
            det = c.get("detections") or {"err": c.get("err"), "bound": c.get("bound")}
            layers = (
                f"{c['layers_checked']} layers, worst {sci(c.get('err'))} <= {sci(c.get('bound'))}"
                if "layers" in c
                else "-"
            )
            verdict = "ok" if c["pass"] else "FAIL"
            rows.append(
                [*k, verdict, layers, f"{sci(det.get('err'))} / {sci(det.get('bound'))}", c.get("baseline_dtype", "")]
            )
    return rows


def group_layers(per_layer: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """Layers with identical kernel sets, grouped: ``[("model.6.* (4 layers)", kernels), ...]``."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, kernels in per_layer.items():
        groups[tuple(sorted({compact_kernel(k) for k in kernels}))].append(name)
    out = []
    for kernels, names in groups.items():
        label = f"{'.'.join(names[0].split('.')[:2])}.* ({len(names)} layers)" if len(names) > 1 else names[0]
        out.append((label, list(kernels)))
    return out


def compact_kernel(name: str, width: int = 100) -> str:
    """A readable kernel name: no ``void``, no argument list, shorter namespaces, at most ``width`` characters."""
    name = re.sub(r"\s+", " ", name).strip().removeprefix("void ")
    depth = 0
    for i, ch in enumerate(name):
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0 and i > 0 and not name.startswith("(anonymous", i):
            name = name[:i]  # the argument list
            break
    for old, new in (
        ("at::native::", ""),
        ("(anonymous namespace)::", ""),
        ("c10::", ""),
        ("std::array<char*, ", "array<"),
    ):
        name = name.replace(old, new)
    return name if len(name) <= width else name[: width - 3] + "..."


def _mb(v) -> str:
    return f"{v:.0f}" if finite(v) else "-"


def _compile_cell(r: dict) -> str:
    return f"{r['compile_s']:.1f} ({r.get('compiled_graphs', '?')} graphs)" if "compile_s" in r else "-"


def _tables(data: dict) -> list[tuple]:
    """``(heading, cell)`` of the per-configuration tables: one per mode, compile time, kernels seen, memory."""
    records, modes = data["configs"], data["modes"]
    tables = [(f"{m} (ms)", functools.partial(mode_cell, mode=m)) for m in modes]
    if any("compile_s" in r for r in records):
        tables.append(
            ("compile_s: seconds of the calls that compiled, cold (graphs captured; 1 = no graph break)", _compile_cell)
        )
    seen = [m for m in modes if any(m in r.get("kernels_seen", {}) for r in records)]
    if seen:
        names = "; ".join(f"{b}: `{p}`" for b, p in BACKEND_KERNELS.items())
        heading = (
            f"backend kernels seen in one profiled call ({' / '.join(seen)}; naive: any backend's; names: {names})"
        )
        tables.append((heading, lambda r: " / ".join(str(r.get("kernels_seen", {}).get(m, "-")) for m in seen)))
    if data["device_kind"] == "cuda":
        heading = f"peak memory, MB above what was allocated before ({' / '.join(modes)})"
        tables.append((heading, lambda r: " / ".join(_mb(r.get("peak_mem_mb", {}).get(m)) for m in modes)))
    return tables


def _kernel_listing(records: list[dict]) -> list[str]:
    lines, listed = [], set()
    for r in records:
        name = " ".join((r["model"], r["imgsz"], r["dtype"], r["backend"]))
        if name not in listed and r.get("kernels"):
            listed.add(name)
            layers = [f"- {label}: " + ", ".join(f"`{k}`" for k in ks) for label, ks in group_layers(r["kernels"])]
            lines += [f"**{name}**:", "", *layers, ""]
    return lines


def _problems(records: list[dict]) -> list[tuple[str, list[str]]]:
    bad = [r for r in records if r["status"] in ("error", "check-failed") or r.get("errors")]
    problems = [
        f"- {' '.join(map(str, key(r)))} {r['backend']}: {r['status']}: "
        f"{r.get('reason', '')} {'; '.join(r.get('errors', []))}"
        for r in bad
    ]
    declined = {
        f"- {r['model']} {r['dtype']} {r['backend']}: {r.get('reason', '')}"
        for r in records
        if r["status"] == "unsupported"
    }
    return [("Errors and check failures", problems), ("Declined", sorted(declined))]


def markdown(data: dict) -> str:
    records = data["configs"]
    title = "Model latency" + ("" if data["device_kind"] == "cuda" else " - CPU SMOKE RUN (not a benchmark)")
    extra = {"date": data["date"], "weights": "seeded random, BN calibrated then fused, eval, inference_mode"}
    extra |= {m: MODE_NOTES[m] for m in data["modes"]}
    extra |= {k: ", ".join(f"{a} {b}" for a, b in data[k].items()) for k in ("compile", "train") if k in data}
    lines = O.header_lines(title, data["environment"], extra)
    lines += [f"- backend `{name}` skipped: {why}" for name, why in data["skipped_backends"].items()]
    lines += ["", CELLS_NOTE, ""]
    by = by_config(records)
    for heading, cell in _tables(data):
        lines += [f"## {heading}", "", _config_table(by, data["backends_run"], cell), ""]
    lines += ["## Equivalence check at batch 1 (flash rule against the float64 model)", "", CHECK_NOTE, ""]
    lines += [O.md_table(CHECK_HEAD, _check_rows(records)), ""]
    lines += ["## Kernels per attention layer (one profiled eager forward at batch 1)", "", *_kernel_listing(records)]
    for heading, items in _problems(records):
        lines += [f"## {heading}", "", *items, ""] if items else []
    return "\n".join(lines)


def _label(k: tuple, naive_ms: float) -> str:
    h, _, w = k[1].partition("x")
    return f"{k[0].removeprefix('yolov13')} B{k[3]} {h if h == w else k[1]}\nunpatched {naive_ms:.3g} ms"


def plots(data: dict, out_dir: Path) -> list[str]:
    """One PNG: speedup of each backend over the unpatched model, a panel per (mode, dtype)."""
    by, panels = by_config(data["configs"]), []
    for mode in data["modes"]:
        for dtype in data["dtypes"]:
            keys = [k for k, per in by.items() if k[2] == dtype and mode in per.get("naive", {}).get("timing", {})]
            cells = {b: [by[k].get(b, {}) for k in keys] for b in data["backends_run"] if b != "naive"}
            cells = {b: rs for b, rs in cells.items() if any(mode in r.get("timing", {}) for r in rs)}
            if not cells:
                continue
            labels = [_label(k, by[k]["naive"]["timing"][mode]["median"]) for k in keys]
            speedups = {b: [r.get("speedup_vs_naive", {}).get(mode) for r in rs] for b, rs in cells.items()}
            missing = {
                b: ["" if mode in r.get("timing", {}) else mode_cell(r, mode) for r in rs] for b, rs in cells.items()
            }
            failed = {b: [r.get("status") == "check-failed" for r in rs] for b, rs in cells.items()}
            notes = {
                b: f"computes in {r['check']['baseline_dtype']}"
                for b, rs in cells.items()
                for r in rs
                if r.get("check", {}).get("baseline_dtype", dtype) != dtype
            }
            panels.append(Panel(f"{mode}, {dtype}: {MODE_NOTES[mode]}", labels, speedups, missing, failed, notes))
    kind = "" if data["device_kind"] == "cuda" else "CPU SMOKE RUN, not a benchmark - "
    title = f"{kind}YOLOv13 whole model: speedup of each backend over the unpatched model, {data['device']}"
    name = speedup_figure(out_dir / "model_latency.png", title, panels)
    return [name] if name else []


def write_outputs(data: dict, out_dir: Path) -> list[str]:
    add_speedups(data["configs"])
    return O.write_all(data, out_dir, "model_latency", csv_rows(data), markdown, plots)
