#!/usr/bin/env python3
"""Write ``auto``'s measurement table (``yolo13_attn/backends/measurements.json``) from kernel sweeps.

    python bench/auto_table.py bench/results/<gpu>-<date>/ [more result folders ...]

Reads each folder's ``kernel_sweep.json`` and keeps, per GPU, every configuration of the core ops
that passed its equivalence check: ``area_core`` / ``hg_core`` (mode ``inference``) and
``area_core_train`` / ``hg_core_train`` (mode ``training``), with the median ms of each plain backend
(``flash:<impl>`` columns and ``auto`` are left out). A configuration measured in several folders
gets each backend's newest time (a folder may time only some backends). The GPU's entry in the table
is replaced as a whole; other GPUs' entries stay.
``yolo13_attn/backends/measured.py`` says how ``auto`` reads the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _common as C

OPS = {
    "area_core": ("area", "inference"),
    "area_core_train": ("area", "training"),
    "hg_core": ("hypergraph", "inference"),
    "hg_core_train": ("hypergraph", "training"),
}
TABLE = C.REPO / "yolo13_attn" / "backends" / "measurements.json"
HEAD_DIM = 32  #: every YOLOv13 area-attention layer


def entries_of(data: dict) -> dict[tuple, dict]:
    """``{(op, mode, dtype, shape, batch): entry}`` of one sweep's checked core configurations."""
    out: dict[tuple, dict] = {}
    for r in data["configs"]:
        if r["op"] not in OPS or r["status"] != "ok" or ":" in r["backend"] or r["backend"] == "auto":
            continue
        op, mode = OPS[r["op"]]
        info = r["shape_info"]
        key = (op, mode, r["dtype"], r["shape"], r["batch"])
        entry = out.setdefault(
            key,
            {
                "op": op,
                "mode": mode,
                "dtype": r["dtype"],
                "shape": r["shape"],
                "batch": r["batch"],
                "head_dim": HEAD_DIM if op == "area" else info["C_or_D"],
                "tokens": info["N"] // info["area"] if op == "area" else info["N"],
                "ms": {},
            },
        )
        entry["ms"][r["backend"]] = round(r["timing"]["median"], 5)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--table", type=Path, default=TABLE)
    args = p.parse_args(argv)
    runs = sorted((json.loads((f / "kernel_sweep.json").read_text()) for f in args.folders), key=lambda d: d["date"])
    gpus: dict[str, dict] = {}
    for data in runs:
        env = data["environment"]
        gpu = gpus.setdefault(
            env["gpu"], {"name": env["gpu"], "capability": env.get("gpu capability"), "entries": {}, "sources": []}
        )
        gpu["capability"] = gpu["capability"] or env.get("gpu capability")
        gpu.update(torch=env["torch"].split("+")[0], date=data["date"])
        gpu["sources"].append(f"{data['date']} kernel sweep (torch {env['torch']}, triton {env.get('triton')})")
        for key, entry in entries_of(data).items():  # a newer run's backend times replace older ones
            gpu["entries"].setdefault(key, entry)["ms"].update(entry["ms"])
    table = json.loads(args.table.read_text()) if args.table.is_file() else {"gpus": []}
    kept = [g for g in table["gpus"] if g["name"] not in gpus]
    new = [{**g, "entries": [e for e in g["entries"].values() if len(e["ms"]) > 1]} for g in gpus.values()]
    table = {"note": "written by bench/auto_table.py; read by yolo13_attn/backends/measured.py", "gpus": kept + new}
    args.table.write_text(json.dumps(table, indent=1) + "\n")
    for g in new:
        print(f"{g['name']} (capability {g['capability']}): {len(g['entries'])} configurations -> {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
