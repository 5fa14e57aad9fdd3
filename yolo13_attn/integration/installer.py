"""``install()``: the one step that teaches stock Ultralytics YOLOv13, run by ``import yolo13_attn``."""

from __future__ import annotations

from . import checkpoints, distributed, parser
from .ultralytics_api import check_version


def install() -> None:
    """Warn if the Ultralytics version is unsupported, then make every change :func:`installed` lists.

    Idempotent: a second call (a re-import) changes nothing. What it changes, all through
    :mod:`.ultralytics_api`:

    * ``ultralytics.nn.tasks.parse_model`` and ``check_yaml`` are wrapped (YOLOv13 yaml files build);
    * YOLOv13's class names are added to ``ultralytics.nn.modules.block`` / ``.conv``, and the
      ``__setstate__`` of ``DetectionModel`` and of YOLO12's ``AAttn``/``ABlock``/``A2C2f`` are wrapped
      (YOLOv13 checkpoints load);
    * ``ultralytics.utils.dist.generate_ddp_file`` is wrapped (multi-GPU workers import yolo13_attn).
    """
    check_version()
    checkpoints.install()
    parser.install()
    distributed.install()
