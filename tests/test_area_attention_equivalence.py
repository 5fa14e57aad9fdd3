"""Every available area-attention backend computes the reference function (issue 3).

flash-attn's rule throughout: max error against float64 within 2x (+ slack) of plain PyTorch in
the dtype the backend computes in. Inputs are fresh random views of conv-shaped tensors.
"""

from __future__ import annotations

import pytest
import torch
from backend_cases import AREA_BACKENDS, DEVICES, DTYPES, backend_baseline_dtype, dtype_id, skip_unless_supported

from yolo13_attn import area_attention
from yolo13_attn.backends import AREA, OpCall, flash_impls
from yolo13_attn.backends import flash as flash_backend
from yolo13_attn.nn.area_attention import heads_view
from yolo13_attn.ops.reference import area_attention_reference
from yolo13_attn.testing import assert_flash_rule

# (batch, heads, head_dim, H, W, area): YOLOv13's shapes at 640x640, then odd ones
SHAPES = [
    (1, 2, 32, 40, 40, 4),  # YOLOv13-n P4
    (2, 12, 32, 40, 40, 4),  # YOLOv13-x P4
    (1, 4, 32, 20, 20, 1),  # YOLOv13-n P5
    (1, 1, 32, 1, 1, 1),  # N = 1
    (3, 3, 16, 1, 7, 1),  # N = 7, head_dim 16
    (1, 5, 64, 5, 7, 1),  # N = 35, head_dim 64
    (3, 2, 32, 6, 6, 2),  # area 2
    (1, 12, 32, 10, 8, 4),  # N = 80 (20 per area)
    (2, 4, 128, 3, 5, 1),  # head_dim 128
    (1, 7, 32, 9, 13, 1),  # N = 117, 7 heads
]


def conv_outputs(b, heads, head_dim, h, w, dtype, device, channels_last=False):
    """q, k, v as the layer sees them: head views of a (B, 2C, H, W) qk conv output and a (B, C, H, W) v."""
    c = heads * head_dim
    qk = torch.randn(b, 2 * c, h, w, device=device).to(dtype)
    v = torch.randn(b, c, h, w, device=device).to(dtype)
    if channels_last:
        qk, v = qk.to(memory_format=torch.channels_last), v.to(memory_format=torch.channels_last)
    q, k = qk.chunk(2, dim=1)
    return tuple(heads_view(t, heads) for t in (q, k, v))


def check_forward(backend, shape, dtype, device, channels_last=False):
    b, heads, head_dim, h, w, area = shape
    q, k, v = conv_outputs(b, heads, head_dim, h, w, dtype, device, channels_last)
    call = OpCall.for_area(q, k, v)
    skip_unless_supported(AREA, backend, call)
    out = area_attention(q, k, v, area, layout="bhdn", backend=backend)
    ref64 = area_attention_reference(q.double(), k.double(), v.double(), area)
    base_dtype = backend_baseline_dtype(AREA, backend, call)
    baseline = area_attention_reference(q.to(base_dtype), k.to(base_dtype), v.to(base_dtype), area)
    assert out.dtype == dtype and out.is_contiguous()
    assert_flash_rule(out, ref64, baseline, f"{backend} {shape} {dtype_id(dtype)}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", AREA_BACKENDS)
