"""The ops' one reference implementation (``reference.py``) and the input checks every entry point shares.

The backend-dispatched public functions are in :mod:`yolo13_attn.functional`.
"""

from .reference import (
    area_attention_reference,
    hypergraph_aggregate_reference,
    hypergraph_scale,
    hypergraph_scatter_reference,
)

__all__ = [
    "area_attention_reference",
    "hypergraph_aggregate_reference",
    "hypergraph_scale",
    "hypergraph_scatter_reference",
]
