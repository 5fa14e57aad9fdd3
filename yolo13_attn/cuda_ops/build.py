"""Find, build and load the CUDA extension of ``csrc/`` (the ``cuda`` backend's kernels).

Two ways to get it, both compiled with ninja:

* **prebuilt**: ``YOLO13_ATTN_BUILD_CUDA=1 pip install .`` compiles ``yolo13_attn._C`` (``setup.py``);
  importing it registers the ``torch.ops.yolo13_attn.cuda_*`` operators.
* **just in time**: otherwise the shipped sources (``csrc/``, installed as ``yolo13_attn/csrc``) are
  compiled by ``torch.utils.cpp_extension.load`` for the current GPU on first use (``patch()`` does it
  through the backend's ``prepare`` hook, never inside tracing or CUDA-graph capture), into a cache folder
  keyed by torch version, CUDA version, GPU architecture and a hash of the sources
  (``$YOLO13_ATTN_CUDA_CACHE``, default ``~/.cache/yolo13_attn/cuda``); later processes reuse it.

:func:`availability_reasons` answers without building anything; :func:`build_info` says which build is in
use (``python -m yolo13_attn info``); ``python -m yolo13_attn.cuda_ops --compile-only`` compiles without a
GPU (CI).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch

PREBUILT = "yolo13_attn._C"
SOURCE_SUFFIXES = (".cu", ".cpp", ".cuh", ".h")
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]
CXX_FLAGS = ["-O3"]

#: what is loaded in this process: {"kind": "prebuilt"|"jit", "path": ..., "arch": ...}, or the build error
_STATE: dict[str, str] = {}


class CudaExtensionError(RuntimeError):
    """The CUDA extension cannot be loaded or built; the message says why and what to do."""


def source_dir() -> Path | None:
    """The folder of the shipped ``csrc/`` sources: installed package data, or the checkout's ``csrc/``."""
    candidates = []
    spec = importlib.util.find_spec("yolo13_attn.csrc")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    candidates.append(Path(__file__).resolve().parents[2] / "csrc")
    return next((p for p in candidates if any(p.glob("*.cu"))), None)


def sources(folder: Path) -> list[Path]:
    """The files compiled into the extension (``*.cu``, ``*.cpp``), sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix in (".cu", ".cpp"))


def source_hash(folder: Path) -> str:
    """A hash of every source and header, so that an edited kernel gets a fresh build folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.suffix in SOURCE_SUFFIXES):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def device_arch(device: torch.device | int | None = None) -> str:
    """``"90"`` for an sm90 GPU: the architecture a just-in-time build compiles for."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


def arch_flags(arch: str) -> list[str]:
    """nvcc's ``-gencode`` for ``arch``; sm90 is built as sm_90a (Hopper's wgmma, which the forward kernel uses
    there; sm_90a code runs on every compute-capability-9.0 GPU)."""
    arch = "90a" if arch == "90" else arch
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


def cuda_home() -> str | None:
    """The CUDA toolkit torch's extension builder would use, if it holds an nvcc."""
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").exists() else None


def compiler_reasons() -> list[str]:
    """Why a just-in-time build cannot start here (no nvcc, no ninja, a CPU-only torch); empty when it can."""
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU-only build (the extension needs a CUDA build of torch)")
    if cuda_home() is None:
        reasons.append("no CUDA compiler found (set CUDA_HOME to the CUDA toolkit folder holding bin/nvcc)")
    if shutil.which("ninja") is None:
        reasons.append("ninja not found (pip install ninja)")
    return reasons


@functools.cache
def prebuilt_installed() -> bool:
    return importlib.util.find_spec(PREBUILT) is not None


def availability_reasons() -> list[str]:
    """Why the extension cannot serve calls on this machine; never builds (cheap, for ``info`` and ``auto``)."""
    if not torch.cuda.is_available():
        return ["no CUDA device visible to PyTorch"]
    if "kind" in _STATE or prebuilt_installed():
        return []
    if "error" in _STATE:
        return [f"the just-in-time build failed: {_STATE['error']}"]
    return [f"not built and {reason}" for reason in compiler_reasons()]


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "yolo13_attn" / "cuda"
    return Path(os.environ.get("YOLO13_ATTN_CUDA_CACHE", default))


def build_key(folder: Path, arch: str) -> str:
    """The cache key of a just-in-time build: torch version, CUDA version, architecture, source hash."""
    torch_version = torch.__version__.replace("+", "_")
    return f"torch{torch_version}-cu{torch.version.cuda}-sm{arch}-{source_hash(folder)}"


def jit_build(arch: str, build_root: Path | None = None, verbose: bool = False) -> Path:
    """Compile the shipped sources for ``arch`` with ninja and load the library (registering the ops).
    Returns the build folder; raises :class:`CudaExtensionError` with the reason when it cannot."""
    from torch.utils import cpp_extension

    reasons = compiler_reasons()
    if reasons:
        raise CudaExtensionError("cannot build the CUDA extension: " + "; ".join(reasons))
    folder = source_dir()
    if folder is None:
        raise CudaExtensionError("the CUDA sources (csrc/*.cu) are not installed with this copy of yolo13_attn")
    key = build_key(folder, arch)
    build_dir = (build_root or cache_root()) / key
    build_dir.mkdir(parents=True, exist_ok=True)
    name = "yolo13_attn_cuda_" + key.rsplit("-", 1)[-1]
    cpp_extension.load(
        name=name,
        sources=[str(p) for p in sources(folder)],
        extra_cflags=CXX_FLAGS,
        extra_cuda_cflags=NVCC_FLAGS + arch_flags(arch),
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=verbose,
    )
    return build_dir


def load_extension() -> None:
    """Make the ``torch.ops.yolo13_attn.cuda_*`` operators available: the prebuilt ``yolo13_attn._C`` if
    installed, else a cached just-in-time build for the current GPU. Idempotent; raises
    :class:`CudaExtensionError` when neither is possible."""
    if "kind" in _STATE:
        return
    if "error" in _STATE:
        raise CudaExtensionError(_STATE["error"])
    if prebuilt_installed():
        module = importlib.import_module(PREBUILT)
        _STATE.update(kind="prebuilt", path=str(module.__file__), arch="architectures chosen at install")
        return
    if not torch.cuda.is_available():
        raise CudaExtensionError("the CUDA extension needs a CUDA device visible to PyTorch")
    arch = device_arch()
    try:
        build_dir = jit_build(arch)
    except Exception as exc:  # a compiler error, a missing tool: remembered, reported by availability_reasons
        _STATE["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        raise CudaExtensionError(f"the CUDA extension could not be built: {exc}") from exc
    _STATE.update(kind="jit", path=str(build_dir), arch=f"sm{arch}")


def build_info() -> str:
    """One line for ``python -m yolo13_attn info``: which build is in use, or would be, and where."""
    if "kind" in _STATE:
        return f"{_STATE['kind']} build loaded ({_STATE['arch']}) from {_STATE['path']}"
    if "error" in _STATE:
        return f"just-in-time build failed: {_STATE['error']}"
    if prebuilt_installed():
        spec = importlib.util.find_spec(PREBUILT)
        return f"prebuilt {PREBUILT} installed ({spec.origin}), loaded on first use"
    reasons = compiler_reasons()
    if reasons:
        return "not built; no just-in-time build possible: " + "; ".join(reasons)
    folder = source_dir()
    if folder is None:
        return "not built; the CUDA sources are not installed"
    arch = device_arch() if torch.cuda.is_available() else "<gpu>"
    return f"not built; just-in-time build on first use into {cache_root() / build_key(folder, arch)}"
