"""The one timing harness of the benchmarks, and peak-memory measurement.

``time_calls(calls, device, graph=...)`` times a list of equivalent callables that differ only in
their inputs (rotating over them keeps inputs from staying in L2):

* ``graph=True`` (CUDA): warm-up, then one CUDA graph holding ``k`` calls that cycle through
  ``calls`` (``k`` >= ``len(calls)``, about ``graph_ms`` of work); each sample times ``r``
  back-to-back replays with CUDA events; per call = elapsed / (r k). No launch overhead. If the
  capture fails the calls are timed eagerly and ``method`` says why.
* ``graph=False``: warm-up, then each sample times ``r`` back-to-back calls (CUDA events on a GPU,
  ``time.perf_counter`` on CPU); ``min_sample_ms=0`` gives one call per sample (a latency as a
  caller sees it, launch overhead included).

Result: median and p20/p80 of the per-call milliseconds over the samples.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass
class Timing:
    """Per-call milliseconds: median and 20th/80th percentiles of the samples, and how they were taken."""

    median: float
    p20: float
    p80: float
    samples: list[float]
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default)."""
    data = sorted(values)
    pos = (len(data) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class _Clock:
    """CUDA events on a GPU (the stream is synchronised at the end of each sample), else perf_counter."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def ms(self, fn: Callable[[], object], reps: int) -> float:
        """Milliseconds of ``reps`` back-to-back ``fn()`` calls."""
        if self.cuda:
            self.start.record()
            for _ in range(reps):
                fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) * 1e3


def capture_graph(calls: Sequence[Callable[[], object]], k: int) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``k`` calls cycling through ``calls`` (warmed up on a side stream first)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in itertools.islice(itertools.cycle(calls), k):
            call()
    return graph


def time_calls(
    calls: Sequence[Callable[[], object]],
    device: str,
    *,
    graph: bool = True,
    samples: int = 15,
    min_sample_ms: float = 2.0,
    graph_ms: float = 2.0,
    max_graph_calls: int = 256,
    max_total_s: float = 3.0,
) -> Timing:
    """Time ``calls`` (see the module docstring); at most ``samples`` samples and about ``max_total_s``."""
    clock = _Clock(device)
    for call in calls:  # warm-up: Triton compiles, cuBLAS/cuDNN pick algorithms, caches fill
        call()
    cycle = itertools.cycle(calls)
    est_ms = clock.ms(lambda: next(cycle)(), max(len(calls), 2)) / max(len(calls), 2)
    step, per_step, method = (lambda: next(cycle)()), 1, ""
    if graph and device == "cuda":
        try:
            k = int(min(max_graph_calls, max(len(calls), math.ceil(graph_ms / max(est_ms, 1e-3)))))
            cuda_graph = capture_graph(calls, k)
            cuda_graph.replay()
            torch.cuda.synchronize()
            step, per_step = cuda_graph.replay, k
            est_ms = clock.ms(step, 1) / k
            method = f"CUDA-graph replay, {k} calls per graph over {len(calls)} input sets"
        except Exception as exc:  # noqa: BLE001 - capture impossible (host sync, unsupported op): time eagerly, say why
            torch.cuda.synchronize()
            first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
            method = f"eager (CUDA-graph capture failed: {type(exc).__name__}: {first_line})"
    if not method:
        method = f"eager calls over {len(calls)} input sets"
    step_ms = est_ms * per_step
    reps = max(1, math.ceil(min_sample_ms / max(step_ms, 1e-4)))
    n = int(max(3, min(samples, max_total_s * 1e3 / max(reps * step_ms, 1e-3))))
    out = [clock.ms(step, reps) / (reps * per_step) for _ in range(n)]
    method += f", {reps} per sample, {n} samples, {'CUDA events' if clock.cuda else 'time.perf_counter'}, median"
    return Timing(quantile(out, 0.5), quantile(out, 0.2), quantile(out, 0.8), [round(s, 6) for s in out], method)


def input_sets(bytes_per_set: float, l2_bytes: float, *, max_sets: int = 64, max_bytes: float = 2e9) -> int:
    """How many input sets to rotate so that together they exceed 3x L2 (at least 2, at most ``max_bytes``)."""
    want = math.ceil(3 * l2_bytes / max(bytes_per_set, 1.0))
    cap = max(1, int(max_bytes // max(bytes_per_set, 1.0)))
    return max(1, min(max_sets, cap, max(2, want)))


def measure_peak(call: Callable[[], object], device: str) -> tuple[object, float]:
    """Run ``call`` once; its result and the peak extra device memory it needed in MB
    (``torch.cuda.max_memory_allocated`` minus what was allocated before; NaN on CPU)."""
    if device != "cuda":
        return call(), float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = call()
    torch.cuda.synchronize()
    return out, (torch.cuda.max_memory_allocated() - before) / 1e6
