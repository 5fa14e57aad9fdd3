"""Ultralytics' multi-GPU training path on the CPU, for tests: gloo workers stand in for GPUs on NCCL.

A worker unpickles its trainer class (:class:`GlooCpuTrainer` or :class:`ProbeTrainer`, by reference, so
importing this module) *before* the model. This module must therefore not import yolo13_attn: a worker
gets the library only through the library's own mechanism, and :data:`LIBRARY_IMPORTED_EARLY` records
whether anything had imported it before the model was read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import LOCAL_RANK, RANK

WORLD_SIZE = 2
LIBRARY_IMPORTED_EARLY = "yolo13_attn" in sys.modules  # in a worker: before its payload's model was read


class _CpuDDP(DistributedDataParallel):
    """Ultralytics wraps with ``device_ids=[device.index]``; a module on the CPU takes no device ids."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module, **kwargs)


class GlooCpuTrainer(DetectionTrainer):
    """``device="cpu"`` training through Ultralytics' multi-GPU path: WORLD_SIZE workers on gloo.

    Only the device handling differs from ``DetectionTrainer``: the launch (``generate_ddp_command``, the
    worker script and its pickled state, ``torch.distributed.run``) and the training loop are Ultralytics'.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.world_size = WORLD_SIZE
        self.ddp = LOCAL_RANK == -1  # the parent launches the workers, a worker trains

    def _setup_ddp(self):
        dist.init_process_group("gloo", rank=RANK, world_size=self.world_size)

    def _setup_train(self):
        with mock.patch("torch.nn.parallel.DistributedDataParallel", _CpuDDP):
            super()._setup_train()

    def final_eval(self):
        """Each worker validates ``best.pt`` on the CPU on its own: Ultralytics puts DDP ranks on their GPU."""
        with (
            mock.patch("ultralytics.engine.validator.RANK", -1),
            mock.patch("ultralytics.models.yolo.detect.val.RANK", -1),
        ):
            super().final_eval()


def module_names(model: nn.Module) -> list[str]:
    """The class names of every module of ``model``, sorted."""
    return sorted({type(m).__name__ for m in model.modules()})


def weights_sum(model: nn.Module) -> float:
    """One number that tells two copies of a model's parameters apart."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))


def record_worker(out_dir: Path, trainer: DetectionTrainer) -> None:
    """``on_train_batch_end`` callback: write what this worker trains to ``out_dir/rank<RANK>.json``."""
    from yolo13_attn import attention_layers  # the model is loaded by now: importing here proves nothing
    from yolo13_attn.layer_kinds import BINDING_ATTR
    from yolo13_attn.patching import report

    def layers(model) -> dict[str, list | None]:
        bindings = {name: layer.__dict__.get(BINDING_ATTR) for name, layer in attention_layers(model)}
        return {
            r.name: bindings[r.name] and [r.requested, r.backend, bindings[r.name].check_finite]
            for r in report(model)
            if r.name in bindings
        }

    model = getattr(trainer.model, "module", trainer.model)
    state = {
        "rank": RANK,
        "world_size": dist.get_world_size(),
        "process_group_backend": dist.get_backend(),
        "library_imported_early": LIBRARY_IMPORTED_EARLY,
        "ddp_wrapped": isinstance(trainer.model, DistributedDataParallel),
        "model": type(model).__name__,
        "modules": module_names(model),
        "layers": layers(model),
        "ema_layers": layers(trainer.ema.ema),
    }
    (out_dir / f"rank{RANK}.json").write_text(json.dumps(state))


class ProbeTrainer:
    """Stands in for the trainer of a worker payload: ``train()`` records the model the worker script set.

    In the parent, an instance has what Ultralytics' launch reads (``args``, ``model``, ``callbacks``,
    ``resume``, ``world_size``); the worker script builds one from the payload and calls ``train()``.
    """

    def __init__(self, cfg: dict | None = None, overrides: dict | None = None, _callbacks: dict | None = None):
        self.args = SimpleNamespace(**(overrides or {}))
        self.callbacks = _callbacks or {}
        self.model = None
        self.resume = True  # generate_ddp_command then leaves the (absent) save_dir alone
        self.world_size = WORLD_SIZE

    def train(self) -> None:
        state = {
            "library_imported_early": LIBRARY_IMPORTED_EARLY,
            "model": type(self.model).__name__,
            "modules": module_names(self.model),
            "weights_sum": weights_sum(self.model),
        }
        Path(self.args.record_to).write_text(json.dumps(state))
