"""Triton implementations of the two ops (the ``triton`` backend's engine).

Importing this package imports triton and the kernels (``yolo13_attn.kernels``, or the
top-level ``kernels/`` of a source checkout) and registers the ``torch.ops.yolo13_attn.triton_*``
custom ops. Set ``TRITON_INTERPRET=1`` *before* the first import of triton to run on CPU.
"""

from ._kernels import interpreted
from .area import area_attention, area_attention_backward, area_attention_forward
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
