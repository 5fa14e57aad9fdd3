"""The profilers' CPU-side parts: kernel kinds from names, per-layer costs, and the compiled-profile report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import compiled_profile  # noqa: E402
from kernel_kinds import kind_of  # noqa: E402
from model_check import build_base  # noqa: E402


@pytest.mark.parametrize(
    "name, kind",
    [
        ("void tensorTransformGeneric<__half, __half, float, true>", "layout copy"),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__half>", "layout copy"),
        ("triton_poi_fused_clone_3", "layout copy"),
        ("conv2d_c1_k1_nhwc_specialized", "depthwise conv"),
        ("triton_poi_fused_add_convolution_silu_5", "elementwise"),
        ("triton_red_fused__softmax_2", "attention"),
        ("area_attention_fwd_kernel", "attention"),
        ("cublasLt::splitKreduce_kernel<32, 16>", "conv/GEMM"),
        ("reduce_kernel<512, 1, ReduceOp<Half>>", "reduction"),
        ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc", "conv/GEMM"),
        ("Memset (Device)", "memset"),
        ("some_unknown_kernel", "other"),
    ],
)
def test_kernel_kinds(name, kind):
    assert kind_of(name) == kind


def test_layer_costs_and_report_of_a_small_model():
    """Per-layer FLOPs, bytes and floor on the CPU, then the markdown report of a synthetic profile."""
    model = build_base("n", 0, (64, 96))[0]
    with torch.inference_mode():
        inputs = compiled_profile.layer_inputs(model, torch.rand(1, 3, 64, 96))
        rows = compiled_profile.layer_costs(model, inputs, {"bw_Bps": 3e12, "flops": {"fp16": 7e14}})
    assert len(rows) == len(model.model) and rows[1]["type"] == "Conv"
    assert all(r["mb"] > 0 and r["floor_ms"] > 0 for r in rows)
    assert rows[6]["type"] == "A2C2f" and rows[6]["gflop"] > 0
    kernels = {"tensorTransformGeneric": [1.5, 2.0], "area_attention_fwd_kernel": [0.5, 4.0]}
    backend = {"compiled_graph_ms": 2.5, "kernels": kernels, "layer_ms": [0.1] * len(rows)}
    backend["layer_launches"] = [3] * len(rows)
    data = {
        "environment": {"gpu": "test GPU", "torch": torch.__version__, "triton": "-"},
        "date": "2026-01-01",
        "args": {"channels_last": True},
        "peaks": {"bw_Bps": 3e12, "flops": {"fp16": 7e14}},
        "results": [{"model": "yolov13n", "batch": 1, "imgsz": "64x96", "layers": rows, "backends": {"auto": backend}}],
    }
    text = compiled_profile.markdown(data)
    assert "| layout copy | 1.500 |" in text and "| attention | 0.500 |" in text
    assert "| **compiled + graph, median** | 2.500 |" in text
    assert "| 6 A2C2f |" in text and "channels_last" in text
