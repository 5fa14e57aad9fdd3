"""yolo13-attn: YOLOv13 on stock Ultralytics, with interchangeable attention backends.

``import yolo13_attn`` teaches Ultralytics to build (``YOLO("yolov13n.yaml")``) and load
(``YOLO("yolov13n.pt")``) YOLOv13; ``yolo13_attn.patch(model, backend=...)`` swaps the math of its
attention layers for a backend (``naive``, ``sdpa``, ``flash``, ``triton``, ``cuda`` or ``auto``).

The import changes Ultralytics once, through ``yolo13_attn/integration/ultralytics_api.py``;
``yolo13_attn.integration.installed()`` lists every change.
"""

import logging
import sys

from .backends import BackendUnsupportedError, available_backends
from .functional import area_attention, grouped_conv2d, hypergraph_aggregate, hypergraph_scatter
from .integration.installer import install as _install_into_ultralytics
from .patching import LayerReport, PatchHandle, attention_layers, patch, patchable_layers, unpatch
from .profiling import format_kernels_by_layer, kernels_by_layer

__version__ = "0.1.0"

_install_into_ultralytics()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (redirections are honoured)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _default_logging() -> None:
    """``auto``'s one line per patched model reaches stderr unless the application configured the logger."""
    logger = logging.getLogger("yolo13_attn")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


_default_logging()

__all__ = [
    "BackendUnsupportedError",
    "LayerReport",
    "PatchHandle",
    "__version__",
    "area_attention",
    "attention_layers",
    "format_kernels_by_layer",
    "kernels_by_layer",
    "available_backends",
    "grouped_conv2d",
    "hypergraph_aggregate",
    "hypergraph_scatter",
    "patch",
    "patchable_layers",
    "unpatch",
]
