"""Patch semantics a user can predict: atomic, a stack per model, handles that undo their own patch,
and every copy Ultralytics makes runs the patch in force. Each test counts which backend *ran*."""

from __future__ import annotations

import copy

import pytest
import torch
from backend_cases import count_calls
from ultralytics import YOLO
from ultralytics.utils import ASSETS

from yolo13_attn import BackendUnsupportedError, patch, unpatch
from yolo13_attn.backends.base import AREA, HYPERGRAPH
from yolo13_attn.nn import AAttn, AdaHGConv
from yolo13_attn.patching import ATTENTION_OPS, report

X = torch.rand(1, 3, 64, 64)


class Ran:
    """Counts the calls reaching each backend's entry point, per op."""

    def __init__(self, monkeypatch):
        pairs = [(op, name) for op in (AREA, HYPERGRAPH) for name in ("naive", "sdpa")]
        self.calls = {(op, name): count_calls(monkeypatch, op, name) for op, name in pairs}

    def take(self) -> dict[tuple[str, str], int]:
        """``{(op, backend): calls}`` since the last take (backends not called are left out)."""
        counts = {key: len(calls) for key, calls in self.calls.items() if calls}
        for calls in self.calls.values():
            calls.clear()
        return counts


def forward(model) -> None:
    with torch.no_grad():
        model(X)


def test_a_refused_patch_changes_nothing(yolo, monkeypatch):
    first = patch(yolo, "sdpa")
    ran = Ran(monkeypatch)
    with pytest.raises(BackendUnsupportedError, match="hgnn: backend 'cuda' cannot serve"):
        patch(yolo, {"area": "naive", "hypergraph": "cuda"})  # refused on every machine until csrc/ is built
    forward(yolo.model)
    assert ran.take() == {("area", "sdpa"): 8, ("hypergraph", "sdpa"): 2}
    assert first.active and len(first.state.entries) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="flash refuses only where no CUDA device exists")
def test_a_refused_first_patch_leaves_the_layers_unpatched(yolo):
    with pytest.raises(BackendUnsupportedError):
        patch(yolo, {"area": "sdpa", "hypergraph": "flash"})
    assert type(yolo.model.model[6].m[0][0].attn) is AAttn and type(yolo.model.model[9].branch1.m.hgnn) is AdaHGConv


def test_each_handle_undoes_its_own_patch(yolo, monkeypatch):
    ran = Ran(monkeypatch)
    h1 = patch(yolo, "sdpa")
    h2 = patch(yolo, "naive")
    forward(yolo.model)
    assert ran.take() == {("area", "naive"): 8, ("hypergraph", "naive"): 2}
    h2.undo()  # back to h1's patch, not to unpatched
    forward(yolo.model)
    assert ran.take() == {("area", "sdpa"): 8, ("hypergraph", "sdpa"): 2}
    assert {r.requested for r in report(yolo) if r.op in ATTENTION_OPS} == {"sdpa"}

    h2 = patch(yolo, "naive")
    h1.undo()  # removes h1 beneath h2: h2 stays in force
    forward(yolo.model)
    assert ran.take() == {("area", "naive"): 8, ("hypergraph", "naive"): 2}
    assert {r.requested for r in report(yolo)} == {"naive"}
    h2.undo()
    assert {r.backend for r in report(yolo)} == {"naive (unpatched)"}
    assert type(yolo.model.model[6].m[0][0].attn) is AAttn


