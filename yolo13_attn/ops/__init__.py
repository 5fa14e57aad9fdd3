"""The reference math of each op (``reference.py``, ``grouped_conv.py``) and the input checks every entry point shares.

The backend-dispatched public functions are in :mod:`yolo13_attn.functional`.
"""

from .grouped_conv import block_diagonal_weight, dense_grouped_conv, grouped_conv_reference
from .reference import (
    area_attention_reference,
    hypergraph_aggregate_reference,
    hypergraph_scale,
    hypergraph_scatter_reference,
)

__all__ = [
    "area_attention_reference",
    "block_diagonal_weight",
    "dense_grouped_conv",
    "grouped_conv_reference",
    "hypergraph_aggregate_reference",
    "hypergraph_scale",
    "hypergraph_scatter_reference",
]
