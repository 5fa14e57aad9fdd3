"""How YOLOv13 gets into stock Ultralytics: the parser wrapper and the checkpoint class names."""

from . import checkpoints, parser


def install() -> None:
    """Idempotent: called once by ``import yolo13_attn``."""
    checkpoints.install()
    parser.install()
