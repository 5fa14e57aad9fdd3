"""One-shot GPU check of the ``triton`` backend: equivalence tests, then a short timing table.

    export PYTHONPATH=$PWD; python3 bench/triton_gpu_check.py [--no-tests] [--sweep | --area-sweep] [--compile] [--bare-package]

``--bare-package`` skips ``yolo13_attn/__init__.py`` (it imports Ultralytics, absent on the GPU box).

Writes ``$OUT/triton_gpu.log`` (pytest) and ``$OUT/triton_bench.txt`` (timings) when ``$OUT`` is set.
Timings: ``triton.testing.do_bench_cudagraph`` (median, CUDA-graph replay, no launch overhead);
each timed call cycles over 3 input sets (> 50 MB L2 in total for the big cases) and reports
the time per call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys

import torch

OUT = os.environ.get("OUT", ".")

# ``--bare-package``: import ``yolo13_attn`` sub-packages without running ``yolo13_attn/__init__.py``
# (which installs YOLOv13 into Ultralytics - not present on the GPU box). Only the ops are needed here.
BARE_BOOTSTRAP = (
    "import os, sys, types; _p = types.ModuleType('yolo13_attn'); "
    "_p.__path__ = [os.path.abspath('yolo13_attn')]; sys.modules['yolo13_attn'] = _p"
)
LINES: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)
    with open(os.path.join(OUT, "triton_bench.txt"), "a") as f:  # incremental: survives a timeout
        f.write(line + "\n")


COMPILE = False


TEST_GROUPS = {
    "area": "area",
    "hg-forward": "hypergraph_forward",
    "hg-grad-half": "hypergraph_gradient and not float32",
    "rest": "(hypergraph_gradient and float32) or scatter_gradient or hypergraph_backward_launchers or opcheck "
            "or torch_compile or cuda_graph",
}


def run_tests(timeout: int, bare: bool) -> None:
    """The equivalence tests in 4 concurrent pytest processes (Triton compiles on the CPU), one log."""
    import time

    log = os.path.join(OUT, "triton_gpu.log")
    procs = {}
    start = time.time()
    for name, expr in TEST_GROUPS.items():
        args = ["-q", "-rs", "-p", "no:cacheprovider", "--durations=5", "tests/test_triton_equivalence.py", "-k", expr]
        cmd = [sys.executable, "-m", "pytest", *args]
        if bare:
            cmd = [sys.executable, "-c", f"{BARE_BOOTSTRAP}; import pytest; sys.exit(pytest.main({args!r}))"]
        f = open(os.path.join(OUT, f"pytest_{name}.log"), "w")
        procs[name] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), f, expr)
    codes = {}
    for name, (proc, f, _) in procs.items():
        try:
            codes[name] = proc.wait(timeout=max(1, timeout - (time.time() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = "timeout"
        f.close()
    with open(log, "w") as out:
        out.write(f"# tests/test_triton_equivalence.py on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}, "
                  f"triton {__import__('triton').__version__}, {datetime.date.today()}; "
                  f"4 concurrent pytest processes (-k groups), {time.time() - start:.0f} s\n")
        for name, (_, _, expr) in procs.items():
            out.write(f"\n# ---- group {name}: pytest -k {expr!r} -> exit code {codes[name]}\n")
            out.write(open(os.path.join(OUT, f"pytest_{name}.log")).read())
    emit(f"pytest exit codes {codes} ({time.time() - start:.0f} s); summary lines:")
    for line in open(log).read().splitlines():
        if line.startswith("# ----") or " passed" in line or " failed" in line or "FAILED" in line or "Error" in line:
            emit("  " + line[:300])


def bench(fn, sets: int = 3) -> float:
    """Median ms per call of ``fn(i)`` cycling over ``sets`` input sets, under CUDA-graph replay."""
    from triton.testing import do_bench_cudagraph

    def many():
        for i in range(sets):
            fn(i)

    many()
    torch.cuda.synchronize()
    return do_bench_cudagraph(many, rep=40, return_mode="median") / sets


def area_inputs(b, heads, hd, h, w, dtype, sets=3, grad=False):
    out = []
    for _ in range(sets):
        base = torch.randn(b, 3 * heads * hd, h, w, device="cuda", dtype=dtype).requires_grad_(grad)
        c = heads * hd
        out.append((base, *(base[:, i * c:(i + 1) * c].unflatten(1, (heads, hd)).flatten(3) for i in range(3))))
    return out


def time_area(sweep: bool) -> None:
    from yolo13_attn import triton_ops
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    emit("\n## area attention forward, fp16 (ms, median, CUDA graph)")
    emit("| case | B | heads | N | area | triton | core FA2 (sdpa flash, ready tensors) | FLOP/bytes floor |")
    emit("|---|---|---|---|---|---|---|---|")
    cases = [("x P4", 16, 12, 40, 40, 4), ("x P4", 1, 12, 40, 40, 4), ("x P4", 8, 12, 40, 40, 4),
             ("n P4", 16, 2, 40, 40, 4), ("x P5", 16, 12, 20, 20, 1), ("x P4 1280", 4, 12, 80, 80, 4)]
    for name, b, heads, h, w, area in cases:
        hd, n = 32, h * w
        sets = area_inputs(b, heads, hd, h, w, torch.float16)
        outs = [torch.empty(b, heads, hd, n, device="cuda", dtype=torch.float16) for _ in sets]
        lses = [torch.empty(b, heads, n, device="cuda") for _ in sets]
        t = bench(lambda i: triton_ops.area_attention_forward(*sets[i][1:], area, hd ** -0.5, out=outs[i], lse=lses[i]))
        ready = [tuple(x.unflatten(3, (area, n // area)).permute(0, 3, 1, 4, 2).reshape(b * area, heads, n // area, hd).contiguous()
                       for x in s[1:]) for s in sets]
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            t_fa = bench(lambda i: F.scaled_dot_product_attention(*ready[i]))
        flop = 4 * b * heads * n * (n // area) * hd
        byts = 4 * b * heads * hd * n * 2
        floor = max(byts / 2.98e12, flop / 790e12) * 1e3
        emit(f"| {name} | {b} | {heads} | {n} | {area} | {t:.4f} | {t_fa:.4f} | {flop / 1e9:.1f} GFLOP, {byts / 1e6:.1f} MB, floor {floor:.4f} |")

    emit("\n## area attention forward + backward, fp16, x P4 B=16 (ms)")
    b, heads, hd, h, w, area = 16, 12, 32, 40, 40, 4
    n = h * w
    sets = area_inputs(b, heads, hd, h, w, torch.float16, grad=False)
    do = torch.randn(b, heads, hd, n, device="cuda", dtype=torch.float16)
    fw = [triton_ops.area_attention_forward(*s[1:], area, hd ** -0.5) for s in sets]
    t_bwd = bench(lambda i: triton_ops.area_attention_backward(do, *sets[i][1:], *fw[i], area, hd ** -0.5))
    ready = [tuple(x.unflatten(3, (area, n // area)).permute(0, 3, 1, 4, 2).reshape(b * area, heads, n // area, hd)
                   .contiguous().requires_grad_(True) for x in s[1:]) for s in sets]
    dor = do.unflatten(3, (area, n // area)).permute(0, 3, 1, 4, 2).reshape(b * area, heads, n // area, hd).contiguous()

    def fa_fb(i):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            o = F.scaled_dot_product_attention(*ready[i])
        return torch.autograd.grad(o, ready[i], dor)

    t_fa_fb = bench(fa_fb)
    emit(f"triton backward alone {t_bwd:.4f} ms; FA2 (sdpa flash) forward+backward {t_fa_fb:.4f} ms")

    def forward_config_sweep(configs):
        emit("\n## area forward config sweep, x P4 B=16 fp16 (block_m, block_n, warps, stages) -> ms")
        sets = area_inputs(16, 12, 32, 40, 40, torch.float16)
        outs = [torch.empty(16, 12, 32, 1600, device="cuda", dtype=torch.float16) for _ in sets]
        lses = [torch.empty(16, 12, 1600, device="cuda") for _ in sets]
        for bm, bn, nw, ns in configs:
            cfg = dict(block_m=bm, block_n=bn, num_warps=nw, num_stages=ns)
            try:
                t = bench(lambda i: triton_ops.area_attention_forward(*sets[i][1:], 4, 32 ** -0.5, out=outs[i],
                                                                      lse=lses[i], config=cfg))
                emit(f"  {bm:4d} {bn:4d} {nw} {ns}: {t:.4f}")
            except Exception as exc:  # noqa: BLE001
                emit(f"  {bm:4d} {bn:4d} {nw} {ns}: failed {type(exc).__name__}: {str(exc)[:100]}")
        return sets

    if sweep == "area":
        forward_config_sweep([(64, 32, 4, 3), (64, 32, 4, 4), (64, 64, 4, 3), (32, 32, 4, 3), (128, 32, 8, 3), (64, 16, 4, 3)])
    if sweep is True:
        sets = forward_config_sweep([(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 4, 2), (128, 64, 8, 2),
                                     (128, 32, 4, 3), (128, 128, 8, 2), (64, 128, 4, 2), (32, 64, 2, 3), (128, 64, 8, 3)])
        emit("\n## area backward config sweep (block_m = block_n, warps, stages) -> ms")
        fw = [triton_ops.area_attention_forward(*s[1:], 4, 32 ** -0.5) for s in sets]
        for bm, bn, nw, ns in [(64, 64, 4, 2), (32, 32, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2)]:
            cfg = dict(block_m=bm, block_n=bn, num_warps=nw, num_stages=ns)
            try:
                t = bench(lambda i: triton_ops.area_attention_backward(do, *sets[i][1:], *fw[i], 4, 32 ** -0.5, config=cfg))
                emit(f"  {bm:4d} {bn:4d} {nw} {ns}: {t:.4f}")
            except Exception as exc:  # noqa: BLE001
                emit(f"  {bm:4d} {bn:4d} {nw} {ns}: failed {type(exc).__name__}: {str(exc)[:100]}")


def hg_inputs(b, n, d, m, dtype, sets=3):
    out = []
    for _ in range(sets):
        x_nchw = torch.randn(b, d, n, device="cuda", dtype=dtype)
        x = x_nchw.transpose(1, 2)  # (B, N, D) token view of an NCHW feature map, as AdaHGComputation
        xp = torch.randn(b, n, d, device="cuda", dtype=dtype)
        p = torch.randn(b, m, d, device="cuda", dtype=dtype)
        out.append((x, xp, p))
    return out


def time_hypergraph(sweep: bool) -> None:
    from yolo13_attn import triton_ops
    from yolo13_attn.ops.reference import hypergraph_aggregate_reference, hypergraph_scale, hypergraph_scatter_reference

    emit("\n## hypergraph ops, fp16 (ms, median, CUDA graph); x is the strided token view of NCHW")
    emit("| case | B | N | D | M | aggregate | scatter | agg+scatter | reference agg+scatter | bytes floor (agg / scatter) |")
    emit("|---|---|---|---|---|---|---|---|---|---|")
    cases = [("x", 16, 1600, 384, 12), ("x", 1, 1600, 384, 12), ("l", 16, 1600, 256, 8), ("n", 16, 1600, 64, 4),
             ("x 1280", 4, 6400, 384, 12)]
    for name, b, n, d, m in cases:
        scale = hypergraph_scale(d, 8)
        sets = hg_inputs(b, n, d, m, torch.float16)
        res = [triton_ops.aggregate_forward(*s, scale) for s in sets]
        t_agg = bench(lambda i: triton_ops.aggregate_forward(*sets[i], scale, he=res[i][0], lse=res[i][1]))
        outs = [torch.empty(b, n, d, device="cuda", dtype=torch.float16) for _ in sets]
        t_sc = bench(lambda i: triton_ops.scatter_forward(sets[i][1], sets[i][2], res[i][1], res[i][0], scale, out=outs[i]))

        def both(i):
            he, lse = triton_ops.aggregate_forward(*sets[i], scale)
            return triton_ops.scatter_forward(sets[i][1], sets[i][2], lse, he, scale)

        def ref(i):
            he, lse = hypergraph_aggregate_reference(*sets[i], scale)
            return hypergraph_scatter_reference(sets[i][1], sets[i][2], lse, he, scale)

        t_both, t_ref = bench(both), bench(ref)
        mb = b * n * d * 2
        emit(f"| {name} | {b} | {n} | {d} | {m} | {t_agg:.4f} | {t_sc:.4f} | {t_both:.4f} | {t_ref:.4f} | "
             f"{2 * mb / 1e6:.1f} MB {2 * mb / 2.98e9:.4f} / {2 * mb / 1e6:.1f} MB {2 * mb / 2.98e9:.4f} |")

    emit("\n## AdaHGComputation-like layer (x: B=16, D=384, M=12, N=1600, fp16), ms")
    b, n, d, m = 16, 1600, 384, 12
    layer_time(b, n, d, m)

    emit("\n## hypergraph backward, x B=16 (ms): aggregate_backward / scatter_backward")
    b, n, d, m = 16, 1600, 384, 12
    scale = hypergraph_scale(d, 8)
    sets = hg_inputs(b, n, d, m, torch.float16)
    res = [triton_ops.aggregate_forward(*s, scale) for s in sets]
    dhe = torch.randn(b, m, d, device="cuda", dtype=torch.float16)
    dlse = torch.randn(b, m, device="cuda")
    dxn = torch.randn(b, n, d, device="cuda", dtype=torch.float16)
    t_ab = bench(lambda i: triton_ops.aggregate_backward(dhe, dlse, *sets[i], *res[i], scale))
    t_sb = bench(lambda i: triton_ops.scatter_backward(dxn, sets[i][1], sets[i][2], res[i][1], res[i][0], scale))
    emit(f"aggregate_backward {t_ab:.4f}  scatter_backward {t_sb:.4f}")

    if sweep is True:
        emit("\n## aggregate sweep, x B=16 (block_n, tokens_per_split, warps, stages) -> ms")
        for bn, tps, nw, ns in [(32, 128, 8, 2), (32, 256, 8, 2), (32, 64, 8, 2), (16, 128, 4, 2), (32, 128, 4, 2),
                                (64, 128, 8, 2), (32, 128, 8, 3), (32, 192, 8, 3), (64, 256, 8, 2), (16, 64, 4, 3)]:
            cfg = dict(block_n=bn, tokens_per_split=tps, num_warps=nw, num_stages=ns)
            try:
                t = bench(lambda i: triton_ops.aggregate_forward(*sets[i], scale, he=res[i][0], lse=res[i][1], config=cfg))
                emit(f"  {bn:3d} {tps:4d} {nw} {ns}: {t:.4f}")
            except Exception as exc:  # noqa: BLE001
                emit(f"  {bn:3d} {tps:4d} {nw} {ns}: failed {type(exc).__name__}: {str(exc)[:100]}")
        emit("\n## scatter sweep, x B=16 (block_n, warps, stages) -> ms")
        outs = [torch.empty(b, n, d, device="cuda", dtype=torch.float16) for _ in sets]
        for bn, nw, ns in [(32, 8, 2), (16, 4, 2), (32, 4, 2), (64, 8, 2), (16, 8, 2), (64, 4, 2), (32, 8, 1), (128, 8, 2)]:
            cfg = dict(block_n=bn, num_warps=nw, num_stages=ns)
            try:
                t = bench(lambda i: triton_ops.scatter_forward(sets[i][1], sets[i][2], res[i][1], res[i][0], scale,
                                                               out=outs[i], config=cfg))
                emit(f"  {bn:3d} {nw} {ns}: {t:.4f}")
            except Exception as exc:  # noqa: BLE001
                emit(f"  {bn:3d} {nw} {ns}: failed {type(exc).__name__}: {str(exc)[:100]}")
        emit("\n## hypergraph backward sweep, x B=16 (block_n, tokens_per_split, warps, stages) -> agg / scatter ms")
        for bn, tps, nw, ns in [(16, 128, 8, 1), (16, 64, 4, 2), (32, 128, 8, 2), (16, 256, 8, 2), (32, 64, 8, 1)]:
            cfg = dict(block_n=bn, tokens_per_split=tps, num_warps=nw, num_stages=ns)
            try:
                ta = bench(lambda i: triton_ops.aggregate_backward(dhe, dlse, *sets[i], *res[i], scale, config=cfg))
                ts = bench(lambda i: triton_ops.scatter_backward(dxn, sets[i][1], sets[i][2], res[i][1], res[i][0], scale,
                                                                 config=cfg))
                emit(f"  {bn:3d} {tps:4d} {nw} {ns}: {ta:.4f} / {ts:.4f}")
            except Exception as exc:  # noqa: BLE001
                emit(f"  {bn:3d} {tps:4d} {nw} {ns}: failed {type(exc).__name__}: {str(exc)[:100]}")


def layer_time(b, n, d, m) -> None:
    """AdaHGComputation's forward as in YOLOv13 (AdaHyperedgeGen + AdaHGConv), eager modules + our ops,
    against the same layer with the reference ops; both with and without torch.compile."""
    import torch.nn as nn
    import torch.nn.functional as F

    from yolo13_attn import triton_ops
    from yolo13_attn.ops.reference import hypergraph_aggregate_reference, hypergraph_scale, hypergraph_scatter_reference

    class Layer(nn.Module):
        def __init__(self, use_triton):
            super().__init__()
            self.use_triton, self.m, self.heads = use_triton, m, 8
            self.prototype_base = nn.Parameter(torch.randn(m, d))
            self.context_net = nn.Linear(2 * d, m * d)
            self.pre_head_proj = nn.Linear(d, d)
            self.edge_proj = nn.Sequential(nn.Linear(d, d), nn.GELU())
            self.node_proj = nn.Sequential(nn.Linear(d, d), nn.GELU())

        def forward(self, feat):
            bb, c, h, w = feat.shape
            x = feat.flatten(2).transpose(1, 2)
            ctx = torch.cat([x.mean(1), x.amax(1)], dim=-1)
            protos = self.prototype_base + self.context_net(ctx).view(bb, self.m, c)
            xp = self.pre_head_proj(x)
            scale = hypergraph_scale(c, self.heads)
            if self.use_triton:
                he, lse = triton_ops.hypergraph_aggregate(x, xp, protos, scale)
                xn = triton_ops.hypergraph_scatter(xp, protos, lse, self.edge_proj(he), scale)
            else:
                he, lse = hypergraph_aggregate_reference(x, xp, protos, scale)
                xn = hypergraph_scatter_reference(xp, protos, lse, self.edge_proj(he), scale)
            return (self.node_proj(xn) + x).transpose(1, 2).view(bb, c, h, w)

    feats = [torch.randn(b, d, 40, 40, device="cuda", dtype=torch.float16) for _ in range(3)]
    for use_triton in (False, True):
        layer = Layer(use_triton).cuda().half().eval()
        with torch.inference_mode():
            t = bench(lambda i: layer(feats[i]))
            tc = "(not run)"
            if COMPILE:
                try:
                    compiled = torch.compile(layer, fullgraph=True)
                    compiled(feats[0])
                    tc = f"{bench(lambda i: compiled(feats[i])):.4f}"
                except Exception as exc:  # noqa: BLE001
                    tc = f"compile failed: {type(exc).__name__}: {str(exc)[:160]}"
        emit(f"{'triton ops ' if use_triton else 'reference ops'}: eager modules {t:.4f} ms, torch.compile {tc} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--area-sweep", action="store_true", help="only a small sweep of the area forward tiles")
    parser.add_argument("--compile", action="store_true", help="also time the layer under torch.compile")
    parser.add_argument("--test-timeout", type=int, default=240)
    parser.add_argument("--bare-package", action="store_true", help="skip yolo13_attn/__init__.py (no ultralytics)")
    args = parser.parse_args()
    if args.bare_package:
        exec(BARE_BOOTSTRAP)
    import triton

    emit(f"# triton backend GPU check: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}, "
         f"triton {triton.__version__}, {datetime.datetime.now().isoformat(timespec='minutes')}")
    global COMPILE
    COMPILE = args.compile
    if not args.no_tests:
        run_tests(args.test_timeout, args.bare_package)
    torch.manual_seed(0)
    for part in (time_area, time_hypergraph):
        try:
            part("area" if args.area_sweep else args.sweep)
        except Exception as exc:  # noqa: BLE001 - keep the other half of the table
            import traceback

            emit(f"{part.__name__} failed: {type(exc).__name__}: {exc}")
            emit(traceback.format_exc()[-2000:])


if __name__ == "__main__":
    main()
