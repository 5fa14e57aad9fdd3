"""Official-format checkpoints: save/load round trips, class names, YOLO12 coexistence, ONNX (issue 2)."""

from __future__ import annotations

import pickletools
import zipfile

import numpy as np
import pytest
import torch
import ultralytics.nn.modules.block as ul_block
from ultralytics import YOLO
from ultralytics.utils import ASSETS

from yolo13_attn.nn import A2C2f, AAttn, ABlock, AdaHGConv
from yolo13_attn.testing import randomize_weights


def pickled_globals(path) -> set[str]:
    """Every ``module.Name`` a torch.save checkpoint refers to."""
    with zipfile.ZipFile(path) as archive:
        raw = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(raw))
    names = set()
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{ops[i - 2][1]}.{ops[i - 1][1]}")
    return names


@pytest.fixture(scope="module")
def yolov13n_checkpoint(tmp_path_factory):
    """An official-format YOLOv13n checkpoint with seeded random weights (fp16, as released)."""
    torch.manual_seed(0)
    yolo = YOLO("yolov13n.yaml")
    randomize_weights(yolo.model, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "yolov13n.pt"
    yolo.save(path)
    return path, yolo.model


def test_checkpoint_uses_only_official_class_names(yolov13n_checkpoint):
    path, _ = yolov13n_checkpoint
    names = pickled_globals(path)
    assert not [n for n in names if n.startswith("yolo13_attn")]
    for name in ("AAttn", "ABlock", "A2C2f", "HyperACE", "AdaHGComputation", "DSC3k2", "FullPAD_Tunnel"):
        assert f"ultralytics.nn.modules.block.{name}" in names
    assert "ultralytics.nn.modules.conv.DSConv" in names


def test_official_checkpoint_loads_into_yolov13_layers(yolov13n_checkpoint):
    path, model = yolov13n_checkpoint
    loaded = YOLO(str(path)).model
    attn = loaded.model[6].m[0][0].attn
    assert type(attn) is AAttn and type(loaded.model[6].m[0][0]) is ABlock and type(loaded.model[6]) is A2C2f
    reference = model.half().float().eval()  # the checkpoint holds fp16 weights
    for (k, a), (k2, b) in zip(reference.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.rand(1, 3, 256, 320)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x)[0], reference(x)[0])


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = randomize_weights(YOLO("yolov13n.yaml").model, seed=2).eval()
    torch.save({"model": model}, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)["model"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    x = torch.rand(2, 3, 320, 256)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert type(loaded.model[9].branch1.m.hgnn) is AdaHGConv


def test_deepcopy_keeps_yolov13_classes():
    import copy

    model = YOLO("yolov13n.yaml").model
    clone = copy.deepcopy(model)
    assert type(clone.model[6].m[0][0].attn) is AAttn and type(clone.model[6]) is A2C2f


def test_stock_yolo12_checkpoint_still_loads_as_yolo12(tmp_path):
    yolo = YOLO("yolo12n.yaml")
    randomize_weights(yolo.model, seed=3)
    yolo.save(tmp_path / "yolo12n.pt")
    loaded = YOLO(str(tmp_path / "yolo12n.pt")).model
    attn = next(m for m in loaded.modules() if isinstance(m, ul_block.AAttn))
    assert type(attn) is ul_block.AAttn and hasattr(attn, "qkv")
    assert not any(isinstance(m, (AAttn, ABlock, A2C2f)) for m in loaded.modules())
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x)[0], yolo.model.half().float().eval()(x)[0])


def test_predict_validation_forward_and_fuse(yolov13n_checkpoint):
    path, _ = yolov13n_checkpoint
    yolo = YOLO(str(path))
    results = yolo.predict(ASSETS / "bus.jpg", imgsz=320, conf=0.0, max_det=5, verbose=False)
    assert results[0].boxes.data.shape[1] == 6 and len(results[0].boxes) == 5
    model = yolo.model.eval()
    x = torch.rand(2, 3, 320, 320)
    with torch.no_grad():
        preds, _ = model(x)  # what the validator consumes
        yolo.fuse()
        fused, _ = yolo.model(x)
    assert preds.shape == (2, 84, 2100)
    torch.testing.assert_close(fused, preds, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(yolov13n_checkpoint, tmp_path):
    import onnxruntime as ort

    path, _ = yolov13n_checkpoint
    local = tmp_path / "yolov13n.pt"
    local.write_bytes(path.read_bytes())
    yolo = YOLO(str(local))
    onnx_file = yolo.export(format="onnx", imgsz=320, simplify=False)
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        expected = yolo.model.float().eval()(x)[0].numpy()
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-2)
