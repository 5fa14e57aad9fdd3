"""patch()/unpatch(): per-model, reversible, reported, refusing with reasons (issues 3 and 4)."""

from __future__ import annotations

import copy
import io
import zipfile

import pytest
import torch
from backend_cases import count_calls
from tiny_dataset import tiny_dataset, train_tiny
from torch import nn
from ultralytics import YOLO

import yolo13_attn
from yolo13_attn import BackendUnsupportedError, patch, unpatch
from yolo13_attn.nn import AAttn, AdaHGComputation, AdaHGConv
from yolo13_attn.testing import randomize_weights


def test_patch_reports_every_layer_with_kernel_dtype_and_why(yolo):
    handle = patch(yolo, "sdpa")
    rows = [r for r in handle.report() if r.op != "grouped_conv"]  # sdpa has no grouped convolution
    assert len(rows) == 10 and {r.op for r in rows} == {"area", "hypergraph"}
    assert all(
        r.backend == "sdpa" and r.kernel.startswith("sdpa/") and r.compute_dtype == "float32" and r.why for r in rows
    )
    assert "model.6.m.0.0.attn" in str(handle) and "model.9.branch1.m.hgnn" in str(handle)


def test_two_models_patched_differently_coexist(monkeypatch, yolo):
    other = YOLO("yolov13n.yaml")
    patch(yolo, "sdpa")
    patch(other, "naive")
    sdpa_calls, naive_calls = count_calls(monkeypatch, "area", "sdpa"), count_calls(monkeypatch, "area", "naive")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        yolo.model(x)
        assert (len(sdpa_calls), len(naive_calls)) == (8, 0)
        other.model.eval()(x)
    assert (len(sdpa_calls), len(naive_calls)) == (8, 8)
    assert type(yolo.model.model[6].m[0][0].attn) is type(other.model.model[6].m[0][0].attn)  # one patched class
    assert yolo.model.model[6].m[0][0].attn.binding.requested == "sdpa"


def test_undo_unpatch_and_context_manager_restore_the_original(yolo):
    layer = yolo.model.model[6].m[0][0].attn
    handle = patch(yolo, "sdpa")
    assert type(layer) is not AAttn
    handle.undo()
    assert type(layer) is AAttn and "_yolo13_binding" not in layer.__dict__
    with patch(yolo.model, {"hypergraph": "sdpa"}) as ctx:
        assert type(yolo.model.model[9].branch1.m.hgnn) is not AdaHGConv and type(layer) is AAttn
        assert {r.backend for r in ctx.report() if r.op == "area"} == {"naive (unpatched)"}
    assert type(yolo.model.model[9].branch1.m.hgnn) is AdaHGConv
    patch(yolo, "sdpa")
    assert unpatch(yolo) == 10 and type(layer) is AAttn


def test_patch_survives_deepcopy_fuse_half_and_to(monkeypatch, yolo):
    patch(yolo, "sdpa")
    clone = copy.deepcopy(yolo.model)
    assert clone.model[6].m[0][0].attn.binding.requested == "sdpa"
    yolo.fuse()
    yolo.model.half().float().to("cpu")
    calls = count_calls(monkeypatch, "area", "sdpa")
    with torch.no_grad():
        yolo.model(torch.rand(1, 3, 64, 64))
        clone(torch.rand(1, 3, 64, 64))
    assert len(calls) == 16


def test_checkpoint_of_patched_model_holds_no_patched_state(yolo, tmp_path):
    patch(yolo, "sdpa")
    yolo.save(tmp_path / "patched.pt")
    with zipfile.ZipFile(tmp_path / "patched.pt") as archive:
        raw = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    # no reference to our modules (the only mention of the package is the name check's "import yolo13_attn" message)
    assert b"yolo13_attn." not in raw and b"Binding" not in raw
    loaded = YOLO(str(tmp_path / "patched.pt")).model
    assert type(loaded.model[6].m[0][0].attn) is AAttn
    buffer = io.BytesIO()
    torch.save(copy.deepcopy(yolo.model), buffer)  # a deep copy is patched, its pickle is not
    assert b"yolo13_attn." not in buffer.getvalue()


