"""Patched models compose with torch.compile (one graph, the backend's ops in it) and CUDA-graph capture."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from backend_cases import AREA_BACKENDS, HYPERGRAPH_BACKENDS, capture_cuda_graph, gpu_kernels
from ultralytics import YOLO

import yolo13_attn
from yolo13_attn.binding import exporting
from yolo13_attn.nn import AAttn, AdaHGComputation, YOLOv13Detect
from yolo13_attn.nn.head import grid_anchors
from yolo13_attn.testing import calibrate_batchnorm, randomize_weights

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and GPU kernels need a CUDA GPU")
GPU_BACKENDS = [b for b in ("sdpa", "flash", "triton") if b in AREA_BACKENDS]


@pytest.mark.parametrize("backend", sorted(set(AREA_BACKENDS) & set(HYPERGRAPH_BACKENDS) - {"cuda"}))
def test_compile_fullgraph_attention_layers(backend):
    """dynamo traces each patched layer in one graph (fullgraph=True raises on any graph break)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend in ("flash", "triton") and device == "cpu":
        pytest.skip(f"{backend} compiles for CUDA; the CPU interpreter is not a compile target")
    dtype = torch.float16 if device == "cuda" else torch.float32
    for layer, shape in ((AAttn(64, 2, area=4), (2, 64, 8, 10)), (AdaHGComputation(64, 4, 4), (2, 64, 6, 5))):
        layer = randomize_weights(layer).eval().to(device, dtype)
        yolo13_attn.patch(layer, backend)
        x = torch.randn(shape, device=device, dtype=dtype)
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), layer(x), rtol=2e-3, atol=2e-3)


def patched_yolov13n(backend: str | None, dtype: torch.dtype = torch.half) -> torch.nn.Module:
    """YOLOv13n with seeded random weights and calibrated BatchNorm, fused, on the GPU (unpatched for None)."""
    model = YOLO("yolov13n.yaml").model
    randomize_weights(model, seed=9)
    calibrate_batchnorm(model, torch.rand(2, 3, 128, 128))
    model = model.fuse().cuda().to(dtype).eval()
    if backend is not None:
        yolo13_attn.patch(model, backend)
    return model


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture_matches_eager(backend):
    model = patched_yolov13n(backend)
    static = torch.rand(2, 3, 320, 256, device="cuda", dtype=torch.half)
    with torch.no_grad():
        eager = model(static)[0].clone()
        graph, captured = capture_cuda_graph(lambda: model(static)[0], warmups=2)
        fresh = torch.rand_like(static)
        static.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        expected = model(fresh)[0]
        replayed = gpu_kernels(graph.replay)
    torch.testing.assert_close(captured, expected, rtol=1e-3, atol=1e-2)
    assert not torch.equal(captured, eager)  # the replay computed the new input
    assert ran(replayed, BACKEND_KERNELS[backend]), f"{backend} kernels missing in the replay: {sorted(set(replayed))}"


@needs_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_torch_compile_inductor_whole_model_matches_eager(backend):
    """Inductor re-fuses the convolutions and elementwise ops, which moves rounding around; with
    random weights even the unpatched model drifts visibly between eager and compiled. The patch
    must add nothing to that drift: |compiled - eager| of the patched model within 2x of the
    unpatched model's (+ slack). fp32, so the drift is rounding, not fp16 overflow."""
    x = torch.rand(2, 3, 320, 256, device="cuda")

    def drift(model):
        compiled = torch.compile(copy.deepcopy(model))
        with torch.no_grad():
            return (compiled(x)[0] - model(x)[0]).abs().max().item()

    plain, patched = drift(patched_yolov13n(None, torch.float32)), drift(patched_yolov13n(backend, torch.float32))
    assert patched <= 2 * plain + 1e-2, (
        f"compiled {backend} drifts {patched:.3g} from eager; unpatched drifts {plain:.3g}"
    )


# ---- compile vs export (CPU, every torch) -------------------------------------------------------


