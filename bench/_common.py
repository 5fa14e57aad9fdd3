"""What both benchmark scripts share: flags, the environment record, backend choice, budget.

Imported by ``bench/kernel_sweep.py`` and ``bench/model_latency.py`` (run as scripts, so ``bench/``
is on ``sys.path``). Nothing here sets ``TRITON_INTERPRET``: the scripts time what the machine
offers; on a CPU-only machine the Triton backend is unavailable (or, if the caller set the
interpreter, skipped unless named: the interpreter is a correctness tool).
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
#: column order of the backends in tables and plots (``naive`` = the unpatched baseline)
BACKEND_ORDER = ["naive", "fa2path", "auto", "flash", "sdpa", "triton", "cuda"]
#: named per-op patches: ``fa2path`` runs the kernels of the official YOLOv13 code's flash branch
#: (area attention on FlashAttention-2, the hypergraph in plain PyTorch)
SPECS = {"fa2path": {"area": "flash", "hypergraph": "naive"}}


def patch_spec(name: str) -> str | dict[str, str]:
    """What ``yolo13_attn.patch`` takes for a backend column name."""
    return SPECS.get(name, name)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def parse_list(text: str | None, allowed: Sequence[str] | None = None, what: str = "value") -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` (None stays None); unknown names raise SystemExit listing the valid ones."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}(s) {bad}; valid: {', '.join(allowed)}")
    return items


def ordered(items, order: Sequence[str]) -> list:
    """``items`` without duplicates, those named in ``order`` first and in that order."""
    items = set(items)
    return [x for x in order if x in items] + sorted(x for x in items if x not in order)


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_out_dir(cpu_mode: bool) -> Path:
    """``bench/results/cpu/`` (git-ignored) for the CPU smoke run, else ``bench/results/<gpu-slug>-<date>/``."""
    if cpu_mode:
        return RESULTS / "cpu"
    return RESULTS / f"{re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-')}-{today()}"


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def environment() -> dict:
    """``python -m yolo13_attn info``'s fields plus what the timings depend on."""
    import yolo13_attn
    from yolo13_attn.__main__ import environment as lib_environment

    env = dict(lib_environment())
    env.update(
        {
            "yolo13_attn": yolo13_attn.__version__,
            "git": _git_revision(),
            "platform": platform.platform(),
            "cpu count": str(os.cpu_count()),
            "torch threads": str(torch.get_num_threads()),
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
            "cudnn.allow_tf32": str(torch.backends.cudnn.allow_tf32),
            "cuda.matmul.allow_tf32": str(torch.backends.cuda.matmul.allow_tf32),
            "cudnn.benchmark": str(torch.backends.cudnn.benchmark),
        }
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu memory GiB"] = f"{props.total_memory / 2**30:.1f}"
        env["gpu SMs"] = str(props.multi_processor_count)
        env["gpu capability"] = f"{props.major}.{props.minor}"
    return env


def device_string(env: dict, cpu_mode: bool) -> str:
    return f"cpu ({platform.processor() or platform.machine()})" if cpu_mode else env["gpu"]


def results_header(script: str, title: str, device: str, env: dict, skipped: dict, args, budget: Budget) -> dict:
    """The JSON's leading keys: what ran where, with which versions, arguments and skipped backends."""
    cpu = device == "cpu"
    return {
        "script": script,
        "title": title + (" (CPU smoke run, not a benchmark)" if cpu else ""),
        "date": today(),
        "created": now_iso(),
        "device_kind": device,
        "device": device_string(env, cpu),
        "environment": env,
        "backends": backend_availability(),
        "skipped_backends": skipped,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "elapsed_s": budget.elapsed(),
    }


def announce(env: dict, cpu_mode: bool, out_dir: Path, backends: list[str], skipped: dict[str, str]) -> None:
    """Print where the run happens, what it writes where, and which backends it runs or skips (and why)."""
    print(f"device: {device_string(env, cpu_mode)}; torch {env['torch']}, triton {env['triton']}; results -> {out_dir}")
    print(f"backends: {', '.join(backends)}")
    for name, why in skipped.items():
        print(f"  skipping backend {name}: {why}")


def backend_availability() -> dict[str, dict[str, dict]]:
    """``yolo13_attn.available_backends()``: op -> backend -> {available, reasons, description}."""
    import yolo13_attn

    return {
        op: {name: {k: e[k] for k in ("available", "reasons", "description")} for name, e in entries.items()}
        for op, entries in yolo13_attn.available_backends().items()
    }


def choose_backends(
    requested: list[str] | None, cpu_mode: bool, default_auto: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The backends to run (requested ones in the order given; else naive first) and the skipped ones with why.

    A backend runs when either op has it available (``available_backends()``); ``auto`` always can.
    ``auto`` and the named per-op patches (``SPECS``, whole models only) run by default only with ``default_auto``.
    On CPU the Triton backend would run in its interpreter: skipped unless named.
    """
    avail = backend_availability()
    names = ordered({n for entries in avail.values() for n in entries} | {"auto", *SPECS}, BACKEND_ORDER)
    unknown = [n for n in requested or [] if n not in names]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; valid: {', '.join(names)}")
    wanted = requested or [n for n in names if default_auto or (n != "auto" and n not in SPECS)]
    chosen, skipped = [], {}
    for name in wanted:
        parts = set(SPECS[name].values()) - {"naive"} if name in SPECS else {name}
        entries = [avail[op][part] for op in avail for part in parts if part in avail[op]]
        if name != "auto" and not any(e["available"] for e in entries):
            skipped[name] = "unavailable: " + "; ".join(sorted({r for e in entries for r in e["reasons"]}))
        elif name == "triton" and cpu_mode and not requested:
            skipped[name] = (
                "Triton interpreter on CPU (a correctness tool, far too slow to time); "
                "pass --backends triton to include it"
            )
        else:
            chosen.append(name)
    return chosen, skipped


def served_by(handle) -> dict[str, str]:
    """``{layer: "backend: kernel (compute dtype)"}`` of a patch handle; empty for None (unpatched)."""
    return {r.name: f"{r.backend}: {r.kernel} ({r.compute_dtype})" for r in handle.report()} if handle else {}


def report_compute_dtypes(handle) -> set[torch.dtype]:
    """The dtypes a patch handle's layers compute in."""
    return {getattr(torch, r.compute_dtype, None) for r in handle.report()} - {None}


class Budget:
    """Wall-clock budget: configurations not started before it runs out are recorded as not run."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exhausted(self) -> bool:
        return self.seconds is not None and self.elapsed() > self.seconds


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def start_run(parser, argv, replot: Callable[[Path], object]) -> tuple[object, str | None]:
    """Add the shared flags, parse ``argv``; run ``--replot`` (device None: nothing more to do) or pick
    the device: ``"cpu"`` (the smoke mode, ``--threads`` torch threads) or ``"cuda"``. SIGTERM then raises
    KeyboardInterrupt, which the scripts catch to write the configurations that ran."""
    p = parser
    p.add_argument("--backends", help="comma list, run in this order (default: every available backend, naive first)")
    p.add_argument("--cpu", action="store_true", help="force the CPU smoke mode even with a GPU")
    p.add_argument(
        "--out", type=Path, help="results folder (default bench/results/<gpu>-<date>/ or bench/results/cpu/)"
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="merge into the results already in --out (same configurations are replaced)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        help="start no new configuration after this many seconds (the rest are recorded as not run)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the CPU smoke mode (one: no OpenMP stalls on a shared CPU)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--replot", type=Path, metavar="DIR", help="re-render markdown/CSV/PNG from the JSON in DIR and exit"
    )
    p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # e.g. `timeout`: finish like Ctrl-C, writing what ran
    if args.replot:
        replot(args.replot)
        return args, None
    if args.cpu or not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
        return args, "cpu"
    return args, "cuda"
