"""The grouped-convolution op: every backend against float64 (values and gradients), its checks, and the
patched YOLOv13 ``Conv`` layers (fused, copied, pickled, compiled, undone)."""

from __future__ import annotations

import copy
import io
import types

import pytest
import torch
import torch.nn.functional as F
from backend_cases import DEVICES, HAS_CUDA, available, dtype_id, graph_replay_kernels, skip_unless_runs
from ultralytics.nn.modules import Conv

import yolo13_attn
from yolo13_attn.backends import OpCall, get_backend, select, validate_spec
from yolo13_attn.backends.base import GROUPED_CONV
from yolo13_attn.ops import block_diagonal_weight
from yolo13_attn.testing import assert_flash_rule

BACKENDS = available(GROUPED_CONV)
#: (batch, C_in, C_out, H, W, groups, stride): odd sizes, non-square images, batch 1 and > 1
SHAPES = [(1, 6, 4, 7, 11, 2, 2), (3, 16, 24, 10, 13, 4, 1), (2, 12, 12, 9, 5, 3, 2)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(shape, device, dtype, channels_last):
    b, c_in, c_out, h, w, groups, _ = shape
    x = torch.randn(b, c_in, h, w, device=device, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, 3, 3, device=device, dtype=torch.float64) / 3
    bias = torch.randn(c_out, device=device, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, weight, bias


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_conv_equivalence(backend, device, shape, dtype, channels_last):
    """Output and the gradients of x, weight and bias within 2x of PyTorch's grouped conv in ``dtype``."""
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("float16 convolution on the CPU is not what any user runs; the GPU runs this case")
    skip_unless_runs(GROUPED_CONV, backend, device, dtype)
    stride, groups = shape[6], shape[5]
    x64, w64, b64 = (t.requires_grad_() for t in _inputs(shape, device, dtype, channels_last))
    ref64 = F.conv2d(x64, w64, b64, stride, 1, 1, groups)
    grad_out = torch.randn_like(ref64)
    ref64.backward(grad_out)

    def run(fn):
        x, w, b = (t.detach().to(dtype).requires_grad_() for t in (x64, w64, b64))
        if channels_last:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        out = fn(x, w, b)
        if out.requires_grad:
            out.backward(grad_out.to(dtype))
        return out.detach(), x.grad, w.grad, b.grad

    base = run(lambda x, w, b: F.conv2d(x, w, b, stride, 1, 1, groups))
    backward = not get_backend(GROUPED_CONV, backend).layer_reasons(OpCall.for_grouped_conv(x64, w64, b64))
    with torch.set_grad_enabled(backward):  # a backend without a backward here is checked forward only
        got = run(lambda x, w, b: yolo13_attn.grouped_conv2d(x, w, b, stride, 1, 1, groups, backend=backend))
    checks = zip(("out", "dx", "dw", "db"), got, (ref64, x64.grad, w64.grad, b64.grad), base)
    for name, out, ref, baseline in list(checks)[: 4 if backward else 1]:
        assert out.dtype == dtype and out.shape == ref.shape
        assert_flash_rule(out, ref, baseline, f"{backend} {name}")


def test_block_diagonal_weight_holds_each_group_on_the_diagonal():
    weight = torch.randn(6, 2, 3, 3)
    dense = block_diagonal_weight(weight, 3)
    assert dense.shape == (6, 6, 3, 3)
    for i in range(3):
        for j in range(3):
            block = dense[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            if i == j:
                assert torch.equal(block, weight[2 * i : 2 * i + 2])
            else:
                assert not block.any()


@pytest.mark.parametrize(
    "x_shape, w_shape, groups, error, piece",
    [
        ((2, 8, 5, 5), (4, 3, 3, 3), 2, ValueError, "needs C_in = 6"),
        ((2, 8, 5, 5), (6, 4, 3, 3), 4, ValueError, "C_out divisible by 4"),
        ((8, 5, 5), (4, 4, 3, 3), 2, ValueError, "(B, C_in, H, W)"),
        ((2, 8, 5, 5), (4, 4, 3, 3), 2.0, TypeError, "groups must be an int"),
    ],
)
def test_grouped_conv_bad_inputs_name_the_layer_and_the_rule(x_shape, w_shape, groups, error, piece):
    with pytest.raises(error, match="my.layer") as info:
        yolo13_attn.grouped_conv2d(torch.randn(x_shape), torch.randn(w_shape), groups=groups, layer="my.layer")
    assert piece in str(info.value)


def test_string_specs_serve_the_ops_their_backend_implements():
    assert set(validate_spec("auto")) == {"area", "hypergraph", GROUPED_CONV}
    assert set(validate_spec("dense")) == {GROUPED_CONV}
    assert GROUPED_CONV not in validate_spec("sdpa")
    assert set(validate_spec("naive")) == {"area", "hypergraph", GROUPED_CONV}


def _grouped_conv_groups(gm: torch.fx.GraphModule) -> list[int]:
    """The ``groups`` argument of every convolution in a dynamo graph."""
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (torch.conv2d, F.conv2d):
            found.append(node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1))
    return found


def _traced_groups(model, x, grad: bool = False) -> list[int]:
    graphs = []

    def backend(gm, _inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        torch.compile(model, backend=backend, dynamic=False)(x)
    torch._dynamo.reset()
    return [g for gm in graphs for g in _grouped_conv_groups(gm)]


def test_dense_grouped_conv_declares_no_cpu_backward():
    x, w = torch.randn(1, 4, 5, 5, requires_grad=True), torch.randn(4, 2, 3, 3)
    with pytest.raises(yolo13_attn.BackendUnsupportedError, match="no backward on the CPU"):
        yolo13_attn.grouped_conv2d(x, w, groups=2, backend="dense")


def test_dense_grouped_conv_patch_is_exact_reversible_and_follows_fuse_copies_and_pickles(yolo):
    """YOLOv13n's two grouped convs (layers 1 and 3, groups 2 and 4) on ``dense``: the traced graph holds no
    grouped convolution (proof of what ran); fused, deep-copied and pickled models behave; undo restores."""
    model, x = yolo.model, torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)[0]
    assert {2, 4} <= set(_traced_groups(model, x))
    handle = yolo13_attn.patch(model, {GROUPED_CONV: "dense"})
    rows = [r for r in handle.report() if r.op == GROUPED_CONV]
    assert [r.name for r in rows] == ["model.1", "model.3"] and {r.backend for r in rows} == {"dense"}
    assert not {2, 4} & set(_traced_groups(model, x))
    model.fuse(verbose=False)
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.model[1]) is Conv
    with torch.no_grad():
        for m in (model, copied, loaded):
            torch.testing.assert_close(m(x)[0], ref, rtol=1e-4, atol=1e-4)
    assert not {2, 4} & set(_traced_groups(copied, x))
    assert {2, 4} <= set(_traced_groups(loaded, x))  # a checkpoint holds no patched state
    handle.undo()
    assert type(model.model[1]) is Conv and "_yolo13_binding" not in vars(model.model[1])
    assert {2, 4} <= set(_traced_groups(model, x))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grad, expected", [(False, "dense"), (True, "naive")], ids=["inference", "training"])
def test_auto_takes_dense_for_cuda_inference_only(grad, expected):
    """Declared choice for a CUDA call (no GPU needed to plan it): dense where it was measured faster."""
    call = OpCall(GROUPED_CONV, torch.device("cuda"), torch.float16, 48, requires_grad=grad)
    assert select(call, "auto")[0].name == expected


def test_auto_keeps_grouped_convs_on_pytorch_on_the_cpu(yolo):
    """``dense`` costs groups x the FLOPs: ``auto`` takes it on CUDA only."""
    handle = yolo13_attn.patch(yolo, "auto")
    rows = [r for r in handle.report() if r.op == GROUPED_CONV]
    assert len(rows) == 2 and {r.backend for r in rows} == {"naive"}
    assert "dense" in " ".join(f"{r.skipped}" for r in rows)


def test_a_method_set_on_the_layer_by_the_user_survives_patching(yolo):
    """Only the layer class's own methods bound on the instance follow a patch; any other stays as set."""
    layer = yolo.model.model[1]
    layer.forward = types.MethodType(lambda self, x: x * 0, layer)
    handle = yolo13_attn.patch(yolo, {GROUPED_CONV: "dense"})
    x = torch.randn(1, layer.conv.in_channels, 8, 8)
    assert not layer(x).any()
    handle.undo()
    assert not layer(x).any()


def test_dense_grouped_conv_eager_profile_shows_the_dense_form(yolo):
    """Eager proof: the patched layer's profiled operators include the block-diagonal weight's ``where``."""
    x = torch.rand(1, 3, 64, 64)
    assert not any("where" in k for k in yolo13_attn.kernels_by_layer(yolo, x)["model.1"])
    yolo13_attn.patch(yolo, {GROUPED_CONV: "dense"})
    assert any("where" in k for k in yolo13_attn.kernels_by_layer(yolo, x)["model.1"])


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs and GPU training need a CUDA GPU")
def test_dense_grouped_conv_on_the_gpu_in_a_cuda_graph_and_compiled_training(yolo):
    """GPU proof: a CUDA-graph replay of the patched layer runs the dense form's ``where`` kernel (and equals an
    eager call); the dynamo graph of a training forward (autograd on, float16) holds no grouped convolution."""
    model = yolo.model.cuda().half().to(memory_format=torch.channels_last)
    yolo13_attn.patch(model, {GROUPED_CONV: "dense"})
    layer = model.model[1]
    static = torch.randn(2, layer.conv.in_channels, 48, 40, device="cuda", dtype=torch.half)
    kernels = graph_replay_kernels(layer, static.contiguous(memory_format=torch.channels_last))
    assert any("where" in k for k in kernels), kernels
    model.train()
    x = torch.rand(2, 3, 64, 64, device="cuda", dtype=torch.half)
    assert not {2, 4} & set(_traced_groups(model, x, grad=True))
