"""The benchmark scripts run (CPU smoke mode) and write well-formed results.

Runs ``bench/kernel_sweep.py --cpu`` and ``bench/model_latency.py --cpu`` once each into a temporary
folder and checks the files: CSV columns and numeric medians, JSON keys, markdown tables, PNG
signatures, and that ``bench/summarize.py`` reads them. A second model-latency run covers the
``compiled`` and ``train_step`` modes (``torch.compile`` with dynamo's ``eager`` backend: the compiled
code path without Inductor's code generation, which would take minutes on a CPU). Timings are not
checked (CPU, noisy).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSV_COLUMNS = ["op", "backend", "shape", "dtype", "batch", "metric", "median", "p20", "p80"]
CSV_COLUMNS += ["device", "versions", "date"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: every op of the sweep, the training ops (forward + backward) included
KERNEL_SWEEP_OPS = ("area_core", "area_layer", "hg_core", "hg_layer", "area_core_train", "hg_core_train")
SCRIPTS = {"kernel_sweep": ["--cpu", "--flash-impls", "fa4,torch"], "model_latency": ["--cpu"]}
MODES_FLAGS = ["--cpu", "--modes", "compiled,train_step", "--compile-backend", "eager", "--cases", "n:2:64"]
MODES_FLAGS += ["--backends", "naive,sdpa", "--rounds", "2", "--steps", "2"]


def _run(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """``{script: (output folder, stdout)}`` of one CPU smoke run of each script."""
    out = {}
    for script, flags in SCRIPTS.items():
        folder = tmp_path_factory.mktemp(script)
        proc = _run([f"bench/{script}.py", *flags, "--out", str(folder)])
        out[script] = (folder, proc.stdout)
    return out


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_bench_outputs_csv_long_format(results, script):
    folder, _ = results[script]
    rows = _csv(folder / f"{script}.csv")
    assert rows, "no CSV rows"
    for row in rows:
        assert all(
            row[c] for c in ("op", "backend", "shape", "dtype", "batch", "metric", "device", "versions", "date")
        ), row
        float(row["median"])  # every metric has a numeric median
        for q in ("p20", "p80"):
            if row[q]:
                float(row[q])
        int(row["batch"])
    metrics = {r["metric"] for r in rows}
    timing_metric = "ms" if script == "kernel_sweep" else "eager_ms"
    assert {timing_metric, "check_pass"} <= metrics, metrics
    timed = [r for r in rows if r["metric"] == timing_metric]
    assert all(float(r["median"]) > 0 and r["p20"] and r["p80"] for r in timed)
    assert all(float(r["p20"]) <= float(r["median"]) <= float(r["p80"]) for r in timed)
    assert "torch=" in rows[0]["versions"]


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_bench_outputs_json_keys(results, script):
    folder, _ = results[script]
    data = json.loads((folder / f"{script}.json").read_text())
    for key in (
        "script",
        "date",
        "created",
        "device",
        "device_kind",
        "environment",
        "backends",
        "backends_run",
        "skipped_backends",
        "args",
        "configs",
    ):
        assert key in data, key
    assert data["script"] == script and data["device_kind"] == "cpu"
    for key in ("torch", "triton", "ultralytics", "gpu", "python"):
        assert key in data["environment"], key
    assert "naive" in data["backends_run"]
    assert set(data["backends"]) == {"area", "hypergraph", "grouped_conv"}
    assert data["configs"], "no configurations"
    for rec in data["configs"]:
        for key in ("backend", "dtype", "batch", "status"):
            assert key in rec, key
        assert rec["status"] in ("ok", "check-failed", "unsupported", "error", "oom", "budget")
    ok = [r for r in data["configs"] if r["status"] == "ok"]
    assert ok, "nothing passed its check and was timed"
    for rec in ok:
        assert rec["check"]["pass"] is True
        if script == "kernel_sweep":
            assert rec["op"] in KERNEL_SWEEP_OPS
            assert rec["timing"]["median"] > 0 and rec["bytes"] > 0 and rec["flops"] > 0
        else:
            assert rec["timing"]["eager"]["median"] > 0
            assert rec["kernels"], "no per-layer kernel listing"
    if script == "kernel_sweep":
        assert {r["op"] for r in data["configs"]} == set(KERNEL_SWEEP_OPS)
        assert data["formulas"]
        # --flash-impls: a flash:<impl> backend per implementation, skipped (or run) with flash
        skipped = data["skipped_backends"]
        for label in ("flash:fa4", "flash:torch"):
            assert skipped.get(label) == skipped["flash"] if "flash" in skipped else label in data["backends_run"]


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_bench_outputs_markdown_and_png(results, script):
    folder, stdout = results[script]
    text = (folder / f"{script}.md").read_text()
    assert text.startswith("# ") and "CPU SMOKE RUN" in text
    assert "|---" in text and "naive" in text
    assert "CPU SMOKE RUN" in stdout
    data = json.loads((folder / f"{script}.json").read_text())
    pngs = sorted(folder.glob("*.png"))
    assert sorted(p.name for p in pngs) == sorted(data["plots"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert pngs, "matplotlib is installed but no PNG was written"
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png


def test_bench_outputs_summarize_reads_both(results, tmp_path):
    for script in SCRIPTS:
        folder, _ = results[script]
        for f in folder.iterdir():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    proc = _run(["bench/summarize.py", str(tmp_path)], timeout=60)
    assert "kernel sweep" in proc.stdout and "model latency" in proc.stdout


def test_bench_outputs_replot_rewrites_the_same_csv(results, tmp_path):
    """``--replot`` renders markdown/CSV/PNG from the JSON alone: the CSV comes out the same."""
    for script in SCRIPTS:
        folder, _ = results[script]
        (tmp_path / f"{script}.json").write_bytes((folder / f"{script}.json").read_bytes())
        _run([f"bench/{script}.py", "--replot", str(tmp_path)], timeout=60)
        assert (tmp_path / f"{script}.csv").read_text() == (folder / f"{script}.csv").read_text()
        assert (tmp_path / f"{script}.md").read_text() == (folder / f"{script}.md").read_text()


@pytest.mark.slow
def test_bench_outputs_compiled_and_train_step_modes(tmp_path):
    """``--modes compiled,train_step``: compile time, compiled timing and the backend's kernels seen under
    compile, and a training step (forward + backward through the model's loss) per backend."""
    proc = _run(["bench/model_latency.py", *MODES_FLAGS, "--out", str(tmp_path)], timeout=240)
    rows = _csv(tmp_path / "model_latency.csv")
    by = {(r["backend"], r["metric"]): float(r["median"]) for r in rows}
    for backend in ("naive", "sdpa"):
        assert by[(backend, "compile_s")] > 0 and by[(backend, "compiled_ms")] > 0
        assert by[(backend, "train_step_ms")] > 0
        assert by[(backend, "compiled_graphs")] == 1, "a graph break or a recompile under torch.compile"
    assert ("sdpa", "compiled_speedup_vs_naive") in by and ("sdpa", "train_step_speedup_vs_naive") in by
    # proof of what ran: SDPA's operator under compile (and in the backward), none of any backend's for naive
    assert by[("sdpa", "compiled_backend_kernels_seen")] >= 1 and by[("sdpa", "train_step_backend_kernels_seen")] >= 1
    assert by[("naive", "compiled_backend_kernels_seen")] == 0
    data = json.loads((tmp_path / "model_latency.json").read_text())
    assert data["compile"]["backend"] == "eager" and data["modes"] == ["compiled", "train_step"]
    sdpa = next(r for r in data["configs"] if r["backend"] == "sdpa")
    assert sdpa["train"]["train_step"]["loss"] > 0 and len(sdpa["train"]["train_step"]["round_medians_ms"]) == 2
    assert sdpa["compiled_max_abs_diff_vs_eager"] < 1e-3
    text = (tmp_path / "model_latency.md").read_text()
    assert "## compiled (ms)" in text and "## train_step (ms)" in text and "compile_s" in text
    assert "compiled" in proc.stdout and "train_step" in proc.stdout
