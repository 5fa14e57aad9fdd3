"""How YOLOv13 gets into stock Ultralytics: the parser wrapper, the checkpoint class names, DDP workers."""

from . import checkpoints, distributed, parser


def install() -> None:
    """Idempotent: called once by ``import yolo13_attn``."""
    checkpoints.install()
    parser.install()
    distributed.install()
