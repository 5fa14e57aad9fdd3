"""Multi-GPU training (issue 16): Ultralytics' DDP workers import yolo13_attn, build YOLOv13, keep the patch.

Each assumption about Ultralytics' DDP launch has its own test:
- its trainer launch (``generate_ddp_command``) reaches ``ultralytics.utils.dist.generate_ddp_file``, which
  pickles ``trainer.model`` (test_launch_pickles_the_model_behind_the_library_import);
- the worker script reads that payload in an interpreter that imported only Ultralytics and gives the
  trainer class the model (test_worker_script_in_a_fresh_interpreter_gets_yolov13_only_with_the_import);
- the workers' trainer runs the pickled callbacks, so ``patch()``'s callback patches the model DDP trains
  (test_ddp_workers_train_yolov13_with_the_parents_patch: world size 2 on gloo, CPU).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from ddp_on_cpu import WORLD_SIZE, GlooCpuTrainer, ProbeTrainer, record_worker, weights_sum
from tiny_dataset import tiny_dataset, train_tiny
from ultralytics import YOLO
from ultralytics.utils import dist
from ultralytics.utils.patches import torch_load

import yolo13_attn
from yolo13_attn.integration import distributed
from yolo13_attn.testing import randomize_weights

YOLOV13_ONLY = {"DSC3k2", "HyperACE", "FullPAD_Tunnel", "AdaHGComputation", "A2C2f", "DSConv"}


@pytest.fixture
def probe(tmp_path):
    """A trainer stand-in holding a seeded YOLOv13n; its worker writes what it got to ``tmp_path``."""
    model = randomize_weights(YOLO("yolov13n.yaml").model, seed=5)
    trainer = ProbeTrainer(overrides={"record_to": str(tmp_path / "worker.json")})
    trainer.model = model
    return trainer


def test_launch_pickles_the_model_behind_the_library_import(probe, monkeypatch):
    model = probe.model
    cmd, file = dist.generate_ddp_command(probe)
    try:
        assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", str(WORLD_SIZE)] and cmd[-1] == file
        assert probe.model is model  # the wrapper put the trainer's model back
        unpickled = []
        monkeypatch.setattr(distributed, "_after_import", lambda m: unpickled.append(m) or m)
        state = torch_load(Path(file).with_suffix(".pt"), map_location="cpu")
        assert len(unpickled) == 1 and unpickled[0] is state["model"] and type(state["model"]) is type(model)
    finally:
        dist.ddp_cleanup(probe, file)


def test_worker_script_in_a_fresh_interpreter_gets_yolov13_only_with_the_import(probe, tmp_path):
    """Without the wrapper a worker fails as users of the official fork saw; with it, it gets our model."""
    plain_script, script = dist.generate_ddp_file.__wrapped__(probe), dist.generate_ddp_file(probe)
    try:
        plain = subprocess.run([sys.executable, plain_script], check=False, capture_output=True, text=True, timeout=120)
        assert plain.returncode != 0 and "DSC3k2" in plain.stderr  # the loader's message names the missing layer
        run = subprocess.run([sys.executable, script], check=False, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        dist.ddp_cleanup(probe, plain_script)
        dist.ddp_cleanup(probe, script)
    worker = json.loads((tmp_path / "worker.json").read_text())
    assert worker["library_imported_early"] is False  # the payload's model entry imported it
    assert worker["model"] == "DetectionModel" and YOLOV13_ONLY <= set(worker["modules"])
    assert worker["weights_sum"] == pytest.approx(weights_sum(probe.model))


@pytest.mark.slow
@pytest.mark.parametrize("source, backend", [(".pt", {"area": "sdpa", "hypergraph": "naive"}), (".yaml", None)])
def test_ddp_workers_train_yolov13_with_the_parents_patch(tmp_path, source, backend):
    """``YOLO.train`` through Ultralytics' multi-GPU launch, 2 gloo workers on the CPU, one iteration each.

    A loaded ``.pt`` pickles the module itself (the workers need the YOLOv13 classes); a ``.yaml`` model
    is rebuilt by name in each worker. Patched: per-op backends and check_finite; unpatched: no binding.
    """
    pytest.importorskip("polars", reason="Ultralytics' trainer writes its results with polars")
    data = tiny_dataset(tmp_path / "data", images=2 * WORLD_SIZE)
    yolo = YOLO("yolov13n.yaml")
    if source == ".pt":
        yolo.save(tmp_path / "yolov13n.pt")
        yolo = YOLO(str(tmp_path / "yolov13n.pt"))
    if backend is not None:
        yolo13_attn.patch(yolo, backend, check_finite=True)
    yolo.add_callback("on_train_batch_end", functools.partial(record_worker, tmp_path))
    train_tiny(yolo, data, tmp_path / "runs", trainer=GlooCpuTrainer, batch=2 * WORLD_SIZE)

    expected = {"area": ["sdpa", "sdpa", True], "hypergraph": ["naive", "naive", True]} if backend else {}
    for rank in range(WORLD_SIZE):
        worker = json.loads((tmp_path / f"rank{rank}.json").read_text())
        ddp = worker["world_size"], worker["process_group_backend"], worker["ddp_wrapped"]
        assert ddp == (WORLD_SIZE, "gloo", True)
        assert worker["library_imported_early"] is False
        assert worker["model"] == "DetectionModel" and YOLOV13_ONLY <= set(worker["modules"])
        for layers in (worker["layers"], worker["ema_layers"]):
            assert len(layers) == 10
            for name, bound in layers.items():
                assert bound == expected.get("hypergraph" if name.endswith("hgnn") else "area"), (rank, name)
    assert (tmp_path / "runs" / "t" / "weights" / "best.pt").is_file()
    reloaded = {r.requested for r in yolo13_attn.patching.report(yolo) if r.op in yolo13_attn.patching.ATTENTION_OPS}
    assert reloaded == ({"sdpa", "naive"} if backend else {"-"})
