"""``python -m yolo13_attn info`` (environment and backends) and ``demo`` (YOLOv13n on bus.jpg)."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import time

import torch


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Versions and the GPU, as recorded in reports and benchmark results."""
    from .backends.flash import flash_implementation

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "ultralytics": _version("ultralytics"),
        "flash-attn": _version("flash-attn"),
        "cuda (torch build)": str(torch.version.cuda),
        "gpu": gpu,
        "flash backend uses": flash_implementation(),
    }


def info() -> None:
    from .backends import available_backends

    for key, value in environment().items():
        print(f"{key:>20}: {value}")
    for op, backends in available_backends().items():
        print(f"\n{op} backends (auto priority order):")
        for name, entry in backends.items():
            state = "available" if entry["available"] else "unavailable: " + "; ".join(entry["reasons"])
            dtypes = ",".join(entry["dtypes"])
            print(f"  {name:<7} {state}\n          {entry['description']} [devices {','.join(entry['devices'])}; {dtypes}; backward {entry['backward']}]")


def demo(backend: str, imgsz: int) -> None:
    """Build YOLOv13n (seeded random weights: no downloads), patch it, run it on bus.jpg, say what ran."""
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    from . import patch
    from .testing import randomize_weights

    device = "cuda" if torch.cuda.is_available() else "cpu"
    yolo = YOLO("yolov13n.yaml")
    randomize_weights(yolo.model, seed=0)
    yolo.model.to(device).eval()
    print(f"YOLOv13n built on stock Ultralytics: {sum(p.numel() for p in yolo.model.parameters()):,} parameters, {device}")
    handle = patch(yolo, backend)
    start = time.perf_counter()
    results = yolo.predict(ASSETS / "bus.jpg", imgsz=imgsz, device=device, conf=0.0, max_det=10, verbose=False)
    elapsed = time.perf_counter() - start
    print(f"predict on bus.jpg at {imgsz}: {len(results[0].boxes)} boxes (random weights: boxes are meaningless), {elapsed * 1000:.0f} ms")
    print(f"\nwhat ran (backend={backend!r}):\n{handle}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolo13_attn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPU, and every backend's availability with reasons")
    demo_parser = sub.add_parser("demo", help="YOLOv13n on Ultralytics' bus.jpg with a patched backend")
    demo_parser.add_argument("--backend", default="auto")
    demo_parser.add_argument("--imgsz", type=int, default=320)
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    else:
        demo(args.backend, args.imgsz)
    return 0


if __name__ == "__main__":
    sys.exit(main())
