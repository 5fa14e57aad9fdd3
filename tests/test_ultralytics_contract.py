"""What yolo13-attn assumes about Ultralytics: one test per assumption of ``integration/ultralytics_api.py``.

A new Ultralytics release that changes one of these internals fails here, in the test named after it,
before anything deeper breaks. The assumptions are checked on Ultralytics itself (stock YOLO11 models
and stock classes where possible), not through YOLOv13.
"""

from __future__ import annotations

import inspect
import pickle
import pickletools
import pkgutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import ultralytics
from tiny_dataset import tiny_dataset
from torch import nn
from ultralytics import YOLO
from ultralytics.engine.model import Model
from ultralytics.nn import tasks
from ultralytics.utils import ASSETS, dist
from ultralytics.utils.patches import torch_load

from yolo13_attn import patch
from yolo13_attn.integration import checkpoints, installed
from yolo13_attn.integration import ultralytics_api as ul
from yolo13_attn.integration.installer import install
from yolo13_attn.nn import YOLOv13Detect

# ---- the version gate ---------------------------------------------------------------------------------


def test_installed_version_is_supported():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ul.check_version()


@pytest.mark.parametrize("version", ["8.4.189", "8.5.0", "9.0.1", "8.3.63"])
def test_an_unsupported_version_warns_at_install_naming_it(monkeypatch, version):
    monkeypatch.setattr(ultralytics, "__version__", version)
    with pytest.warns(ul.UnsupportedUltralyticsWarning, match=rf"found {version}.*test_ultralytics_contract"):
        install()


@pytest.mark.parametrize("version", ["8.4.190", "8.4.999", "8.4.200.dev0"])
def test_supported_versions_pass_the_gate(version):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ul.check_version(version)


# ---- what import yolo13_attn changes -----------------------------------------------------------------

EXPECTED_CHANGES = {
    "ultralytics.nn.tasks.parse_model",
    "ultralytics.nn.parse_model",
    "ultralytics.nn.tasks.check_yaml",
    "ultralytics.utils.dist.generate_ddp_file",
    "ultralytics.nn.tasks.DetectionModel.__setstate__",
    *(f"ultralytics.nn.modules.block.{name}.__setstate__" for name in ("AAttn", "ABlock", "A2C2f")),
    "ultralytics.nn.modules.conv.DSConv",
    *(
        f"ultralytics.nn.modules.block.{name}"
        for name in (
            "DSBottleneck",
            "DSC3k",
            "DSC3k2",
            "AdaHyperedgeGen",
            "AdaHGConv",
            "AdaHGComputation",
            "C3AH",
            "FuseModule",
            "HyperACE",
            "DownsampleConv",
            "FullPAD_Tunnel",
        )
    ),
}


def test_install_lists_every_change_and_is_idempotent():
    changes = installed()
    assert {c.target for c in changes} == EXPECTED_CHANGES and all(c.how for c in changes)
    before = {c.target: pkgutil.resolve_name(c.target) for c in changes}
    install()
    assert installed() == changes
    assert {target: pkgutil.resolve_name(target) for target in before} == before  # nothing wrapped twice
    assert ultralytics.nn.parse_model is tasks.parse_model


# ---- building ---------------------------------------------------------------------------------------------


def test_detection_model_builds_through_parse_model_at_call_time(monkeypatch):
    assert list(inspect.signature(tasks.parse_model.__wrapped__).parameters) == ["d", "ch", "verbose"]
    seen, current = [], tasks.parse_model
    monkeypatch.setattr(tasks, "parse_model", lambda d, ch, verbose=True: seen.append(d) or current(d, ch, verbose))
    tasks.DetectionModel("yolo11n.yaml", verbose=False)
    assert [d["yaml_file"] for d in seen] == ["yolo11n.yaml"]


def test_yaml_names_resolve_through_check_yaml(monkeypatch):
    seen, current = [], tasks.check_yaml

    def spy(file, suffix=(".yaml", ".yml"), hard=True):
        seen.append((Path(str(file)).name, hard))
        return current(file, suffix, hard=hard)

    monkeypatch.setattr(tasks, "check_yaml", spy)
    tasks.yaml_model_load("yolo11n.yaml")
    assert seen[0] == ("yolo11n.yaml", False)
    assert not current.__wrapped__("no_such_model13.yaml", hard=False)  # not found: falsy, no error


# ---- multi-GPU training -----------------------------------------------------------------------------------


