"""The ``cuda`` backend: its declaration, the extension loader's answers, and (on a GPU) the CUDA C++ area
attention against the float64 reference with the flash rule, gradients included, on odd shapes and both conv
layouts; outputs come from NaN-poisoned memory; torch.compile and CUDA-graph capture run the kernels.

The compile-only check of ``csrc/`` with nvcc (no GPU) is a CI step: ``python -m yolo13_attn.cuda_ops
--compile-only`` (``.ci/run``).
"""

from __future__ import annotations

import functools
import importlib.util
import shutil

import pytest
import torch
from backend_cases import assert_bad_calls_raise, dtype_id, extension_kernels, gpu_kernels, graph_replay_kernels

import yolo13_attn
from yolo13_attn.backends import AREA, HYPERGRAPH, OpCall, get_backend
from yolo13_attn.cuda_ops import build
from yolo13_attn.cuda_ops.area import RESIDENT_KERNELS, RESIDENT_MAX_TOKENS
from yolo13_attn.nn import AAttn
from yolo13_attn.ops.reference import area_attention_reference
from yolo13_attn.testing import assert_flash_rule, randomize_weights

CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
AREA_BACKEND = get_backend(AREA, "cuda")
HALF = [torch.float16, torch.bfloat16]


# ---- declaration and loader (CPU) ---------------------------------------------------------------------------


def _call(dtype=torch.float16, head_dim=32, device="cuda", grad=False) -> OpCall:
    return OpCall(AREA, torch.device(device), dtype, head_dim, grad)


def test_area_declaration_is_what_the_kernels_serve():
    caps = AREA_BACKEND.capabilities()
    assert caps["devices"] == ["cuda"] and caps["dtypes"] == ["bfloat16", "float16"]
    assert caps["head_dim"] == [32, 32] and caps["backward"] is True
    assert any("head_dim 64" in r for r in AREA_BACKEND.layer_reasons(_call(head_dim=64)))
    assert any("dtype float32" in r for r in AREA_BACKEND.environment_reasons(_call(torch.float32)))
    assert any("device 'cpu'" in r for r in AREA_BACKEND.environment_reasons(_call(device="cpu")))


def test_hypergraph_declaration_refuses_while_its_kernels_are_absent():
    backend = get_backend(HYPERGRAPH, "cuda")
    assert backend.supports_backward is False
    if importlib.util.find_spec("yolo13_attn.cuda_ops.hypergraph") is None:
        assert any("no CUDA hypergraph kernels" in r for r in backend.availability_reasons())


@pytest.mark.skipif(CUDA, reason="checks the answer on a machine without a GPU")
def test_without_gpu_the_backend_says_so_without_building():
    assert build.availability_reasons() == ["no CUDA device visible to PyTorch"]
    assert AREA_BACKEND.availability_reasons() == ["no CUDA device visible to PyTorch"]
    with pytest.raises(build.CudaExtensionError, match="needs a CUDA device"):
        build.load_extension()


def test_missing_compiler_and_ninja_are_named(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path))  # a folder without bin/nvcc
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reasons = build.compiler_reasons()
    assert any("no CUDA compiler found (set CUDA_HOME" in r for r in reasons), reasons
    assert any("ninja not found" in r for r in reasons), reasons
    with pytest.raises(build.CudaExtensionError, match="cannot build the CUDA extension: .*set CUDA_HOME"):
        build.jit_build("90", tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "prebuilt_installed", lambda: False)
    monkeypatch.setattr(build, "_STATE", {})  # as in a process that has not loaded the extension
    assert all(r.startswith("not built and ") for r in build.availability_reasons())
    assert "no just-in-time build possible" in build.build_info()


