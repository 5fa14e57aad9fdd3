"""``python -m yolo13_attn.cuda_ops --compile-only [--arch 90]``: compile the CUDA extension of ``csrc/``
with nvcc and ninja without a GPU (CI), into a throw-away folder unless ``--build-dir`` is given."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from .build import build_info, jit_build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolo13_attn.cuda_ops", description=__doc__)
    parser.add_argument("--compile-only", action="store_true", help="compile (and link, load) the extension")
    parser.add_argument("--arch", default="90", help="GPU architecture to compile for, e.g. 80 or 90 (default 90)")
    parser.add_argument("--build-dir", type=Path, help="keep the build here (default: a temporary folder)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    args = parser.parse_args(argv)
    if not args.compile_only:
        print(build_info())
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        build_dir = jit_build(args.arch, args.build_dir or Path(tmp), verbose=args.verbose)
        print(f"compiled the CUDA extension for sm{args.arch} in {time.perf_counter() - start:.0f} s ({build_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
