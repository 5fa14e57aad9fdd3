#!/usr/bin/env python3
"""Print a short table of a results folder (``kernel_sweep.json`` and/or ``model_latency.json``).

    python bench/summarize.py bench/results/<gpu>-<date>/ [--dtype fp16] [--image 640x640]

Kernel sweep: per op and shape at the largest batch, the median ms of every backend and the best
*valid* backend's speedup over naive and flash with its fraction of the floor. Model latency: per
model, image, dtype, batch and mode, each backend's median ms and speedup over the unpatched
model, then ``compile_s`` and the backend kernels seen where measured. ``FAIL`` marks a failed
equivalence check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ms(x) -> str:
    return "-" if x is None else f"{x:.4f}" if x < 1 else f"{x:.3f}" if x < 100 else f"{x:.1f}"


def _table(header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]
    )


def kernel_summary(data: dict, dtype: str | None, image: str | None) -> str:
    configs = [r for r in data["configs"] if r.get("timing")]
    if not configs:
        return "kernel sweep: nothing timed"
    dtype = dtype or ("fp16" if any(r["dtype"] == "fp16" for r in configs) else configs[0]["dtype"])
    image = image or (
        "640x640" if any(r["shape_info"]["image"] == "640x640" for r in configs) else configs[0]["shape_info"]["image"]
    )
    sel = [r for r in configs if r["dtype"] == dtype and r["shape_info"]["image"] == image]
    if not sel:
        return f"kernel sweep: nothing timed for {dtype} {image}"
    batch = max(r["batch"] for r in sel)
    groups: dict[tuple, dict] = {}
    for r in sel:
        if r["batch"] == batch:
            groups.setdefault((r["op"], r["shape"]), {})[r["backend"]] = r
    backends = [b for b in data["backends_run"] if any(b in per for per in groups.values())]
    rows = []
    for (op, shape), per in groups.items():
        cells = [
            "-" if b not in per else _ms(per[b]["timing"]["median"]) + (" FAIL" if per[b]["status"] != "ok" else "")
            for b in backends
        ]
        valid = [r for r in per.values() if r["status"] == "ok"]
        extra = ["-"] * 4
        if valid:
            best = min(valid, key=lambda r: r["timing"]["median"])
            floor = best["metrics"].get("floor_frac")
            extra = [best["backend"]] + [
                f"{best[k]:.2f}x" if best.get(k) else "-" for k in ("speedup_vs_naive", "speedup_vs_flash")
            ]
            extra.append(f"{100 * floor[0]:.0f}%" if floor and floor[0] is not None else "-")
        rows.append([op, shape.split(":")[0].replace(f" {image}", ""), shape.split(": ", 1)[-1], *cells, *extra])
    head = ["op", "scale site", "shape"] + [f"{b} ms" for b in backends] + ["best", "vs naive", "vs flash", "%floor"]
    return f"kernel sweep, {image}, {dtype}, batch {batch} ({data['device']}):\n" + _table(head, rows)


def model_summary(data: dict) -> str:
    configs = [r for r in data["configs"] if r.get("timing")]
    if not configs:
        return "model latency: nothing timed"
    backends = [b for b in data["backends_run"] if any(r["backend"] == b for r in configs)]
    groups: dict[tuple, dict] = {}
    for r in configs:
        groups.setdefault((r["model"], r["imgsz"], r["dtype"], r["batch"]), {})[r["backend"]] = r
    rows = []
    for key, per in groups.items():
        for mode in data["modes"]:
            cells = []
            for b in backends:
                t = per.get(b, {}).get("timing", {}).get(mode)
                sp = per.get(b, {}).get("speedup_vs_naive", {}).get(mode)
                cells.append(
                    "-"
                    if t is None
                    else _ms(t["median"])
                    + (f" ({sp:.2f}x)" if sp and b != "naive" else "")
                    + (" FAIL" if per[b]["status"] == "check-failed" else "")
                )
            if any(c != "-" for c in cells):
                rows.append([*key, f"{mode} ms", *cells])
        for label, get in (
            (
                "compile_s (graphs)",
                lambda r: f"{r['compile_s']:.1f} ({r.get('compiled_graphs', '?')})" if "compile_s" in r else "-",
            ),
            ("kernels seen", lambda r: ", ".join(f"{m} {v}" for m, v in r.get("kernels_seen", {}).items()) or "-"),
        ):
            cells = [get(per[b]) if b in per else "-" for b in backends]
            if any(c != "-" for c in cells):
                rows.append([*key, label, *cells])
    return f"model latency ({data['device']}):\n" + _table(["model", "image", "dtype", "B", "metric", *backends], rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--dtype")
    p.add_argument("--image")
    args = p.parse_args(argv)
    found = False
    for name, fn in (
        ("kernel_sweep.json", lambda d: kernel_summary(d, args.dtype, args.image)),
        ("model_latency.json", model_summary),
    ):
        path = args.folder / name
        if path.is_file():
            found = True
            data = json.loads(path.read_text())
            counts: dict[str, int] = {}
            for r in data["configs"]:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            print(fn(data))
            print("  configurations: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "\n")
    if not found:
        print(f"no kernel_sweep.json or model_latency.json in {args.folder}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
