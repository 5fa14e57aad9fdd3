#!/usr/bin/env python3
"""``YOLO.train`` per backend on a generated dataset: seconds per epoch and the loss curve of every step.

For each backend (``naive`` = unpatched, ``fa2path``, ``auto``, ...) the same thing runs in one process:
``YOLO("yolov13<scale>.yaml")`` (patched unless naive), then ``model.train(...)`` from the same seed
on the same generated dataset (``--images`` pictures of random rectangles and ellipses on noise, two
classes, YOLO labels; written once into ``--data-dir``). Ultralytics builds, seeds and initialises the
trainer's model itself, so every backend starts from the same weights and sees the same batches.

Recorded through Ultralytics callbacks: ``epoch_s`` (``on_train_epoch_start`` -> ``on_train_epoch_end``,
synchronised; validation excluded; the first epoch - cuDNN/Triton warm-up - is reported apart and
left out of the median) and the training loss of every step (``trainer.loss_items``: box, cls, dfl;
``loss = box + cls + dfl`` in the plot).

Outputs (``--out``): ``train_epochs.csv`` (long format: op = model name, metric ``epoch_s``; a loss row
per backend: ``final_loss`` = mean of the last 20 steps), ``train_epochs.json`` (every step's losses),
``train_epochs.md`` and ``train_epochs_loss.png`` (loss curves, and each backend's difference to the
unpatched run). GPU only.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import _common as C
import outputs as O
import torch
from timing import quantile

import yolo13_attn


def make_dataset(root: Path, images: int, size: int, seed: int) -> Path:
    """``images`` pictures with 2-6 filled shapes each (class 0 rectangle, 1 ellipse); returns the data yaml."""
    import cv2
    import numpy as np

    data = root / "data.yaml"
    if data.is_file():
        return data
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        split = "val" if i % 8 == 0 else "train"
        img = rng.integers(0, 96, (size, size, 3), dtype=np.uint8)
        labels = []
        for _ in range(rng.integers(2, 7)):
            cls = int(rng.integers(0, 2))
            w, h = rng.uniform(0.08, 0.4, 2)
            cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            color = tuple(int(c) for c in rng.integers(128, 256, 3))
            p0 = (int((cx - w / 2) * size), int((cy - h / 2) * size))
            p1 = (int((cx + w / 2) * size), int((cy + h / 2) * size))
            if cls == 0:
                cv2.rectangle(img, p0, p1, color, -1)
            else:
                center, axes = (int(cx * size), int(cy * size)), (int(w * size / 2), int(h * size / 2))
                cv2.ellipse(img, center, axes, 0, 0, 360, color, -1)
            labels.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), img)
        (root / "labels" / split / f"{i}.txt").write_text("\n".join(labels) + "\n")
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: rectangle\n  1: ellipse\n")
    return data


class Recorder:
    """Ultralytics callbacks that record each epoch's seconds and each step's loss items."""

    def __init__(self):
        self.epoch_s: list[float] = []
        self.losses: list[list[float]] = []
        self._t0 = 0.0

    def epoch_start(self, trainer) -> None:
        torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def epoch_end(self, trainer) -> None:
        torch.cuda.synchronize()
        self.epoch_s.append(time.perf_counter() - self._t0)

    def batch_end(self, trainer) -> None:
        items = trainer.loss_items  # a dict {name: value} in Ultralytics 8.4, a tensor in older releases
        self.losses.append([float(x) for x in (items.values() if isinstance(items, dict) else items)])

    def attach(self, yolo) -> None:
        yolo.add_callback("on_train_epoch_start", self.epoch_start)
        yolo.add_callback("on_train_epoch_end", self.epoch_end)
        yolo.add_callback("on_train_batch_end", self.batch_end)


def trainer_class():
    """Ultralytics' detection trainer; without polars (only read back to embed results.csv in the checkpoint),
    a subclass that skips that read so training runs anyway."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    try:
        import polars  # noqa: F401
    except ImportError:

        class Trainer(DetectionTrainer):
            def read_results_csv(self):
                return {}

        return Trainer
    return DetectionTrainer