def test_sources_ship_and_the_cache_key_follows_them(tmp_path):
    folder = build.source_dir()
    assert folder is not None and {p.name for p in build.sources(folder)} >= {
        "area_attention_fwd.cu",
        "area_attention_bwd.cu",
        "module.cpp",
    }
    copy = tmp_path / "csrc"
    shutil.copytree(folder, copy)
    key = build.build_key(copy, "90")
    assert key.startswith(f"torch{torch.__version__.replace('+', '_')}-cu{torch.version.cuda}-sm90-")
    (copy / "area_attention_fwd.cu").write_text((copy / "area_attention_fwd.cu").read_text() + "\n// edited\n")
    assert build.build_key(copy, "90") != key and build.build_key(copy, "80") != build.build_key(copy, "90")


def test_info_reports_the_build():
    from yolo13_attn.__main__ import environment

    assert environment()["cuda extension"] == build.build_info()


# ---- GPU: equivalence ------------------------------------------------------------------------------------


def _qkv(b, heads, h, w, dtype, seed, channels_last=False):
    """q, k, v as per-head (B, heads, 32, N) views of one (B, 3C, H, W) conv output."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn((b, 3 * heads * 32, h, w), generator=gen).to("cuda", dtype)
    if channels_last:
        base = base.contiguous(memory_format=torch.channels_last)
    c = heads * 32
    return tuple(base[:, i * c : (i + 1) * c].unflatten(1, (heads, 32)).flatten(3) for i in range(3)), base


def poisoned_call(fn, *args):
    """``fn(*args)`` with every tensor it allocates for its outputs taken from NaN-filled memory: a dry run
    learns the output sizes, NaN tensors of those sizes are allocated and freed, and the real call must get
    exactly those blocks back from PyTorch's caching allocator (asserted), so an unwritten element stays NaN."""
    sizes = [(o.shape, o.dtype) for o in fn(*args)]
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    poison = [torch.full(shape, float("nan"), dtype=dtype, device="cuda") for shape, dtype in sizes]
    pointers = [t.data_ptr() for t in poison]
    del poison
    outs = fn(*args)
    assert [o.data_ptr() for o in outs] == pointers, "outputs did not reuse the poisoned memory"
    return outs


def _lse64(q, k, area, scale):
    """Base-2 log-sum-exp of the scaled logits per query, float64, (B, heads, N)."""
    b, h, d, n = q.shape
    qa, ka = (t.double().unflatten(3, (area, n // area)).permute(0, 1, 3, 4, 2) for t in (q, k))  # (B, h, area, L, d)
    logits = qa @ ka.transpose(-1, -2) * scale
    return (torch.logsumexp(logits, dim=-1) / torch.log(torch.tensor(2.0, dtype=torch.float64))).flatten(2)


# (B, heads, H, W, area, channels_last): chunk lengths 1, 7, 21, 100, 104, 400, 1600; ragged 64-token tiles
AREA_CASES = [
    (1, 1, 1, 1, 1, False),  # L = 1
    (3, 2, 1, 7, 1, False),  # L = 7, token stride 1 but not 16-byte copyable
    (2, 3, 1, 7, 1, True),  # L = 7, channels-last
    (2, 3, 7, 9, 3, False),  # N = 63, L = 21
    (1, 2, 5, 80, 4, False),  # L = 100
    (2, 2, 13, 8, 1, True),  # L = 104, channels-last
    (2, 2, 13, 8, 1, False),  # L = 104
    (2, 12, 40, 40, 4, False),  # YOLOv13-x P4 at 640: L = 400
    (1, 2, 40, 40, 4, True),  # L = 400, channels-last
    (1, 2, 20, 20, 1, False),  # P5: L = 400, area 1
    (1, 2, 80, 80, 4, False),  # P4 at 1280: L = 1600
    (1, 1, 40, 40, 1, True),  # L = 1600, channels-last
]


def _case_id(case):
    b, heads, h, w, area, cl = case
    return f"B{b}-h{heads}-N{h * w}-L{h * w // area}" + ("-cl" if cl else "")


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c), marks=gpu) for c in AREA_CASES])
def test_cuda_area_forward_equivalence(case, dtype):
    b, heads, h, w, area, cl = case
    (q, k, v), _ = _qkv(b, heads, h, w, dtype, seed=1, channels_last=cl)
    scale = 32**-0.5
    ref64 = area_attention_reference(q.double(), k.double(), v.double(), area, scale)
    baseline = area_attention_reference(q, k, v, area, scale)
    out, lse = poisoned_call(yolo13_attn.cuda_ops.area_attention_forward, q, k, v, area, scale)
    what = f"cuda area forward {_case_id(case)} {dtype_id(dtype)}"
    assert out.dtype == dtype and out.is_contiguous() and lse.dtype == torch.float32
    assert_flash_rule(out, ref64, baseline, what)
    assert bool(torch.isfinite(lse).all()), f"{what}: lse has unwritten (NaN) elements"
    torch.testing.assert_close(lse.double(), _lse64(q, k, area, scale), rtol=0, atol=2e-3)
    # the public op through the backend (custom op with autograd) gives the same
    public = yolo13_attn.area_attention(q, k, v, area, layout="bhdn", backend="cuda")
    assert_flash_rule(public, ref64, baseline, what + " (public op)")


