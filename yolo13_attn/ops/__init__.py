"""The ops: backend-dispatched entry points and the one reference implementation."""

from .area_attention import area_attention
from .hypergraph import hypergraph_aggregate, hypergraph_scatter
from .reference import (
    area_attention_reference,
    hypergraph_aggregate_reference,
    hypergraph_scale,
    hypergraph_scatter_reference,
)

__all__ = [
    "area_attention",
    "area_attention_reference",
    "hypergraph_aggregate",
    "hypergraph_aggregate_reference",
    "hypergraph_scale",
    "hypergraph_scatter",
    "hypergraph_scatter_reference",
]
