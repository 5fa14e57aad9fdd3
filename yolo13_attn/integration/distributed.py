"""Multi-GPU training: Ultralytics' DDP workers import yolo13_attn before they read the model.

``model.train(device=[0, 1])`` makes Ultralytics' trainer call ``ultralytics.utils.dist.generate_ddp_file``,
which cloudpickles the trainer's class, arguments, model and callbacks into a ``.pt`` file and writes a
script that ``torch.distributed.run`` starts once per GPU. That script imports only Ultralytics, so
without help a worker cannot unpickle YOLOv13's layers (``Can't get attribute 'DSC3k2'``), build
``yolov13n.yaml`` or load a YOLOv13 checkpoint.

:func:`install` wraps ``generate_ddp_file``: while it runs, the trainer's model (a module, or the yaml or
checkpoint name a worker builds it from) sits inside :class:`ImportFirst`, which pickles as a call of
:func:`_after_import` of this module on that model. Unpickling looks the function up first, which imports
``yolo13_attn`` (and so installs YOLOv13 into the worker's Ultralytics) before the model's own bytes are
read, and the call hands the worker's trainer the bare model. The patch options need nothing more: they
travel in the callback that :func:`yolo13_attn.patch` added to the YOLO object, which the workers'
trainer runs on its model like the parent's would.
"""

from __future__ import annotations

from collections.abc import Callable

from .ultralytics_api import wrap_generate_ddp_file


def _after_import(model: object) -> object:
    """Unpickling side of :class:`ImportFirst`: looking this function up imported ``yolo13_attn``."""
    return model


class ImportFirst:
    """Pickles ``model`` so that unpickling imports ``yolo13_attn`` first and yields ``model`` itself."""

    __slots__ = ("model",)

    def __init__(self, model: object):
        self.model = model

    def __reduce__(self) -> tuple[Callable[[object], object], tuple[object]]:
        return _after_import, (self.model,)


def _generate_ddp_file_wrapper(original: Callable) -> Callable:
    def generate_ddp_file(trainer):
        model = trainer.model
        trainer.model = ImportFirst(model)
        try:
            return original(trainer)
        finally:
            trainer.model = model

    return generate_ddp_file


def install() -> None:
    """Wrap ``ultralytics.utils.dist.generate_ddp_file`` (``generate_ddp_command`` looks it up at call time)."""
    wrap_generate_ddp_file(
        _generate_ddp_file_wrapper, "wrapped: DDP workers import yolo13_attn before they unpickle the model"
    )