# every forward kernel on ragged (L = 21, 100), copyable (L = 104, 400) and long (1600) chunks, both layouts
KERNEL_CASES = [AREA_CASES[i] for i in (4, 5, 6, 7, 9, 10)]
EXP_MODES = [pytest.param(m, id=f"exp{m}") for m in sorted(yolo13_attn.cuda_ops.EXP_MODES)]


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("exp_mode", EXP_MODES)
@pytest.mark.parametrize("kernel", sorted(yolo13_attn.cuda_ops.FORWARD_KERNELS))
@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c), marks=gpu) for c in KERNEL_CASES])
def test_cuda_area_each_forward_kernel_equivalence(case, kernel, exp_mode, dtype):
    """Each forward kernel (the automatic choice runs one of them per shape) in each exponential mode:
    NaN-poisoned outputs, flash rule against float64; the resident kernel refuses long chunks."""
    b, heads, h, w, area, cl = case
    (q, k, v), _ = _qkv(b, heads, h, w, dtype, seed=6, channels_last=cl)
    scale = 32**-0.5
    fwd = functools.partial(yolo13_attn.cuda_ops.area_attention_forward, kernel=kernel, exp_mode=exp_mode)
    if kernel in RESIDENT_KERNELS and h * w // area > RESIDENT_MAX_TOKENS:
        with pytest.raises(ValueError, match="resident kernel takes chunks of at most 640"):
            fwd(q, k, v, area, scale)
        return
    out, lse = poisoned_call(fwd, q, k, v, area, scale)
    what = f"cuda area forward kernel {kernel} exp mode {exp_mode} {_case_id(case)} {dtype_id(dtype)}"
    ref64 = area_attention_reference(q.double(), k.double(), v.double(), area, scale)
    assert_flash_rule(out, ref64, area_attention_reference(q, k, v, area, scale), what)
    torch.testing.assert_close(lse.double(), _lse64(q, k, area, scale), rtol=0, atol=2e-3, msg=what)