def test_ddp_launch_pickles_trainer_model_through_generate_ddp_file(monkeypatch, tmp_path):
    pytest.importorskip("cloudpickle", reason="Ultralytics' DDP launch pickles with cloudpickle (the test extra)")
    trainer = SimpleNamespace(
        args=SimpleNamespace(epochs=1),
        model=nn.Linear(3, 2),
        callbacks={},
        resume=True,
        world_size=2,
        save_dir=tmp_path,
    )
    seen, original = [], dist.generate_ddp_file.__wrapped__
    monkeypatch.setattr(dist, "generate_ddp_file", lambda t: seen.append(t) or original(t))
    cmd, file = dist.generate_ddp_command(trainer)
    try:
        assert seen == [trainer] and cmd[-1] == file
        state = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
        assert type(state["model"]) is nn.Linear and torch.equal(state["model"].weight, trainer.model.weight)
    finally:
        dist.ddp_cleanup(trainer, file)


# ---- checkpoints ------------------------------------------------------------------------------------------


def _pickled_globals(checkpoint: Path) -> set[str]:
    with zipfile.ZipFile(checkpoint) as archive:
        raw = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(raw))
    found = set()
    for i, (op, arg, _) in enumerate(ops):
        if op.name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            module, name = (a for _, a, _ in ops[i - 2 : i])  # the two strings pushed (memoized) before it
            found.add(f"{module}.{name}")
    return found


def test_checkpoints_unpickle_modules_by_qualified_name(monkeypatch, tmp_path):
    yolo = YOLO("yolo11n.yaml")
    yolo.save(tmp_path / "m.pt")
    assert {"ultralytics.nn.tasks.DetectionModel", "ultralytics.nn.modules.conv.Conv"} <= _pickled_globals(
        tmp_path / "m.pt"
    )
    unpickled, current = [], tasks.DetectionModel.__setstate__

    def spy(self, state):
        unpickled.append(type(self))
        current(self, state)

    monkeypatch.setattr(tasks.DetectionModel, "__setstate__", spy)
    ckpt, _ = tasks.torch_safe_load(tmp_path / "m.pt")
    assert type(ckpt["model"]) is tasks.DetectionModel and unpickled == [tasks.DetectionModel]


