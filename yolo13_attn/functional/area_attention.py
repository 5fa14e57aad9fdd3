"""Public area-attention op: ``area_attention(q, k, v, area, layout=...)`` on any registered backend."""

from __future__ import annotations

from typing import cast

from torch import Tensor

from ..backends.base import AREA, AreaAttentionBackend, OpCall
from ..backends.registry import AUTO, resolve
from ..ops.checks import LayerRef, check_area_inputs, check_scale


def resolve_area_backend(q: Tensor, k: Tensor, v: Tensor, backend: object) -> type[AreaAttentionBackend]:
    """The backend class that serves this call of q/k/v ``(B, heads, head_dim, N)`` (``backend`` may
    already be one); TypeError/ValueError for anything that is not a backend name or class."""
    return cast(type[AreaAttentionBackend], resolve(backend, AREA, lambda: OpCall.for_area(q, k, v)))


def area_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    area: int = 1,
    scale: float | None = None,
    *,
    layout: str,
    backend: str | type[AreaAttentionBackend] = AUTO,
    layer: LayerRef = None,
) -> Tensor:
    """Softmax attention inside ``area`` contiguous token chunks (YOLOv13's area attention).

    Args:
        q, k, v: in ``layout``, all of one shape, dtype and device:

            * ``layout="bhdn"``: ``(B, heads, head_dim, N)``, the per-head channel-major views of the
              convolution outputs (``t.unflatten(1, (heads, head_dim)).flatten(3)`` of a ``(B, C, H, W)``
              tensor; no copy needed, NCHW or channels-last). Token ``n = h * W + w``.
            * ``layout="bhnd"``: ``(B, heads, N, head_dim)``, the layout of
              ``torch.nn.functional.scaled_dot_product_attention``.

            The layout is required: a square ``(head_dim == N)`` or otherwise plausible tensor in the
            other layout would pass any shape check and give a wrong answer.
        area: number of horizontal strips, an int >= 1 with ``N % area == 0``. Attention never crosses a strip.
        scale: logit scale (finite, > 0), ``head_dim ** -0.5`` by default.
        layout: ``"bhdn"`` or ``"bhnd"`` (see q, k, v).
        backend: ``"auto"``, a backend name (``naive``, ``sdpa``, ``flash``, ``triton``, ``cuda``),
            or a backend class.
        layer: names the layer in errors (a name, or a module with ``layer_label()``).

    Returns:
        The attention output in ``layout``: for ``"bhdn"`` a contiguous ``(B, heads, head_dim, N)`` tensor
        (so ``.view(B, C, H, W)`` is free); for ``"bhnd"`` a ``(B, heads, N, head_dim)`` view of one.
        Dtype of the inputs (inside ``torch.autocast``: the autocast dtype).

    Raises:
        TypeError / ValueError: an input breaks the rules of ``ops/checks.py`` (the message names the
            layer, the argument and the constraint). BackendUnsupportedError: a named backend cannot
            serve the call.
    """
    q, k, v, area = check_area_inputs(q, k, v, area, layout, layer)
    scale = q.shape[2] ** -0.5 if scale is None else check_scale(scale, layer)  # a traced shape makes a tensor
    impl = resolve_area_backend(q, k, v, backend)
    out = impl.forward(q, k, v, area, scale)
    return out if layout == "bhdn" else out.transpose(2, 3)
