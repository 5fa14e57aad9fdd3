"""The flash backend's three implementations (issue 17): the order and reasons of the choice, and
FlashAttention-4 - through a double of its documented API on the CPU, for real on sm90/sm100 GPUs.

The double follows ``flash_attn.cute.flash_attn_func`` of flash-attn-4 4.0.0b36 (its
``interface.py``): q ``(batch, seqlen_q, heads, head_dim)``, k/v ``(batch, seqlen_k, heads_kv,
head_dim)``, fp16/bf16, head_dim 8-256 in steps of 8 on sm90 (8-128 or 256 on sm100), keyword
arguments only after v, returns ``(out, lse)`` with lse ``(batch, heads, seqlen_q)`` float32 when
``return_lse`` (None otherwise, without autograd).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from backend_cases import dtype_id

from yolo13_attn import BackendUnsupportedError, area_attention, hypergraph_aggregate
from yolo13_attn.backends import AREA, HYPERGRAPH, OpCall, flash_impls
from yolo13_attn.backends.flash import FlashAreaAttention, FlashHypergraph, prepare
from yolo13_attn.nn import AAttn
from yolo13_attn.nn.area_attention import heads_view
from yolo13_attn.ops.reference import (
    area_attention_reference,
    hypergraph_aggregate_reference,
    hypergraph_scale,
)
from yolo13_attn.testing import assert_flash_rule, randomize_weights

HALF = (torch.float16, torch.bfloat16)
#: keyword arguments of flash_attn.cute.flash_attn_func (4.0.0b36): an unknown one is a TypeError there
FA4_KWARGS = {
    "qv", "gather_kv_indices", "softmax_scale", "causal", "window_size", "learnable_sink", "softcap",
    "num_splits", "pack_gqa", "deterministic", "score_mod", "score_mod_bwd", "mask_mod", "aux_tensors",
    "aux_scalars", "block_sparse_tensors", "block_sparse_tensors_bwd", "return_lse", "gather_bwd_recompute_p",
    "gather_bwd_token_chunk",
}  # fmt: skip


def fa4_head_dim_ok(head_dim: int, major: int) -> bool:
    """FA4's rule for fp16/bf16 (alignment 8): sm90 8-256; sm100 8-128, or 256."""
    if head_dim % 8:
        return False
    return 8 <= head_dim <= 256 if major == 9 else 8 <= head_dim <= 128 or head_dim == 256


def make_fa4_double(major: int, calls: list):
    """A ``flash_attn.cute.flash_attn_func`` that rejects what the real one rejects (and what the flash
    backend promises never to pass: non-contiguous tensors), records its calls and computes in fp32."""

    def flash_attn_func(q, k, v, **kwargs):
        assert set(kwargs) <= FA4_KWARGS, f"unknown keyword arguments {set(kwargs) - FA4_KWARGS}"
        assert q.dim() == k.dim() == v.dim() == 4, "(batch, seqlen, heads, head_dim) expected"
        assert q.shape[0] == k.shape[0] == v.shape[0] and k.shape[1] == v.shape[1] and k.shape[2] == v.shape[2]
        assert q.shape[2] % k.shape[2] == 0, "num_head must be divisible by num_head_kv"
        assert q.dtype in HALF and q.dtype == k.dtype == v.dtype, f"fp16/bf16 only, got {q.dtype}"
        assert fa4_head_dim_ok(q.shape[-1], major), f"head_dim {q.shape[-1]} is not supported on SM{major}0"
        assert all(t.is_contiguous() for t in (q, k, v)), "the flash backend passes contiguous tensors"
        assert not kwargs.get("causal", False) and kwargs.get("qv") is None
        calls.append((tuple(q.shape), tuple(k.shape), q.dtype))
        scale = kwargs.get("softmax_scale") or q.shape[-1] ** -0.5
        logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
        lse = torch.logsumexp(logits, dim=-1)  # (batch, heads, seqlen_q), natural log
        out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, -1), v.float())
        return out.to(q.dtype).contiguous(), (lse if kwargs.get("return_lse") else None)  # FA4 allocates out contiguous

    return flash_attn_func


