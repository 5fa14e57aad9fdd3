#!/usr/bin/env python3
"""Kernel sweep: every available backend x op x YOLOv13 shape x batch x dtype (issue 6).

Ops (``--ops``):

* ``area_core``  - ``yolo13_attn.area_attention(q, k, v, area, layout="bhdn", backend=...)`` on ready
  ``(B, heads, 32, N)`` channel-major views of conv outputs (q, k: halves of one ``(B, 2C, H, W)``
  tensor, v: a ``(B, C, H, W)`` tensor), exactly what ``AAttn`` hands the op.
* ``area_layer`` - a ``yolo13_attn.nn.AAttn`` forward (BN fused into the convs, eval), unpatched
  for ``naive``, ``yolo13_attn.patch(layer, backend)`` otherwise.
* ``hg_core``    - ``hypergraph_aggregate`` + ``hypergraph_scatter`` on x ``(B, N, D)`` (a
  transposed view of a ``(B, D, H, W)`` map, as ``AdaHGComputation`` passes it), xp ``(B, N, D)``,
  prototypes ``(B, M, D)``.
* ``hg_layer``   - a ``yolo13_attn.nn.AdaHGComputation`` forward (eval), patched per backend.

Shapes (``--scales``, ``--images``): AAttn P4 (H/16 x W/16, area 4, C = 64/128/256/384, heads C/32),
AAttn P5 (H/32 x W/32, area 1, C = 128/256/256/384), AdaHGComputation at P4 (D = 64/128/256/384,
M = 4/8/8/12, num_heads D/16), for images 640x640, 320x256 and 1280x1280 (H x W). Shapes shared by
two scales (P5 of s and l) are run once and labelled ``s,l``.

Every configuration is checked before it is timed: its output against a float64 reference with
``yolo13_attn.testing.flash_rule`` (max error <= 2x that of plain PyTorch in the same dtype +
slack; for layers the same-dtype baseline is the unpatched layer). A failing configuration is
still timed but reported as ``check-failed`` and never counts as a valid result.

Timing on GPU: CUDA-graph replay (one graph holds many calls rotating over several input sets
whose total exceeds L2 where memory allows), median and p20/p80 over ~15 samples; ``do_bench`` when
capture fails. On CPU: ``time.perf_counter`` medians. Byte and FLOP formulas: see ``bench/README.md``
and the ``bytes_flops`` methods below.

Without a GPU (or with ``--cpu``) the default is a small, clearly labelled CPU smoke sweep (scale n,
320x256, batch 1, fp32) into ``bench/results/cpu/``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

import _common as C

OPS = ("area_core", "area_layer", "hg_core", "hg_layer")
SCALES = ("n", "s", "l", "x")
#: scale -> (AAttn P4 channels, AAttn P5 channels, AdaHGComputation D, M)  (shared/yolov13-spec.md)
SCALE_DIMS = {"n": (64, 128, 64, 4), "s": (128, 256, 128, 8), "l": (256, 256, 256, 8), "x": (384, 384, 384, 12)}
IMAGES = {"640x640": (640, 640), "320x256": (320, 256), "1280x1280": (1280, 1280)}
HEAD_DIM = 32
BATCHES = (1, 8, 16)


# ---- shapes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    family: str  # "area" | "hypergraph"
    site: str  # "P4" | "P5" | "HG"
    scales: tuple[str, ...]
    image: str
    h: int
    w: int
    c: int  # channels (area) or D (hypergraph)
    heads: int  # attention heads (area) or num_heads of AdaHyperedgeGen (hypergraph)
    area: int = 1
    m: int = 0  # hyperedges

    @property
    def n(self) -> int:
        return self.h * self.w

    @property
    def label(self) -> str:
        who = ",".join(self.scales)
        if self.family == "area":
            return f"{who} {self.site} {self.image}: C{self.c} h{self.heads} a{self.area} {self.h}x{self.w}"
        return f"{who} {self.site} {self.image}: D{self.c} M{self.m} h{self.heads} {self.h}x{self.w}"

    def as_dict(self) -> dict:
        return {"family": self.family, "site": self.site, "scales": list(self.scales), "image": self.image, "h": self.h,
                "w": self.w, "N": self.n, "C_or_D": self.c, "heads": self.heads, "area": self.area, "M": self.m}


def shapes_for(family: str, image: str, scales: list[str]) -> list[Shape]:
    ih, iw = IMAGES[image]
    merged: dict[tuple, list[str]] = {}
    for s in scales:
        p4, p5, d, m = SCALE_DIMS[s]
        if family == "area":
            keys = [("P4", ih // 16, iw // 16, p4, p4 // HEAD_DIM, 4, 0), ("P5", ih // 32, iw // 32, p5, p5 // HEAD_DIM, 1, 0)]
        else:
            keys = [("HG", ih // 16, iw // 16, d, d // 16, 1, m)]
        for key in keys:
            merged.setdefault(key, []).append(s)
    out = [Shape(family, site, tuple(who), image, h, w, c, heads, area, m) for (site, h, w, c, heads, area, m), who in merged.items()]
    return sorted(out, key=lambda s: (s.site, SCALES.index(s.scales[0])))


# ---- ops ---------------------------------------------------------------------------------------


class Unsupported(Exception):
    """The backend declines this configuration (reasons in the message)."""


def _randn(shape, dtype, device, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)


def _batch_chunks(batch: int, per_item_bytes: float, limit: float = 1e9) -> list[slice]:
    step = max(1, int(limit // max(per_item_bytes, 1.0)))
    return [slice(i, min(batch, i + step)) for i in range(0, batch, step)]


def fuse_bn(module: torch.nn.Module) -> torch.nn.Module:
    """Fold BatchNorm into Ultralytics ``Conv``s as ``DetectionModel.fuse()`` does."""
    from ultralytics.nn.modules.conv import Conv
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    for m in module.modules():
        if isinstance(m, Conv) and hasattr(m, "bn"):
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    return module


@dataclass
class Runner:
    calls: list
    kernel: str
    close: object = None
    compute_dtype: torch.dtype | None = None  #: what the backend computes in (flash: fp16 for fp32 inputs)


class Group:
    """One (op, shape, batch, dtype): input sets, references, and a runner per backend."""

    op = ""

    def __init__(self, shape: Shape, batch: int, dtype: torch.dtype, device: str, seed: int, cpu_mode: bool):
        self.shape, self.batch, self.dtype, self.device = shape, batch, dtype, device
        self.esize = torch.finfo(dtype).bits // 8
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.cpu_mode = cpu_mode
        self._baselines: dict = {}

    def n_sets(self, bytes_per_set: float) -> int:
        if self.cpu_mode or self.device != "cuda":
            return 2
        return C.input_sets(bytes_per_set, max_sets=64)

    def runner(self, backend: str) -> Runner:
        raise NotImplementedError

    def check(self, out, runner: Runner):
        """``[(output name, ErrorReport)]`` of ``out`` (set 0) under the flash rule."""
        raise NotImplementedError

    def baseline_dtype(self, runner: Runner) -> torch.dtype:
        """The plain-PyTorch baseline's dtype (``yolo13_attn.testing.baseline_dtype``)."""
        from yolo13_attn.testing import baseline_dtype

        return baseline_dtype(self.dtype, *filter(None, [runner.compute_dtype]))

    def baseline(self, dtype: torch.dtype):
        if dtype not in self._baselines:
            with torch.no_grad():
                self._baselines[dtype] = self._compute_baseline(dtype)
        return self._baselines[dtype]

    def bytes_flops(self) -> tuple[float, float, str]:
        raise NotImplementedError

    def rotated_bytes(self) -> float:
        return self.sets_bytes


