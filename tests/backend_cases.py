"""Shared helpers for the backend equivalence tests: which backends run here, and the 2x rule."""

from __future__ import annotations

import pytest
import torch

from yolo13_attn.backends import AREA, HYPERGRAPH, OpCall, get_backend
from yolo13_attn.backends.registry import priority
from yolo13_attn.binding import exporting
from yolo13_attn.testing import baseline_dtype

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", "cuda"] if HAS_CUDA else ["cpu"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def available(op: str) -> list[str]:
    """Backends of ``op`` that can run on this machine at all (each is then checked per call)."""
    return [name for name in priority(op) if get_backend(op, name).is_available()]


AREA_BACKENDS = available(AREA)
HYPERGRAPH_BACKENDS = available(HYPERGRAPH)


def skip_unless_supported(op: str, backend: str, call: OpCall) -> None:
    """Skip (with the backend's own reasons) a combination the backend declares it cannot serve."""
    reasons = get_backend(op, backend).not_supported_reasons(call)
    if reasons:
        pytest.skip(f"{backend} declares it cannot serve this call: {'; '.join(reasons)}")


def backend_baseline_dtype(op: str, backend: str, call: OpCall) -> torch.dtype:
    """The plain-PyTorch baseline's dtype for ``backend`` serving ``call`` (see ``testing.baseline_dtype``)."""
    return baseline_dtype(call.dtype, get_backend(op, backend).plan(call).compute_dtype)


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def count_calls(monkeypatch, op: str, name: str) -> list[bool]:
    """Record each call that reaches backend ``name`` of ``op`` (True when made while exporting)."""
    calls: list[bool] = []
    backend = get_backend(op, name)
    entry = "forward" if op == AREA else "aggregate"
    original = getattr(backend, entry)
    monkeypatch.setattr(backend, entry, lambda *a, **k: calls.append(exporting()) or original(*a, **k))
    return calls


def gpu_kernels(fn) -> list[str]:
    """Names of the CUDA kernels that ``fn()`` launched (PyTorch profiler): proof of what ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def capture_cuda_graph(fn, warmups: int = 1) -> tuple[torch.cuda.CUDAGraph, object]:
    """``fn()`` warmed up on a side stream, then captured into a CUDA graph: ``(graph, its static output)``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
