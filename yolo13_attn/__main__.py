"""Command line: ``python -m yolo13_attn info`` and ``python -m yolo13_attn demo``."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import time
from typing import NoReturn

import torch

DESCRIPTION = """\
YOLOv13 on stock Ultralytics, with interchangeable attention backends.

commands:
  info   versions, the GPU, and every backend's availability with reasons
  demo   build YOLOv13n (seeded random weights, no downloads), patch it, run it
         on Ultralytics' bundled bus.jpg and print which kernel served each layer
"""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Versions and the GPU, as recorded in reports and benchmark results."""
    from .backends.flash import flash_implementation
    from .cuda_ops.build import build_info

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "ultralytics": _version("ultralytics"),
        "flash-attn": _version("flash-attn"),
        "flash-attn-4": _version("flash-attn-4"),
        "cuda (torch build)": str(torch.version.cuda),
        "gpu": gpu,
        "flash backend uses": flash_implementation(),
        "cuda extension": build_info(),
    }


def flash_implementations() -> list[str]:
    """The flash backend's implementations, in the order it tries them, with what each supports."""
    from .backends.flash_impls import ORDER

    lines = ["flash backend implementations, the first that can serve a call runs it:"]
    for impl in ORDER:
        d = impl.declaration()
        lines.append(f"  {impl.key:<6} {d['kernel']}")
        lines.append(
            f"          [{','.join(d['dtypes'])}; head_dim {d['head_dims']}; dropout {d['dropout']}; "
            f"backward {d['backward']}; {d['notes']}]"
        )
    return lines


def measured_auto_lines() -> list[str]:
    """``auto``'s measured order on this GPU per op, mode and dtype (or why there is none)."""
    from .backends.base import AREA, HYPERGRAPH, OpCall
    from .backends.measured import measured_order

    if not torch.cuda.is_available():
        return ["auto: no CUDA device, the declared priority decides"]
    lines = [f"auto on {torch.cuda.get_device_name(0)} (measured order, fastest first):"]
    for op, head_dim in ((AREA, 32), (HYPERGRAPH, 384)):
        for grad in (False, True):
            for dtype in (torch.float16, torch.bfloat16):
                order = measured_order(OpCall(op, torch.device("cuda", 0), dtype, head_dim, grad))
                mode = f"{op} {'training' if grad else 'inference'} {str(dtype).removeprefix('torch.')}"
                lines.append(f"  {mode:<32} {' > '.join(order.names) if order else 'not measured: declared priority'}")
    return lines


def info() -> None:
    from .backends import available_backends, priority

    for key, value in environment().items():
        print(f"{key:>20}: {value}")
    for op, backends in available_backends().items():
        print(
            f"\n{op} backends, declared priority (auto's order where nothing was measured) {' > '.join(priority(op))}:"
        )
        for name, entry in backends.items():
            state = "available" if entry["available"] else "unavailable: " + "; ".join(entry["reasons"])
            dtypes = ",".join(entry["dtypes"])
            print(
                f"  {name:<7} {state}\n          {entry['description']} "
                f"[devices {','.join(entry['devices'])}; {dtypes}; backward {entry['backward']}]"
            )
    print("\n" + "\n".join(measured_auto_lines()))
    print("\n" + "\n".join(flash_implementations()))


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
    print(
        f"YOLOv13n built on stock Ultralytics: {sum(p.numel() for p in yolo.model.parameters()):,} parameters, {device}"
    )
    handle = patch(yolo, backend)
    start = time.perf_counter()
    results = yolo.predict(ASSETS / "bus.jpg", imgsz=imgsz, device=device, conf=0.0, max_det=10, verbose=False)
    elapsed = time.perf_counter() - start
    print(
        f"predict on bus.jpg at {imgsz}: {len(results[0].boxes)} boxes (random weights: boxes are meaningless), "
        f"{elapsed * 1000:.0f} ms"
    )
    print(f"\nwhat ran (backend={backend!r}):\n{handle}")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _backend_name(value: str) -> str:
    from .backends.registry import AUTO, backend_names, validate_name

    try:
        return validate_name(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown backend {value!r}; valid backends: {', '.join((AUTO, *backend_names()))}"
        ) from None


def _image_size(value: str) -> int:
    size = int(value) if value.isdigit() else 0
    if size < 32:
        raise argparse.ArgumentTypeError(f"--imgsz must be an integer >= 32 (pixels), got {value!r}")
    return size


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="python -m yolo13_attn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="{info,demo}", parser_class=_Parser)
    sub.add_parser("info", help="versions, GPU, and every backend's availability with reasons")
    demo_parser = sub.add_parser("demo", help="YOLOv13n on Ultralytics' bus.jpg with a patched backend")
    demo_parser.add_argument(
        "--backend", type=_backend_name, default="auto", help="auto (default), naive, sdpa, flash, triton or cuda"
    )
    demo_parser.add_argument("--imgsz", type=_image_size, default=320, help="inference size in pixels (default 320)")
    return root


def main(argv: list[str] | None = None) -> int:
    from .backends import BackendUnsupportedError

    args = parser().parse_args(argv)
    if args.command == "info":
        info()
        return 0
    try:
        demo(args.backend, args.imgsz)
    except BackendUnsupportedError as err:  # a valid name this machine cannot serve: one line, no traceback
        print(f"python -m yolo13_attn demo: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