def test_partial_specs_and_context_managers_compose(yolo, monkeypatch):
    ran = Ran(monkeypatch)
    outer = patch(yolo, {"area": "sdpa"})
    with patch(yolo, {"hypergraph": "sdpa"}):
        forward(yolo.model)
        assert ran.take() == {("area", "sdpa"): 8, ("hypergraph", "sdpa"): 2}
        with patch(yolo, "naive"):
            forward(yolo.model)
            assert ran.take() == {("area", "naive"): 8, ("hypergraph", "naive"): 2}
        forward(yolo.model)  # leaving the inner block restores both outer patches
        assert ran.take() == {("area", "sdpa"): 8, ("hypergraph", "sdpa"): 2}
    forward(yolo.model)
    assert ran.take() == {("area", "sdpa"): 8, ("hypergraph", "naive"): 2}
    outer.undo()
    outer.undo()  # a second undo does nothing
    forward(yolo.model)
    assert ran.take() == {("area", "naive"): 8, ("hypergraph", "naive"): 2}


def test_unpatch_clears_the_stack(yolo):
    h1 = patch(yolo, "sdpa")
    patch(yolo, {"area": "naive"})
    assert unpatch(yolo) == 10
    assert not h1.active and {r.backend for r in report(yolo)} == {"naive (unpatched)"}