def run_backend(backend: str, args, data: Path, project: Path) -> dict:
    from ultralytics import YOLO

    yolo = YOLO(f"yolov13{args.scale}.yaml")
    handle = None if backend == "naive" else yolo13_attn.patch(yolo, C.patch_spec(backend))
    rec = Recorder()
    rec.attach(yolo)
    train_args = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "workers": args.workers}
    train_args |= {"seed": args.seed, "amp": True, "plots": False, "val": False, "cache": "ram", "device": 0}
    train_args |= {"project": str(project), "name": backend, "exist_ok": True, "verbose": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yolo.train(data=str(data), trainer=trainer_class(), **train_args)
    served = C.served_by(handle)
    steady = rec.epoch_s[1:] or rec.epoch_s
    return {
        "backend": backend,
        "epoch_s": rec.epoch_s,
        "epoch_s_median": quantile(steady, 0.5),
        "epoch_s_p20": quantile(steady, 0.2),
        "epoch_s_p80": quantile(steady, 0.8),
        "losses": rec.losses,
        "final_loss": sum(sum(step) for step in rec.losses[-20:]) / max(1, len(rec.losses[-20:])),
        "served_by": served,
    }


def plot(data: dict, out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    runs = {r["backend"]: [sum(step) for step in r["losses"]] for r in data["runs"]}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=(2, 1))
    for backend, losses in runs.items():
        top.plot(losses, label=backend, linewidth=1)
    top.set_ylabel("training loss (box + cls + dfl)")
    top.set_title(f"{data['model']} batch {data['batch']} {data['imgsz']}px, AMP, seed {data['seed']}")
    top.legend()
    base = runs.get("naive")
    if base:
        for backend, losses in runs.items():
            if backend != "naive":
                n = min(len(base), len(losses))
                bottom.plot([losses[i] - base[i] for i in range(n)], label=f"{backend} - unpatched", linewidth=1)
        bottom.axhline(0, color="gray", linewidth=0.5)
        bottom.set_ylabel("difference")
        bottom.legend()
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out_dir / "train_epochs_loss.png", dpi=110)
    plt.close(fig)
    return ["train_epochs_loss.png"]


def markdown(data: dict) -> str:
    extra = {"date": data["date"], "run": f"{data['model']} batch {data['batch']}, {data['imgsz']}px, AMP"}
    lines = O.header_lines("YOLO.train per backend: epoch time and loss curves", data["environment"], extra)
    lines += [__doc__.split("\n\n")[1], ""]
    base = next((r for r in data["runs"] if r["backend"] == "naive"), None)
    rows = []
    for r in data["runs"]:
        ratio = base["epoch_s_median"] / r["epoch_s_median"] if base else None
        first = f"{r['epoch_s'][0]:.2f}" if r["epoch_s"] else "-"
        median = f"{r['epoch_s_median']:.2f} [{r['epoch_s_p20']:.2f}-{r['epoch_s_p80']:.2f}]"
        rows.append([r["backend"], median, first, O.fmt_x(ratio), f"{r['final_loss']:.4f}", len(r["losses"])])
    head = ["backend", "epoch s (median, epochs 2+)", "first epoch s", "speedup vs unpatched"]
    lines += [O.md_table(head + ["loss, last 20 steps", "steps"], rows), ""]
    lines += [f"![loss curves]({p})" for p in data.get("plots", [])]
    return "\n".join(lines) + "\n"


def csv_rows(data: dict) -> list[dict]:
    rows = []
    for r in data["runs"]:
        key = (data["model"], r["backend"], f"{data['imgsz']}x{data['imgsz']}", "amp_fp16", data["batch"])
        items = [("epoch_s", r["epoch_s_median"], r["epoch_s_p20"], r["epoch_s_p80"]), ("final_loss", r["final_loss"])]
        rows += O.long_rows(data, key, items)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="n", choices=("n", "s", "l", "x"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--images", type=int, default=288, help="generated pictures (1 in 8 go to val)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", default="naive,fa2path,auto", help="comma list (naive = unpatched)")
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/yolo13_attn_train_data"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_epochs.py needs a CUDA GPU")
        return 1
    data_yaml = make_dataset(args.data_dir, args.images, args.imgsz, args.seed)
    env = C.environment()
    data = {"device": env.get("gpu", "cuda"), "environment": env, "date": C.today(), "model": f"yolov13{args.scale}"}
    data |= {"batch": args.batch, "imgsz": args.imgsz, "seed": args.seed, "epochs": args.epochs, "runs": []}
    for backend in args.backends.split(","):
        t0 = time.perf_counter()
        data["runs"].append(run_backend(backend, args, data_yaml, args.data_dir.parent / "yolo13_attn_train_runs"))
        r = data["runs"][-1]
        print(
            f"{backend}: epoch {r['epoch_s_median']:.2f} s, final loss {r['final_loss']:.4f} "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    files = O.write_all(data, args.out, "train_epochs", csv_rows(data), markdown, plot)
    print(f"wrote {', '.join(files)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
