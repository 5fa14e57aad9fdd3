"""Training-step timing: forward + backward of a YOLOv13 ``DetectionModel`` through its own loss.

The step is what Ultralytics' trainer does per batch, minus data loading and the optimizer:
``model.loss(batch)`` under ``torch.autocast`` (AMP), then ``loss.sum().backward()``. The batch
is a dict of ``img`` ``(B, 3, H, W)`` in [0, 1], ``cls`` ``(T, 1)``, ``bboxes`` ``(T, 4)`` normalised
xywh and ``batch_idx`` ``(T,)``, the keys ``v8DetectionLoss`` reads; targets are random boxes.

All backends share one model and one process; each round runs them in a rotated order
(``patch`` / ``undo`` in between) and the best round's median is kept, so that clock and
allocator drift do not favour the backend that happens to run first.
"""

from __future__ import annotations

import math

import _common as C
import torch
from timing import measure_peak, time_calls


def build_train_model(scale: str, seed: int, device: str) -> torch.nn.Module:
    """YOLOv13-<scale> with seeded random weights, the trainer's hyperparameters, float32, train mode."""
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg

    from yolo13_attn.testing import randomize_weights

    model = YOLO(f"yolov13{scale}.yaml").model
    randomize_weights(model, seed=seed)
    model.args = get_cfg()  # the loss gains (box, cls, dfl) the trainer hands the model
    return model.to(device).train()


def random_batch(batch: int, hw: tuple[int, int], nc: int, device: str, seed: int, per_image: int = 8) -> dict:
    """A detection batch as the trainer passes it: ``per_image`` random boxes per image."""
    gen = torch.Generator().manual_seed(seed)
    n = batch * per_image
    xy = torch.rand(n, 2, generator=gen) * 0.8 + 0.1
    wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
    return {
        "img": torch.rand(batch, 3, *hw, generator=gen).to(device),
        "cls": torch.randint(0, nc, (n, 1), generator=gen).float().to(device),
        "bboxes": torch.cat([xy, wh], 1).to(device),
        "batch_idx": torch.arange(batch).repeat_interleave(per_image).float().to(device),
    }


def make_step(model: torch.nn.Module, batch: dict, amp_dtype: torch.dtype | None, compiled: bool = False):
    """One training step (gradients reset to None first, so every step allocates the same); returns the loss.

    ``compiled``: through ``torch.compile(model)``, whose forward on the batch dict computes the loss, as
    Ultralytics' trainer runs a model compiled with ``train(compile=True)``.
    """
    device_type = batch["img"].device.type
    loss_of = torch.compile(model) if compiled else model.loss

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, _ = loss_of(batch)
        loss.sum().backward()
        return loss.detach().sum()

    return step


def time_rounds(
    model,
    batch: dict,
    amp_dtype,
    backends: list[str],
    device: str,
    rounds: int,
    steps: int,
    budget,
    on_first=None,
    compiled: bool = False,
) -> dict[str, dict]:
    """Per backend: ``{"timing", "peak_mem_mb", "loss", "round_medians"}`` of the best round, or
    ``{"status": "unsupported"|"error", "reason"}``. ``on_first(backend, handle, step)`` runs once per
    backend while it is patched (to profile one step)."""
    import yolo13_attn

    results: dict[str, dict] = {}
    step = make_step(model, batch, amp_dtype, compiled)
    for r in range(rounds):
        active = [b for b in backends if "status" not in results.get(b, {})]
        for backend in active[r % max(1, len(active)) :] + active[: r % max(1, len(active))]:
            if budget.exhausted():
                return results
            res = results.setdefault(backend, {"round_medians": []})
            handle = None
            try:
                handle = None if backend == "naive" else yolo13_attn.patch(model, C.patch_spec(backend))
                timing = time_calls([step], device, graph=False, samples=steps, min_sample_ms=0.0, max_total_s=30.0)
                model.zero_grad(set_to_none=True)  # what is allocated before the step excludes gradients
                loss, peak = measure_peak(step, device)
                res["round_medians"].append(timing.median)
                if "timing" not in res or timing.median < res["timing"]["median"]:
                    res.update(timing=timing.as_dict(), peak_mem_mb=peak, loss=float(loss))
                if "report" not in res:
                    res["report"] = C.served_by(handle)
                    if on_first is not None:
                        on_first(backend, handle, step)
            except yolo13_attn.BackendUnsupportedError as err:
                res.update(status="unsupported", reason=str(err).split(" -- ", 1)[-1][:400])
            except Exception as err:  # noqa: BLE001 - an OOM or a failing backward: recorded, the others go on
                res.update(status="error", reason=f"{type(err).__name__}: {err}"[:400])
                if device == "cuda":
                    torch.cuda.synchronize()
            finally:
                model.zero_grad(set_to_none=True)
                if handle is not None:
                    handle.undo()
    for res in results.values():
        if "timing" in res and not math.isfinite(res["loss"]):
            res.update(status="error", reason=f"non-finite loss {res['loss']}")
    return results