def set_machine(monkeypatch, *, fa2=False, fa4="4.0.0b36", capability=(9, 0), import_error="", cpu_fa4=False):
    """What the chooser sees: packages installed, the GPU's capability; returns the FA4 double's call log."""
    calls: list = []
    double = make_fa4_double(capability[0], calls)
    monkeypatch.setattr(flash_impls, "FLASH_ATTN_INSTALLED", fa2)
    monkeypatch.setattr(flash_impls, "fa4_version", lambda: fa4)
    monkeypatch.setattr(flash_impls, "fa4_function", lambda: (None, import_error) if import_error else (double, ""))
    monkeypatch.setattr(flash_impls, "_capability", lambda device: capability)
    monkeypatch.setattr(flash_impls, "_CHOICES", {})
    monkeypatch.setattr(flash_impls, "_FA4_WARM", set())
    monkeypatch.setattr(flash_impls, "_forced_key", None)
    if cpu_fa4:  # the double stands in for the GPU
        monkeypatch.setattr(flash_impls, "FA4_DEVICE_TYPE", "cpu")
    return calls


@pytest.fixture
def fa4_on_cpu(monkeypatch):
    """FA4 (the double) serving CPU tensors as if on an sm90 GPU, flash-attn 2 not installed."""
    return set_machine(monkeypatch, cpu_fa4=True)


# --- the choice: order and reasons ---

CHOICES = [
    # flash-attn 2 installed, flash-attn-4 version, capability, head_dim, grad -> implementation, reason parts
    (True, "4.0.0b36", (9, 0), 32, False, "fa2", ["flash-attn 2 installed"]),
    (True, "4.0.0b36", (9, 0), 32, True, "fa2", ["flash-attn 2 installed"]),
    (False, "4.0.0b36", (9, 0), 32, False, "fa4", ["flash-attn 2 not installed", "4.0.0b36 on cuda:0 (sm90)"]),
    (False, "4.0.0b36", (9, 0), 160, False, "fa4", ["sm90"]),
    (False, "4.0.0b36", (10, 0), 32, False, "fa4", ["sm100"]),
    (False, "4.0.0b36", (10, 3), 256, False, "fa4", ["sm103"]),
    (False, "4.0.0b36", (10, 0), 160, False, "torch", ["FA4 on sm10x serves head_dim 8-128, multiple of 8, or 256"]),
    (False, "4.0.0b36", (9, 0), 32, True, "torch", ["FA4 is inference-only here and the call needs gradients"]),
    (False, "4.0.0b36", (8, 0), 32, False, "torch", ["FA4 serves sm90/sm100 here, cuda:0 is sm80"]),
    (False, "4.0.0b36", (12, 0), 32, False, "torch", ["cuda:0 is sm120"]),
    (False, None, (9, 0), 32, False, "torch", ["flash-attn 2 not installed; flash-attn-4 not installed"]),
]


@pytest.mark.parametrize("fa2,fa4,capability,head_dim,grad,expected,reason_parts", CHOICES, ids=str)
def test_flash_choice_order_and_reasons(monkeypatch, fa2, fa4, capability, head_dim, grad, expected, reason_parts):
    set_machine(monkeypatch, fa2=fa2, fa4=fa4, capability=capability)
    choice = flash_impls.choose("cuda:0", head_dim, grad)
    assert choice.impl is flash_impls.IMPLS[expected], choice.describe()
    for part in reason_parts:
        assert part in choice.reason, choice.reason
    assert choice.describe() == f"{choice.impl.kernel}: {choice.reason}"


def test_flash_choice_fa4_that_does_not_import_falls_back_with_the_error(monkeypatch):
    error = "flash-attn-4 4.0.0b36: flash_attn.cute does not import: ImportError: libcute_dsl_runtime.so"
    set_machine(monkeypatch, import_error=error)
    choice = flash_impls.choose("cuda:0", 32, False)
    assert choice.impl is flash_impls.TORCH and error in choice.reason


def test_flash_choice_fa4_only_on_cuda(monkeypatch):
    set_machine(monkeypatch)
    choice = flash_impls.choose("cpu", 32, False)
    assert choice.impl is flash_impls.TORCH and "FA4 runs on CUDA, not cpu" in choice.reason


def test_flash_choice_is_remembered_per_device_head_dim_grad_and_force(monkeypatch):
    set_machine(monkeypatch)
    first = flash_impls.choice_for("cuda:0", 32, False)
    assert flash_impls.choice_for(torch.device("cuda:0"), 32, False) is first
    assert flash_impls.choice_for("cuda:0", 32, True).impl is flash_impls.TORCH
    with flash_impls.forced("torch"):
        assert flash_impls.choice_for("cuda:0", 32, False).impl is flash_impls.TORCH
    assert flash_impls.choice_for("cuda:0", 32, False) is first


