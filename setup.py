"""Optional CUDA extension build; everything else is declared in pyproject.toml.

The CUDA C++ kernels of ``csrc/`` are compiled into ``yolo13_attn._C`` only when asked for
(``YOLO13_ATTN_BUILD_CUDA=1``), a CUDA toolkit is found and ``csrc/`` holds sources. Otherwise
nothing is compiled and the install is pure Python (the ``cuda`` backend then reports itself as
not built).
"""

import os
from pathlib import Path

from setuptools import setup


def cuda_extensions() -> tuple[list, dict]:
    sources = sorted(str(p) for p in Path("csrc").glob("*.cu")) + sorted(str(p) for p in Path("csrc").glob("*.cpp"))
    if os.environ.get("YOLO13_ATTN_BUILD_CUDA") != "1" or not sources:
        return [], {}
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension

    if CUDA_HOME is None:
        raise RuntimeError(
            "YOLO13_ATTN_BUILD_CUDA=1 but no CUDA toolkit found: set CUDA_HOME to the folder holding bin/nvcc"
        )
    extension = CUDAExtension(
        "yolo13_attn._C",
        sources,
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_80,code=sm_80"],
        },
    )
    return [extension], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
