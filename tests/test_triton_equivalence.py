"""Equivalence of the ``triton`` backend with the float64 reference (the 2x "flash rule").

Forward and gradients of area attention and of the hypergraph aggregation / scatter, on odd
shapes and strided inputs, with outputs poisoned with NaN before the kernels run. On a machine
without CUDA the kernels run in the Triton interpreter on CPU (no bfloat16 there); GPU-only
cases are marked ``gpu``. Every test name contains ``equivalence`` (``pytest -k equivalence``).
"""

from __future__ import annotations

import os

import torch

# The Triton interpreter must be chosen before triton is imported anywhere (tests/conftest.py
# should do the same for the whole session; this guard covers running this file alone).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

from yolo13_attn import triton_ops  # noqa: E402
from yolo13_attn.backends.registry import get_backend  # noqa: E402
from yolo13_attn.ops.reference import (  # noqa: E402
    area_attention_reference,
    hypergraph_aggregate_reference,
    hypergraph_scale,
    hypergraph_scatter_reference,
)
from yolo13_attn.testing import assert_flash_rule, poisoned_like, random_normal  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA and not triton_ops.interpreted():
    pytest.skip("no CUDA and the Triton kernels were imported without TRITON_INTERPRET=1", allow_module_level=True)

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
AREA_BACKEND = get_backend("area", "triton")
HG_BACKEND = get_backend("hypergraph", "triton")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _rand(shape, dtype=torch.float32, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return random_normal(tuple(shape), dtype, "cpu", gen, scale).to(DEVICE)


def _grads(fn, inputs, grad_outputs):
    """Run ``fn`` on fresh leaf copies of ``inputs``; return (outputs, input grads)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [g.to(o.dtype) for o, g in zip(outs, grad_outputs)])
    return [o.detach() for o in outs], [leaf.grad for leaf in leaves]


# ---- area attention ---------------------------------------------------------------------------


def _conv_qkv(base: torch.Tensor, heads: int):
    """q, k, v as per-head channel-major views (B, heads, head_dim, N) of one (B, 3C, H, W) conv output."""
    c = base.shape[1] // 3
    return tuple(base[:, i * c : (i + 1) * c].unflatten(1, (heads, c // heads)).flatten(3) for i in range(3))


def _conv_base(b, heads, head_dim, h, w, dtype, seed, channels_last=False):
    base = _rand((b, 3 * heads * head_dim, h, w), dtype, seed)
    return base.contiguous(memory_format=torch.channels_last) if channels_last else base


# (B, heads, head_dim, H, W, area, channels_last): N = H * W, N % area == 0
AREA_CASES = [
    (1, 1, 32, 1, 1, 1, False),  # N = 1
    (1, 2, 16, 1, 7, 1, False),  # N = 7
    (3, 3, 32, 1, 37, 1, True),  # N = 37, batch 3, channels-last
    (1, 2, 32, 5, 80, 4, False),  # N = 400 = 80 * 5, 100 per area (ragged 64-blocks)
    (1, 1, 32, 40, 40, 4, False),  # P4 at 640: 1600 tokens, 400 per area
    (2, 12, 32, 4, 10, 2, True),  # 12 heads, 20 per area
    (1, 2, 64, 6, 12, 2, False),  # head_dim 64, non-square
    (1, 1, 128, 3, 9, 1, True),  # head_dim 128
    (3, 2, 40, 7, 5, 1, False),  # head_dim 40 (padded to 64 in-kernel)
]
AREA_GRAD_CASES = [c for c in AREA_CASES if c[3] * c[4] // c[5] <= 100]


def _area_id(case):
    b, heads, hd, h, w, area, cl = case
    return f"B{b}-h{heads}-d{hd}-N{h * w}-a{area}" + ("-cl" if cl else "")


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("case", AREA_CASES, ids=_area_id)
def test_area_forward_equivalence(case, dtype):
    b, heads, hd, h, w, area, cl = case
    q, k, v = _conv_qkv(_conv_base(b, heads, hd, h, w, dtype, seed=1, channels_last=cl), heads)
    scale = hd**-0.5
    ref64 = area_attention_reference(q.double(), k.double(), v.double(), area, scale)
    baseline = area_attention_reference(q, k, v, area, scale)
    out, lse = triton_ops.area_attention_forward(
        q,
        k,
        v,
        area,
        scale,
        out=poisoned_like(ref64.to(dtype)),
        lse=poisoned_like(q.new_empty((b, heads, h * w), dtype=torch.float32)),
    )
    assert_flash_rule(out, ref64, baseline, f"area forward {_area_id(case)} {_name(dtype)}")
    assert out.is_contiguous() and out.dtype == dtype
    assert bool(torch.isfinite(lse).all()), "lse has unwritten (NaN) elements"
    # through the backend entry point too (custom op)
    assert_flash_rule(AREA_BACKEND.forward(q, k, v, area, scale), ref64, baseline, "area backend forward")


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("case", AREA_GRAD_CASES, ids=_area_id)
def test_area_gradient_equivalence(case, dtype):
    """dq, dk, dv through autograd of the custom op, q/k/v being strided views of one conv output."""
    b, heads, hd, h, w, area, cl = case
    base = _conv_base(b, heads, hd, h, w, dtype, seed=2, channels_last=cl)
    grad = _rand((b, heads, hd, h * w), torch.float32, seed=3)
    scale = hd**-0.5

    def run(fn, base_in):
        return _grads(lambda t: fn(*_conv_qkv(t, heads), area, scale), [base_in], [grad])

    (out,), (dbase,) = run(AREA_BACKEND.forward, base)
    (ref64,), (dref64,) = run(area_attention_reference, base.double())
    (baseline,), (dbaseline,) = run(area_attention_reference, base)
    what = f"{_area_id(case)} {_name(dtype)}"
    assert_flash_rule(out, ref64, baseline, f"area forward {what}")
    c = heads * hd
    for i, name in enumerate("qkv"):
        sl = slice(i * c, (i + 1) * c)
        assert_flash_rule(dbase[:, sl], dref64[:, sl], dbaseline[:, sl], f"area d{name} {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_area_backward_launcher_writes_everything_equivalence(dtype):
    """The backward launcher fills NaN-poisoned dq/dk/dv completely (ragged blocks, two areas)."""
    b, heads, hd, h, w, area = 2, 3, 32, 3, 26, 2  # N = 78, 39 per area
    q, k, v = _conv_qkv(_conv_base(b, heads, hd, h, w, dtype, seed=4), heads)
    do = _rand((b, heads, hd, h * w), dtype, seed=5)
    scale = hd**-0.5
    out, lse = triton_ops.area_attention_forward(q, k, v, area, scale)
    dq, dk, dv = triton_ops.area_attention_backward(
        do, q, k, v, out, lse, area, scale, dq=poisoned_like(out), dk=poisoned_like(out), dv=poisoned_like(out)
    )
    _, g64 = _grads(lambda *t: area_attention_reference(*t, area, scale), [t.double() for t in (q, k, v)], [do])
    _, gbase = _grads(lambda *t: area_attention_reference(*t, area, scale), [q, k, v], [do])
    for name, got, ref, base in zip("qkv", (dq, dk, dv), g64, gbase):
        assert_flash_rule(got, ref, base, f"area backward launcher d{name} {_name(dtype)}")


# ---- hypergraph -------------------------------------------------------------------------------

# (B, N, D, M, with dropout mask)
HG_CASES = [
    (1, 1, 16, 1, False),
    (2, 7, 64, 4, True),
    (3, 37, 128, 8, True),
    (1, 1600, 384, 12, False),  # YOLOv13-x at 640, one image
    (2, 1600, 256, 16, True),
    (1, 7, 384, 16, True),
    (2, 100, 40, 12, False),  # D = 40, not a power of two
    (1, 1600, 64, 4, True),
]
HG_GPU_CASES = [
    (2, 6400, 384, 12, True),  # 1280x1280 P4
    (16, 1600, 384, 12, False),  # YOLOv13-x at batch 16
    (4, 6400, 64, 4, False),
]


def _hg_id(case):
    b, n, d, m, mask = case
    return f"B{b}-N{n}-D{d}-M{m}" + ("-mask" if mask else "")


def _hg_inputs(case, dtype, seed):
    """x and xp as strided slices of one (B, N, 2D) linear output, prototypes non-contiguous,
    mask (B, N, M) of {0, 1/(1-p)} as a transposed view."""
    b, n, d, m, with_mask = case
    y = _rand((b, n, 2 * d), dtype, seed)
    x, xp = y[..., :d], y[..., d:]
    prototypes = _rand((b, d, m), dtype, seed + 1).transpose(1, 2)
    mask = None
    if with_mask:
        p = 0.25
        keep = torch.rand((b, m, n), generator=torch.Generator().manual_seed(seed + 2)) > p
        mask = (keep.to(dtype) / (1 - p)).to(DEVICE).transpose(1, 2)
    heads = 8 if d % 8 == 0 else 1
    return x, xp, prototypes, mask, hypergraph_scale(d, heads)


def _mask64(mask):
    return None if mask is None else mask.double()


def _hg_params(cases):
    return [pytest.param(c, id=_hg_id(c)) for c in cases] + [
        pytest.param(c, id=_hg_id(c), marks=gpu) for c in HG_GPU_CASES
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("case", _hg_params(HG_CASES))
def test_hypergraph_forward_equivalence(case, dtype):
    x, xp, p, mask, scale = _hg_inputs(case, dtype, seed=10)
    he64, lse64 = hypergraph_aggregate_reference(x.double(), xp.double(), p.double(), scale, _mask64(mask))
    he_base, lse_base = hypergraph_aggregate_reference(x, xp, p, scale, mask)
    he, lse = triton_ops.aggregate_forward(
        x, xp, p, scale, mask, he=poisoned_like(he_base), lse=poisoned_like(lse_base)
    )
    what = f"{_hg_id(case)} {_name(dtype)}"
    assert he.dtype == dtype and lse.dtype == torch.float32
    assert_flash_rule(he, he64, he_base, f"aggregate he {what}")
    assert_flash_rule(lse, lse64, lse_base, f"aggregate lse {what}")

    # scatter with fresh hyperedge features (as after edge_proj) and the exact lse
    he_in = _rand(he.shape, dtype, seed=11)
    lse_in = lse64.float()
    xn64 = hypergraph_scatter_reference(xp.double(), p.double(), lse_in.double(), he_in.double(), scale, _mask64(mask))
    xn_base = hypergraph_scatter_reference(xp, p, lse_in, he_in, scale, mask)
    xn = triton_ops.scatter_forward(xp, p, lse_in, he_in, scale, mask, out=poisoned_like(xn_base))
    assert xn.dtype == dtype and xn.is_contiguous()
    assert_flash_rule(xn, xn64, xn_base, f"scatter {what}")

    # the backend entry points (custom ops) give the same
    he2, lse2 = HG_BACKEND.aggregate(x, xp, p, scale, mask)
    assert_flash_rule(he2, he64, he_base, f"backend aggregate {what}")
    assert_flash_rule(HG_BACKEND.scatter(xp, p, lse_in, he_in, scale, mask), xn64, xn_base, f"backend scatter {what}")


@pytest.mark.parametrize("split", [None, 16], ids=["auto-split", "split16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("case", _hg_params(HG_CASES))
def test_hypergraph_gradient_equivalence(case, dtype, split):
    """Aggregate -> edge_proj -> scatter, lse flowing from the aggregation into the scatter:
    gradients w.r.t. x, xp, prototypes and the edge_proj weight."""
    if split is not None and case[1] > 200 and not CUDA:
        pytest.skip("forced small splits of long sequences only on GPU (interpreter time)")
    x, xp, p, mask, scale = _hg_inputs(case, dtype, seed=20)
    d = x.shape[-1]
    weight = _rand((d, d), dtype, seed=23, scale=d**-0.5)
    g_xn = _rand(xp.shape, torch.float32, seed=21)
    g_he = _rand(p.shape, torch.float32, seed=22)
    cfg = None if split is None else {"tokens_per_split": split}

    def triton_chain(x, xp, p, weight):
        if cfg is None:
            he, lse = triton_ops.hypergraph_aggregate(x, xp, p, scale, mask)
        else:  # force many splits through the launchers' config override (same custom-op autograd math)
            he, lse = _ForcedSplitAggregate.apply(x, xp, p, scale, mask, cfg)
        he2 = he @ weight
        return triton_ops.hypergraph_scatter(xp, p, lse, he2, scale, mask), he

    def ref_chain(x, xp, p, weight, mask=mask):
        he, lse = hypergraph_aggregate_reference(x, xp, p, scale, mask)
        return hypergraph_scatter_reference(xp, p, lse, he @ weight, scale, mask), he

    inputs = (x, xp, p, weight)
    outs, grads = _grads(triton_chain, inputs, [g_xn, g_he])
    outs64, grads64 = _grads(lambda *t: ref_chain(*t, mask=_mask64(mask)), [t.double() for t in inputs], [g_xn, g_he])
    outs_b, grads_b = _grads(ref_chain, inputs, [g_xn, g_he])
    what = f"{_hg_id(case)} {_name(dtype)} split={split}"
    for name, o, r, bl in zip(("xn", "he"), outs, outs64, outs_b):
        assert_flash_rule(o, r, bl, f"chain {name} {what}")
    for name, g, r, bl in zip(("x", "xp", "prototypes", "edge_proj"), grads, grads64, grads_b):
        assert_flash_rule(g, r, bl, f"chain d{name} {what}")


class _ForcedSplitAggregate(torch.autograd.Function):
    """The aggregation with a forced split size (tests only): launchers forward and backward."""

    @staticmethod
    def forward(ctx, x, xp, p, scale, mask, cfg):
        he, lse = triton_ops.aggregate_forward(x, xp, p, scale, mask, config=cfg)
        ctx.save_for_backward(x, xp, p, he, lse)
        ctx.scale, ctx.mask, ctx.cfg = scale, mask, cfg
        return he, lse

    @staticmethod
    def backward(ctx, dhe, dlse):
        x, xp, p, he, lse = ctx.saved_tensors
        dx, dxp, dp = triton_ops.aggregate_backward(dhe, dlse, x, xp, p, he, lse, ctx.scale, ctx.mask, config=ctx.cfg)
        return dx, dxp, dp, None, None, None


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("case", _hg_params([HG_CASES[1], HG_CASES[3], HG_CASES[6]]))
def test_hypergraph_scatter_gradient_equivalence(case, dtype):
    """The scatter alone: gradients w.r.t. xp, prototypes, lse and he (upstream dxn only)."""
    x, xp, p, mask, scale = _hg_inputs(case, dtype, seed=30)
    _, lse64 = hypergraph_aggregate_reference(x.double(), xp.double(), p.double(), scale, _mask64(mask))
    lse = (lse64 + 0.1 * _rand(lse64.shape, torch.float64, seed=31)).float()
    he = _rand(p.shape, dtype, seed=32)
    g = _rand(xp.shape, torch.float32, seed=33)
    inputs = (xp, p, lse, he)
    (xn,), grads = _grads(lambda *t: triton_ops.hypergraph_scatter(*t, scale, mask), inputs, [g])
    (xn64,), grads64 = _grads(
        lambda *t: hypergraph_scatter_reference(*t, scale, _mask64(mask)), [t.double() for t in inputs], [g]
    )
    (xnb,), grads_b = _grads(lambda *t: hypergraph_scatter_reference(*t, scale, mask), inputs, [g])
    what = f"{_hg_id(case)} {_name(dtype)}"
    assert_flash_rule(xn, xn64, xnb, f"scatter {what}")
    for name, gt, r, bl in zip(("xp", "prototypes", "lse", "he"), grads, grads64, grads_b):
        assert_flash_rule(gt, r, bl, f"scatter d{name} {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_hypergraph_backward_launchers_write_everything_equivalence(dtype):
    case = (2, 77, 64, 12, True)
    x, xp, p, mask, scale = _hg_inputs(case, dtype, seed=40)
    he, lse = triton_ops.aggregate_forward(x, xp, p, scale, mask)
    dhe, dlse = _rand(he.shape, dtype, seed=41), _rand(lse.shape, torch.float32, seed=42)
    dx, dxp, dp = triton_ops.aggregate_backward(
        dhe, dlse, x, xp, p, he, lse, scale, mask, dx=poisoned_like(x), dxp=poisoned_like(xp)
    )
    _, g64 = _grads(
        lambda *t: hypergraph_aggregate_reference(*t, scale, _mask64(mask)),
        [t.double() for t in (x, xp, p)],
        [dhe, dlse],
    )
    _, gb = _grads(lambda *t: hypergraph_aggregate_reference(*t, scale, mask), [x, xp, p], [dhe, dlse])
    for name, got, ref, base in zip(("x", "xp", "prototypes"), (dx, dxp, dp), g64, gb):
        assert_flash_rule(got, ref, base, f"aggregate backward launcher d{name} {_name(dtype)}")
    dxn = _rand(xp.shape, dtype, seed=43)
    dxp2, dp2, dlse2, dhe2 = triton_ops.scatter_backward(dxn, xp, p, lse, he, scale, mask, dxp=poisoned_like(xp))
    _, g64 = _grads(
        lambda *t: hypergraph_scatter_reference(*t, scale, _mask64(mask)), [t.double() for t in (xp, p, lse, he)], [dxn]
    )
    _, gb = _grads(lambda *t: hypergraph_scatter_reference(*t, scale, mask), [xp, p, lse, he], [dxn])
    for name, got, ref, base in zip(("xp", "prototypes", "lse", "he"), (dxp2, dp2, dlse2, dhe2), g64, gb):
        assert_flash_rule(got, ref, base, f"scatter backward launcher d{name} {_name(dtype)}")


# ---- custom ops: registration, torch.compile, CUDA graphs -------------------------------------


def test_custom_ops_opcheck_equivalence():
    """torch.library.opcheck: schema, fake (meta) functions, autograd registration."""
    q, k, v = _conv_qkv(_conv_base(1, 2, 16, 2, 6, torch.float32, seed=50), 2)
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.yolo13_attn.triton_area_attention.default, (q, k, v, 2, 0.25), test_utils=tests)
    x, xp, p, mask, scale = _hg_inputs((1, 9, 16, 3, True), torch.float32, seed=51)
    x, xp, p = (t.detach().requires_grad_(True) for t in (x, xp, p))
    torch.library.opcheck(
        torch.ops.yolo13_attn.triton_hypergraph_aggregate.default, (x, xp, p, scale, mask), test_utils=tests
    )
    he, lse = triton_ops.hypergraph_aggregate(x, xp, p, scale, mask)
    torch.library.opcheck(
        torch.ops.yolo13_attn.triton_hypergraph_scatter.default,
        (xp, p, lse.detach().requires_grad_(True), he.detach().requires_grad_(True), scale, None),
        test_utils=tests,
    )


def test_torch_compile_fullgraph_equivalence():
    """The ops trace into one graph (no graph breaks) and give the eager results."""
    torch._dynamo.reset()
    q, k, v = _conv_qkv(_conv_base(1, 2, 16, 2, 6, torch.float32, seed=60), 2)
    x, xp, p, mask, scale = _hg_inputs((1, 9, 16, 3, True), torch.float32, seed=61)

    def layer(q, k, v, x, xp, p):
        o = triton_ops.area_attention(q, k, v, 2, 0.25)
        he, lse = triton_ops.hypergraph_aggregate(x, xp, p, scale, mask)
        return o, triton_ops.hypergraph_scatter(xp, p, lse, he * 2, scale, mask)

    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if CUDA else "aot_eager")
    for got, want in zip(compiled(q, k, v, x, xp, p), layer(q, k, v, x, xp, p)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_graph_capture_equivalence():
    """Forward and backward capture into a CUDA graph and replay to the eager results."""
    b, heads, hd, h, w, area = 2, 4, 32, 20, 20, 4
    base = _conv_base(b, heads, hd, h, w, torch.float16, seed=70).requires_grad_(True)
    x, xp, p, mask, scale = _hg_inputs((2, 400, 128, 8, True), torch.float16, seed=71)
    x, xp, p = (t.detach().clone().requires_grad_(True) for t in (x, xp, p))
    params = [base, x, xp, p]

    def step():
        o = triton_ops.area_attention(*_conv_qkv(base, heads), area, hd**-0.5)
        he, lse = triton_ops.hypergraph_aggregate(x, xp, p, scale, mask)
        xn = triton_ops.hypergraph_scatter(xp, p, lse, he, scale, mask)
        loss = o.float().square().sum() + xn.float().square().sum()
        grads = torch.autograd.grad(loss, params)
        return (o, xn, *grads)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            eager = step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, eager):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
