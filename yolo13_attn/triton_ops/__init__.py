"""Triton implementations of the two ops (the ``triton`` backend's engine).

Importing this package imports triton and the kernels (``yolo13_attn.kernels``: the top-level
``kernels/`` folder, which setuptools installs as that package, also for ``pip install -e .``) and
registers the ``torch.ops.yolo13_attn.triton_*`` custom ops. Set ``TRITON_INTERPRET=1`` *before* the
first import of triton to run on CPU.
"""

import importlib.util

if importlib.util.find_spec("yolo13_attn.kernels") is None:
    raise ImportError(
        "yolo13_attn.kernels is not installed: the Triton kernels are the top-level kernels/ folder of the "
        "checkout, which `pip install -e .` (or `pip install .`) installs as yolo13_attn.kernels"
    )

from .area import area_attention, area_attention_backward, area_attention_forward
from .device import interpreted
from .hypergraph import (
    aggregate_backward,
    aggregate_forward,
    hypergraph_aggregate,
    hypergraph_scatter,
    scatter_backward,
    scatter_forward,
)

__all__ = [
    "aggregate_backward",
    "aggregate_forward",
    "area_attention",
    "area_attention_backward",
    "area_attention_forward",
    "hypergraph_aggregate",
    "hypergraph_scatter",
    "interpreted",
    "scatter_backward",
    "scatter_forward",
]
