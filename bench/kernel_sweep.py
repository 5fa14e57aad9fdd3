#!/usr/bin/env python3
"""Kernel sweep: every available backend x op x YOLOv13 shape x batch x dtype.

Ops (``--ops``): ``area_core`` (``yolo13_attn.area_attention`` on the channel-major ``(B, heads,
32, N)`` views ``AAttn`` passes), ``area_layer`` (an ``AAttn`` forward, BN fused, eval),
``hg_core`` (``hypergraph_aggregate`` + ``hypergraph_scatter``), ``hg_layer`` (an
``AdaHGComputation`` forward); ``area_core_train`` / ``hg_core_train``: the core op's forward plus
its backward (``torch.autograd.grad`` of a fixed random output gradient; the hypergraph with the
training-mode logit dropout mask), checked on every input gradient. ``naive`` is the reference
math (for layers: the unpatched layer).
Shapes: ``AAttn`` at P4 and P5 and ``AdaHGComputation`` at P4 of YOLOv13 n/s/l/x, for 640x640,
320x256 and 1280x1280 images.

Every configuration is checked before it is timed: its output against float64 with
``yolo13_attn.testing.flash_rule``. A failing one is timed but reported ``check-failed``, never as
a valid result. GPU timing: CUDA-graph replay over rotated input sets larger than L2
(``bench/timing.py``); floors from peaks measured on the GPU (``bench/peaks.py``). Without a GPU
(or with ``--cpu``): a small, labelled CPU smoke sweep into ``bench/results/cpu/``. Details:
``bench/README.md``.

The ``flash`` backend's records name the implementation that ran (``flash_impl``: ``fa2``, ``fa4`` or
``torch``, see ``yolo13_attn/backends/flash_impls.py``). ``--flash-impls fa4,torch`` adds a backend
column per implementation (``flash:fa4``, ``flash:torch``): the flash backend forced to it, timed in
the same process beside the others.
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

import _common as C
import outputs as O
import torch
from plots import Panel, speedup_figure
from timing import input_sets, measure_peak, time_calls

import yolo13_attn
from yolo13_attn.backends import flash_impls
from yolo13_attn.nn import AAttn, AdaHGComputation
from yolo13_attn.nn.area_attention import heads_view
from yolo13_attn.ops import area_attention_reference, hypergraph_scale
from yolo13_attn.ops import hypergraph_aggregate_reference as aggregate_reference
from yolo13_attn.ops import hypergraph_scatter_reference as scatter_reference
from yolo13_attn.testing import baseline_dtype, flash_rule, randomize_weights

OPS = ("area_core", "area_layer", "hg_core", "hg_layer", "area_core_train", "hg_core_train")
SCALES = ("n", "s", "l", "x")
#: scale -> (AAttn P4 channels, AAttn P5 channels, AdaHGComputation D, M), from the YOLOv13 model file
SCALE_DIMS = {"n": (64, 128, 64, 4), "s": (128, 256, 128, 8), "l": (256, 256, 256, 8), "x": (384, 384, 384, 12)}
IMAGES = {"640x640": (640, 640), "320x256": (320, 256), "1280x1280": (1280, 1280)}
HEAD_DIM = 32
METRIC_ORDER = ("ms", "speedup_vs_naive", "speedup_vs_flash", "tbps", "tflops")
METRIC_ORDER += ("floor_ms", "floor_frac", "bw_frac", "flop_frac", "peak_mem_mb")
FORMULAS = {
    "area_core": "bytes = (q + k + v + o) = 4*B*C*N*size; FLOPs = 4*B*heads*N*(N/area)*head_dim",
    "area_layer": (
        "bytes = compulsory traffic = x read + out written (2*B*C*N*size) + fused weights; "
        "FLOPs = convs 2*B*N*C*(2C + C + C + 25) + attention 4*B*N*(N/area)*C"
    ),
    "hg_core": (
        "bytes = aggregate (x, xp read; he, lse written) + scatter (xp read again, he, lse read, xn written) "
        "= (4*B*N*D + 4*B*M*D)*size + 8*B*M; FLOPs = 8*B*N*M*D (logits + weighted sum, twice)"
    ),
    "hg_layer": (
        "bytes = compulsory traffic = x read + out written (2*B*D*N*size) + weights; FLOPs = pre_head_proj + "
        "node_proj 4*B*N*D^2 + context_net 4*B*M*D^2 + edge_proj 2*B*M*D^2 + core 8*B*N*M*D"
    ),
    "area_core_train": (
        "bytes = forward (q, k, v read, o written) + backward (q, k, v, o, dO read, dQ, dK, dV written) "
        "= 12*B*C*N*size; FLOPs = forward 4 + backward 10 (S recomputed, dV, dP, dQ, dK) = 14*B*N*(N/area)*C"
    ),
    "hg_core_train": (
        "bytes = forward as hg_core + backward (x, xp, dxn read, dx, dxp written, twice over xp) "
        "= (9*B*N*D + 6*B*M*D)*size + B*N*M mask; FLOPs = forward 8*B*N*M*D + backward 16*B*N*M*D"
    ),
}


@dataclass(frozen=True)
class Shape:
    """One layer site: ``c`` = channels (area) or D (hypergraph); ``heads`` of the attention or of AdaHyperedgeGen."""

    family: str  # "area" | "hypergraph"
    site: str  # "P4" | "P5" | "HG"
    scales: tuple[str, ...]
    image: str
    h: int
    w: int
    c: int
    heads: int
    area: int = 1
    m: int = 0  # hyperedges

    @property
    def n(self) -> int:
        return self.h * self.w

    @property
    def label(self) -> str:
        dims = (
            f"C{self.c} h{self.heads} a{self.area}" if self.family == "area" else f"D{self.c} M{self.m} h{self.heads}"
        )
        return f"{','.join(self.scales)} {self.site} {self.image}: {dims} {self.h}x{self.w}"

    def as_dict(self) -> dict:
        keys = ("family", "site", "image", "h", "w", "heads", "area")
        return {k: getattr(self, k) for k in keys} | {
            "scales": list(self.scales),
            "N": self.n,
            "C_or_D": self.c,
            "M": self.m,
        }


def shapes_for(op: str, image: str, scales: list[str]) -> list[Shape]:
    """The op's sites for ``image``; a site shared by two scales (P5 of s and l) once, labelled ``s,l``."""
    ih, iw = IMAGES[image]
    merged: dict[tuple, list[str]] = {}
    for s in scales:
        p4, p5, d, m = SCALE_DIMS[s]
        if op.startswith("area"):
            keys = [("area", "P4", ih // 16, iw // 16, p4, p4 // HEAD_DIM, 4, 0)]
            keys.append(("area", "P5", ih // 32, iw // 32, p5, p5 // HEAD_DIM, 1, 0))
        else:
            keys = [("hypergraph", "HG", ih // 16, iw // 16, d, d // 16, 1, m)]
        for key in keys:
            merged.setdefault(key, []).append(s)
    out = [Shape(fam, site, tuple(who), image, *rest) for (fam, site, *rest), who in merged.items()]
    return sorted(out, key=lambda s: (s.site, SCALES.index(s.scales[0])))


# ---- ops ---------------------------------------------------------------------------------------


class Unsupported(Exception):
    """The backend declines this configuration (reasons in the message)."""


def _batch_chunks(batch: int, per_item_bytes: float, limit: float = 1e9) -> list[slice]:
    """Slices of the batch whose float64 reference intermediates stay under ``limit`` bytes."""
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


def patched(layer: torch.nn.Module, backend: str):
    """``(handle or None, "backend: kernel (compute dtype)", compute dtypes)``; ``naive`` leaves the layer unpatched."""
    if backend == "naive":
        return None, "unpatched layer (reference math)", set()
    try:
        handle = yolo13_attn.patch(layer, backend)
    except yolo13_attn.BackendUnsupportedError as err:
        raise Unsupported(str(err).split(" -- ", 1)[-1]) from None
    return handle, "; ".join(sorted(set(C.served_by(handle).values()))), C.report_compute_dtypes(handle)


@dataclass
class Runner:
    calls: list
    kernel: str
    close: object = None
    compute_dtypes: frozenset = frozenset()  #: what the backend computes in (flash: fp16 for fp32 inputs)


class Group:
    """One (op, shape, batch, dtype): input sets (``sets``), float64 references, a runner per backend."""

    op = ""
    needs_grad = False  #: the calls run autograd (training ops): not under inference_mode

    def __init__(self, shape: Shape, batch: int, dtype: torch.dtype, device: str, seed: int, l2_bytes: float | None):
        self.shape, self.batch, self.dtype, self.device = shape, batch, dtype, device
        self.esize = torch.finfo(dtype).bits // 8
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.l2_bytes = l2_bytes
        self._baselines: dict = {}

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=self.gen, device=self.device) * scale).to(self.dtype)

    def n_sets(self, bytes_per_set: float) -> int:
        """Input sets to rotate over: together larger than L2 on a GPU, two on CPU."""
        return input_sets(bytes_per_set, self.l2_bytes) if self.l2_bytes else 2

    def build_layer(self) -> torch.nn.Module:
        """The family's layer at this shape: seeded weights, BN fused, eval, float32 on the device."""
        s = self.shape
        torch.manual_seed(1000 + s.c)
        layer = AAttn(s.c, s.heads, s.area) if s.family == "area" else AdaHGComputation(s.c, s.m, s.heads, 0.1, "both")
        return fuse_bn(randomize_weights(layer, seed=s.c)).eval().to(self.device)

    def baseline(self, runner: Runner | None = None):
        """Plain PyTorch's output in the baseline dtype (that of the input, or the backend's if less precise)."""
        dtype = baseline_dtype(self.dtype, *(runner.compute_dtypes if runner else ()))
        if dtype not in self._baselines:
            with torch.no_grad():
                self._baselines[dtype] = self.compute_baseline(dtype)
        return self._baselines[dtype]

    def runner(self, backend: str) -> Runner:
        """Core ops: the kernel planned for the family's layer at this shape and dtype (patched, then undone)."""
        handle, kernel, compute = patched(self.build_layer().to(self.dtype), backend)
        if handle is not None:
            handle.undo()
        return Runner([lambda s=s: self.call(backend, *s) for s in self.sets], kernel, None, frozenset(compute))

    def check(self, out, runner: Runner) -> list[tuple]:
        """``[(output name, ErrorReport)]`` of ``out`` (set 0) under the flash rule."""
        outs, refs, bases = (x if isinstance(x, tuple) else (x,) for x in (out, self.ref64, self.baseline(runner)))
        return [(name, flash_rule(o, r, b)) for name, o, r, b in zip(self.outputs, outs, refs, bases, strict=True)]


class AreaCore(Group):
    op, outputs = "area_core", ("out",)

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        s, b = self.shape, self.batch
        self.sets = []
        for _ in range(self.n_sets(4 * b * s.c * s.n * self.esize)):
            q, k = self.randn(b, 2 * s.c, s.h, s.w).chunk(2, dim=1)  # as AAttn: halves of the qk conv's output
            self.sets.append(tuple(heads_view(t, s.heads) for t in (q, k, self.randn(b, s.c, s.h, s.w))))
        self.rotated_bytes = len(self.sets) * 3 * b * s.c * s.n * self.esize
        self.ref64 = self.compute_baseline(torch.float64)

    def compute_baseline(self, dtype):
        """The reference math (matmul + softmax) computing in ``dtype`` (float64: from float64 inputs), in batch
        chunks."""
        s = self.shape
        q, k, v = (t.double() for t in self.sets[0]) if dtype == torch.float64 else self.sets[0]
        chunks = _batch_chunks(self.batch, s.heads * s.n * (s.n // s.area) * 8 * 3)
        return torch.cat([area_attention_reference(q[i], k[i], v[i], s.area, compute_dtype=dtype) for i in chunks])

    def call(self, backend, q, k, v):
        return yolo13_attn.area_attention(q, k, v, self.shape.area, layout="bhdn", backend=backend)

    def bytes_flops(self) -> tuple[float, float]:
        s, b = self.shape, self.batch
        return 4 * b * s.c * s.n * self.esize, 4 * b * s.n * (s.n // s.area) * s.c


class HgCore(Group):
    op, outputs = "hg_core", ("he", "xn")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        s, b = self.shape, self.batch
        d, m, n = s.c, s.m, s.n
        self.scale = hypergraph_scale(d, s.heads)
        p_std = 2.0 / (self.scale * math.sqrt(d))  # prototypes giving logits of std ~2: a peaked softmax over N
        self.sets = []
        for _ in range(self.n_sets((4 * b * n * d + 4 * b * m * d) * self.esize)):
            x = self.randn(b, d, s.h, s.w).flatten(2).transpose(1, 2)  # a transposed view, as AdaHGComputation passes
            self.sets.append((x, self.randn(b, n, d), self.randn(b, m, d, scale=p_std)))
        self.rotated_bytes = len(self.sets) * (2 * b * n * d + b * m * d) * self.esize
        self.ref64 = self.compute_baseline(torch.float64)

    def compute_baseline(self, dtype):
        x, xp, protos = (t.double() for t in self.sets[0]) if dtype == torch.float64 else self.sets[0]
        he, lse = aggregate_reference(x, xp, protos, self.scale, compute_dtype=dtype)
        return he, scatter_reference(xp, protos, lse, he, self.scale, compute_dtype=dtype)

    def call(self, backend, x, xp, protos):
        he, lse = yolo13_attn.hypergraph_aggregate(x, xp, protos, self.scale, backend=backend)
        return he, yolo13_attn.hypergraph_scatter(xp, protos, lse, he, self.scale, backend=backend)

    def bytes_flops(self) -> tuple[float, float]:
        s, b = self.shape, self.batch
        return (4 * b * s.n * s.c + 4 * b * s.m * s.c) * self.esize + 8 * b * s.m, 8 * b * s.n * s.m * s.c


def _grads(outputs: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...], grads_out: tuple) -> tuple:
    """``torch.autograd.grad`` of ``sum(<output, grad_out>)`` with respect to ``inputs``."""
    return torch.autograd.grad(outputs, inputs, grads_out)


class AreaCoreTrain(AreaCore):
    """Forward + backward of the area-attention core: outputs are ``(dq, dk, dv)`` for a fixed random ``dO``."""

    op, outputs, needs_grad = "area_core_train", ("dq", "dk", "dv"), True

    def __init__(self, *a, **kw):
        Group.__init__(self, *a, **kw)
        s, b = self.shape, self.batch
        self.sets = []
        for _ in range(self.n_sets(8 * b * s.c * s.n * self.esize)):
            qk, v = self.randn(b, 2 * s.c, s.h, s.w), self.randn(b, s.c, s.h, s.w)
            self.sets.append((qk.requires_grad_(), v.requires_grad_(), self.randn(b, s.heads, HEAD_DIM, s.n)))
        self.rotated_bytes = len(self.sets) * 5 * b * s.c * s.n * self.esize
        self.ref64 = self.compute_baseline(torch.float64)

    def views(self, qk: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v as ``AAttn`` passes them: head views of the qk conv's halves and of v (made with autograd on)."""
        q, k = qk.chunk(2, dim=1)
        return tuple(heads_view(t, self.shape.heads) for t in (q, k, v))

    def compute_baseline(self, dtype):
        """The reference's input gradients computing in ``dtype`` (float64: from float64 copies)."""
        s = self.shape
        qk, v, do = self.sets[0]
        grads = []
        with torch.enable_grad():
            qkv = self.views(*(t.detach().to(dtype if dtype == torch.float64 else self.dtype) for t in (qk, v)))
            qkv = [t.detach().requires_grad_() for t in qkv]
            for i in _batch_chunks(self.batch, s.heads * s.n * (s.n // s.area) * 8 * 6):
                part = [t[i] for t in qkv]
                out = area_attention_reference(*part, s.area, compute_dtype=dtype)
                grads.append(_grads((out,), tuple(part), (do[i].to(out.dtype),)))
        return tuple(torch.cat([g[j] for g in grads]).to(self.dtype) for j in range(3))

    def call(self, backend, qk, v, do):
        q, k, v = self.views(qk, v)
        out = yolo13_attn.area_attention(q, k, v, self.shape.area, layout="bhdn", backend=backend)
        return _grads((out,), (q, k, v), (do,))

    def bytes_flops(self) -> tuple[float, float]:
        s, b = self.shape, self.batch
        return 12 * b * s.c * s.n * self.esize, 14 * b * s.n * (s.n // s.area) * s.c


class HgCoreTrain(HgCore):
    """Forward + backward of aggregation + scatter with a logit dropout mask: outputs ``(dx, dxp, dprototypes)``."""

    op, outputs, needs_grad = "hg_core_train", ("dx", "dxp", "dprototypes"), True
    dropout = 0.1  #: AdaHyperedgeGen's logit dropout in YOLOv13

    def __init__(self, *a, **kw):
        Group.__init__(self, *a, **kw)
        s, b = self.shape, self.batch
        d, m, n = s.c, s.m, s.n
        self.scale = hypergraph_scale(d, s.heads)
        p_std = 2.0 / (self.scale * math.sqrt(d))
        keep = 1.0 / (1.0 - self.dropout)
        self.sets = []
        for _ in range(self.n_sets((6 * b * n * d + 2 * b * m * d) * self.esize)):
            x = self.randn(b, d, s.h, s.w).requires_grad_()
            xp, protos = self.randn(b, n, d).requires_grad_(), self.randn(b, m, d, scale=p_std).requires_grad_()
            mask = (torch.rand(b, n, m, generator=self.gen, device=self.device) >= self.dropout) * keep
            self.sets.append((x, xp, protos, mask.to(self.dtype), self.randn(b, n, d)))
        self.rotated_bytes = len(self.sets) * (5 * b * n * d + b * m * d + b * n * m) * self.esize
        self.ref64 = self.compute_baseline(torch.float64)

    def compute_baseline(self, dtype):
        x, xp, protos, mask, dxn = self.sets[0]
        x = x.flatten(2).transpose(1, 2)
        cast = dtype if dtype == torch.float64 else self.dtype
        inputs = tuple(t.detach().to(cast).requires_grad_() for t in (x, xp, protos))
        with torch.enable_grad():
            he, lse = aggregate_reference(*inputs, self.scale, mask, compute_dtype=dtype)
            xn = scatter_reference(inputs[1], inputs[2], lse, he, self.scale, mask, compute_dtype=dtype)
            grads = _grads((xn,), inputs, (dxn.to(xn.dtype),))
        return tuple(g.to(self.dtype) for g in grads)

    def call(self, backend, x_map, xp, protos, mask, dxn):
        x = x_map.flatten(2).transpose(1, 2)  # the (B, N, D) view AdaHGComputation passes
        he, lse = yolo13_attn.hypergraph_aggregate(x, xp, protos, self.scale, mask, backend=backend)
        xn = yolo13_attn.hypergraph_scatter(xp, protos, lse, he, self.scale, mask, backend=backend)
        return _grads((xn,), (x, xp, protos), (dxn,))

    def bytes_flops(self) -> tuple[float, float]:
        s, b = self.shape, self.batch
        byts = (9 * b * s.n * s.c + 6 * b * s.m * s.c + b * s.n * s.m) * self.esize
        return byts, 24 * b * s.n * s.m * s.c


class LayerGroup(Group):
    """``area_layer`` / ``hg_layer``: the family's layer itself on input maps x ``(B, C, H, W)``."""

    outputs = ("out",)

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        s, b = self.shape, self.batch
        layer = self.build_layer()
        self.params = sum(p.numel() for p in layer.parameters())
        self.layer64 = copy.deepcopy(layer).double()
        self.layer = layer.to(self.dtype)
        self.sets = [self.randn(b, s.c, s.h, s.w) for _ in range(self.n_sets(2 * b * s.c * s.n * self.esize))]
        self.rotated_bytes = len(self.sets) * b * s.c * s.n * self.esize
        self.ref64 = self.compute_baseline(torch.float64)
        self.baseline()  # now, while the layer is unpatched

    def compute_baseline(self, dtype):
        """The unpatched layer computing in ``dtype`` (a copy unless that is the input dtype), in chunks of the
        batch."""
        s = self.shape
        layer = self.layer if dtype == self.dtype else copy.deepcopy(self.layer64).to(dtype)
        per_item = s.heads * s.n * (s.n // s.area) * 8 * 3 if s.family == "area" else 0.0  # float64 attention scores
        out = torch.cat([layer(self.sets[0][i].to(dtype)) for i in _batch_chunks(self.batch, per_item)])
        return out if dtype == torch.float64 else out.to(self.dtype)

    def runner(self, backend):
        handle, kernel, compute = patched(self.layer, backend)
        layer = self.layer
        return Runner([lambda x=x: layer(x) for x in self.sets], kernel, handle and handle.undo, frozenset(compute))

    def bytes_flops(self) -> tuple[float, float]:
        s, b, n, c = self.shape, self.batch, self.shape.n, self.shape.c
        byts = 2 * b * c * n * self.esize + self.params * self.esize
        if s.family == "area":
            return byts, 2 * b * n * c * (4 * c + 25) + 4 * b * n * (n // s.area) * c
        return byts, 4 * b * n * c * c + 2 * b * (2 * c) * (s.m * c) + 2 * b * s.m * c * c + 8 * b * n * s.m * c


class AreaLayer(LayerGroup):
    op = "area_layer"


class HgLayer(LayerGroup):
    op = "hg_layer"


GROUPS = {"area_core": AreaCore, "area_layer": AreaLayer, "hg_core": HgCore, "hg_layer": HgLayer}
GROUPS |= {"area_core_train": AreaCoreTrain, "hg_core_train": HgCoreTrain}


# ---- one configuration -------------------------------------------------------------------------


def check_record(reports: list[tuple], dtype: torch.dtype) -> dict:
    """The check's JSON: pass, the output closest to its bound, every output's errors."""
    worst_name, worst = max(reports, key=lambda nr: nr[1].candidate / nr[1].bound if nr[1].bound > 0 else math.inf)
    outputs = {n: {"err": r.candidate, "baseline_err": r.baseline, "bound": r.bound, "pass": r.ok} for n, r in reports}
    errors = {"err": worst.candidate, "bound": worst.bound, "baseline_err": worst.baseline, "worst_output": worst_name}
    return {"pass": all(r.ok for _, r in reports), "baseline_dtype": C.dtype_name(dtype), **errors, "outputs": outputs}


FLASH = "flash"


def flash_variant(label: str) -> tuple[str, str | None]:
    """``"flash:fa4"`` -> ``("flash", "fa4")`` (the flash backend forced to one implementation);
    any other label -> ``(label, None)``."""
    backend, _, impl = label.partition(":")
    return (backend, impl) if backend == FLASH and impl else (label, None)


def flash_variants(backends: list[str], skipped: dict[str, str], impls: list[str]) -> list[str]:
    """``backends`` with a ``flash:<impl>`` label after ``flash`` per implementation (skipped with flash)."""
    labels = [f"{FLASH}:{impl}" for impl in impls]
    if FLASH in skipped:
        skipped.update(dict.fromkeys(labels, skipped[FLASH]))
        return backends
    if FLASH not in backends:
        return backends + labels
    at = backends.index(FLASH) + 1
    return backends[:at] + labels + backends[at:]


def flash_impl_of(group: Group) -> str:
    """The implementation the flash backend runs for the group's (inference) calls: ``fa2``/``fa4``/``torch``."""
    device = torch.device(group.device, torch.cuda.current_device()) if group.device == "cuda" else group.device
    choice = flash_impls.choice_for(device, HEAD_DIM if group.shape.family == "area" else group.shape.c, False)
    return choice.impl.key if choice.impl else "none"


def run_config(group: Group, label: str, args, device: str) -> dict:
    """Check one backend on the group's set 0, then time it: the record's status, check and timing.
    ``label`` is a backend name, or ``flash:<impl>`` for the flash backend forced to one implementation."""
    backend, impl = flash_variant(label)
    with flash_impls.forced(impl):
        rec = _run_config(group, backend, args, device)
        if backend == FLASH:
            rec["flash_impl"] = flash_impl_of(group)
    return rec


def _run_config(group: Group, backend: str, args, device: str) -> dict:
    rec = {"status": "", "reason": "", "kernel": "", "check": {}, "timing": None, "peak_mem_mb": None}
    runner = None
    try:
        runner = group.runner(backend)
        rec["kernel"] = runner.kernel
        with torch.inference_mode(not group.needs_grad):
            if device == "cuda":  # best effort: a NaN block left in the allocator shows unwritten output elements
                torch.full(
                    (group.batch * group.shape.c * group.shape.n * group.esize // 4 + 1,), math.nan, device=device
                )
            out, rec["peak_mem_mb"] = measure_peak(runner.calls[0], device)
            chk = rec["check"] = check_record(
                group.check(out, runner), baseline_dtype(group.dtype, *runner.compute_dtypes)
            )
            del out
            budget_s = 3.0 if device == "cuda" else args.cpu_time_per_config
            graph = device == "cuda" and not args.no_graph
            rec["timing"] = time_calls(
                runner.calls, device, graph=graph, samples=args.samples, max_total_s=budget_s
            ).as_dict()
        rec["status"] = "ok" if chk["pass"] else "check-failed"
        if not chk["pass"]:
            rec["reason"] = f"flash rule: {chk['worst_output']} max error {chk['err']:.3e} > bound {chk['bound']:.3e}"
    except (Unsupported, yolo13_attn.BackendUnsupportedError) as err:
        rec.update(status="unsupported", reason=str(err).split(" -- ", 1)[-1])
    except torch.cuda.OutOfMemoryError as err:
        rec.update(status="oom", reason=str(err).splitlines()[0][:300])
    except Exception as err:  # noqa: BLE001 - a broken configuration is a result: recorded, the sweep goes on
        rec.update(status="error", reason=f"{type(err).__name__}: {err}"[:500])
        if args.verbose:
            traceback.print_exc()
    finally:
        if runner is not None and runner.close is not None:
            runner.close()
    return rec


def derived_metrics(rec: dict, peaks: dict | None) -> None:
    """Throughput and floor metrics (a throughput's p20/p80 come from the time's p80/p20)."""
    t, metrics = rec["timing"], rec["metrics"]
    times = (t["median"], t["p80"], t["p20"])
    metrics["ms"] = (t["median"], t["p20"], t["p80"])
    metrics["tbps"] = tuple(rec["bytes"] / (x * 1e-3) / 1e12 for x in times)
    metrics["tflops"] = tuple(rec["flops"] / (x * 1e-3) / 1e12 for x in times)
    if peaks:
        bw, flops = peaks["bw_Bps"], peaks["flops"][rec["dtype"]]
        floor_ms = max(rec["bytes"] / bw, rec["flops"] / flops) * 1e3
        metrics["floor_ms"] = (floor_ms, None, None)
        metrics["floor_frac"] = tuple(floor_ms / x for x in times)
        metrics["bw_frac"] = tuple(v / (bw / 1e12) for v in metrics["tbps"])
        metrics["flop_frac"] = tuple(v / (flops / 1e12) for v in metrics["tflops"])
    if rec["peak_mem_mb"] is not None and math.isfinite(rec["peak_mem_mb"]):
        metrics["peak_mem_mb"] = (rec["peak_mem_mb"], None, None)


def _group_key(r: dict) -> tuple:
    return (r["op"], r["shape"], r["dtype"], r["batch"])


def add_speedups(records: list[dict]) -> None:
    """``speedup_vs_naive`` / ``speedup_vs_flash`` = baseline median / this median (spread: over this p80 / p20)."""
    medians = defaultdict(dict)
    for r in records:
        if r.get("timing"):
            medians[_group_key(r)][r["backend"]] = r["timing"]["median"]
    for r in records:
        base_ms, t = medians[_group_key(r)], r.get("timing")
        for base in ("naive", "flash"):
            if t and base in base_ms:
                r["metrics"][f"speedup_vs_{base}"] = tuple(base_ms[base] / t[q] for q in ("median", "p80", "p20"))
                r[f"speedup_vs_{base}"] = base_ms[base] / t["median"]


def progress_line(rec: dict, done: int, total: int, naive_ms: float | None) -> str:
    line = (
        f"[{done:>4}/{total}] {rec['op']:<10} {rec['shape']:<44} {rec['dtype']} B{rec['batch']:<3} {rec['backend']:<6}"
    )
    if not rec["timing"]:
        return f"{line} {rec['status']}: {rec['reason'][:160]}"
    t, m, chk = rec["timing"], rec["metrics"], rec["check"]
    line += f" {O.fmt_ms(t['median']):>8} ms [{O.fmt_ms(t['p20'])}, {O.fmt_ms(t['p80'])}]"
    line += f" {naive_ms / t['median']:5.2f}x vs naive" if naive_ms and rec["backend"] != "naive" else ""
    line += f" {m['tbps'][0]:6.3f} TB/s {m['tflops'][0]:7.2f} TFLOP/s"
    line += f" {100 * m['floor_frac'][0]:4.0f}% of floor" if "floor_frac" in m else ""
    return line + f" check {'ok' if chk['pass'] else 'FAIL'} ({chk['err']:.1e} vs bound {chk['bound']:.1e})"


# ---- outputs -----------------------------------------------------------------------------------


def peaks_of(data: dict) -> dict | None:
    """The run's peak figures (results of older versions kept fixed H100 figures under ``anchors``)."""
    if "anchors" not in data:
        return data.get("peaks")
    a = data["anchors"]
    how = (
        "fixed H100 figures of the script version that ran: copy and bf16 matrix product measured, "
        "fp32 the datasheet peak"
    )
    return {"bw_Bps": a["peak_bw_Bps"], "flops": a["peak_flops"], "l2_bytes": a["l2_bytes"], "how": how}


def csv_rows(data: dict) -> list[dict]:
    rows = []
    for r in data["configs"]:
        if r["status"] not in ("unsupported", "budget"):
            items = O.check_items(r.get("check")) + [(k, r[k]) for k in ("bytes", "flops") if r.get(k) is not None]
            items += [(name, *r["metrics"][name]) for name in METRIC_ORDER if name in r["metrics"]]
            rows += O.long_rows(data, (r["op"], r["backend"], r["shape"], r["dtype"], r["batch"]), items)
    return rows


def _cell(r: dict | None, speedup: bool = True) -> str:
    """``median ms (speedup vs naive)`` + `` FAIL`` when the check failed; else ``n/s``, ``not run``, ``error``,
    ``oom``."""
    if r is None:
        return ""
    if not r.get("timing"):
        return {"unsupported": "n/s", "budget": "not run"}.get(r["status"], r["status"])
    sp = r.get("speedup_vs_naive") if speedup and r["backend"] != "naive" else None
    cell = O.fmt_ms(r["timing"]["median"]) + (f" ({O.fmt_x(sp)})" if sp is not None else "")
    return cell + (" FAIL" if r["status"] == "check-failed" else "")


def _sort_key(r: dict) -> tuple:
    info = r["shape_info"]
    order = (OPS.index(r["op"]), list(IMAGES).index(info["image"]), info["site"], SCALES.index(info["scales"][0]))
    return (*order, list(C.DTYPES).index(r["dtype"]), r["batch"])


CELLS_NOTE = (
    "Cells: median ms (speedup vs naive). `FAIL`: failed the flash rule (timed, not valid); `n/s`: the backend "
    "declines the shape/dtype; naive = reference math (for layers: the unpatched layer)."
)
FLOOR_NOTE = "`%floor` = max(bytes / BW, FLOPs / peak) / measured time. Formulas: bench/README.md."
BEST_HEAD = ["op", "shape", "dtype", "B", "naive ms", "flash ms", "best", "best ms", "vs naive", "vs flash", "TB/s"]


def _best_row(key: tuple, by: dict, peaks: dict | None) -> list | None:
    """The headline row of one (op, shape, dtype, batch): the fastest backend that passed its check."""
    valid = [r for r in by.values() if r["status"] == "ok" and r.get("timing")]
    if not valid:
        return None
    best = min(valid, key=lambda r: r["timing"]["median"])
    m = best["metrics"]
    row = [
        *key,
        _cell(by.get("naive")),
        _cell(by.get("flash"), False),
        best["backend"],
        O.fmt_ms(best["timing"]["median"]),
    ]
    row += [O.fmt_x(best.get("speedup_vs_naive")), O.fmt_x(best.get("speedup_vs_flash")), f"{m['tbps'][0]:.3g}"]
    return row + [f"{m['tflops'][0]:.3g}"] + ([f"{100 * m['floor_frac'][0]:.0f}%"] if peaks else [])


def markdown(data: dict) -> str:
    records, backends, peaks = data["configs"], data["backends_run"], peaks_of(data)
    counts = defaultdict(int)
    for r in records:
        counts[r["status"]] += 1
    title = "Kernel sweep" + (
        "" if data["device_kind"] == "cuda" else " - CPU SMOKE RUN (not a benchmark: tiny shapes, fp32)"
    )
    tally = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    extra = {
        "date": data["date"],
        "timing": data["timing_note"],
        "configurations": f"{len(records)} ({tally}; budget = not run)",
    }
    lines = O.header_lines(title, data["environment"], extra)
    if peaks:
        flops = ", ".join(f"{v / 1e12:.0f} TFLOP/s {k}" for k, v in peaks["flops"].items())
        lines += [f"Floors: {peaks['bw_Bps'] / 1e12:.2f} TB/s, {flops} ({peaks['how']}). {FLOOR_NOTE}", ""]
    lines += [CELLS_NOTE, ""] + [f"- backend `{name}` skipped: {why}" for name, why in data["skipped_backends"].items()]
    ran = sorted({(r["backend"], r["flash_impl"]) for r in records if r.get("flash_impl") and r.get("timing")})
    lines += [f"- backend `{name}` ran the `{impl}` implementation" for name, impl in ran]
    groups = defaultdict(dict)
    for r in sorted(records, key=_sort_key):
        groups[_group_key(r)][r["backend"]] = r
    rows = [row for key, by in groups.items() if (row := _best_row(key, by, peaks))]
    head = BEST_HEAD + ["TFLOP/s"] + ["%floor"] * bool(peaks)
    lines += ["", "## Best valid backend per configuration", "", O.md_table(head, rows), ""]
    for op in data["ops"]:
        rows = [[*key[1:], *(_cell(by.get(b)) for b in backends)] for key, by in groups.items() if key[0] == op]
        lines += [f"## {op}", "", O.md_table(["shape", "dtype", "B", *backends], rows), ""] if rows else []
    bad = [r for r in records if r["status"] in ("error", "oom", "check-failed")]
    problems = [f"- {' '.join(map(str, _group_key(r)))} {r['backend']}: {r['status']}: {r['reason']}" for r in bad]
    declined = sorted({f"- {r['op']} / {r['backend']}: {r['reason']}" for r in records if r["status"] == "unsupported"})
    for heading, items in (("Check failures and errors", problems), ("Declined (n/s)", declined)):
        lines += [f"## {heading}", "", *items, ""] if items else []
    formulas = [f"- {op}: {f}" for op, f in data["formulas"].items()]
    return "\n".join(lines + ["## Byte and FLOP formulas", "", *formulas, ""])


def _panel(data: dict, op: str, dtype: str) -> Panel | None:
    """Speedup vs naive of each backend per shape, at the largest batch timed for (op, dtype)."""
    recs = [r for r in data["configs"] if r["op"] == op and r["dtype"] == dtype and r["status"] != "budget"]
    if not any(r.get("timing") for r in recs):
        return None
    batch = max(r["batch"] for r in recs if r.get("timing"))
    recs = sorted((r for r in recs if r["batch"] == batch), key=_sort_key)
    shapes = list(dict.fromkeys(r["shape"] for r in recs))
    by = {(r["shape"], r["backend"]): r for r in recs}
    backends = [b for b in data["backends_run"] if b != "naive" and any(k[1] == b for k in by)]
    cells = {b: [by.get((s, b), {}) for s in shapes] for b in backends}
    speedups = {b: [r.get("speedup_vs_naive") for r in rs] for b, rs in cells.items()}
    missing = {b: ["" if not r or r.get("timing") else _cell(r) for r in rs] for b, rs in cells.items()}
    failed = {b: [r.get("status") == "check-failed" for r in rs] for b, rs in cells.items()}
    notes = {
        r["backend"]: f"computes in {r['check']['baseline_dtype']}"
        for r in recs
        if r.get("check", {}).get("baseline_dtype", dtype) != dtype
    }
    labels = [s.split(":")[0].replace("640x640", "640").replace("1280x1280", "1280") for s in shapes]
    return Panel(f"{op}, {dtype}, batch {batch}", labels, speedups, missing, failed, notes)


def plots(data: dict, out_dir: Path) -> list[str]:
    """One PNG per op: a panel per dtype."""
    kind = "CUDA-graph medians" if data["device_kind"] == "cuda" else "CPU SMOKE RUN, not a benchmark"
    written = []
    for op in data["ops"]:
        panels = [p for dtype in data["dtypes"] if (p := _panel(data, op, dtype))]
        title = f"{op}: speedup of each backend over the reference math ({kind}), {data['device']}"
        written.append(speedup_figure(out_dir / f"kernel_sweep_{op}.png", title, panels, baseline="naive (reference)"))
    return [name for name in written if name]


def write_outputs(data: dict, out_dir: Path) -> list[str]:
    return O.write_all(data, out_dir, "kernel_sweep", csv_rows(data), markdown, plots)


def replot(out_dir: Path) -> None:
    print(f"re-rendered {', '.join(write_outputs(O.read_json(out_dir / 'kernel_sweep.json'), out_dir))} in {out_dir}")


# ---- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ops", help=f"comma list of {','.join(OPS)}")
    p.add_argument("--scales", help="comma list of n,s,l,x")
    p.add_argument("--batches", help="comma list (default 1,8,16)")
    p.add_argument("--dtypes", help="comma list of fp16,bf16,fp32")
    p.add_argument("--images", help=f"comma list of {','.join(IMAGES)} (H x W)")
    p.add_argument("--quick", action="store_true", help="GPU: scales n,x; 640x640; batches 1,16; fp16")
    p.add_argument("--no-graph", action="store_true", help="time eager launches instead of CUDA-graph replays")
    p.add_argument("--samples", type=int, default=15, help="timing samples per configuration")
    p.add_argument("--cpu-time-per-config", type=float, default=0.15, help="seconds of timing per configuration on CPU")
    p.add_argument(
        "--flash-impls",
        help=f"comma list of {','.join(flash_impls.IMPLS)}: also run the flash backend forced to each (flash:<impl>)",
    )
    return p


def plan_of(args, cpu_mode: bool) -> list[tuple]:
    """(op, shape, batch, dtype) groups, most important first so that a budget cut drops the tail."""
    defaults = (
        (["n"], "1", ["fp32"], ["320x256"]) if cpu_mode else (list(SCALES), "1,8,16", list(C.DTYPES), list(IMAGES))
    )
    if args.quick and not cpu_mode:
        defaults = (["n", "x"], "1,16", ["fp16"], ["640x640"])
    ops = C.parse_list(args.ops, OPS, "op") or list(OPS)
    scales = C.parse_list(args.scales, SCALES, "scale") or defaults[0]
    batches = [int(b) for b in C.parse_list(args.batches or defaults[1])]
    dtypes = C.parse_list(args.dtypes, list(C.DTYPES), "dtype") or defaults[2]
    images = C.parse_list(args.images, list(IMAGES), "image") or defaults[3]
    shapes = {(op, image): shapes_for(op, image, scales) for op in ops for image in images}
    return [
        (op, s, b, dt) for image in images for dt in dtypes for b in batches for op in ops for s in shapes[(op, image)]
    ]


def run_plan(
    plan: list[tuple], backends: list[str], args, device: str, peaks: dict | None, budget, records: list
) -> None:
    """Every configuration of ``plan`` into ``records`` (filled as it goes: an interrupted run keeps what ran)."""
    done, total = 0, len(plan) * len(backends)
    print(f"{len(plan)} (op, shape, batch, dtype) groups x {len(backends)} backends = {total} configurations")
    for op, shape, batch, dt in plan:
        base = {"op": op, "shape": shape.label, "shape_info": shape.as_dict(), "dtype": dt, "batch": batch}
        group, done = None, done + len(backends)
        try:
            if not budget.exhausted():
                with torch.no_grad():
                    group = GROUPS[op](shape, batch, C.DTYPES[dt], device, args.seed, peaks and peaks["l2_bytes"])
        except Exception as err:  # noqa: BLE001 - recorded for every backend of the group, the sweep goes on
            status = "oom" if isinstance(err, torch.cuda.OutOfMemoryError) else "error"
            reason = f"building inputs/references failed: {type(err).__name__}: {str(err)[:300]}"
            records += [{**base, "backend": b, "status": status, "reason": reason, "metrics": {}} for b in backends]
            print(f"  {op} {shape.label} {dt} B{batch}: {reason}")
            C.free_memory()
            continue
        if group is not None:
            byts, flops = group.bytes_flops()
            base.update(bytes=byts, flops=flops, rotated_input_bytes=group.rotated_bytes, input_sets=len(group.sets))
        naive_ms = None
        for i, backend in enumerate(backends):
            rec = {**base, "backend": backend, "metrics": {}}
            records.append(rec)
            if group is None or budget.exhausted():
                rec.update(status="budget", reason="time budget exhausted")
                continue
            t0 = time.perf_counter()
            rec.update(run_config(group, backend, args, device))
            if rec["timing"]:
                derived_metrics(rec, peaks)
                naive_ms = rec["timing"]["median"] if backend == "naive" else naive_ms
            line = progress_line(rec, done - len(backends) + i + 1, total, naive_ms)
            print(f"{line} [{time.perf_counter() - t0:.1f}s]", flush=True)
        del group
        C.free_memory()


def main(argv=None) -> int:
    args, device = C.start_run(build_parser(), argv, replot)
    if device is None:
        return 0
    cpu_mode = device == "cpu"
    plan = plan_of(args, cpu_mode)
    backends, skipped = C.choose_backends(C.parse_list(args.backends), cpu_mode)
    impls = C.parse_list(args.flash_impls, list(flash_impls.IMPLS), "flash implementation") or []
    backends = flash_variants(backends, skipped, impls)
    out_dir = args.out or C.default_out_dir(cpu_mode)
    env = C.environment()
    peaks = None
    if cpu_mode:
        print("CPU SMOKE RUN: no GPU in use - tiny shapes, fp32, time.perf_counter on a shared CPU; not a benchmark.")
    else:
        from peaks import measure_peaks

        peaks = measure_peaks()
        flops = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in peaks["flops"].items())
        print(f"peaks: {peaks['bw_Bps'] / 1e12:.2f} TB/s copy, {flops}, L2 {peaks['l2_bytes'] / 1e6:.0f} MB")
    C.announce(env, cpu_mode, out_dir, backends, skipped)
    budget, records = C.Budget(args.budget_s), []
    try:
        run_plan(plan, backends, args, device, peaks, budget, records)
    except KeyboardInterrupt:
        print("interrupted: writing the configurations that ran", flush=True)
    if args.append:
        records = O.merge_previous(out_dir / "kernel_sweep.json", records, lambda r: (*_group_key(r), r["backend"]))
    add_speedups(records)
    data = C.results_header("kernel_sweep", "YOLOv13 attention kernel sweep", device, env, skipped, args, budget)
    ops = C.ordered([r["op"] for r in records], OPS)
    data["backends_run"] = C.ordered([r["backend"] for r in records], C.BACKEND_ORDER)
    data["ops"], data["formulas"] = ops, {op: FORMULAS[op] for op in ops}
    data["batches"] = sorted({r["batch"] for r in records})
    data["dtypes"] = C.ordered([r["dtype"] for r in records], list(C.DTYPES))
    data["images"] = C.ordered([r["shape_info"]["image"] for r in records], list(IMAGES))
    data["peaks"], data["configs"] = peaks, records
    data["timing_note"] = (
        "time.perf_counter per call (CPU smoke run)" if cpu_mode else "see each configuration's timing.method"
    )
    files = write_outputs(data, out_dir)
    print(f"\nwrote {', '.join(files)} to {out_dir} in {budget.elapsed():.0f} s\n")
    from summarize import kernel_summary

    print(kernel_summary(data, None, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