# Malformed calls of the C++ area-attention ops themselves (past the Python checks), each with a piece of its
# expected message; run by a child process.
_BAD_AREA_CALLS = r"""
import torch
from yolo13_attn.cuda_ops import area

area.ensure_loaded()
fwd, cfg = torch.ops.yolo13_attn.cuda_area_attention, torch.ops.yolo13_attn.cuda_area_attention_config
bwd = torch.ops.yolo13_attn.cuda_area_attention_backward
q = torch.randn(2, 3, 32, 40, device="cuda", dtype=torch.half)
o, lse = cfg(q, q, q, 4, 0.2, 0, -1)
calls = [
    ("area", "N=40 is not divisible by area=3", lambda: fwd(q, q, q, 3, 0.2)),
    ("head-dim", "head_dim must be 32", lambda: fwd(q[:, :, :16], q[:, :, :16], q[:, :, :16], 4, 0.2)),
    ("float32", "dtype must be float16 or bfloat16", lambda: fwd(q.float(), q.float(), q.float(), 4, 0.2)),
    ("cpu", "'CPU' backend", lambda: fwd(q.cpu(), q.cpu(), q.cpu(), 4, 0.2)),
    ("rank", "must be 4-D", lambda: fwd(q[0], q[0], q[0], 4, 0.2)),
    ("k-shape", "k has shape", lambda: fwd(q, q[:1], q, 4, 0.2)),
    ("scale", "scale must be finite and > 0", lambda: fwd(q, q, q, 4, float("inf"))),
    ("kernel", "), got 99", lambda: cfg(q, q, q, 4, 0.2, 99, 2)),
    ("exp-mode", "exp_mode must be -1, 0, 1 or 2, got 7", lambda: cfg(q, q, q, 4, 0.2, 0, 7)),
    ("lse", "lse", lambda: bwd(o, q, q, q, o, lse.double(), 4, 0.2)),
]
"""


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_area_ops_bad_inputs_raise_clear_errors():
    """Every malformed call of the C++ area ops raises a RuntimeError naming the constraint (their checks build
    messages without C++ streams, csrc/checks.cuh: a failing check used to crash the process)."""
    assert_bad_calls_raise(_BAD_AREA_CALLS, 10)


GRAD_CASES = [c for c in AREA_CASES if c[2] * c[3] // c[4] <= 400]


@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(c), marks=gpu) for c in GRAD_CASES])
def test_cuda_area_gradient_equivalence(case, dtype):
    """dq, dk, dv through autograd, q/k/v being strided views of one conv output (its gradient holds all three)."""
    b, heads, h, w, area, cl = case
    _, base = _qkv(b, heads, h, w, dtype, seed=2, channels_last=cl)
    grad = torch.randn((b, heads, 32, h * w), generator=torch.Generator().manual_seed(3)).cuda()
    scale = 32**-0.5
    c = heads * 32

    def run(fn, base_in):
        leaf = base_in.detach().clone().requires_grad_(True)
        q, k, v = (leaf[:, i * c : (i + 1) * c].unflatten(1, (heads, 32)).flatten(3) for i in range(3))
        out = fn(q, k, v, area, scale)
        out.backward(grad.to(out.dtype))
        return out.detach(), leaf.grad

    out, dbase = run(AREA_BACKEND.forward, base)
    ref64, dref64 = run(area_attention_reference, base.double())
    baseline, dbaseline = run(area_attention_reference, base)
    what = f"{_case_id(case)} {dtype_id(dtype)}"
    assert_flash_rule(out, ref64, baseline, f"cuda area forward {what}")
    for i, name in enumerate("qkv"):
        sl = slice(i * c, (i + 1) * c)
        assert_flash_rule(dbase[:, sl], dref64[:, sl], dbaseline[:, sl], f"cuda area d{name} {what}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("dtype", HALF, ids=dtype_id)
@pytest.mark.parametrize("shape", [(2, 3, 3, 26, 2), (1, 2, 40, 40, 4)], ids=["L39", "L400"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_area_backward_op_writes_everything_equivalence(shape, dtype, channels_last):
    """The backward op fills its (NaN-poisoned) dq/dk/dv completely; a strided (non-contiguous) grad_out too."""
    b, heads, h, w, area = shape
    (q, k, v), _ = _qkv(b, heads, h, w, dtype, seed=4, channels_last=channels_last)
    gen = torch.Generator().manual_seed(5)
    do = torch.randn((b, h * w, heads, 32), generator=gen).to("cuda", dtype).permute(0, 2, 3, 1)  # token stride 32h
    scale = 32**-0.5
    out, lse = yolo13_attn.cuda_ops.area_attention_forward(q, k, v, area, scale)
    grads = poisoned_call(yolo13_attn.cuda_ops.area_attention_backward, do, q, k, v, out, lse, area, scale)

    def ref_grads(*inputs):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        area_attention_reference(*leaves, area, scale).backward(do.to(leaves[0].dtype))
        return [leaf.grad for leaf in leaves]

    g64, gbase = ref_grads(*(t.double() for t in (q, k, v))), ref_grads(q, k, v)
    for name, got, ref, base in zip("qkv", grads, g64, gbase):
        assert got.is_contiguous() and got.dtype == dtype
        assert_flash_rule(got, ref, base, f"cuda area backward op d{name} {shape} {dtype_id(dtype)}")


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda q: (q, q, q, 3), "N=16 is not divisible by area=3"),
        (lambda q: (q.float(), q.float(), q.float(), 1), "float16 or bfloat16"),
        (lambda q: (q[:, :, :16], q[:, :, :16], q[:, :, :16], 1), r"head_dim \(32,\), got 16"),
        (lambda q: (q[0], q[0], q[0], 1), "must share one"),
        (lambda q: (q, q[:, :1], q, 1), "must share one"),
        (lambda q: (q.cpu(), q.cpu(), q.cpu(), 1), "one CUDA device"),
    ],
    ids=["area", "dtype", "head-dim", "rank", "shape", "cpu"],
)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_bad_inputs_raise_clear_errors(change, error):
    (q, _, _), _ = _qkv(1, 2, 4, 4, torch.float16, seed=6)
    *qkv, area = change(q)
    for entry in (yolo13_attn.cuda_ops.area_attention_forward, yolo13_attn.cuda_ops.area_attention):
        with pytest.raises(ValueError, match=error):
            entry(*qkv, area, 0.1)
    with pytest.raises(ValueError, match="scale must be finite"):
        yolo13_attn.cuda_ops.area_attention(q, q, q, 1, float("nan"))


