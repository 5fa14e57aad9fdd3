"""Public hypergraph ops: vertex -> hyperedge aggregation and hyperedge -> vertex scatter.

The split follows the math of HyperACE's AdaHGConv (``ops/reference.py`` has the formulas):
``aggregate`` is attention with the M prototypes as queries, keys ``xp`` and values ``x``, softmax
over the N vertices, and also returns the log-sum-exp; ``edge_proj`` runs in between (a plain
module); ``scatter`` reuses ``exp(logit - lse)`` to send hyperedge features back to the vertices.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor

from ..backends.base import HYPERGRAPH, HypergraphBackend, OpCall
from ..backends.registry import AUTO, resolve
from ..ops.checks import LayerRef, check_hypergraph_inputs, check_scale, check_scatter_inputs


def resolve_hypergraph_backend(
    x: Tensor, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None, backend: object
) -> type[HypergraphBackend]:
    """The backend class that serves this call (``backend`` may already be one); TypeError/ValueError for
    anything that is not a backend name or class."""
    call = lambda: OpCall.for_hypergraph(x, xp, prototypes, dropout_mask)  # noqa: E731
    return cast(type[HypergraphBackend], resolve(backend, HYPERGRAPH, call))


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
        x: ``(B, N, D)`` vertex features (values), token-major, any strides.
        xp: ``(B, N, D)`` projected vertex features (keys).
        prototypes: ``(B, M, D)`` hyperedge prototypes (queries).
        scale: logit scale (finite, > 0), ``1 / (num_heads * sqrt(D // num_heads))``.
        dropout_mask: ``(B, N, M)`` multiplicative logit mask (training) or None.
        layer: names the layer in errors (a name, or a module with ``layer_label()``).

    x, xp, prototypes and the mask share one dtype and device (inside ``torch.autocast`` they are cast
    to the autocast dtype first). N = 0 is valid: ``he`` is 0 and ``lse`` is -inf, as the reference gives.

    Returns:
        ``he (B, M, D)`` in the inputs' dtype and ``lse (B, M)``, the log-sum-exp of the logits over N:
        float32 for half and float32 inputs, float64 for float64 inputs.
    """
    x, xp, prototypes, dropout_mask = check_hypergraph_inputs(x, xp, prototypes, dropout_mask, layer)
    scale = check_scale(scale, layer)
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
        lse: ``(B, M)`` from :func:`hypergraph_aggregate` (float32, or float64 for float64 inputs).
        he: ``(B, M, D)`` hyperedge features (after ``edge_proj``), the dtype of xp and prototypes.

    Returns:
        ``(B, N, D)`` in the inputs' dtype.
    """
    xp, prototypes, lse, he, dropout_mask = check_scatter_inputs(xp, prototypes, lse, he, dropout_mask, layer)
    scale = check_scale(scale, layer)
    impl = resolve_hypergraph_backend(xp, xp, prototypes, dropout_mask, backend)
    return impl.scatter(xp, prototypes, lse, he, scale, dropout_mask)
