"""Public grouped-convolution op: ``grouped_conv2d(x, weight, bias, ..., groups)`` on any registered backend."""

from __future__ import annotations

from typing import cast

from torch import Tensor

from ..backends.base import GROUPED_CONV, GroupedConvBackend, OpCall
from ..backends.registry import AUTO, resolve
from ..ops.checks import LayerRef, check_grouped_conv_inputs
from ..ops.grouped_conv import Pair


def grouped_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    groups: int = 1,
    *,
    backend: str | type[GroupedConvBackend] = AUTO,
    layer: LayerRef = None,
) -> Tensor:
    """``torch.nn.functional.conv2d`` with ``groups``, served by a backend (``naive``: PyTorch's grouped
    convolution; ``dense``: one dense convolution over the block-diagonal weight, ``ops/grouped_conv.py``).

    Args:
        x: ``(B, C_in, H, W)``, NCHW or channels-last.
        weight: ``(C_out, C_in / groups, kh, kw)``; bias ``(C_out,)`` or None; one dtype and device with x
            (inside ``torch.autocast``: all cast to the autocast dtype first).
        stride, padding, dilation: as for ``F.conv2d``.
        groups: an int >= 1 dividing C_in and C_out.
        backend: ``"auto"``, ``"naive"``, ``"dense"`` or a backend class.
        layer: names the layer in errors.

    Returns:
        ``(B, C_out, H_out, W_out)`` in the dtype of the inputs.
    """
    x, weight, bias = check_grouped_conv_inputs(x, weight, bias, groups, layer)
    impl = cast(
        type[GroupedConvBackend], resolve(backend, GROUPED_CONV, lambda: OpCall.for_grouped_conv(x, weight, bias))
    )
    return impl.forward(x, weight, bias, stride, padding, dilation, groups)
