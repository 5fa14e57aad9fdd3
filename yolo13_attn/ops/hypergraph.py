"""Public hypergraph ops: vertex -> hyperedge aggregation and hyperedge -> vertex scatter.

The split follows the math of HyperACE's AdaHGConv (``ops/reference.py`` has the formulas):
``aggregate`` is attention with the M prototypes as queries, keys ``xp`` and values ``x``, softmax
over the N vertices, and also returns the log-sum-exp; ``edge_proj`` runs in between (a plain
module); ``scatter`` reuses ``exp(logit - lse)`` to send hyperedge features back to the vertices.
"""

from __future__ import annotations

from torch import Tensor

from ..backends.base import HypergraphBackend, OpCall
from ..backends.registry import AUTO, select
from .checks import LayerRef, check_hypergraph_inputs, check_scatter_inputs


def resolve_hypergraph_backend(
    x: Tensor, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None, backend: str | type[HypergraphBackend]
) -> type[HypergraphBackend]:
    """The backend class that serves this call (``backend`` may already be one)."""
    if isinstance(backend, str):
        return select(OpCall.for_hypergraph(x, xp, prototypes, dropout_mask), backend)[0]  # type: ignore[return-value]
    return backend


def hypergraph_aggregate(
    x: Tensor,
    xp: Tensor,
    prototypes: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    *,
    backend: str | type[HypergraphBackend] = AUTO,
    layer: LayerRef = None,
) -> tuple[Tensor, Tensor]:
    """Vertex -> hyperedge aggregation.

    Args:
        x: ``(B, N, D)`` vertex features (values), any strides.
        xp: ``(B, N, D)`` projected vertex features (keys).
        prototypes: ``(B, M, D)`` hyperedge prototypes (queries).
        scale: logit scale, ``1 / (num_heads * sqrt(D // num_heads))``.
        dropout_mask: ``(B, N, M)`` multiplicative logit mask (training) or None.
        layer: names the layer in errors (a name, or a module with ``layer_label()``).

    Returns:
        ``he (B, M, D)`` and ``lse (B, M)`` float32 (log-sum-exp of the logits over N).
    """
    check_hypergraph_inputs(x, xp, prototypes, dropout_mask, layer)
    impl = resolve_hypergraph_backend(x, xp, prototypes, dropout_mask, backend)
    return impl.aggregate(x, xp, prototypes, scale, dropout_mask)


def hypergraph_scatter(
    xp: Tensor,
    prototypes: Tensor,
    lse: Tensor,
    he: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    *,
    backend: str | type[HypergraphBackend] = AUTO,
    layer: LayerRef = None,
) -> Tensor:
    """Hyperedge -> vertex scatter with the aggregation's weights ``exp(logit - lse)``.

    Args:
        xp, prototypes, scale, dropout_mask: as for :func:`hypergraph_aggregate`.
        lse: ``(B, M)`` from :func:`hypergraph_aggregate`.
        he: ``(B, M, D)`` hyperedge features (after ``edge_proj``).

    Returns:
        ``(B, N, D)``.
    """
    check_scatter_inputs(xp, prototypes, lse, he, dropout_mask, layer)
    impl = resolve_hypergraph_backend(xp, xp, prototypes, dropout_mask, backend)
    return impl.scatter(xp, prototypes, lse, he, scale, dropout_mask)
