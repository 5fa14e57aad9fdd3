"""Patched models compose with torch.compile (no graph breaks) and CUDA-graph capture (issue 5)."""

from __future__ import annotations

import copy

import pytest
import torch
from ultralytics import YOLO

import yolo13_attn
from backend_cases import AREA_BACKENDS, HYPERGRAPH_BACKENDS
from yolo13_attn.nn import AAttn, AdaHGComputation
from yolo13_attn.testing import calibrate_batchnorm, randomize_weights

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and GPU kernels need a CUDA GPU")
GPU_BACKENDS = [b for b in ("sdpa", "flash", "triton") if b in AREA_BACKENDS]


@pytest.mark.parametrize("backend", sorted(set(AREA_BACKENDS) & set(HYPERGRAPH_BACKENDS) - {"cuda"}))
def test_compile_fullgraph_attention_layers(backend):
    """dynamo traces each patched layer in one graph (fullgraph=True raises on any graph break)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend in ("flash", "triton") and device == "cpu":
        pytest.skip(f"{backend} compiles for CUDA; the CPU interpreter is not a compile target")
    dtype = torch.float16 if device == "cuda" else torch.float32
    for layer, shape in ((AAttn(64, 2, area=4), (2, 64, 8, 10)), (AdaHGComputation(64, 4, 4), (2, 64, 6, 5))):
        layer = randomize_weights(layer).eval().to(device, dtype)
        yolo13_attn.patch(layer, backend)
        x = torch.randn(shape, device=device, dtype=dtype)
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), layer(x), rtol=2e-3, atol=2e-3)


def patched_yolov13n(backend: str | None, dtype: torch.dtype = torch.half) -> torch.nn.Module:
    """YOLOv13n with seeded random weights and calibrated BatchNorm, fused, on the GPU (unpatched for None)."""
    model = YOLO("yolov13n.yaml").model
    randomize_weights(model, seed=9)
    calibrate_batchnorm(model, torch.rand(2, 3, 128, 128))
    model = model.fuse().cuda().to(dtype).eval()
    if backend is not None:
        yolo13_attn.patch(model, backend)
    return model


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture_matches_eager(backend):
    model = patched_yolov13n(backend)
    static = torch.rand(2, 3, 320, 256, device="cuda", dtype=torch.half)
    with torch.no_grad():
        eager = model(static)[0].clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                model(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(static)[0]
        fresh = torch.rand_like(static)
        static.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        expected = model(fresh)[0]
    torch.testing.assert_close(captured, expected, rtol=1e-3, atol=1e-2)
    assert not torch.equal(captured, eager)  # the replay computed the new input


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_torch_compile_inductor_whole_model_matches_eager(backend):
    """Inductor re-fuses the convolutions and elementwise ops, which moves rounding around; with
    random weights even the unpatched model drifts visibly between eager and compiled. The patch
    must add nothing to that drift: |compiled - eager| of the patched model within 2x of the
    unpatched model's (+ slack). fp32, so the drift is rounding, not fp16 overflow."""
    x = torch.rand(2, 3, 320, 256, device="cuda")

    def drift(model):
        compiled = torch.compile(copy.deepcopy(model))
        with torch.no_grad():
            return (compiled(x)[0] - model(x)[0]).abs().max().item()

    plain, patched = drift(patched_yolov13n(None, torch.float32)), drift(patched_yolov13n(backend, torch.float32))
    assert patched <= 2 * plain + 1e-2, f"compiled {backend} drifts {patched:.3g} from eager; unpatched drifts {plain:.3g}"
