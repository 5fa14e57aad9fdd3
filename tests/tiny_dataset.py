"""A tiny generated detection dataset (YOLO format) for training runs in tests."""

from __future__ import annotations

import warnings
from pathlib import Path


def tiny_dataset(root: Path, images: int = 4, size: int = 64) -> Path:
    """``images`` random ``size``x``size`` images with one box each under ``root``; returns the data yaml."""
    import cv2
    import numpy as np

    image_dir, label_dir = root / "images" / "train", root / "labels" / "train"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        cv2.imwrite(str(image_dir / f"{i}.jpg"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        (label_dir / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n  0: thing\n")
    return data


def train_tiny(yolo, data: Path, project: Path, **overrides) -> None:
    """One quiet epoch of ``yolo.train`` on the CPU at 64x64 (``overrides`` win), warnings silenced."""
    args = {"epochs": 1, "imgsz": 64, "batch": 2, "workers": 0, "device": "cpu", "plots": False, "amp": False}
    args |= {"project": str(project), "name": "t", "exist_ok": True, "verbose": False, **overrides}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yolo.train(data=str(data), **args)
