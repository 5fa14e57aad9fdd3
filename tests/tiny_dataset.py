"""A tiny generated detection dataset (YOLO format) for training runs in tests."""

from __future__ import annotations

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