def test_flash_forced_implementation(monkeypatch):
    set_machine(monkeypatch)
    with flash_impls.forced("torch"):
        choice = flash_impls.choose("cuda:0", 32, False)
        assert choice.impl is flash_impls.TORCH and choice.reason == f"forced by {flash_impls.ENV}=torch"
    with flash_impls.forced("fa4"):
        assert flash_impls.choose("cuda:0", 32, False).impl is flash_impls.FA4
        refused = flash_impls.choose("cuda:0", 32, True)
        assert refused.impl is None and "cannot serve it: FA4 is inference-only" in refused.reason
        # the flash backend then declines the call, with that reason
        call = OpCall(AREA, torch.device("cuda:0"), torch.float16, 32, requires_grad=True)
        assert refused.reason in FlashAreaAttention.not_supported_reasons(call)
    with flash_impls.forced("fa2"):
        assert "flash-attn 2 not installed" in flash_impls.choose("cuda:0", 32, False).reason
    assert flash_impls.forced_key() is None
    with pytest.raises(ValueError, match="must be one of fa2, fa4, torch"), flash_impls.forced("fa3"):
        pass
    monkeypatch.setattr(flash_impls, "_forced_key", "FA4")
    with pytest.raises(ValueError, match=f"{flash_impls.ENV}='FA4': must be one of fa2, fa4, torch"):
        flash_impls.choose("cuda:0", 32, False)


def test_flash_forced_by_environment_variable():
    code = "from yolo13_attn.backends import flash_impls; print(flash_impls.forced_key())"
    env = {**os.environ, flash_impls.ENV: "torch"}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "torch"


def test_flash_plan_names_the_implementation_and_why(monkeypatch):
    set_machine(monkeypatch)
    plan = FlashAreaAttention.plan(OpCall(AREA, torch.device("cuda:0"), torch.float32, 32))
    assert plan.kernel == flash_impls.FA4.kernel and plan.compute_dtype == torch.float16
    assert "flash-attn 2 not installed" in plan.note and "float32 inputs computed in float16" in plan.note
    train = FlashHypergraph.plan(OpCall(HYPERGRAPH, torch.device("cuda:0"), torch.float16, 64, requires_grad=True))
    assert train.kernel == flash_impls.TORCH.kernel and "needs gradients" in train.note


def test_flash_implementations_declare_what_they_support():
    fa4 = flash_impls.FA4.declaration()
    assert fa4["dropout"] is False and fa4["backward"] is False and "inference only" in fa4["notes"]
    assert fa4["dtypes"] == ["bfloat16", "float16"]
    assert all(flash_impls.IMPLS[k].backward and flash_impls.IMPLS[k].dropout for k in ("fa2", "torch"))
    assert [impl.key for impl in flash_impls.ORDER] == ["fa2", "fa4", "torch"]


# --- FA4 through the double, on the CPU ---

AREA_SHAPES = [(1, 2, 32, 8, 8, 4), (2, 3, 16, 1, 7, 1), (1, 5, 64, 5, 7, 1), (2, 2, 128, 3, 5, 1), (1, 1, 32, 1, 1, 1)]


def conv_views(b, heads, head_dim, h, w, dtype, device="cpu"):
    """q, k, v as AAttn passes them: (B, heads, head_dim, N) views of conv outputs."""
    qk = torch.randn(b, 2 * heads * head_dim, h, w, device=device).to(dtype)
    v = torch.randn(b, heads * head_dim, h, w, device=device).to(dtype)
    return tuple(heads_view(t, heads) for t in (*qk.chunk(2, dim=1), v))


def check_area(q, k, v, area, out, what):
    compute = q.dtype if q.dtype in HALF else torch.float16
    ref64 = area_attention_reference(q.double(), k.double(), v.double(), area)
    baseline = area_attention_reference(q.to(compute), k.to(compute), v.to(compute), area)
    assert out.dtype == q.dtype
    assert_flash_rule(out, ref64, baseline, what)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("shape", AREA_SHAPES, ids=str)