def _report_of(handle) -> str:
    rows = handle.report()
    return "; ".join(sorted({f"{r.backend}: {r.kernel} ({r.compute_dtype})" for r in rows}))


class AreaCore(Group):
    op = "area_core"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        from yolo13_attn.nn.area_attention import heads_view

        s, b = self.shape, self.batch
        set_bytes = 4 * b * s.c * s.n * self.esize
        self.sets = []
        for _ in range(self.n_sets(set_bytes)):
            qk = _randn((b, 2 * s.c, s.h, s.w), self.dtype, self.device, self.gen)
            v = _randn((b, s.c, s.h, s.w), self.dtype, self.device, self.gen)
            q, k = qk.chunk(2, dim=1)
            self.sets.append(tuple(heads_view(t, s.heads) for t in (q, k, v)))
        self.sets_bytes = len(self.sets) * 3 * b * s.c * s.n * self.esize
        self._references()

    def _references(self):
        from yolo13_attn.ops.reference import area_attention_reference

        s = self.shape
        q, k, v = self.sets[0]
        per_item = s.heads * s.n * (s.n // s.area) * 8 * 2
        self.ref64 = torch.cat([area_attention_reference(q[sl].double(), k[sl].double(), v[sl].double(), s.area)
                                for sl in _batch_chunks(self.batch, per_item)])

    def _compute_baseline(self, dtype):
        """Plain PyTorch (matmul + softmax) computing in ``dtype``, result in the input dtype."""
        from yolo13_attn.ops.reference import area_attention_reference

        s = self.shape
        q, k, v = self.sets[0]
        per_item = s.heads * s.n * (s.n // s.area) * 4 * 3
        return torch.cat([area_attention_reference(q[sl], k[sl], v[sl], s.area, compute_dtype=dtype)
                          for sl in _batch_chunks(self.batch, per_item)])

    def runner(self, backend):
        import yolo13_attn
        from yolo13_attn.backends import BackendUnsupportedError
        from yolo13_attn.backends.base import OpCall
        from yolo13_attn.ops.area_attention import resolve_area_backend

        q, k, v = self.sets[0]
        try:
            cls = resolve_area_backend(q, k, v, backend)
        except BackendUnsupportedError as err:
            raise Unsupported(str(err).split(" -- ", 1)[-1]) from None
        area = self.shape.area
        calls = [lambda q=q, k=k, v=v: yolo13_attn.area_attention(q, k, v, area, layout="bhdn", backend=backend) for q, k, v in self.sets]
        plan = cls.plan(OpCall.for_area(q, k, v))
        return Runner(calls, plan.kernel, compute_dtype=plan.compute_dtype)

    def check(self, out, runner):
        from yolo13_attn.testing import flash_rule

        return [("o", flash_rule(out, self.ref64, self.baseline(self.baseline_dtype(runner))))]

    def bytes_flops(self):
        s, b = self.shape, self.batch
        byts = 4 * b * s.c * s.n * self.esize
        flops = 4 * b * s.n * (s.n // s.area) * s.c  # = 4 * B * heads * N * (N / area) * head_dim
        return byts, flops, "bytes = (q + k + v + o) = 4*B*C*N*size; FLOPs = 4*B*heads*N*(N/area)*head_dim"


class _LayerGroup(Group):
    """Shared by the two layer ops: a seeded module, its float64 twin, input maps x (B, C, H, W)."""

    def _build(self) -> torch.nn.Module:
        raise NotImplementedError

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        from yolo13_attn.testing import randomize_weights

        s, b = self.shape, self.batch
        torch.manual_seed(1000 + s.c)
        layer = fuse_bn(randomize_weights(self._build(), seed=s.c)).eval()
        self.params = sum(p.numel() for p in layer.parameters())
        self.layer64 = copy.deepcopy(layer).to(self.device, torch.float64)
        self.layer = layer.to(self.device, self.dtype)
        set_bytes = 2 * b * s.c * s.n * self.esize
        self.sets = [_randn((b, s.c, s.h, s.w), self.dtype, self.device, self.gen) for _ in range(self.n_sets(set_bytes))]
        self.sets_bytes = len(self.sets) * b * s.c * s.n * self.esize
        x = self.sets[0]
        self.ref64 = torch.cat([self.layer64(x[sl].double()) for sl in _batch_chunks(b, self._scores_bytes_per_item())])
        self.baseline(self.dtype)  # now, while self.layer is unpatched

    def _compute_baseline(self, dtype):
        """The unpatched layer computing in ``dtype`` (a copy when that is not the input dtype)."""
        layer = self.layer if dtype == self.dtype else copy.deepcopy(self.layer64).to(dtype)
        x = self.sets[0]
        return torch.cat([layer(x[sl].to(dtype)).to(self.dtype) for sl in _batch_chunks(self.batch, self._scores_bytes_per_item())])

    def _scores_bytes_per_item(self) -> float:
        return 0.0

    def runner(self, backend):
        import yolo13_attn
        from yolo13_attn.backends import BackendUnsupportedError

        layer = self.layer
        calls = [lambda x=x: layer(x) for x in self.sets]
        if backend == "naive":
            return Runner(calls, "unpatched layer (reference math)")
        try:
            handle = yolo13_attn.patch(layer, backend)
        except BackendUnsupportedError as err:
            raise Unsupported(str(err).split(" -- ", 1)[-1]) from None
        from yolo13_attn.testing import baseline_dtype

        compute = C.report_compute_dtypes(handle)
        return Runner(calls, _report_of(handle), handle.undo, baseline_dtype(*compute) if compute else None)

    def check(self, out, runner):
        from yolo13_attn.testing import flash_rule

        return [("out", flash_rule(out, self.ref64, self.baseline(self.baseline_dtype(runner))))]


class AreaLayer(_LayerGroup):
    op = "area_layer"

    def _build(self):
        from yolo13_attn.nn import AAttn

        return AAttn(self.shape.c, self.shape.heads, self.shape.area)

    def _scores_bytes_per_item(self):
        s = self.shape
        return s.heads * s.n * (s.n // s.area) * 8 * 3

    def bytes_flops(self):
        s, b = self.shape, self.batch
        n, c = s.n, s.c
        byts = 2 * b * c * n * self.esize + self.params * self.esize
        flops = 2 * b * n * c * (4 * c + 25) + 4 * b * n * (n // s.area) * c
        return byts, flops, ("bytes = compulsory traffic = x read + out written (2*B*C*N*size) + fused weights; "
                             "FLOPs = convs 2*B*N*C*(2C + C + C + 25) + attention 4*B*N*(N/area)*C")


class HgCore(Group):
    op = "hg_core"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        from yolo13_attn.ops.reference import hypergraph_scale

        s, b = self.shape, self.batch
        d, m, n = s.c, s.m, s.n
        self.scale = hypergraph_scale(d, s.heads)
        # prototypes scaled so that the logits have std ~2 (a peaked, not uniform, softmax over N)
        p_std = 2.0 / (self.scale * math.sqrt(d))
        set_bytes = (4 * b * n * d + 4 * b * m * d) * self.esize
        self.sets = []
        for _ in range(self.n_sets(set_bytes)):
            x = _randn((b, d, s.h, s.w), self.dtype, self.device, self.gen).flatten(2).transpose(1, 2)
            xp = _randn((b, n, d), self.dtype, self.device, self.gen)
            protos = _randn((b, m, d), self.dtype, self.device, self.gen, p_std)
            self.sets.append((x, xp, protos))
        self.sets_bytes = len(self.sets) * (2 * b * n * d + b * m * d) * self.esize
        from yolo13_attn.ops.reference import hypergraph_aggregate_reference as agg, hypergraph_scatter_reference as sca

        x, xp, protos = self.sets[0]
        x64, xp64, p64 = x.double(), xp.double(), protos.double()
        he64, lse64 = agg(x64, xp64, p64, self.scale)
        self.ref64 = (he64, sca(xp64, p64, lse64, he64, self.scale))

    def _compute_baseline(self, dtype):
        from yolo13_attn.ops.reference import hypergraph_aggregate_reference as agg, hypergraph_scatter_reference as sca

        x, xp, protos = self.sets[0]
        he, lse = agg(x, xp, protos, self.scale, compute_dtype=dtype)
        return he, sca(xp, protos, lse, he, self.scale, compute_dtype=dtype)

    def runner(self, backend):
        import yolo13_attn
        from yolo13_attn.backends import BackendUnsupportedError
        from yolo13_attn.backends.base import OpCall
        from yolo13_attn.ops.hypergraph import resolve_hypergraph_backend

        x, xp, protos = self.sets[0]
        try:
            cls = resolve_hypergraph_backend(x, xp, protos, None, backend)
        except BackendUnsupportedError as err:
            raise Unsupported(str(err).split(" -- ", 1)[-1]) from None
        scale = self.scale

        def call(x, xp, protos):
            he, lse = yolo13_attn.hypergraph_aggregate(x, xp, protos, scale, backend=backend)
            return he, yolo13_attn.hypergraph_scatter(xp, protos, lse, he, scale, backend=backend)

        calls = [lambda s=s: call(*s) for s in self.sets]
        plan = cls.plan(OpCall.for_hypergraph(x, xp, protos, None))
        return Runner(calls, plan.kernel, compute_dtype=plan.compute_dtype)

    def check(self, out, runner):
        from yolo13_attn.testing import flash_rule

        baseline = self.baseline(self.baseline_dtype(runner))
        return [(name, flash_rule(o, r, b)) for name, o, r, b in zip(("he", "xn"), out, self.ref64, baseline)]

    def bytes_flops(self):
        s, b = self.shape, self.batch
        d, m, n = s.c, s.m, s.n
        byts = (4 * b * n * d + 4 * b * m * d) * self.esize + 2 * b * m * 4
        flops = 8 * b * n * m * d
        return byts, flops, ("bytes = aggregate (x, xp read; he, lse written) + scatter (xp read again, he, lse read, xn written) "
                             "= (4*B*N*D + 4*B*M*D)*size + 8*B*M; FLOPs = 8*B*N*M*D (logits + weighted sum, twice)")


class HgLayer(_LayerGroup):
    op = "hg_layer"

    def _build(self):
        from yolo13_attn.nn import AdaHGComputation

        s = self.shape
        return AdaHGComputation(s.c, s.m, s.heads, 0.1, "both")

    def bytes_flops(self):
        s, b = self.shape, self.batch
        d, m, n = s.c, s.m, s.n
        byts = 2 * b * d * n * self.esize + self.params * self.esize
        flops = 4 * b * n * d * d + 2 * b * (2 * d) * (m * d) + 2 * b * m * d * d + 8 * b * n * m * d
        return byts, flops, ("bytes = compulsory traffic = x read + out written (2*B*D*N*size) + weights; FLOPs = "
                             "pre_head_proj + node_proj 4*B*N*D^2 + context_net 4*B*M*D^2 + edge_proj 2*B*M*D^2 + core 8*B*N*M*D")


GROUPS = {"area_core": AreaCore, "area_layer": AreaLayer, "hg_core": HgCore, "hg_layer": HgLayer}
FAMILY = {"area_core": "area", "area_layer": "area", "hg_core": "hypergraph", "hg_layer": "hypergraph"}


# ---- one configuration -------------------------------------------------------------------------


def _poison(out_like_bytes: int, device: str) -> None:
    """Best effort: leave a NaN-filled block in the caching allocator, so an output allocated next of
    the same size starts as NaN and unwritten elements fail the check."""
    if device == "cuda" and out_like_bytes > 0:
        t = torch.full((max(1, out_like_bytes // 4),), float("nan"), device=device)
        del t


def _out_bytes(group: Group) -> int:
    s, b = group.shape, group.batch
    return int(b * s.c * s.n * group.esize)


def run_config(group: Group, backend: str, args, timing_kw: dict) -> dict:
    rec = {"status": "", "reason": "", "kernel": "", "check": {}, "timing": None, "peak_mem_mb": None}
    try:
        runner = group.runner(backend)
    except Unsupported as err:
        rec.update(status="unsupported", reason=str(err))
        return rec
    except Exception as err:
        rec.update(status="error", reason=f"{type(err).__name__}: {err}"[:500])
        return rec
    rec["kernel"] = runner.kernel
    try:
        with torch.inference_mode():
            _poison(_out_bytes(group), group.device)
            out, peak = C.measure_peak(runner.calls[0], group.device)
            reports = group.check(out, runner)
            del out
            ok = all(r.ok for _, r in reports)
            worst_name, worst = max(reports, key=lambda nr: nr[1].candidate / nr[1].bound if nr[1].bound > 0 else math.inf)
            rec["check"] = {"pass": ok, "baseline_dtype": C.dtype_name(group.baseline_dtype(runner)), "err": worst.candidate, "bound": worst.bound, "baseline_err": worst.baseline, "worst_output": worst_name,
                            "outputs": {n: {"err": r.candidate, "baseline_err": r.baseline, "bound": r.bound, "pass": r.ok} for n, r in reports}}
            rec["peak_mem_mb"] = peak
            if group.device == "cuda":
                timing = C.time_gpu(runner.calls, use_graph=not args.no_graph, **timing_kw)
            else:
                timing = C.time_cpu(runner.calls, budget_s=args.cpu_time_per_config)
            rec["timing"] = timing.as_dict()
        rec["status"] = "ok" if ok else "check-failed"
        if not ok:
            rec["reason"] = f"flash rule: max error {worst.candidate:.3e} > bound {worst.bound:.3e} ({worst_name}; plain-PyTorch error {worst.baseline:.3e})"
    except torch.cuda.OutOfMemoryError as err:
        rec.update(status="oom", reason=str(err).splitlines()[0][:300])
    except Exception as err:
        rec.update(status="error", reason=f"{type(err).__name__}: {err}"[:500])
        if args.verbose:
            traceback.print_exc()
    finally:
        if runner.close is not None:
            runner.close()
    return rec


def derived_metrics(rec: dict, device: str) -> None:
    """Throughput and floor metrics from the timing (p20/p80 of a throughput come from p80/p20 of the time)."""
    t = rec.get("timing")
    if not t:
        return
    byts, flops = rec["bytes"], rec["flops"]
    peak_flops = C.PEAK_FLOPS.get(rec["dtype"])
    metrics = rec["metrics"]
    metrics["ms"] = (t["median"], t["p20"], t["p80"])
    metrics["tbps"] = tuple(byts / (x * 1e-3) / 1e12 for x in (t["median"], t["p80"], t["p20"]))
    metrics["tflops"] = tuple(flops / (x * 1e-3) / 1e12 for x in (t["median"], t["p80"], t["p20"]))
    if device == "cuda" and peak_flops:
        floor_ms = max(byts / C.PEAK_BW, flops / peak_flops) * 1e3
        metrics["floor_ms"] = (floor_ms, None, None)
        metrics["floor_frac"] = tuple(floor_ms / x for x in (t["median"], t["p80"], t["p20"]))
        metrics["bw_frac"] = tuple(v / (C.PEAK_BW / 1e12) for v in metrics["tbps"])
        metrics["flop_frac"] = tuple(v / (peak_flops / 1e12) for v in metrics["tflops"])
    if rec.get("peak_mem_mb") is not None and math.isfinite(rec["peak_mem_mb"]):
        metrics["peak_mem_mb"] = (rec["peak_mem_mb"], None, None)


def _key(r: dict) -> tuple:
    return (r["op"], r["shape"], r["dtype"], r["batch"], r["backend"])


def merge_previous(path: Path, records: list[dict], backends: list[str]) -> list[dict]:
    """``--append``: the configurations of an earlier run in the same folder, then this run's (which win)."""
    import json

    old = json.loads(path.read_text()).get("configs", [])
    for r in old:
        r["metrics"] = {k: tuple(float("nan") if x is None else x for x in v) for k, v in r.get("metrics", {}).items()}
    new_keys = {_key(r) for r in records}
    merged = [r for r in old if _key(r) not in new_keys] + records
    print(f"--append: kept {len(merged) - len(records)} configurations of the earlier run in {path.parent}")
    return merged


def add_speedups(records: list[dict]) -> None:
    """speedup_vs_naive / speedup_vs_flash = baseline median / this median (same op, shape, dtype, batch)."""
    by_key = defaultdict(dict)
    for r in records:
        if r.get("timing"):
            by_key[(r["op"], r["shape"], r["dtype"], r["batch"])][r["backend"]] = r["timing"]["median"]
    for r in records:
        if not r.get("timing"):
            continue
        times = by_key[(r["op"], r["shape"], r["dtype"], r["batch"])]
        t = r["timing"]
        for base in ("naive", "flash"):
            if base in times:
                # spread: baseline median over this config's p80 / p20
                r["metrics"][f"speedup_vs_{base}"] = (times[base] / t["median"], times[base] / t["p80"], times[base] / t["p20"])
                r[f"speedup_vs_{base}"] = times[base] / t["median"]


# ---- outputs -----------------------------------------------------------------------------------

METRIC_ORDER = ("ms", "speedup_vs_naive", "speedup_vs_flash", "tbps", "tflops", "floor_ms", "floor_frac", "bw_frac", "flop_frac", "peak_mem_mb")


def csv_rows(records: list[dict], device: str, versions: str, date: str) -> list[dict]:
    rows = []
    for r in records:
        base = {"op": r["op"], "backend": r["backend"], "shape": r["shape"], "dtype": r["dtype"], "batch": r["batch"],
                "device": device, "versions": versions, "date": date}
        if r["status"] in ("unsupported", "budget"):
            continue
        chk = r.get("check") or {}
        if chk:
            rows.append({**base, "metric": "check_pass", "median": int(bool(chk.get("pass")))})
            rows.append({**base, "metric": "check_err", "median": chk.get("err")})
            rows.append({**base, "metric": "check_bound", "median": chk.get("bound")})
        rows.append({**base, "metric": "bytes", "median": r["bytes"]})
        rows.append({**base, "metric": "flops", "median": r["flops"]})
        for name in METRIC_ORDER:
            if name in r["metrics"]:
                med, p20, p80 = r["metrics"][name]
                rows.append({**base, "metric": name, "median": med, "p20": p20, "p80": p80})
    return rows


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] == "unsupported":
        return "n/s"
    if r["status"] == "budget":
        return "not run"
    if r["status"] in ("error", "oom"):
        return r["status"]
    ms = C.fmt_ms(r["timing"]["median"]) if r.get("timing") else "-"
    sp = r.get("speedup_vs_naive")
    cell = ms + (f" ({C.fmt_x(sp)})" if sp is not None and r["backend"] != "naive" else "")
    return cell + (" FAIL" if r["status"] == "check-failed" else "")


def markdown(data: dict) -> str:
    env, records = data["environment"], data["configs"]
    backends = data["backends_run"]
    gpu = data["device_kind"] == "cuda"
    title = "Kernel sweep" + ("" if gpu else " - CPU SMOKE RUN (not a benchmark: tiny shapes, fp32, noisy shared CPU)")
    lines = C.header_lines(title, env, {"date": data["date"], "timing": data["timing_note"], "configurations": f"{len(records)} "
                           f"({sum(r['status'] == 'ok' for r in records)} ok, {sum(r['status'] == 'check-failed' for r in records)} check-failed, "
                           f"{sum(r['status'] == 'unsupported' for r in records)} unsupported, {sum(r['status'] in ('error', 'oom') for r in records)} error, "
                           f"{sum(r['status'] == 'budget' for r in records)} not run (time budget))"})
    if gpu:
        lines += [f"Floors: {C.PEAK_BW / 1e12:.2f} TB/s; {C.PEAK_FLOPS['fp16'] / 1e12:.0f} TFLOP/s fp16/bf16 dense, "
                  f"{C.PEAK_FLOPS['fp32'] / 1e12:.0f} TFLOP/s fp32 (non-tensor) - H100 anchors from shared/perf-anchors.md. "
                  "`%floor` = max(bytes / BW, FLOPs / peak) / measured time. Formulas: bench/README.md.", ""]
    lines += ["Cells: median ms (speedup vs naive). `FAIL`: output failed the flash rule (timed, not valid); `n/s`: backend "
              "declines the shape/dtype; naive = reference math (for layers: the unpatched layer).", ""]
    for name, why in data["skipped_backends"].items():
        lines.append(f"- backend `{name}` skipped: {why}")
    lines.append("")
    # headline: best valid backend per configuration
    lines += ["## Best valid backend per configuration", ""]
    groups = defaultdict(dict)
    image_order = {k: i for i, k in enumerate(IMAGES)}
    dtype_order = {k: i for i, k in enumerate(C.DTYPES)}

    def sort_key(r):
        info = r["shape_info"]
        return (OPS.index(r["op"]) if r["op"] in OPS else 9, image_order.get(info["image"], 9), info["site"],
                SCALES.index(info["scales"][0]) if info["scales"][0] in SCALES else 9, dtype_order.get(r["dtype"], 9), r["batch"])

    for r in sorted(records, key=sort_key):
        groups[(r["op"], r["shape"], r["dtype"], r["batch"])][r["backend"]] = r
    head = ["op", "shape", "dtype", "B", "naive ms", "flash ms", "best", "best ms", "vs naive", "vs flash", "TB/s", "TFLOP/s"] + (["%floor"] if gpu else [])
    rows = []
    for (op, shape, dtype, batch), by_backend in groups.items():
        valid = [r for r in by_backend.values() if r["status"] == "ok" and r.get("timing")]
        if not valid:
            continue
        best = min(valid, key=lambda r: r["timing"]["median"])
        m = best["metrics"]
        naive, flash = by_backend.get("naive"), by_backend.get("flash")
        row = [op, shape, dtype, str(batch), C.fmt_ms(naive["timing"]["median"]) if naive and naive.get("timing") else "-",
               (C.fmt_ms(flash["timing"]["median"]) + (" FAIL" if flash["status"] == "check-failed" else "")) if flash and flash.get("timing") else "-",
               best["backend"], C.fmt_ms(best["timing"]["median"]), C.fmt_x(best.get("speedup_vs_naive")), C.fmt_x(best.get("speedup_vs_flash")),
               f"{m['tbps'][0]:.3g}", f"{m['tflops'][0]:.3g}"]
        if gpu:
            row.append(f"{100 * m['floor_frac'][0]:.0f}%" if "floor_frac" in m else "-")
        rows.append(row)
    lines += [C.md_table(head, rows), ""]
    # full tables per op
    for op in data["ops"]:
        op_groups = {k: v for k, v in groups.items() if k[0] == op}
        if not op_groups:
            continue
        lines += [f"## {op}", ""]
        rows = [[shape, dtype, str(batch)] + [_cell(by.get(b)) for b in backends] for (_, shape, dtype, batch), by in op_groups.items()]
        lines += [C.md_table(["shape", "dtype", "B"] + backends, rows), ""]
    problems = [r for r in records if r["status"] in ("error", "oom", "check-failed")]
    if problems:
        lines += ["## Check failures and errors", ""]
        lines += [f"- {r['op']} {r['shape']} {r['dtype']} B{r['batch']} {r['backend']}: {r['status']}: {r['reason']}" for r in problems]
        lines.append("")
    unsupported = sorted({(r["op"], r["backend"], r["reason"]) for r in records if r["status"] == "unsupported"})
    if unsupported:
        lines += ["## Declined (n/s)", ""] + [f"- {op} / {b}: {why}" for op, b, why in unsupported] + [""]
    formulas = data.get("formulas", {})
    if formulas:
        lines += ["## Byte and FLOP formulas", ""] + [f"- {op}: {f}" for op, f in formulas.items()] + [""]
    return "\n".join(lines)


def plots(data: dict, out_dir: Path, prefix: str) -> list[str]:
    plt = C.matplotlib_pyplot()
    if plt is None:
        return []
    records = [r for r in data["configs"] if r.get("timing")]
    gpu = data["device_kind"] == "cuda"
    written = []
    for op in data["ops"]:
        recs = [r for r in records if r["op"] == op]
        if not recs:
            continue
        dtypes = [d for d in data["dtypes"] if any(r["dtype"] == d for r in recs)]
        batch = max(r["batch"] for r in recs)
        recs = [r for r in recs if r["batch"] == batch]
        shapes_of = {d: list(dict.fromkeys(r["shape"] for r in recs if r["dtype"] == d)) for d in dtypes}
        dtypes = [d for d in dtypes if shapes_of[d]]
        backends = [b for b in data["backends_run"] if any(r["backend"] == b for r in recs)]
        rows = [("speedup_vs_naive", "speedup vs naive (x)", True)] + ([("floor_frac", "fraction of floor", False)] if gpu else [("ms", "ms per call (CPU)", True)])
        n_bars = sum(len(v) for v in shapes_of.values())
        fig, axes = plt.subplots(len(rows), len(dtypes), figsize=(max(6, 0.55 * n_bars + 3 * len(dtypes)), 4.2 * len(rows)), squeeze=False,
                                 gridspec_kw={"width_ratios": [max(1, len(shapes_of[d])) for d in dtypes]})
        width = 0.8 / max(1, len(backends))
        for j, dtype in enumerate(dtypes):
            shapes = shapes_of[dtype]
            for i, (metric, ylabel, logy) in enumerate(rows):
                ax = axes[i][j]
                for bi, b in enumerate(backends):
                    ys, hatches = [], []
                    for s in shapes:
                        r = next((r for r in recs if r["shape"] == s and r["dtype"] == dtype and r["backend"] == b), None)
                        ys.append(r["metrics"][metric][0] if r and metric in r["metrics"] else float("nan"))
                        hatches.append(r is not None and r["status"] != "ok")
                    bars = ax.bar([x + bi * width for x in range(len(shapes))], ys, width, label=b)
                    for bar, bad in zip(bars, hatches):
                        if bad:
                            bar.set_hatch("xx")
                ax.set_xticks([x + 0.4 - width / 2 for x in range(len(shapes))])
                ax.set_xticklabels([s.split(":")[0] for s in shapes], rotation=60, ha="right", fontsize=7)
                if logy:
                    ax.set_yscale("log")
                if metric == "speedup_vs_naive":
                    ax.axhline(1.0, color="k", lw=0.6)
                ax.set_ylabel(ylabel)
                ax.set_title(f"{op} {dtype} B={batch}", fontsize=9)
                ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        title = f"{op} on {data['device']} (hatched: failed the equivalence check)"
        fig.suptitle(title if gpu else "CPU SMOKE RUN - " + title, fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{prefix}_{op}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def write_outputs(data: dict, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = "kernel_sweep"
    env = data["environment"]
    rows = csv_rows(data["configs"], data["device"], C.versions_string(env), data["date"])
    C.write_csv(out_dir / f"{prefix}.csv", rows)
    data["plots"] = plots(data, out_dir, prefix)
    if not data["plots"]:
        data["plots_note"] = "matplotlib not importable here: run `python bench/kernel_sweep.py --replot DIR` elsewhere"
    C.write_json(out_dir / f"{prefix}.json", data)
    (out_dir / f"{prefix}.md").write_text(markdown(data))
    return [f"{prefix}.csv", f"{prefix}.json", f"{prefix}.md", *data["plots"]]


def replot(out_dir: Path) -> None:
    import json

    data = json.loads((out_dir / "kernel_sweep.json").read_text())
    for r in data["configs"]:
        r["metrics"] = {k: tuple(float("nan") if x is None else x for x in v) for k, v in r.get("metrics", {}).items()}
    files = write_outputs(data, out_dir)
    print(f"re-rendered {', '.join(files)} in {out_dir}")


# ---- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", help=f"comma list of {','.join(OPS)}")
    p.add_argument("--backends", help="comma list (default: every available backend)")
    p.add_argument("--scales", help="comma list of n,s,l,x")
    p.add_argument("--batches", help="comma list, default 1,8,16")
    p.add_argument("--dtypes", help="comma list of fp16,bf16,fp32")
    p.add_argument("--images", help=f"comma list of {','.join(IMAGES)} (H x W)")
    p.add_argument("--quick", action="store_true", help="GPU: scales n,x; 640x640; batches 1,16; fp16")
    p.add_argument("--append", action="store_true", help="merge with the kernel_sweep.json already in --out (same configurations are replaced)")
    p.add_argument("--no-graph", action="store_true", help="time with triton.testing.do_bench instead of CUDA graphs")
    p.add_argument("--samples", type=int, default=15, help="timing samples per configuration (GPU)")
    p.add_argument("--cpu-time-per-config", type=float, default=0.15, help="seconds of timing per configuration on CPU")
    return p


def main(argv=None) -> int:
    args, mode = C.start_run(build_parser(), argv, replot)
    if mode is None:
        return 0
    cpu_mode, device = mode
    if cpu_mode:
        defaults = dict(ops=list(OPS), scales=["n"], batches=[1], dtypes=["fp32"], images=["320x256"])
    elif args.quick:
        defaults = dict(ops=list(OPS), scales=["n", "x"], batches=[1, 16], dtypes=["fp16"], images=["640x640"])
    else:
        defaults = dict(ops=list(OPS), scales=list(SCALES), batches=list(BATCHES), dtypes=["fp16", "bf16", "fp32"], images=list(IMAGES))
    ops = C.parse_list(args.ops, OPS, "op") or defaults["ops"]
    scales = C.parse_list(args.scales, SCALES, "scale") or defaults["scales"]
    batches = [int(b) for b in (C.parse_list(args.batches) or defaults["batches"])]
    dtypes = C.parse_list(args.dtypes, list(C.DTYPES), "dtype") or defaults["dtypes"]
    images = C.parse_list(args.images, list(IMAGES), "image") or defaults["images"]
    backends, skipped = C.choose_backends(C.parse_list(args.backends), cpu_mode)
    out_dir = args.out or C.default_out_dir(cpu_mode)
    env = C.environment()
    date = C.today()
    if cpu_mode:
        print("CPU SMOKE RUN: no GPU in use - tiny shapes, fp32, time.perf_counter medians on a shared CPU; not a benchmark.")
    print(f"device: {env.get('gpu') if not cpu_mode else 'cpu'}; torch {env['torch']}, triton {env['triton']}; results -> {out_dir}")
    print(f"backends: {', '.join(backends)}")
    for name, why in skipped.items():
        print(f"  skipping backend {name}: {why}")

    # most important first, so that a --budget-s cut drops the tail: image, dtype, batch, then op and shape
    plan = []
    for image in images:
        for dtype in dtypes:
            for batch in batches:
                for op in ops:
                    for shape in shapes_for(FAMILY[op], image, scales):
                        plan.append((op, shape, batch, dtype))
    total = len(plan) * len(backends)
    print(f"{len(plan)} (op, shape, batch, dtype) groups x {len(backends)} backends = {total} configurations")
    budget = C.Budget(args.budget_s)
    timing_kw = {"samples": args.samples}
    records, formulas, done = [], {}, 0
    for op, shape, batch, dtype_name in plan:
        base = {"op": op, "shape": shape.label, "shape_info": shape.as_dict(), "dtype": dtype_name, "batch": batch, "metrics": {}}
        if budget.exhausted():
            for b in backends:
                records.append({**base, "backend": b, "status": "budget", "reason": "time budget exhausted", "bytes": None, "flops": None})
            done += len(backends)
            continue
        try:
            with torch.no_grad():
                group = GROUPS[op](shape, batch, C.DTYPES[dtype_name], device, args.seed, cpu_mode)
        except Exception as err:
            reason = f"building inputs/references failed: {type(err).__name__}: {str(err)[:300]}"
            print(f"  {op} {shape.label} {dtype_name} B{batch}: {reason}")
            if args.verbose:
                traceback.print_exc()
            for b in backends:
                records.append({**base, "backend": b, "status": "oom" if isinstance(err, torch.cuda.OutOfMemoryError) else "error", "reason": reason, "bytes": None, "flops": None})
            done += len(backends)
            C.free_memory()
            continue
        byts, flops, formula = group.bytes_flops()
        formulas[op] = formula
        times = {}
        for backend in backends:
            done += 1
            rec = {**base, "backend": backend, "bytes": byts, "flops": flops, "metrics": {}, "rotated_input_bytes": group.rotated_bytes(),
                   "input_sets": len(group.sets)}
            if budget.exhausted():
                rec.update(status="budget", reason="time budget exhausted")
                records.append(rec)
                continue
            t0 = time.perf_counter()
            rec.update(run_config(group, backend, args, timing_kw))
            derived_metrics(rec, device)
            records.append(rec)
            line = f"[{done:>4}/{total}] {op:<10} {shape.label:<44} {dtype_name} B{batch:<3} {backend:<6}"
            if rec.get("timing"):
                t = rec["timing"]
                times[backend] = t["median"]
                m = rec["metrics"]
                line += f" {C.fmt_ms(t['median']):>8} ms [{C.fmt_ms(t['p20'])}, {C.fmt_ms(t['p80'])}]"
                for base_name in ("naive", "flash"):
                    if base_name in times and backend != base_name:
                        line += f" {times[base_name] / t['median']:5.2f}x vs {base_name}"
                line += f" {m['tbps'][0]:6.3f} TB/s {m['tflops'][0]:7.2f} TFLOP/s"
                if "floor_frac" in m:
                    line += f" {100 * m['floor_frac'][0]:4.0f}% of floor"
                chk = rec["check"]
                line += f" check {'ok' if chk['pass'] else 'FAIL'} ({chk['err']:.1e} <= {chk['bound']:.1e})" if chk["pass"] else f" check FAIL ({chk['err']:.1e} > {chk['bound']:.1e})"
            else:
                line += f" {rec['status']}: {rec['reason'][:160]}"
            line += f" [{time.perf_counter() - t0:.1f}s]"
            C.progress(line)
        del group
        C.free_memory()
    if args.append and (out_dir / "kernel_sweep.json").is_file():
        records = merge_previous(out_dir / "kernel_sweep.json", records, backends)
    add_speedups(records)
    data = {
        "script": "kernel_sweep",
        "title": "YOLOv13 attention kernel sweep" + (" (CPU smoke run, not a benchmark)" if cpu_mode else ""),
        "date": date,
        "created": C.now_iso(),
        "device_kind": device,
        "device": C.device_string(env),
        "environment": env,
        "backends": C.backend_availability(),
        "backends_run": _union(backends, [r["backend"] for r in records], ["naive", "flash", "sdpa", "triton", "cuda"]),
        "skipped_backends": skipped,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "ops": _union(ops, [r["op"] for r in records], OPS),
        "scales": _union(scales, [s for r in records for s in r["shape_info"]["scales"]], SCALES),
        "batches": sorted(set(batches) | {r["batch"] for r in records}),
        "dtypes": _union(dtypes, [r["dtype"] for r in records], list(C.DTYPES)),
        "images": _union(images, [r["shape_info"]["image"] for r in records], list(IMAGES)),
        "anchors": {"peak_bw_Bps": C.PEAK_BW, "peak_flops": C.PEAK_FLOPS, "l2_bytes": C.L2_BYTES, "source": "shared/perf-anchors.md, shared/gpu-notes.md (H100)"},
        "timing_note": ("CUDA-graph replay, median of samples, rotating input sets (see each config's timing.method)" if not cpu_mode
                        else "time.perf_counter per call, median (CPU smoke run)"),
        "formulas": formulas,
        "elapsed_s": budget.elapsed(),
        "configs": records,
    }
    files = write_outputs(data, out_dir)
    print(f"\nwrote {', '.join(files)} to {out_dir} in {budget.elapsed():.0f} s")
    print_summary(data)
    return 0


def _union(first: list, more: list, order: list) -> list:
    items = set(first) | set(more)
    return [x for x in order if x in items] + sorted(x for x in items if x not in order)


def print_summary(data: dict) -> None:
    """A short table: per op and dtype, the best valid backend's speedup over naive at the largest batch."""
    best = {}
    for r in data["configs"]:
        if r["status"] == "ok" and r.get("timing"):
            key = (r["op"], r["shape"], r["dtype"], r["batch"])
            if key not in best or r["timing"]["median"] < best[key]["timing"]["median"]:
                best[key] = r
    if not best:
        print("no valid timings")
        return
    print("\nbest valid backend per op/shape/dtype at the largest batch:")
    maxb = max(k[3] for k in best)
    for key, r in best.items():
        if key[3] == maxb:
            floor = f" {100 * r['metrics']['floor_frac'][0]:.0f}% floor" if "floor_frac" in r["metrics"] else ""
            print(f"  {key[0]:<10} {key[1]:<44} {key[2]} B{key[3]:<3} {r['backend']:<6} {C.fmt_ms(r['timing']['median']):>8} ms  "
                  f"{C.fmt_x(r.get('speedup_vs_naive')):>7} vs naive {C.fmt_x(r.get('speedup_vs_flash')):>7} vs flash{floor}")


if __name__ == "__main__":
    sys.exit(main())