def test_predict_follows_repatching(yolo, monkeypatch):
    ran = Ran(monkeypatch)

    def predicted() -> dict:
        """Which backends served the predictor's forwards, per forward (CUDA predictors add a warm-up forward)."""
        yolo.predict(ASSETS / "bus.jpg", imgsz=64, verbose=False)
        counts = ran.take()
        forwards = counts[next(k for k in counts if k[0] == "area")] // 8
        assert forwards >= 1 and all(n == forwards * (8 if op == "area" else 2) for (op, _), n in counts.items())
        return {key: n // forwards for key, n in counts.items()}

    assert predicted() == {("area", "naive"): 8, ("hypergraph", "naive"): 2}
    h1 = patch(yolo, "sdpa")  # after the predictor was built
    assert predicted() == {("area", "sdpa"): 8, ("hypergraph", "sdpa"): 2}
    with patch(yolo, {"area": "naive"}):
        assert predicted() == {("area", "naive"): 8, ("hypergraph", "sdpa"): 2}
    assert predicted() == {("area", "sdpa"): 8, ("hypergraph", "sdpa"): 2}
    h1.undo()
    assert predicted() == {("area", "naive"): 8, ("hypergraph", "naive"): 2}


def test_copies_follow_the_original_until_patched_themselves(yolo, monkeypatch):
    ran = Ran(monkeypatch)
    patch(yolo, "sdpa")
    clone = copy.deepcopy(yolo.model)  # what the predictor and EMA do
    patch(yolo, {"area": "naive"})
    forward(clone)
    assert ran.take() == {("area", "naive"): 8, ("hypergraph", "sdpa"): 2}
    own = patch(clone, {"hypergraph": "naive"})  # the copy now has a stack of its own
    forward(yolo.model)
    assert ran.take() == {("area", "naive"): 8, ("hypergraph", "sdpa"): 2}
    forward(clone)
    assert ran.take() == {("area", "naive"): 8, ("hypergraph", "naive"): 2}
    own.undo()
    forward(clone)
    assert ran.take() == {("area", "naive"): 8, ("hypergraph", "sdpa"): 2}


def test_trainer_callback_binds_rebuilt_models_to_the_composed_patch(yolo, monkeypatch):
    """The callback patch() installs binds the model a trainer rebuilds (and its EMA) to every patch in force."""
    from types import SimpleNamespace

    from yolo13_attn.integration.ultralytics_api import TRAIN_EVENT

    patch(yolo, {"area": "sdpa"})
    patch(yolo, {"hypergraph": "sdpa"})
    rebuilt, ema = YOLO("yolov13n.yaml").model.eval(), YOLO("yolov13n.yaml").model.eval()
    trainer = SimpleNamespace(model=rebuilt, ema=SimpleNamespace(ema=ema), final_eval=lambda: None)
    (callback,) = [c for c in yolo.callbacks[TRAIN_EVENT] if "bind_trainer" in repr(c)]
    callback(trainer)
    ran = Ran(monkeypatch)
    forward(rebuilt)
    forward(ema)
    assert ran.take() == {("area", "sdpa"): 16, ("hypergraph", "sdpa"): 4}


def test_report_says_where_the_choice_came_from(yolo, monkeypatch):
    assert {r.source for r in patch(yolo, "sdpa").report() if r.op in ATTENTION_OPS} == {"argument"}
    unpatch(yolo)
    monkeypatch.setenv("YOLO13_ATTN_BACKEND", "naive")
    rows = patch(yolo).report()
    assert {r.source for r in rows} == {"$YOLO13_ATTN_BACKEND"} and all("YOLO13_ATTN_BACKEND" in r.why for r in rows)
    unpatch(yolo)
    monkeypatch.delenv("YOLO13_ATTN_BACKEND")
    rows = patch(yolo).report()
    assert {r.source for r in rows} == {"default"} and all(r.why.startswith("auto (default)") for r in rows)


def test_env_backend_errors_name_the_variable(yolo, monkeypatch):
    monkeypatch.setenv("YOLO13_ATTN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="YOLO13_ATTN_BACKEND.*'bogus'.*valid backends: auto, naive"):
        patch(yolo)


@pytest.mark.parametrize("bad", [123, b"sdpa", object, ["sdpa"]])
def test_backend_of_the_wrong_type_is_a_type_error(yolo, bad):
    with pytest.raises(TypeError, match="backend must be a backend name"):
        patch(yolo, bad)
    with pytest.raises(TypeError, match=r"backend\['area'\] must be a backend name"):
        patch(yolo, {"area": bad})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["triton", "flash"])
def test_patching_before_the_model_moves_to_the_gpu_works(yolo, backend):
    """The quickstart's order: patch right after building (model on the CPU), then run on the GPU."""
    from yolo13_attn import kernels_by_layer

    patch(yolo, backend if backend == "triton" else {"area": backend, "hypergraph": "triton"})
    yolo.model.cuda().half()
    found = kernels_by_layer(yolo, torch.rand(1, 3, 64, 64, device="cuda", dtype=torch.half))
    expected = {"triton": "area_attention_fwd_kernel", "flash": "flash"}[backend]
    assert all(any(expected in k for k in found[name]) for name in found if name.endswith("attn")), found
    assert all(any("hypergraph" in k for k in found[name]) for name in found if name.endswith("hgnn")), found


def test_layers_a_backend_cannot_serve_by_construction_fall_back_with_one_warning():
    """triton serves head_dim 16-128: a head_dim-8 layer runs what auto picks, named in one warning."""
    from backend_cases import AREA_BACKENDS

    if "triton" not in AREA_BACKENDS:
        pytest.skip("triton is not available here")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.nn.Sequential(AAttn(16, 2, area=2), AAttn(64, 2, area=2)).to(device).eval()
    reference = copy.deepcopy(model[0])  # unpatched
    with pytest.warns(UserWarning, match=r"1 layer\(s\).*\n  0: .*head_dim 8 outside \[16, 128\]") as caught:
        handle = patch(model, "triton")
    assert len([w for w in caught if "cannot be served" in str(w.message)]) == 1
    small, large = handle.report()
    assert small.backend != "triton" and small.why.startswith("fallback: triton (argument) cannot serve")
    assert large.backend == "triton" and large.why == "requested (argument)"
    x = torch.rand(1, 16, 4, 6, device=device)
    with torch.no_grad():
        torch.testing.assert_close(model[0](x), reference(x))  # the fallback computes the layer


def test_strict_raises_instead_of_falling_back():
    from backend_cases import AREA_BACKENDS

    if "triton" not in AREA_BACKENDS:
        pytest.skip("triton is not available here")
    model = torch.nn.Sequential(AAttn(16, 2, area=2), AAttn(64, 2, area=2))
    with pytest.raises(BackendUnsupportedError, match=r"^0: backend 'triton' cannot serve.*head_dim 8 outside"):
        patch(model, "triton", strict=True)
    assert type(model[0]) is AAttn and type(model[1]) is AAttn