def test_fa4_area_attention_through_double(fa4_on_cpu, shape, dtype):
    b, heads, head_dim, h, w, area = shape
    q, k, v = conv_views(b, heads, head_dim, h, w, dtype)
    out = FlashAreaAttention.forward(q, k, v, area, head_dim**-0.5)
    check_area(q, k, v, area, out, f"fa4(double) {shape} {dtype_id(dtype)}")
    n = h * w // area
    assert fa4_on_cpu == [
        ((b * area, n, heads, head_dim), (b * area, n, heads, head_dim), dtype if dtype in HALF else torch.float16)
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("b,n,d,m", [(1, 7, 16, 4), (2, 37, 64, 8), (1, 50, 256, 12)], ids=str)
def test_fa4_hypergraph_aggregate_through_double(fa4_on_cpu, b, n, d, m, dtype):
    x = torch.randn(b, d, n).to(dtype).transpose(1, 2)
    xp, prototypes = torch.randn(b, n, d).to(dtype), torch.randn(b, m, d).to(dtype)
    scale = hypergraph_scale(d, max(d // 16, 1))
    he, lse = FlashHypergraph.aggregate(x, xp, prototypes, scale, None)
    compute = dtype if dtype in HALF else torch.float16
    he64, lse64 = hypergraph_aggregate_reference(x.double(), xp.double(), prototypes.double(), scale)
    heb, lseb = hypergraph_aggregate_reference(x.to(compute), xp.to(compute), prototypes.to(compute), scale)
    assert he.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (b, m)
    assert_flash_rule(he, he64, heb, "fa4(double) he")
    assert_flash_rule(lse, lse64, lseb, "fa4(double) lse")
    assert fa4_on_cpu == [((b, m, 1, d), (b, n, 1, d), compute)]


def test_fa4_training_calls_use_the_next_implementation(fa4_on_cpu):
    """Calls that need gradients never reach FA4 (inference-only here): the next implementation serves them."""
    choice = flash_impls.choice_for("cpu", 32, True)
    assert choice.impl is flash_impls.TORCH and "needs gradients" in choice.reason
    assert flash_impls.choice_for("cpu", 32, False).impl is flash_impls.FA4


def test_fa4_custom_op_contract(fa4_on_cpu):
    """Schema, fake (meta) implementation and dispatch of ``yolo13_attn::flash4_attention``."""
    q, k, v = (torch.randn(3, 40, 2, 32, dtype=torch.float16) for _ in range(3))
    torch.library.opcheck(torch.ops.yolo13_attn.flash4_attention.default, (q, k, v, 0.2))
    out, lse = torch.ops.yolo13_attn.flash4_attention(q, k, v, 0.2)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (3, 2, 40) and lse.dtype == torch.float32


def test_fa4_traces_into_one_graph(fa4_on_cpu):
    """torch.compile(fullgraph=True) traces the FA4 path without a graph break, the op in the graph."""
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    q, k, v = conv_views(2, 2, 32, 6, 8, torch.float16)
    eager = FlashAreaAttention.forward(q, k, v, 2, 0.17)
    compiled = torch.compile(lambda q, k, v: FlashAreaAttention.forward(q, k, v, 2, 0.17), fullgraph=True,
                             backend=recording_backend)  # fmt: skip
    torch.testing.assert_close(compiled(q, k, v), eager)
    targets = {node.target for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    op = torch.ops.yolo13_attn.flash4_attention
    assert {op, op.default} & targets, targets


def test_fa4_first_call_refused_inside_cuda_graph_capture(fa4_on_cpu, monkeypatch):
    """FA4 compiles on its first call: inside capture that call is refused with what to do."""
    monkeypatch.setattr(flash_impls, "_capturing", lambda q: True)
    q = torch.randn(2, 40, 2, 32, dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"CUDA-graph capture.*yolo13_attn.backends.flash.prepare"):
        torch.ops.yolo13_attn.flash4_attention(q, q, q, 0.2)
    monkeypatch.setattr(flash_impls, "_capturing", lambda q: False)
    torch.ops.yolo13_attn.flash4_attention(q, q, q, 0.2)  # eager: compiles (here: runs the double)
    monkeypatch.setattr(flash_impls, "_capturing", lambda q: True)
    torch.ops.yolo13_attn.flash4_attention(q, q, q, 0.2)  # compiled before: capture may record it
    long = torch.randn(1, 300, 2, 32, dtype=torch.float16)  # longer than one tile: another kernel
    with pytest.raises(RuntimeError, match="CUDA-graph capture"):
        torch.ops.yolo13_attn.flash4_attention(long, long, long, 0.2)


def test_fa4_prepare_compiles_ahead(fa4_on_cpu, monkeypatch):
    described = prepare("cpu", torch.float32, 32)
    assert described.startswith(flash_impls.FA4.kernel)
    assert [(shape[1], dtype) for shape, _, dtype in fa4_on_cpu] == [(128, torch.float16), (256, torch.float16)]
    monkeypatch.setattr(flash_impls, "_capturing", lambda q: True)  # both kernel variants may now be captured
    for n in (40, 300):
        q = torch.randn(1, n, 2, 32, dtype=torch.float16)
        torch.ops.yolo13_attn.flash4_attention(q, q, q, 0.2)


def test_fa4_prepare_does_nothing_where_fa4_does_not_serve(monkeypatch):
    calls = set_machine(monkeypatch, capability=(8, 6), cpu_fa4=True)
    assert prepare("cpu", torch.float16, 32).startswith(flash_impls.TORCH.kernel)
    assert calls == []


# --- FA4 for real: sm90/sm100 GPUs with flash-attn-4 installed ---


def _fa4_gpu_skip_reason() -> str:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    why_not = flash_impls._reasons(flash_impls.FA4, torch.device("cuda:0"), 32, False)
    return "; ".join(why_not)


FA4_GPU_SKIP = _fa4_gpu_skip_reason()
needs_fa4 = pytest.mark.skipif(bool(FA4_GPU_SKIP), reason=f"FA4 cannot run here: {FA4_GPU_SKIP}")


@pytest.fixture
def fa4_forced():
    with flash_impls.forced("fa4"):
        yield


GPU_AREA_SHAPES = [
    (1, 2, 32, 40, 40, 4),  # YOLOv13-n P4, 640x640
    (2, 12, 32, 40, 40, 4),  # YOLOv13-x P4
    (1, 4, 32, 20, 20, 1),  # YOLOv13-n P5
    (1, 6, 32, 80, 80, 4),  # YOLOv13-l P4, 1280x1280: 1600 tokens per area
    (1, 1, 32, 1, 1, 1),  # N = 1
    (3, 3, 16, 1, 7, 1),  # head_dim 16
    (1, 5, 64, 5, 7, 1),  # head_dim 64
    (2, 4, 128, 3, 5, 1),  # head_dim 128
    (1, 7, 32, 9, 13, 1),  # N = 117, 7 heads
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("shape", GPU_AREA_SHAPES, ids=str)
@pytest.mark.usefixtures("fa4_forced")
@pytest.mark.gpu
@needs_fa4
def test_fa4_area_attention_gpu(shape, dtype):
    b, heads, head_dim, h, w, area = shape
    q, k, v = conv_views(b, heads, head_dim, h, w, dtype, "cuda")
    out = area_attention(q, k, v, area, layout="bhdn", backend="flash")
    check_area(q, k, v, area, out, f"fa4 {shape} {dtype_id(dtype)}")
    assert flash_impls.choice_for(q.device, head_dim, False).impl is flash_impls.FA4  # forced: FA4 or an error


@pytest.mark.parametrize("dtype", list(HALF), ids=dtype_id)
@pytest.mark.parametrize("b,n,d,m", [(1, 1600, 64, 4), (2, 1600, 128, 8), (1, 400, 256, 8), (3, 7, 64, 12)], ids=str)
@pytest.mark.usefixtures("fa4_forced")
@pytest.mark.gpu
@needs_fa4
def test_fa4_hypergraph_aggregate_gpu(b, n, d, m, dtype):
    x = torch.randn(b, d, n, device="cuda").to(dtype).transpose(1, 2)
    xp = torch.randn(b, n, d, device="cuda").to(dtype)
    prototypes = (torch.randn(b, m, d, device="cuda") * 2 / math.sqrt(d)).to(dtype)
    scale = hypergraph_scale(d, d // 16)
    he, lse = hypergraph_aggregate(x, xp, prototypes, scale, backend="flash")
    he64, lse64 = hypergraph_aggregate_reference(x.double(), xp.double(), prototypes.double(), scale)
    heb, lseb = hypergraph_aggregate_reference(x, xp, prototypes, scale)
    assert_flash_rule(he, he64, heb, f"fa4 he B{b} N{n} D{d} M{m}")
    assert_flash_rule(lse, lse64, lseb, f"fa4 lse B{b} N{n} D{d} M{m}")
    assert flash_impls.choice_for(x.device, d, False).impl is flash_impls.FA4


@pytest.mark.gpu
@needs_fa4
def test_fa4_not_used_for_training_gpu():
    """With autograd the flash backend runs bundled FA2 (or flash-attn 2), forced FA4 declines."""
    q, k, v = (t.requires_grad_() for t in conv_views(1, 2, 32, 8, 8, torch.float16, "cuda"))
    assert flash_impls.choice_for(q.device, 32, True).impl is not flash_impls.FA4
    area_attention(q, k, v, 4, layout="bhdn", backend="flash").sum().backward()
    with flash_impls.forced("fa4"), pytest.raises(BackendUnsupportedError, match="inference-only"):
        area_attention(q, k, v, 4, layout="bhdn", backend="flash")


def attention_bshd(q, k, v):
    """Plain softmax attention in the FlashAttention layout (batch, seq, heads, 32)."""
    weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * 32**-0.5, -1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


def input_grads(fn, leaves, grad_out, dtype):
    """Gradients of ``fn`` at ``leaves`` cast to ``dtype``, for the output gradient ``grad_out``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in leaves]
    fn(*leaves).backward(grad_out.to(dtype))
    return [t.grad for t in leaves]


@pytest.mark.parametrize("bsz,n,heads", [(4, 400, 2), (8, 100, 12), (1, 1, 1)], ids=str)
@pytest.mark.gpu
@needs_fa4
def test_fa4_own_backward_for_yolov13_shapes_gpu(bsz, n, heads):
    """Evidence behind the inference-only declaration, not a path of this library: FA4's own autograd
    (eager) on YOLOv13's area-attention shapes (B*area, N/area, heads, 32), against float64 under the 2x rule."""
    func, _ = flash_impls.fa4_function()
    leaves = [torch.randn(bsz, n, heads, 32, device="cuda", dtype=torch.float16) for _ in range(3)]
    grad_out = torch.randn_like(leaves[0])
    got = input_grads(lambda q, k, v: func(q, k, v, softmax_scale=32**-0.5)[0], leaves, grad_out, torch.float16)
    ref64 = input_grads(attention_bshd, leaves, grad_out, torch.float64)
    baseline = input_grads(attention_bshd, leaves, grad_out, torch.float16)
    for name, g, r, p in zip("qkv", got, ref64, baseline):
        assert_flash_rule(g, r, p, f"FA4 own backward d{name} B{bsz} N{n} h{heads}")


@pytest.mark.gpu
@needs_fa4
def test_fa4_layer_compiles_and_captures_after_prepare_gpu():
    """A patched AAttn on FA4: the report names it; after prepare() it is captured in a CUDA graph and
    compiled by Inductor in one graph, matching eager."""
    import yolo13_attn

    layer = randomize_weights(AAttn(128, 4, area=4)).eval().cuda().half()
    x = torch.randn(2, 128, 24, 20, device="cuda", dtype=torch.half)
    with flash_impls.forced("fa4"), torch.no_grad():
        layer(x)  # unpatched: initializes cuDNN/cuBLAS outside the capture, FA4 not involved
        handle = yolo13_attn.patch(layer, "flash")
        assert all(r.kernel.startswith(flash_impls.FA4.kernel) for r in handle.report())
        assert prepare("cuda", torch.float16, 32).startswith(flash_impls.FA4.kernel)
        graph, static = torch.cuda.CUDAGraph(), x.clone()
        with torch.cuda.graph(graph):
            captured = layer(static)
        graph.replay()
        eager = layer(x)
        torch.testing.assert_close(captured, eager)
        compiled = torch.compile(layer, fullgraph=True)
        # inductor re-fuses the fp16 convolutions and adds around the attention (rounding moves by ~1 ulp)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-2, atol=1e-2)
    handle.undo()


def test_info_lists_the_flash_implementations_in_order():
    from yolo13_attn.__main__ import flash_implementations

    text = "\n".join(flash_implementations())
    positions = [text.index(impl.kernel) for impl in flash_impls.ORDER]
    assert positions == sorted(positions) and "dropout False; backward False" in text