def test_stock_ultralytics_lacks_yolov13_names():
    names = {module.__name__: [cls.__name__ for cls in classes] for module, classes in checkpoints._REGISTERED.items()}
    code = (
        "import importlib; "
        f"print([f'{{m}}.{{n}}' for m, ns in {names!r}.items() for n in ns if hasattr(importlib.import_module(m), n)])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_stock_area_attention_classes_and_children(monkeypatch):
    """Unpickling a stock AAttn/ABlock/A2C2f calls its class's ``__setstate__(state)`` with the ``__dict__``,
    whose ``_modules`` tell YOLO12's objects (AAttn has ``qkv``) from YOLOv13's (``qk``)."""
    for stock in (ul.StockAAttn, ul.StockABlock, ul.StockA2C2f):
        assert stock.__module__ == "ultralytics.nn.modules.block" and issubclass(stock, nn.Module)
        assert list(inspect.signature(stock.__setstate__.__wrapped__).parameters) == ["self", "state"], stock
    layer = ul.StockAAttn(64, 2, 4)
    assert set(dict(layer.named_children())) == {"qkv", "proj", "pe"}
    assert isinstance(ul.StockABlock(64, 2).attn, ul.StockAAttn)
    assert any(isinstance(m, ul.StockABlock) for m in ul.StockA2C2f(64, 64, a2=True, area=4).m.modules())
    seen, current = [], ul.StockAAttn.__setstate__
    monkeypatch.setattr(ul.StockAAttn, "__setstate__", lambda self, state: seen.append(state) or current(self, state))
    clone = pickle.loads(pickle.dumps(layer))
    assert type(clone) is ul.StockAAttn and len(seen) == 1 and set(seen[0]["_modules"]) == {"qkv", "proj", "pe"}


def test_stock_aattn_layout():
    """The YOLO12 forward override reads num_heads, head_dim, area, qkv (q, k, v per head), pe (on v), proj."""
    layer = ul.StockAAttn(64, 2, 4).double().eval()
    assert (layer.num_heads, layer.head_dim, layer.area) == (2, 32, 4)
    assert layer.qkv.conv.out_channels == 3 * 64 and layer.pe.conv.groups == layer.pe.conv.in_channels == 64
    x = torch.randn(1, 64, 8, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        with patch(layer, "naive"):  # serves the layer through yolo13_attn's own reading of those parts
            torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_detect_reads_legacy_when_built(monkeypatch):
    monkeypatch.setattr(ul.Detect, "legacy", True)
    legacy = ul.Detect(nc=4, ch=(16, 32))
    monkeypatch.setattr(ul.Detect, "legacy", False)
    current = ul.Detect(nc=4, ch=(16, 32))
    assert isinstance(legacy.cv3[0][0], ul.Conv) and not isinstance(current.cv3[0][0], ul.Conv)


def test_detect_decodes_boxes_from_feats_and_boxes(monkeypatch):
    """YOLOv13Detect's traceable decoding replaces ``Detect._get_decode_boxes`` with the same inputs and result."""
    assert list(inspect.signature(ul.Detect._get_decode_boxes).parameters) == ["self", "x"]
    head = YOLOv13Detect(nc=4, ch=(16, 32, 64)).eval()
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    feats = [torch.randn(2, c, 64 // s, 48 // s) for c, s in ((16, 8), (32, 16), (64, 32))]
    n = sum(f.shape[2] * f.shape[3] for f in feats)
    x = {"feats": feats, "boxes": torch.randn(2, 4 * head.reg_max, n), "scores": torch.randn(2, 4, n)}
    expected = ul.Detect._get_decode_boxes(head, x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(head._get_decode_boxes(x), expected)


# ---- a YOLO object and its predictor -----------------------------------------------------------------


def test_yolo_is_a_model_holding_a_module():
    yolo = YOLO("yolo11n.yaml")
    assert issubclass(YOLO, Model) and ul.is_yolo(yolo) and not ul.is_yolo(yolo.model)
    assert isinstance(yolo.model, tasks.DetectionModel)


def test_predict_rebuilds_a_dropped_predictor_on_a_deep_copy():
    yolo = YOLO("yolo11n.yaml")
    args = {"imgsz": 64, "device": "cpu", "verbose": False}
    yolo.predict(ASSETS / "bus.jpg", **args)
    first = yolo.predictor
    yolo.predict(ASSETS / "bus.jpg", **args)
    assert yolo.predictor is first  # kept while nobody drops it
    ran = first.model.model
    assert ran is not yolo.model and {p.data_ptr() for p in ran.parameters()}.isdisjoint(
        p.data_ptr() for p in yolo.model.parameters()
    )
    ul.drop_predictor(yolo)
    yolo.predict(ASSETS / "bus.jpg", **args)
    assert yolo.predictor is not None and yolo.predictor is not first


def test_train_is_a_plain_method():
    yolo = YOLO("yolo11n.yaml")
    assert inspect.isfunction(inspect.getattr_static(YOLO, "train"))
    ul.set_train(yolo, lambda **kwargs: ("ours", kwargs))
    assert yolo.train(epochs=1) == ("ours", {"epochs": 1})
    ul.unset_train(yolo)
    assert yolo.train.__func__ is YOLO.train


# ---- the trainer (one tiny training run of a stock YOLO11n on the CPU) ----------------------------------


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> dict:
    pytest.importorskip("polars", reason="Ultralytics' trainer writes its results with polars")
    root = tmp_path_factory.mktemp("contract_train")
    yolo = YOLO("yolo11n.yaml")
    record: dict = {"before": yolo.model}

    def final_eval(original) -> None:
        record["final_eval_ran"] = True
        loaded, current = [], tasks.DetectionModel.__setstate__

        def spy(self, state):
            loaded.append(self)
            current(self, state)

        with mock.patch.object(tasks.DetectionModel, "__setstate__", spy):
            original()
        record["final_eval_loaded"] = loaded

    def after_setup(trainer) -> None:
        record["model"], record["ema"] = trainer.model, ul.ema_model(trainer)
        ul.set_final_eval(trainer, final_eval)

    ul.add_train_callback(yolo, after_setup)
    yolo.add_callback("on_train_batch_end", lambda trainer: record.setdefault("trained", trainer.model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yolo.train(
            data=str(tiny_dataset(root)), epochs=1, imgsz=32, batch=2, workers=0, device="cpu", plots=False,
            amp=False, project=str(root / "runs"), name="t", exist_ok=True, verbose=False,
        )  # fmt: skip
    record["after"], record["predictor"] = yolo.model, yolo.predictor
    return record


def test_trainer_runs_callbacks_after_building_model_and_ema(training_run):
    model, ema = training_run["model"], training_run["ema"]
    assert isinstance(model, tasks.DetectionModel) and training_run["trained"] is model  # the model it trains
    assert isinstance(ema, tasks.DetectionModel) and ema is not model


def test_trainer_calls_final_eval_on_the_instance(training_run):
    assert training_run.get("final_eval_ran")


def test_final_eval_unpickles_the_best_checkpoint(training_run):
    loaded = training_run["final_eval_loaded"]  # stripping last.pt and best.pt, then the validator's load
    assert loaded and all(type(m) is tasks.DetectionModel for m in loaded)


def test_train_reloads_the_best_checkpoint(training_run):
    after = training_run["after"]
    assert isinstance(after, tasks.DetectionModel) and after is not training_run["before"]
    assert after is not training_run["model"] and training_run["predictor"] is None
