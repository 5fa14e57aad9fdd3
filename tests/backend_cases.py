"""Shared helpers for the backend equivalence tests: which backends run here, and the 2x rule."""

from __future__ import annotations

import subprocess
import sys

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


def environment_reasons(op: str, backend: str, device: str, dtype: torch.dtype) -> list[str]:
    """Why ``backend`` cannot run ``op`` at all on ``device`` in ``dtype`` (patch() raises for such a model)."""
    return get_backend(op, backend).environment_reasons(OpCall(op, torch.device(device), dtype, 32, False))


def skip_unless_runs(op: str, backend: str, device: str, dtype: torch.dtype) -> None:
    """Skip (with the backend's reasons) a device/dtype the backend cannot run at all (patch() would raise)."""
    reasons = environment_reasons(op, backend, device, dtype)
    if reasons:
        pytest.skip(f"{backend} declares it cannot run {op} here (patch() raises): {'; '.join(reasons)}")


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
    entry = "aggregate" if op == HYPERGRAPH else "forward"
    original = getattr(backend, entry)
    monkeypatch.setattr(backend, entry, lambda *a, **k: calls.append(exporting()) or original(*a, **k))
    return calls


def extension_kernels(kernels: list[str]) -> list[str]:
    """The kernels of the CUDA C++ extension (csrc/, C++ namespace yolo13_attn) among ``kernels``: Triton's
    kernels share some of their names but carry no namespace, so this tells the cuda backend's from theirs."""
    return [k for k in kernels if "yolo13_attn" in k]


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


def graph_replay_kernels(layer: torch.nn.Module, static: torch.Tensor) -> list[str]:
    """Capture ``layer(static)`` into a CUDA graph, refill ``static`` with new values and replay it: assert the
    replay equals an eager call on the new input and return the kernels the replay ran."""
    with torch.no_grad():
        graph, captured = capture_cuda_graph(lambda: layer(static))
        static.copy_(torch.randn_like(static))
        kernels = gpu_kernels(graph.replay)
        expected = layer(static)
    torch.testing.assert_close(captured, expected, rtol=1e-3, atol=1e-3)
    return kernels


# The loop a child process runs over ``calls`` [(name, expected message piece, zero-argument call)], printing
# "start <name>" before each and "ok"/"wrong"/"no-error" after it.
BAD_CALL_LOOP = """
for name, expected, call in calls:
    print("start", name, flush=True)
    try:
        call()
        print("no-error", name, flush=True)
    except (RuntimeError, NotImplementedError) as err:
        print("ok" if expected in str(err) else "wrong", name, str(err).splitlines()[0][:300], flush=True)
"""


def assert_bad_calls_raise(setup: str, count: int) -> None:
    """Run ``setup`` (Python source defining ``calls``, see BAD_CALL_LOOP) in a child process and assert that all
    ``count`` calls raised an error containing their expected piece. A crash of the child (a C++ check that takes
    the process down) fails the assertion, naming the call, instead of ending the test session."""
    proc = subprocess.run([sys.executable, "-c", setup + BAD_CALL_LOOP], capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    started = [line.split()[1] for line in lines if line.startswith("start ")]
    assert proc.returncode == 0, (
        f"the child process died (exit {proc.returncode}) in call {started[-1] if started else None!r}; "
        f"stdout: {lines}; stderr tail: {proc.stderr[-1500:]}"
    )
    results = [line for line in lines if not line.startswith("start ")]
    assert len(results) == len(started) == count and all(line.startswith("ok ") for line in results), results