# ---- GPU: torch.compile and CUDA graphs ------------------------------------------------------------------


def _patched_aattn(dtype=torch.float16):
    layer = randomize_weights(AAttn(128, 4, area=4)).eval().to("cuda", dtype)  # head_dim 32
    yolo13_attn.patch(layer, {"area": "cuda"})
    return layer


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_backend_compiles_fullgraph_and_runs_its_kernel():
    layer = _patched_aattn()
    x = torch.randn(2, 128, 20, 16, device="cuda", dtype=torch.float16)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        expected = layer(x)
        # inductor re-fuses the convolutions around the op (fp16 rounding moves): a loose bound here, the
        # kernel's own accuracy is checked above
        torch.testing.assert_close(compiled(x), expected, rtol=1e-2, atol=1e-2)
        kernels = gpu_kernels(lambda: compiled(x))
    assert any("area_attention_fwd_" in k for k in extension_kernels(kernels)), sorted(set(kernels))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_backend_captures_into_a_cuda_graph():
    layer = _patched_aattn()
    static = torch.randn(2, 128, 20, 16, device="cuda", dtype=torch.float16)
    kernels = graph_replay_kernels(layer, static)
    assert any("area_attention_fwd_" in k for k in extension_kernels(kernels)), sorted(set(kernels))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_training_step_compiles_and_runs_the_backward_kernels():
    layer = randomize_weights(AAttn(128, 4, area=4)).train().to("cuda", torch.bfloat16)
    yolo13_attn.patch(layer, {"area": "cuda"})
    x = torch.randn(2, 128, 20, 16, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(layer, fullgraph=True)
    kernels = gpu_kernels(lambda: compiled(x).float().square().mean().backward())
    for name in ("area_attention_fwd_", "area_attention_bwd_dkdv_kernel", "area_attention_bwd_dq_kernel"):
        assert any(name in k for k in extension_kernels(kernels)), (name, sorted(set(kernels)))
