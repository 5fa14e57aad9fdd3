"""Grouped convolution: the reference, and the same convolution as one dense convolution.

YOLOv13's backbone downsamples with grouped 3x3 convolutions (``Conv(c, 3, 2, 1, g)`` with g = 2
and 4). cuDNN serves grouped convolutions in half precision through slow kernels and, in
channels-last, through layout transforms of the whole activation (on an H100, YOLOv13-x batch 16:
2.8 ms for one such layer, against 0.4 ms for a dense convolution of g times the FLOPs).

The dense form computes the same sums: group ``i``'s filters sit on the diagonal block
``[i * C_out / g, i * C_in / g]`` of a ``(C_out, C_in, kh, kw)`` weight whose other entries are exact
zeros, so every output channel adds its own group's products plus products with a zero weight,
which are exact zeros for finite inputs. Only the accumulation order may differ (as between any two
cuDNN algorithms). A non-finite activation in one group turns the zero products of the other groups
into NaN: the dense form is for finite activations, as any trained model has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Pair = int | tuple[int, int]


def grouped_conv_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair, dilation: Pair, groups: int
) -> Tensor:
    """``F.conv2d`` with ``groups``: x ``(B, C_in, H, W)``, weight ``(C_out, C_in / groups, kh, kw)``."""
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def block_diagonal_weight(weight: Tensor, groups: int) -> Tensor:
    """``(C_out, C_in / groups, kh, kw)`` -> ``(C_out, C_in, kh, kw)``: each group's filters on the diagonal
    block, exact zeros elsewhere (one ``torch.where``; differentiable, the zeros get no gradient)."""
    c_out, c_in_group, kh, kw = weight.shape
    blocks = weight.view(groups, c_out // groups, 1, c_in_group, kh, kw)
    diagonal = torch.eye(groups, dtype=torch.bool, device=weight.device).view(groups, 1, groups, 1, 1, 1)
    return torch.where(diagonal, blocks, 0.0).reshape(c_out, groups * c_in_group, kh, kw)


def dense_grouped_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair, dilation: Pair, groups: int
) -> Tensor:
    """The grouped convolution as one dense convolution over :func:`block_diagonal_weight` (same shapes as
    :func:`grouped_conv_reference`); the dense weight takes the memory format of ``x``."""
    dense = block_diagonal_weight(weight, groups)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        dense = dense.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, dense, bias, stride, padding, dilation, 1)