def traced_graphs(fn, *args, **compile_kwargs) -> tuple[list[torch.fx.GraphModule], object]:
    """Compile ``fn`` with fullgraph=True (any graph break raises) and a backend that records the graphs."""
    graphs: list[torch.fx.GraphModule] = []

    def record(gm, _example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=record, fullgraph=True, **compile_kwargs)(*args)
    return graphs, out


def called(graphs: list[torch.fx.GraphModule]) -> set[str]:
    return {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}


def test_exporting_is_false_under_torch_compile():
    """torch.compiler.is_exporting() is folded to True by dynamo on torch 2.6-2.13; exporting() is not."""
    graphs, out = traced_graphs(lambda x: x + 1 if exporting() else x - 1, torch.zeros(2))
    assert out.tolist() == [-1.0, -1.0] and len(graphs) == 1


def test_exporting_is_true_under_torch_export_and_jit_trace():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(exporting())
            return x * 2

    torch.export.export(Probe(), (torch.ones(2),))
    assert seen and all(seen)
    seen.clear()
    torch.jit.trace(Probe(), torch.ones(2), check_trace=False)
    assert seen == [True] and not exporting()


def test_torch_export_of_a_patched_layer_records_the_reference():
    layer = randomize_weights(AAttn(64, 2, area=2)).eval()
    yolo13_attn.patch(layer, "sdpa")
    program = torch.export.export(layer, (torch.rand(1, 64, 4, 6),))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("scaled_dot_product" in op or "yolo13_attn" in op for op in ops)
    assert any("softmax" in op for op in ops)


# ---- one graph for the whole model, the backend's ops inside it (CPU) -----------------------------

#: what each backend leaves in the dynamo graph on the CPU (triton runs in the Triton interpreter there)
BACKEND_OPS = {
    "naive": (),
    "sdpa": ("scaled_dot_product_attention",),
    "triton": ("yolo13_attn.triton_area_attention", "yolo13_attn.triton_hypergraph_aggregate"),
}
CPU_COMPILE_BACKENDS = [b for b in BACKEND_OPS if b == "naive" or b in AREA_BACKENDS]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU graphs; the GPU test profiles the compiled model instead")
@pytest.mark.parametrize("mode", ["eval", "eval_grad", "train"])
@pytest.mark.parametrize("backend", [None, *CPU_COMPILE_BACKENDS])
def test_yolov13n_compiles_to_one_graph_with_the_backends_ops(backend, mode):
    model = randomize_weights(YOLO("yolov13n.yaml").model, seed=5)
    if backend is not None:
        yolo13_attn.patch(model, backend)
    model.train(mode == "train")
    x = torch.rand(1, 3, 64, 96)
    with torch.set_grad_enabled(mode != "eval"):
        graphs, out = traced_graphs(model, x)  # cold start: no eager call before
    ops = called(graphs)
    assert len(graphs) == 1
    expected = BACKEND_OPS[backend or "naive"]
    assert all(any(name in op for op in ops) for name in expected), f"{expected} not in the graph: {sorted(ops)}"
    assert not any("yolo13_attn" in op for op in ops) or backend == "triton"
    reference_ops = {"sdpa": ("softmax",), "triton": ("softmax", "logsumexp")}.get(backend, ())
    assert not any(name in op for op in ops for name in reference_ops), "the reference's math is in the graph"
    if mode == "eval":
        with torch.no_grad():
            torch.testing.assert_close(out[0], model(x)[0], rtol=1e-4, atol=1e-3)


