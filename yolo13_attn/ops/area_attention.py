"""Public area-attention op: ``area_attention(q, k, v, area)`` on any registered backend."""

from __future__ import annotations

from torch import Tensor

from ..backends.base import AreaAttentionBackend, OpCall
from ..backends.registry import AUTO, select
from .checks import LayerRef, check_area_inputs


def resolve_area_backend(q: Tensor, k: Tensor, v: Tensor, backend: str | type[AreaAttentionBackend]) -> type[AreaAttentionBackend]:
    """The backend class that serves this call (``backend`` may already be one)."""
    if isinstance(backend, str):
        return select(OpCall.for_area(q, k, v), backend)[0]  # type: ignore[return-value]
    return backend


def area_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    area: int = 1,
    scale: float | None = None,
    *,
    backend: str | type[AreaAttentionBackend] = AUTO,
    layer: LayerRef = None,
) -> Tensor:
    """Softmax attention inside ``area`` contiguous token chunks (YOLOv13's area attention).

    Args:
        q, k, v: ``(B, heads, head_dim, N)`` per-head channel-major views of the convolution
            outputs (``t.unflatten(1, (heads, head_dim)).flatten(3)`` of a ``(B, C, H, W)`` tensor;
            no copy needed, NCHW or channels-last). Token ``n = h * W + w``.
        area: number of horizontal strips; ``N % area == 0``. Attention never crosses a strip.
        scale: logit scale, ``head_dim ** -0.5`` by default.
        backend: ``"auto"``, a backend name (``naive``, ``sdpa``, ``flash``, ``triton``, ``cuda``),
            or a backend class.
        layer: names the layer in errors (a name, or a module with ``layer_label()``).

    Returns:
        ``(B, heads, head_dim, N)``, contiguous, so ``.view(B, C, H, W)`` is free.
    """
    check_area_inputs(q, k, v, area, layer)
    impl = resolve_area_backend(q, k, v, backend)
    return impl.forward(q, k, v, area, q.shape[2] ** -0.5 if scale is None else scale)
