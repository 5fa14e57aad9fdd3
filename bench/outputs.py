"""The one results format: a long-format CSV (one value per row), the full JSON, markdown, PNG.

CSV columns (``CSV_COLUMNS``): ``op`` (kernel-sweep op or model name), ``backend``, ``shape``
(shape label or image size), ``dtype``, ``batch``, ``metric``, ``median``, ``p20``, ``p80`` (empty
where a metric has no spread), ``device``, ``versions``, ``date``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

CSV_COLUMNS = ["op", "backend", "shape", "dtype", "batch", "metric", "median", "p20", "p80"]
CSV_COLUMNS += ["device", "versions", "date"]


def _num(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def versions_string(env: dict) -> str:
    return ";".join(f"{k}={env.get(k, '?')}" for k in ("torch", "triton", "ultralytics", "yolo13_attn", "git"))


def long_rows(data: dict, key: tuple, items: list[tuple]) -> list[dict]:
    """CSV rows of one configuration: ``key`` = (op, backend, shape, dtype, batch), ``items`` = (metric,
    median[, p20, p80])."""
    base = dict(zip(CSV_COLUMNS[:5], key, strict=True))
    base.update(device=data["device"], versions=versions_string(data["environment"]), date=data["date"])
    return [{**base, **dict(zip(("metric", "median", "p20", "p80"), item))} for item in items]


def check_items(chk: dict) -> list[tuple]:
    """``check_pass`` (1/0), ``check_err``, ``check_bound`` of a configuration's equivalence check (none if not run)."""
    return (
        [("check_pass", int(bool(chk["pass"]))), ("check_err", chk.get("err")), ("check_bound", chk.get("bound"))]
        if chk
        else []
    )


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: _num(row.get(k)) for k in CSV_COLUMNS} for row in rows)


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


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def merge_previous(path: Path, records: list[dict], key: Callable[[dict], tuple], combine=None) -> list[dict]:
    """``--append``: the earlier run's configurations in ``path`` that this run did not redo, then this run's;
    a configuration in both becomes ``combine(old, new)`` (default: the new one)."""
    if not path.is_file():
        return records
    old = {key(r): r for r in read_json(path)["configs"]}
    kept = [r for k, r in old.items() if k not in {key(r) for r in records}]
    print(f"--append: kept {len(kept)} configurations of the earlier run in {path.parent}")
    return kept + [combine(old[key(r)], r) if combine and key(r) in old else r for r in records]


def write_all(
    data: dict,
    out_dir: Path,
    prefix: str,
    csv_rows: list[dict],
    markdown: Callable[[dict], str],
    plots: Callable[[dict, Path], list[str]],
) -> list[str]:
    """``<prefix>.csv``, ``.json``, ``.md`` and the PNGs ``plots`` writes (none without matplotlib)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / f"{prefix}.csv", csv_rows)
    data["plots"] = plots(data, out_dir)
    (out_dir / f"{prefix}.json").write_text(json.dumps(_jsonable(data), indent=1) + "\n")
    (out_dir / f"{prefix}.md").write_text(markdown(data))
    return [f"{prefix}.csv", f"{prefix}.json", f"{prefix}.md", *data["plots"]]


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def fmt_ms(ms: float | None) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    return f"{ms:.4f}" if ms < 1 else f"{ms:.3f}" if ms < 100 else f"{ms:.1f}"


def fmt_x(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def header_lines(title: str, env: dict, extra: dict) -> list[str]:
    """``# title`` and a bullet list of the versions and ``extra``."""
    keys = ("gpu", "torch", "triton", "ultralytics", "yolo13_attn", "git", "flash backend uses")
    return (
        [f"# {title}", ""]
        + [f"- {k}: {env[k]}" for k in keys if k in env]
        + [f"- {k}: {v}" for k, v in extra.items()]
        + [""]
    )