def test_compiled_model_follows_repatching():
    """Re-patching changes what the compiled model runs (dynamo guards on the patch state)."""
    model = randomize_weights(YOLO("yolov13n.yaml").model, seed=5).eval()
    graphs: list = []
    compiled = torch.compile(model, backend=lambda gm, _: graphs.append(gm) or gm.forward, fullgraph=True)
    torch._dynamo.reset()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        handle = yolo13_attn.patch(model, "sdpa")
        compiled(x)
        handle.undo()
        compiled(x)
    assert any("scaled_dot_product" in op for op in called(graphs[:1]))
    assert not any("scaled_dot_product" in op for op in called(graphs[1:])) and len(graphs) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_grid_anchors_equal_ultralytics_make_anchors(dtype):
    from ultralytics.utils.tal import make_anchors

    feats = [torch.rand(2, 3, h, w, dtype=dtype) for h, w in ((80, 60), (40, 30), (20, 15))]
    strides = torch.tensor([8.0, 16.0, 32.0])
    anchors, scales = grid_anchors(feats, strides)
    expected_anchors, expected_scales = make_anchors(feats, strides, 0.5)
    assert torch.equal(anchors, expected_anchors.transpose(0, 1)) and torch.equal(
        scales, expected_scales.transpose(0, 1)
    )


def test_only_yolov13_models_get_the_traceable_head(tmp_path):
    """YOLOv13 (built or loaded) has YOLOv13Detect, saved as stock Detect; YOLO11 keeps stock Detect."""
    from ultralytics.nn.modules.head import Detect

    yolo = YOLO("yolov13n.yaml")
    assert type(yolo.model.model[-1]) is YOLOv13Detect
    yolo.save(tmp_path / "m.pt")
    assert type(YOLO(str(tmp_path / "m.pt")).model.model[-1]) is YOLOv13Detect
    assert type(copy.deepcopy(yolo.model).model[-1]) is YOLOv13Detect
    assert type(YOLO("yolo11n.yaml").model.model[-1]) is Detect


# ---- GPU: the compiled model runs the backend's kernels ----------------------------------------

#: substrings of the GPU kernel names each backend launches (fp16, head_dim 32, on sm80+)
BACKEND_KERNELS = {
    "triton": ("area_attention_fwd_kernel", "hypergraph_aggregate_partial_kernel", "hypergraph_scatter_kernel"),
    "flash": ("flash",),
    "sdpa": ("flash|fmha|cudnn|attention",),
}
TRAIN_KERNELS = {"triton": ("area_attention_bwd_dq_kernel", "hypergraph_bwd_kernel"), "flash": ("flash",)}


def ran(kernels: list[str], patterns: tuple[str, ...]) -> bool:
    return all(any(alt in k.lower() for k in kernels for alt in p.lower().split("|")) for p in patterns)


@needs_cuda
@pytest.mark.parametrize(
    "backend, compile_kwargs",
    [
        ("triton", {}),
        ("flash", {}),
        ("sdpa", {}),
        ("triton", {"mode": "reduce-overhead"}),
        ("triton", {"dynamic": True, "fullgraph": True}),
    ],
)
def test_compiled_patched_model_runs_the_backends_kernels(backend, compile_kwargs):
    """Profile one call of the inductor-compiled model: the backend's own kernels ran, inductor's
    fused softmax over the reference math did not (the unpatched model's attention shows up as
    ``softmax`` kernels). The numbers are checked by the fp32 drift test above (in fp16 with random
    weights inductor's re-fusion alone moves a few box coordinates by whole pixels)."""
    torch._dynamo.reset()
    model = patched_yolov13n(backend)
    compiled = torch.compile(model, **compile_kwargs)
    x = torch.rand(2, 3, 320, 256, device="cuda", dtype=torch.half)
    with torch.no_grad():
        for _ in range(3):  # compile (cold), then reduce-overhead's recording and CUDA-graph runs
            compiled(x)
        kernels = gpu_kernels(lambda: compiled(x))
    assert ran(kernels, BACKEND_KERNELS[backend]), f"{backend} kernels missing under compile: {sorted(set(kernels))}"
    assert softmax_launches(kernels) <= DFL_SOFTMAX, "inductor ran the reference's softmax for attention layers"


#: softmax launches of the detection head's DFL that inductor may emit (the attention's are 10 more)
DFL_SOFTMAX = 2


def softmax_launches(kernels: list[str]) -> int:
    return sum("softmax" in k for k in kernels)


