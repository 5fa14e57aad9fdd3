"""The ``cuda`` backend's hypergraph kernels (``csrc/hypergraph_*.cu``) against the float64 reference.

The 2x flash rule on odd vertex counts (1, 7, 100, 400, 800 non-square, 1600, 6400), M in {4, 8, 12, 16},
D in {40, 64, 128, 256, 384, 512}, batch 1 and > 1, float16 / bfloat16, with and without the dropout mask, x
as AdaHGComputation passes it (a transposed view of a ``(B, D, H, W)`` map) and token-major slices; outputs
written into NaN-poisoned buffers through the ``_out`` ops; the split-N / combine path forced both ways;
torch.compile (fullgraph) and CUDA-graph capture run the kernels. CPU-only checks: the module imports without
a GPU and the declaration matches the kernels.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from backend_cases import (
    assert_bad_calls_raise,
    count_calls,
    dtype_id,
    extension_kernels,
    gpu_kernels,
    graph_replay_kernels,
)

import yolo13_attn
from yolo13_attn.backends import HYPERGRAPH, OpCall, get_backend
from yolo13_attn.cuda_ops import build
from yolo13_attn.cuda_ops import hypergraph as ops
from yolo13_attn.nn import AdaHGComputation, AdaHyperedgeGen
from yolo13_attn.ops.reference import hypergraph_aggregate_reference, hypergraph_scale, hypergraph_scatter_reference
from yolo13_attn.testing import assert_flash_rule, poisoned_like, randomize_weights

CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
BACKEND = get_backend(HYPERGRAPH, "cuda")
HALF = [torch.float16, torch.bfloat16]


# ---- CPU: declaration and errors without a GPU ----------------------------------------------------------------


def test_hypergraph_module_imports_and_declaration_matches_the_kernels():
    caps = BACKEND.capabilities()
    assert caps["devices"] == ["cuda"] and caps["dtypes"] == ["bfloat16", "float16"]
    assert BACKEND.supports_backward is False and BACKEND.supports_dropout_mask is True
    assert BACKEND.max_head_dim <= 512  # the widest instantiated kernel (csrc/hypergraph_common.cuh kMaxD)
    call = OpCall(HYPERGRAPH, torch.device("cuda"), torch.float32, 64, False)
    assert any("dtype float32" in r for r in BACKEND.environment_reasons(call))


@pytest.mark.skipif(CUDA, reason="checks the answer on a machine without a GPU")
def test_hypergraph_ops_without_gpu_raise_a_clear_error():
    x = torch.randn(1, 7, 64, dtype=torch.float16)
    with pytest.raises(build.CudaExtensionError, match="needs a CUDA device"):
        ops.hypergraph_aggregate(x, x, x[:, :4], 0.1)


# ---- inputs ------------------------------------------------------------------------------------------------


def _inputs(b, h, w, d, m, dtype, seed, mask=False, layout="map"):
    """x, xp, prototypes, mask, scale with logits of std ~2 (a peaked softmax over the vertices).

    layout "map": x is the transposed view of a (B, D, H, W) map (vertex stride 1) and xp a contiguous Linear
    output, as AdaHGComputation passes them; "slices": x and xp are the two halves of one (B, N, 2D) tensor and
    the prototypes a transposed view; the mask is always a transposed view of (B, M, N).
    """
    gen = torch.Generator().manual_seed(seed)
    n = h * w
    scale = hypergraph_scale(d, 8 if d % 8 == 0 else 1)
    p_std = 2.0 / (scale * math.sqrt(d))
    if layout == "map":
        x = torch.randn((b, d, h, w), generator=gen).to("cuda", dtype).flatten(2).transpose(1, 2)
        xp = torch.randn((b, n, d), generator=gen).to("cuda", dtype)
        prototypes = (torch.randn((b, m, d), generator=gen) * p_std).to("cuda", dtype)
    else:
        y = torch.randn((b, n, 2 * d), generator=gen).to("cuda", dtype)
        x, xp = y[..., :d], y[..., d:]
        prototypes = (torch.randn((b, d, m), generator=gen) * p_std).to("cuda", dtype).transpose(1, 2)
    drop = None
    if mask:
        keep = torch.rand((b, m, n), generator=gen) > 0.25
        drop = (keep / 0.75).to("cuda", dtype).transpose(1, 2)
    return x, xp, prototypes, drop, scale


def _as(t, dtype):
    return None if t is None else t.to(dtype)


# (B, H, W, D, M, mask, layout)
CASES = [
    (1, 1, 1, 64, 4, False, "map"),  # N = 1
    (3, 1, 7, 64, 4, True, "map"),  # N = 7: vertex stride 1 but rows not 16-byte aligned (element loads)
    (2, 10, 10, 128, 8, False, "map"),  # N = 100: a ragged last tile
    (2, 20, 20, 256, 8, True, "map"),  # P5 of YOLOv13-l
    (1, 20, 40, 384, 12, False, "map"),  # N = 800, non-square
    (4, 40, 40, 384, 12, True, "map"),  # P4 of YOLOv13-x at 640
    (2, 40, 40, 64, 4, False, "map"),  # P4 of YOLOv13-n
    (1, 80, 80, 384, 12, False, "map"),  # P4 at 1280
    (3, 1, 37, 128, 12, True, "slices"),  # token-major x, strided xp and prototypes
    (2, 40, 40, 384, 12, False, "slices"),
    (2, 5, 9, 40, 4, True, "slices"),  # D = 40: padded width, element loads (rows not 16-byte aligned)
    (1, 16, 25, 512, 16, True, "map"),  # the widest kernel, M = 16
]


def _case_id(case):
    b, h, w, d, m, mask, layout = case
    return f"B{b}-N{h * w}-{h}x{w}-D{d}-M{m}-{layout}" + ("-mask" if mask else "")


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c), marks=gpu) for c in CASES])
def test_cuda_hypergraph_forward_equivalence(case, dtype):
    b, h, w, d, m, with_mask, layout = case
    x, xp, p, mask, scale = _inputs(b, h, w, d, m, dtype, seed=1, mask=with_mask, layout=layout)
    what = f"{_case_id(case)} {dtype_id(dtype)}"
    he64, lse64 = hypergraph_aggregate_reference(x.double(), xp.double(), p.double(), scale, _as(mask, torch.float64))
    he_base, lse_base = hypergraph_aggregate_reference(x, xp, p, scale, mask)
    he, lse = ops.aggregate_forward(x, xp, p, scale, mask, he=poisoned_like(he_base), lse=poisoned_like(lse_base))
    assert he.dtype == dtype and lse.dtype == torch.float32
    assert_flash_rule(he, he64, he_base, f"cuda aggregate he {what}")
    assert_flash_rule(lse, lse64, lse_base, f"cuda aggregate lse {what}")
    # the functional custom op runs the same launch: bit-identical
    he_op, lse_op = ops.hypergraph_aggregate(x, xp, p, scale, mask)
    assert torch.equal(he_op, he) and torch.equal(lse_op, lse), f"{what}: custom op differs from the _out launch"

    edges = (torch.randn((b, m, d), generator=torch.Generator().manual_seed(2))).to("cuda", dtype)  # edge_proj(he)
    lse_in = lse64.float()
    xn64 = hypergraph_scatter_reference(xp.double(), p.double(), lse64, edges.double(), scale, _as(mask, torch.float64))
    xn_base = hypergraph_scatter_reference(xp, p, lse_in, edges, scale, mask)
    xn = ops.scatter_forward(xp, p, lse_in, edges, scale, mask, out=poisoned_like(xn_base))
    assert xn.dtype == dtype and xn.is_contiguous()
    assert_flash_rule(xn, xn64, xn_base, f"cuda scatter {what}")
    assert torch.equal(ops.hypergraph_scatter(xp, p, lse_in, edges, scale, mask), xn)


@pytest.mark.parametrize("tokens_per_split", [32, 96, 1 << 20], ids=["split32", "split96", "single"])
@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("layout", ["map", "slices"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_hypergraph_split_and_combine_equivalence(layout, dtype, tokens_per_split):
    """The split-N partials + combine path (up to 50 splits) and the single-split path give the same answer."""
    x, xp, p, mask, scale = _inputs(3, 40, 40, 128, 12, dtype, seed=3, mask=True, layout=layout)
    he64, lse64 = hypergraph_aggregate_reference(x.double(), xp.double(), p.double(), scale, mask.double())
    he_base, lse_base = hypergraph_aggregate_reference(x, xp, p, scale, mask)
    he, lse = ops.aggregate_forward(
        x, xp, p, scale, mask, he=poisoned_like(he_base), lse=poisoned_like(lse_base), tokens_per_split=tokens_per_split
    )
    what = f"{layout} {dtype_id(dtype)} tokens_per_split={tokens_per_split}"
    assert_flash_rule(he, he64, he_base, f"cuda aggregate he {what}")
    assert_flash_rule(lse, lse64, lse_base, f"cuda aggregate lse {what}")


@pytest.mark.parametrize("stages", [1, 2])
@pytest.mark.parametrize("d", [256, 384])
@pytest.mark.parametrize("layout", ["map", "slices"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_hypergraph_pipeline_depths_equivalence(layout, d, stages):
    """Single- and double-buffered aggregation kernels, several tiles per split (and a ragged last tile)."""
    x, xp, p, mask, scale = _inputs(2, 25, 40, d, 12, torch.float16, seed=4, mask=True, layout=layout)
    he64, lse64 = hypergraph_aggregate_reference(x.double(), xp.double(), p.double(), scale, mask.double())
    he_base, lse_base = hypergraph_aggregate_reference(x, xp, p, scale, mask)
    for tps in (160, 1 << 20):
        he, lse = ops.aggregate_forward(
            x,
            xp,
            p,
            scale,
            mask,
            he=poisoned_like(he_base),
            lse=poisoned_like(lse_base),
            tokens_per_split=tps,
            stages=stages,
        )
        what = f"{layout} D{d} stages={stages} tokens_per_split={tps}"
        assert_flash_rule(he, he64, he_base, f"cuda aggregate he {what}")
        assert_flash_rule(lse, lse64, lse_base, f"cuda aggregate lse {what}")


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-mask"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_hypergraph_patched_layer_equivalence(train, dtype, monkeypatch):
    """AdaHGComputation patched with the cuda hypergraph backend (no_grad: it declares no backward; in train
    mode with one logit dropout mask drawn up front, so every dtype sees the same) against the unpatched layer
    in float64."""
    layer = randomize_weights(AdaHGComputation(128, 8, 8, dropout=0.3), seed=1).to("cuda").train(train)
    x = torch.randn(2, 128, 12, 20, device="cuda")
    mask = torch.nn.functional.dropout(torch.ones(2, 12 * 20, 8, device="cuda"), 0.3, training=True)
    monkeypatch.setattr(AdaHyperedgeGen, "dropout_mask", lambda self, t: mask.to(t.dtype) if self.training else None)

    def run(module, cast):
        module = copy.deepcopy(module).to(cast)
        with torch.no_grad():
            return module(x.to(cast))

    ref64, baseline = run(layer, torch.float64), run(layer, dtype)
    patched = copy.deepcopy(layer).to(dtype)
    yolo13_attn.patch(patched, {"hypergraph": "cuda"}, strict=True)
    calls = count_calls(monkeypatch, HYPERGRAPH, "cuda")
    out = run(patched, dtype)
    assert calls, "the patched layer did not call the cuda hypergraph backend"
    assert_flash_rule(out, ref64, baseline, f"patched AdaHGComputation {dtype_id(dtype)} train={train}")


# Malformed calls of the C++ ops, each with a piece of its expected message; run by a child process (below).
_BAD_CALLS = r"""
import torch
from yolo13_attn.cuda_ops import hypergraph as ops