def test_predict_runs_on_the_patched_backend(monkeypatch, yolo):
    from ultralytics.utils import ASSETS

    patch(yolo, "sdpa")
    calls = count_calls(monkeypatch, "area", "sdpa")
    yolo.predict(ASSETS / "bus.jpg", imgsz=64, verbose=False)
    assert calls and len(calls) % 8 == 0  # 8 layers per forward (GPU predictors add a warm-up forward)


def test_unknown_backend_lists_valid_names(yolo):
    with pytest.raises(ValueError, match="valid backends: auto, naive, sdpa, flash, cuda, triton"):
        patch(yolo, "cudnn")
    with pytest.raises(ValueError, match="unknown op"):
        patch(yolo, {"conv": "sdpa"})


def test_flash_on_cpu_model_raises_with_reasons(yolo):
    """Without a CUDA device flash is refused at patch time; with one, a CPU model may be patched
    (it runs once moved to the GPU) and a call left on the CPU raises naming the layer."""
    error = r"model\.6\.m\.0\.0\.attn: backend 'flash' cannot serve.*device 'cpu'"
    if torch.cuda.is_available():
        patch(yolo, "flash")
        with pytest.raises(BackendUnsupportedError, match=error), torch.no_grad():
            yolo.model(torch.rand(1, 3, 64, 64))
        return
    with pytest.raises(BackendUnsupportedError, match=error):
        patch(yolo, "flash")
    assert type(yolo.model.model[6].m[0][0].attn) is AAttn  # nothing half-patched


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the cuda backend runs (tests/test_cuda_backend.py)")
def test_cuda_backend_without_gpu_is_refused_by_the_registry_not_an_import_error(yolo):
    with pytest.raises(BackendUnsupportedError, match="backend 'cuda'.*no CUDA device visible"):
        patch(yolo, "cuda")


def test_model_without_attention_layers_warns():
    with pytest.warns(UserWarning, match="no layers to patch"):
        patch(nn.Sequential(nn.Conv2d(3, 3, 1)), "sdpa")


def test_auto_says_its_choice_in_one_line_per_model_without_logging_setup(yolo, capfd):
    patch(yolo, "auto")
    with torch.no_grad():
        yolo.model(torch.rand(1, 3, 64, 64))
        yolo.model(torch.rand(1, 3, 64, 64))
    lines = [line for line in capfd.readouterr().err.splitlines() if "auto patched" in line]
    assert (
        len(lines) == 1 and "area x8 on cpu/float32 -> " in lines[0] and "hypergraph x2 on cpu/float32 -> " in lines[0]
    )
    assert "declared priority (no measurements" in lines[0]  # the CPU is not in the measured table: the reason says so


def test_environment_variable_sets_the_default(monkeypatch, yolo):
    monkeypatch.setenv("YOLO13_ATTN_BACKEND", "naive")
    assert {r.backend for r in patch(yolo).report()} == {"naive"}


def test_yolo12_aattn_patched_matches_stock():
    model = randomize_weights(YOLO("yolo12n.yaml").model, seed=3).eval()
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        expected = model(x)[0]
        handle = patch(model, "naive")
        assert len(handle.report()) == 8 and all(r.op == "area" for r in handle.report())
        torch.testing.assert_close(model(x)[0], expected, rtol=1e-4, atol=1e-4)


def test_bad_input_names_the_layer(yolo):
    patch(yolo, "sdpa")
    layer = yolo.model.model[6].m[0][0].attn
    with pytest.raises(ValueError, match=r"model\.6\.m\.0\.0\.attn: token count N=25 .* area=4"):
        layer(torch.rand(1, 64, 5, 5))
    hgnn = yolo.model.model[9].branch1.m
    with pytest.raises(ValueError, match="expected 64 channels"):
        hgnn(torch.rand(1, 32, 4, 4))