@needs_cuda
def test_unpatched_compiled_model_runs_softmax_kernels_for_its_attention():
    """What the check above rules out: compiled without a patch, the attention is inductor's softmax."""
    torch._dynamo.reset()
    compiled = torch.compile(patched_yolov13n(None))
    x = torch.rand(2, 3, 320, 256, device="cuda", dtype=torch.half)
    with torch.no_grad():
        compiled(x)
        kernels = gpu_kernels(lambda: compiled(x))
    assert softmax_launches(kernels) > DFL_SOFTMAX + 4, sorted(set(kernels))


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "flash"])
def test_max_autotune_compiled_layers_run_the_backends_kernels(backend):
    """max-autotune (minutes for a whole model) on the attention layers alone."""
    torch._dynamo.reset()
    for layer, shape in ((AAttn(64, 2, area=4), (2, 64, 16, 20)), (AdaHGComputation(64, 4, 4), (2, 64, 16, 20))):
        layer = randomize_weights(layer).eval().cuda().half()
        yolo13_attn.patch(layer, backend if backend == "triton" or isinstance(layer, AAttn) else "triton")
        compiled = torch.compile(layer, mode="max-autotune-no-cudagraphs", fullgraph=True)
        x = torch.randn(shape, device="cuda", dtype=torch.half)
        with torch.no_grad():
            compiled(x)
            kernels = gpu_kernels(functools.partial(compiled, x))
        expected = BACKEND_KERNELS[backend][:1] if isinstance(layer, AAttn) else BACKEND_KERNELS["triton"][1:]
        assert ran(kernels, expected), sorted(set(kernels))
        assert softmax_launches(kernels) == 0


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "flash"])
def test_compiled_training_step_runs_the_backends_kernels(backend):
    """Train mode, cold compile, fullgraph: forward and backward run the backend's kernels."""
    torch._dynamo.reset()
    model = YOLO("yolov13n.yaml").model.cuda().train()
    spec = backend if backend == "triton" else {"area": backend, "hypergraph": "triton"}
    yolo13_attn.patch(model, spec)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.rand(2, 3, 256, 256, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            out = compiled(x)
        (out["boxes"].float().sum() + out["scores"].float().sum()).backward()

    step()
    kernels = gpu_kernels(step)
    assert ran(kernels, BACKEND_KERNELS[backend] + TRAIN_KERNELS[backend]), sorted(set(kernels))
    assert softmax_launches(kernels) == 0, "the reference's softmax ran (train mode has no DFL)"


@needs_cuda
def test_ultralytics_predict_compile_option_runs_the_backends_kernels():
    """``YOLO.predict(..., compile=True)``: Ultralytics compiles the patched model; its kernels run."""
    from ultralytics.utils import ASSETS

    torch._dynamo.reset()
    yolo = YOLO("yolov13n.yaml")
    randomize_weights(yolo.model, seed=9)
    yolo13_attn.patch(yolo, "triton")
    args = {"imgsz": 256, "device": 0, "half": True, "compile": True, "verbose": False}
    yolo.predict(ASSETS / "bus.jpg", **args)  # compiles
    kernels = gpu_kernels(lambda: yolo.predict(ASSETS / "bus.jpg", **args))
    assert ran(kernels, BACKEND_KERNELS["triton"]), sorted(set(kernels))
    assert softmax_launches(kernels) <= DFL_SOFTMAX


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU graphs; the GPU tests profile compiled models instead")
@pytest.mark.parametrize("scale", ["s", "l", "x"])
def test_every_scale_compiles_to_one_graph_patched(scale):
    """Cold start, fullgraph: s/l/x (n is covered above) with the hypergraph and area ops patched."""
    model = YOLO(f"yolov13{scale}.yaml").model.eval()
    yolo13_attn.patch(model, "sdpa")
    with torch.no_grad():
        graphs, _ = traced_graphs(model, torch.rand(1, 3, 64, 64))
    assert len(graphs) == 1 and any("scaled_dot_product" in op for op in called(graphs))
