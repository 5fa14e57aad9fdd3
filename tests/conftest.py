"""Test configuration: Triton's CPU interpreter on machines without CUDA, shared fixtures."""

import os

# Must happen before anything imports triton: on a CPU-only machine, run Triton kernels in the interpreter.
if os.environ.get("CUDA_VISIBLE_DEVICES", None) != "" and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import yolo13_attn  # noqa: E402,F401  (installs YOLOv13 into Ultralytics)

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", "cuda"] if HAS_CUDA else ["cpu"]
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (run on the device; logs in tests/gpu/)")


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Every test draws its own fresh random inputs from a fixed seed."""
    torch.manual_seed(1234)