ops.ensure_loaded()
agg, sca = torch.ops.yolo13_attn.cuda_hypergraph_aggregate, torch.ops.yolo13_attn.cuda_hypergraph_scatter
g = torch.Generator().manual_seed(6)
x = torch.randn(2, 64, 15, generator=g).half().cuda().transpose(1, 2)
xp = torch.randn(2, 15, 64, generator=g).half().cuda()
p = torch.randn(2, 4, 64, generator=g).half().cuda()
mask = torch.ones(2, 15, 4, device="cuda", dtype=torch.half)
he, lse = agg(x, xp, p, 0.1, mask)
wide = torch.zeros(2, 15, 520, device="cuda", dtype=torch.half)
calls = [
    ("cpu", "CPU", lambda: agg(x.cpu(), xp.cpu(), p.cpu(), 0.1, None)),
    ("device", "xp must be a CUDA tensor", lambda: agg(x, xp.cpu(), p, 0.1, None)),
    ("float32", "float16 and bfloat16 only", lambda: agg(x.float(), xp.float(), p.float(), 0.1, None)),
    ("mixed", "all inputs share one dtype", lambda: agg(x, xp.bfloat16(), p, 0.1, None)),
    ("mask", "dropout_mask must be (B, N, M)", lambda: agg(x, xp, p, 0.1, mask[:, :, :2])),
    ("scale", "scale must be finite and > 0", lambda: agg(x, xp, p, float("nan"), None)),
    ("stages", "stages=1 is not built for D = 64", lambda: ops.aggregate_forward(x, xp, p, 0.1, stages=1)),
    ("lse", "lse must be a contiguous", lambda: sca(xp, p, lse.double(), he, 0.1, None)),
    ("he", "he must be shaped like prototypes", lambda: sca(xp, p, lse, he[:, :2], 0.1, None)),
    ("cpu-scatter", "CPU", lambda: sca(xp.cpu(), p.cpu(), lse.cpu(), he.cpu(), 0.1, None)),
    ("width", "feature width D at most 512", lambda: agg(wide, wide, wide[:, :4], 0.1, None)),
    ("hyperedges", "at most 16 hyperedges", lambda: agg(x, xp, p.repeat(1, 5, 1), 0.1, None)),
]
"""


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_hypergraph_bad_inputs_raise_clear_errors():
    """Every malformed call of the C++ ops raises an error naming the constraint, in a child process (a check
    that crashed - csrc/checks.cuh - fails the test instead of ending the session)."""
    assert_bad_calls_raise(_BAD_CALLS, 12)


@pytest.mark.parametrize("shape", [(2, 20, 64), (2, 4, 520)], ids=["M20", "D520"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_hypergraph_python_entry_points_check_sizes(shape):
    """The Python entry points refuse M > 16 or D > 512 with a ValueError before reaching the C++ op."""
    b, m, d = shape
    x = torch.zeros(b, 15, d, device="cuda", dtype=torch.float16)
    p = torch.zeros(b, m, d, device="cuda", dtype=torch.float16)
    lse = torch.zeros(b, m, device="cuda")
    for call in (
        lambda: ops.hypergraph_aggregate(x, x, p, 0.1),
        lambda: ops.aggregate_forward(x, x, p, 0.1),
        lambda: ops.hypergraph_scatter(x, p, lse, p, 0.1),
        lambda: ops.scatter_forward(x, p, lse, p, 0.1),
    ):
        with pytest.raises(ValueError, match="at most 16 hyperedges and D <= 512"):
            call()


# ---- torch.compile and CUDA graphs ---------------------------------------------------------------------------


def _ran_both(kernels: list[str]) -> bool:
    cpp = extension_kernels(kernels)
    return any("aggregate_kernel" in k for k in cpp) and any("scatter_kernel" in k for k in cpp)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_hypergraph_fake_implementations():
    x, xp, p, mask, scale = _inputs(1, 3, 3, 64, 4, torch.float16, seed=7, mask=True)
    ops.ensure_loaded()
    tests = ("test_schema", "test_faketensor")
    he, lse = ops.hypergraph_aggregate(x, xp, p, scale, mask)
    torch.library.opcheck(
        torch.ops.yolo13_attn.cuda_hypergraph_aggregate.default, (x, xp, p, scale, mask), test_utils=tests
    )
    torch.library.opcheck(
        torch.ops.yolo13_attn.cuda_hypergraph_scatter.default, (xp, p, lse, he, scale, mask), test_utils=tests
    )


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_hypergraph_compiles_fullgraph_and_runs_its_kernels():
    torch._dynamo.reset()
    x, xp, p, mask, scale = _inputs(2, 20, 20, 128, 8, torch.float16, seed=8, mask=True)

    def layer(x, xp, p):
        he, lse = ops.hypergraph_aggregate(x, xp, p, scale, mask)
        return ops.hypergraph_scatter(xp, p, lse, torch.nn.functional.gelu(he), scale, mask)

    compiled = torch.compile(layer, fullgraph=True)
    expected = layer(x, xp, p)
    torch.testing.assert_close(compiled(x, xp, p), expected, rtol=1e-3, atol=1e-3)
    assert _ran_both(gpu_kernels(lambda: compiled(x, xp, p)))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_hypergraph_captures_into_a_cuda_graph():
    """A patched AdaHGComputation captured into a CUDA graph replays the eager result on new input, running the
    cuda kernels (N = 400 at batch 4: the split + combine path)."""
    layer = randomize_weights(AdaHGComputation(384, 12, 8)).eval().to("cuda", torch.float16)
    yolo13_attn.patch(layer, {"hypergraph": "cuda"})
    static = torch.randn(4, 384, 20, 20, device="cuda", dtype=torch.float16)
    kernels = graph_replay_kernels(layer, static)
    assert _ran_both(kernels), sorted(set(kernels))
