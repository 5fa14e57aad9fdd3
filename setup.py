"""Optional CUDA extension build; everything else is declared in pyproject.toml.

The CUDA C++ kernels of ``csrc/`` are compiled (with ninja) into ``yolo13_attn._C`` only when asked for
(``YOLO13_ATTN_BUILD_CUDA=1``), for sm80 and sm90 (``YOLO13_ATTN_CUDA_ARCHS=80;90;...`` to change).
Otherwise nothing is compiled and the install is pure Python: the ``cuda`` backend then compiles the
shipped sources just in time for the GPU it runs on (``yolo13_attn/cuda_ops/build.py``).
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
    # sm90 as sm_90a: the forward kernel uses Hopper's wgmma there (sm_90a code runs on every 9.0 GPU)
    archs = ["90a" if a.strip() == "90" else a for a in os.environ.get("YOLO13_ATTN_CUDA_ARCHS", "80;90").split(";")]
    extension = CUDAExtension(
        "yolo13_attn._C",
        sources,
        extra_compile_args={
            "cxx": ["-O3"],
            # the flags of the just-in-time build (yolo13_attn/cuda_ops/build.py), one -gencode per architecture
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]
            + [f"-gencode=arch=compute_{a},code=sm_{a}" for a in (x.strip() for x in archs) if a],
        },
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