def test_area_equivalence_forward(backend, shape, dtype, device):
    if backend == "triton" and device == "cpu" and shape[3] * shape[4] > 400:
        pytest.skip("Triton interpreter on CPU: large shapes run on the GPU only")
    check_forward(backend, shape, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", AREA_BACKENDS)
def test_area_equivalence_channels_last(backend, device):
    check_forward(backend, (2, 3, 32, 6, 10, 2), torch.float32, device, channels_last=True)


GRAD_SHAPES = [(1, 2, 32, 8, 8, 4), (3, 3, 16, 1, 7, 1), (2, 1, 64, 5, 5, 1)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=str)
@pytest.mark.parametrize("backend", AREA_BACKENDS)
def test_area_equivalence_gradients(backend, shape, dtype, device):
    b, heads, head_dim, h, w, area = shape
    leaves = [t.detach().contiguous().requires_grad_() for t in conv_outputs(b, heads, head_dim, h, w, dtype, device)]
    call = OpCall.for_area(*leaves)
    skip_unless_supported(AREA, backend, call)
    grad_out = torch.randn(b, heads, head_dim, h * w, device=device).to(dtype)

    def grads(fn, cast):
        inputs = [t.detach().to(cast).requires_grad_() for t in leaves]
        fn(*inputs).backward(grad_out.to(cast))
        return [t.grad for t in inputs]

    base_dtype = backend_baseline_dtype(AREA, backend, call)
    got = grads(lambda q, k, v: area_attention(q, k, v, area, layout="bhdn", backend=backend), dtype)
    ref64 = grads(lambda q, k, v: area_attention_reference(q, k, v, area), torch.float64)
    baseline = grads(lambda q, k, v: area_attention_reference(q, k, v, area), base_dtype)
    for name, g, r, p in zip("qkv", got, ref64, baseline):
        assert_flash_rule(g, r, p, f"{backend} d{name} {shape} {dtype_id(dtype)}")


# --- flash on CPU through a test double of flash_attn_func that enforces its contract ---


def flash_attn_func_double(q, k, v, softmax_scale=None, return_attn_probs=False, **kwargs):
    """Behaves like flash_attn.flash_attn_func and rejects what the real one rejects."""
    assert q.dim() == 4 and q.shape[0] == k.shape[0] == v.shape[0], "(batch, seqlen, heads, head_dim) expected"
    assert q.shape[2:] == k.shape[2:] == v.shape[2:] and k.shape[1] == v.shape[1]
    assert q.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype == v.dtype, (
        f"fp16/bf16 only, got {q.dtype}"
    )
    assert q.shape[-1] <= 256 and q.shape[-1] % 8 == 0, "head_dim <= 256, multiple of 8"
    assert all(t.stride(-1) == 1 for t in (q, k, v)), "last dimension must be contiguous"
    assert not kwargs.get("causal", False)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    lse = torch.logsumexp(logits, dim=-1)  # (batch, heads, seqlen_q)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, -1), v.float()).to(q.dtype)
    return (out, lse, None) if return_attn_probs else out


@pytest.fixture
def flash_double(monkeypatch):
    monkeypatch.setattr(flash_impls, "FLASH_ATTN_INSTALLED", True)
    monkeypatch.setattr(flash_impls, "flash_attn_func", lambda: flash_attn_func_double)
    monkeypatch.setattr(flash_impls, "_CHOICES", {})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[4], SHAPES[6], SHAPES[8]], ids=str)
def test_flash_equivalence_through_flash_attn_double(flash_double, shape, dtype):
    """The flash backend's layout plumbing, on CPU: fp32 is computed in fp16 like the official model."""
    b, heads, head_dim, h, w, area = shape
    q, k, v = conv_outputs(b, heads, head_dim, h, w, dtype, "cpu")
    out = flash_backend.FlashAreaAttention.forward(q, k, v, area, head_dim**-0.5)
    ref64 = area_attention_reference(q.double(), k.double(), v.double(), area)
    half = dtype if dtype != torch.float32 else torch.float16
    baseline = area_attention_reference(q.to(half), k.to(half), v.to(half), area)
    assert out.dtype == dtype
    assert_flash_rule(out, ref64, baseline, f"flash(double) {shape} {dtype_id(dtype)}")
    assert flash_impls.choice_for("cpu", head_dim, False).impl is flash_impls.FA2


def test_flash_double_rejects_wrong_layout():
    q = torch.randn(2, 8, 3, 32, dtype=torch.float16)
    with pytest.raises(AssertionError, match="contiguous"):
        flash_attn_func_double(q.transpose(1, 3).contiguous().transpose(1, 3), q, q)
    with pytest.raises(AssertionError, match="fp16/bf16"):
        flash_attn_func_double(q.float(), q.float(), q.float())
