"""``auto``'s order from measurements: which backend ran fastest, per GPU, op, mode and dtype.

``measurements.json`` (shipped with the package, written by ``bench/auto_table.py`` from kernel-sweep
results) holds, per GPU, the median milliseconds of every backend on the YOLOv13 shapes the sweep
timed: the area-attention and hypergraph cores, forward alone (``inference``) and forward +
backward (``training``), per dtype. For a call on a GPU of that name (or, failing that, of the same
compute capability) the backends are ranked by the geometric mean over the shapes of their time
relative to the fastest backend on each shape (backends timed on fewer than half the shapes are left
out); shapes of the call's head dim count alone when the
table has them (the hypergraph's head dim is the model's width). Backends the table does not rank
follow in their declared priority; the declarations still decide what can serve a call.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import OpCall

DATA = Path(__file__).with_name("measurements.json")
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class MeasuredOrder:
    """Backends fastest first for one (GPU, op, mode, dtype), and what the order rests on."""

    names: tuple[str, ...]
    basis: str


@functools.cache
def table(path: Path = DATA) -> dict:
    """The shipped measurements (``{"gpus": [...]}``; empty when the file is missing)."""
    return json.loads(path.read_text()) if path.is_file() else {"gpus": []}


@functools.cache
def _gpu_identity(index: int) -> tuple[str, str]:
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def gpu_entry(device: torch.device, data: dict | None = None) -> dict | None:
    """The table's GPU of this device's name, else of its compute capability (None: not measured)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name, capability = _gpu_identity(device.index if device.index is not None else torch.cuda.current_device())
    gpus = (data or table())["gpus"]
    return next((g for g in gpus if g["name"] == name), None) or next(
        (g for g in gpus if g.get("capability") == capability), None
    )


def rank(entries: list[dict]) -> list[tuple[str, float]]:
    """``(backend, geometric-mean slowdown vs the fastest)`` over entries, fastest first.

    On each entry a backend's slowdown is its time over the fastest time there; backends timed on fewer
    than half of the entries (a sweep cut short, a width the backend declines) are left out.
    """
    counts: dict[str, int] = {}
    logs: dict[str, float] = {}
    for e in entries:
        best = min(e["ms"].values())
        for name, ms in e["ms"].items():
            counts[name] = counts.get(name, 0) + 1
            logs[name] = logs.get(name, 0.0) + math.log(ms / best)
    scores = {name: math.exp(logs[name] / n) for name, n in counts.items() if 2 * n >= len(entries)}
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))


def measured_order(call: OpCall, data: dict | None = None) -> MeasuredOrder | None:
    """The measured order for ``call`` (None when its GPU, op, mode or dtype was not measured)."""
    gpu = gpu_entry(call.device, data)
    dtype = DTYPE_NAMES.get(call.dtype)
    if gpu is None or dtype is None:
        return None
    mode = "training" if call.requires_grad else "inference"
    entries = [e for e in gpu["entries"] if e["op"] == call.op and e["mode"] == mode and e["dtype"] == dtype]
    same_width = [e for e in entries if e.get("head_dim") == call.head_dim]
    entries = same_width or entries
    ranked = rank(entries)
    if not ranked:
        return None
    shown = ", ".join(f"{name} {score:.2f}x" for name, score in ranked[:4])
    basis = (
        f"measured on {gpu['name']} (torch {gpu['torch']}, {gpu['date']}), {mode} {dtype}, "
        f"{len(entries)} shapes: {shown} of the fastest (geometric mean)"
    )
    return MeasuredOrder(tuple(name for name, _ in ranked), basis)