def test_check_finite_names_the_layer(yolo):
    patch(yolo, "sdpa", check_finite=True)
    x = torch.rand(1, 64, 8, 8)
    x[0, 3, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"model\.6\.m\.0\.0\.attn: input q .* NaN"):
        yolo.model.model[6].m[0][0].attn(x)
    with pytest.raises(ValueError, match=r"model\.9\.branch1\.m\.hgnn: input x .* NaN"):
        yolo.model.model[9].branch1.m(x)


def test_export_onnx_of_a_patched_model_uses_traceable_math(yolo, tmp_path, monkeypatch):
    yolo.save(tmp_path / "m.pt")
    exported = YOLO(str(tmp_path / "m.pt"))
    patch(exported, "sdpa")
    sdpa_calls, naive_calls = count_calls(monkeypatch, "area", "sdpa"), count_calls(monkeypatch, "area", "naive")
    onnx_file = exported.export(format="onnx", imgsz=64, simplify=False)
    assert onnx_file.endswith(".onnx")
    assert not any(sdpa_calls) and sum(naive_calls) == 8  # the trace recorded the reference, not SDPA


def test_kernels_by_layer_shows_what_ran(yolo):
    x = torch.rand(1, 3, 64, 64)
    patch(yolo, {"area": "sdpa", "hypergraph": "naive"})
    found = yolo13_attn.kernels_by_layer(yolo, x)
    assert len(found) == 12 and {"model.1", "model.3"} <= set(found)  # the grouped convolutions too
    assert all(any("scaled_dot_product" in k for k in found[name]) for name in found if name.endswith("attn"))
    assert all(not any("scaled_dot_product" in k for k in found[name]) for name in found if name.endswith("hgnn"))


def test_torch_compile_fullgraph_matches_eager():
    """No graph breaks: the backend choice and the op trace through dynamo."""
    layer = randomize_weights(AdaHGComputation(32, 4, 2)).eval()
    patch(layer, "sdpa")
    x = torch.randn(2, 32, 6, 5)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_builds_a_new_model_and_it_is_patched(yolo, tmp_path, monkeypatch):
    """YOLO.train() rebuilds the model from its yaml, validates its EMA, validates best.pt at the end and
    reloads it: every one of those runs the patches in force (two partial specs, composed). SDPA cannot
    apply the hypergraph's training-mode logit dropout: those training calls fall back (to the reference
    on the CPU), every evaluation call runs SDPA."""
    pytest.importorskip("polars", reason="Ultralytics' trainer writes its results with polars")

    data = tiny_dataset(tmp_path)
    seen = []

    def check(trainer):
        model = trainer.model
        seen.append({m.binding.requested for _, m in yolo13_attn.attention_layers(model)})

    patch(yolo, {"area": "sdpa"})
    with pytest.warns(UserWarning, match="cannot apply the training-mode logit dropout"):
        patch(yolo, {"hypergraph": "sdpa"})
    yolo.add_callback("on_train_batch_end", check)
    naive_calls = count_calls(monkeypatch, "area", "naive")
    sdpa_calls = [count_calls(monkeypatch, "area", "sdpa"), count_calls(monkeypatch, "hypergraph", "sdpa")]
    hypergraph_in_validation = []
    yolo.add_callback("on_val_end", lambda validator: hypergraph_in_validation.append(len(sdpa_calls[1])))
    # building a model runs one unpatched forward (the stride probe) before the trainer moves it: not counted
    yolo.add_callback("on_train_start", lambda trainer: naive_calls.clear())
    train_tiny(yolo, data, tmp_path / "runs")
    assert seen and all(s == {"sdpa"} for s in seen)
    assert all(sdpa_calls) and naive_calls == []
    assert hypergraph_in_validation and hypergraph_in_validation[-1] > 0  # the final validation ran the patch
    rows = yolo13_attn.patching.report(yolo)
    assert {r.requested for r in rows if r.op in yolo13_attn.patching.ATTENTION_OPS} == {"sdpa"}
