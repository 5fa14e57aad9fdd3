"""How YOLOv13 gets into stock Ultralytics.

* :mod:`.ultralytics_api` - the only module that names Ultralytics internals (and the version gate);
* :mod:`.parser` - builds YOLOv13 model dicts (``YOLO("yolov13n.yaml")``);
* :mod:`.checkpoints` - YOLOv13 layers pickle under Ultralytics' qualified names and load back;
* :mod:`.distributed` - multi-GPU workers import yolo13_attn before they read the model;
* :mod:`.installer` - :func:`~.installer.install`, run once by ``import yolo13_attn``.

:func:`installed` lists every change that made to Ultralytics. This package's ``__init__`` imports
only the adapter, so the layers beneath (``patching``) can use the adapter without importing the rest.
"""

from .ultralytics_api import Change, installed

__all__ = ["Change", "installed"]
