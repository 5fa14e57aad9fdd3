"""Test configuration: Triton's CPU interpreter on machines without CUDA, shared fixtures."""

import os
import sys

import torch  # importing torch does not import triton

# Must happen before anything imports triton: on a CPU-only machine, run Triton kernels in the interpreter.
if not torch.cuda.is_available():
    assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET could be set"
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from ultralytics import YOLO  # noqa: E402

import yolo13_attn  # noqa: E402,F401  (installs YOLOv13 into Ultralytics)
from yolo13_attn.testing import randomize_weights  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Every test draws its own fresh random inputs from a fixed seed."""
    torch.manual_seed(1234)


@pytest.fixture
def yolo():
    """A YOLOv13n ``YOLO`` object with seeded random weights, in eval mode."""
    model = YOLO("yolov13n.yaml")
    randomize_weights(model.model, seed=4)
    model.model.eval()
    return model
