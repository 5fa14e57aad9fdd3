"""The public ops, dispatched to a backend: the functions the layers and users call.

``ops/`` holds the reference math and the input checks; ``backends/`` the implementations; these
functions check the inputs once, pick the backend (a name, a backend class, or ``"auto"``) and call it.
"""

from .area_attention import area_attention
from .grouped_conv import grouped_conv2d
from .hypergraph import hypergraph_aggregate, hypergraph_scatter

__all__ = ["area_attention", "grouped_conv2d", "hypergraph_aggregate", "hypergraph_scatter"]
