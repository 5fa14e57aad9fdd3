"""YOLOv13's detection head: Ultralytics' ``Detect``, with box decoding that traces in one graph."""

from __future__ import annotations

import torch
from torch import Tensor
from ultralytics.nn.modules.head import Detect


def grid_anchors(feats: list[Tensor], strides: Tensor, offset: float = 0.5) -> tuple[Tensor, Tensor]:
    """Anchor centres and their strides from feature-map shapes, with tensor operations only.

    Args:
        feats: per level ``(B, C, H_i, W_i)``.
        strides: ``(levels,)`` stride of each level in pixels.
        offset: added to the grid indices (0.5: cell centres).

    Returns:
        ``anchors (2, N)`` - x then y in grid units, each level in row-major order, levels
        concatenated (N = sum of H_i * W_i) - and ``strides (1, N)``, both in the dtype of ``feats``.
    """
    dtype, points, scales = feats[0].dtype, [], []
    for level, feat in enumerate(feats):
        h, w = feat.shape[2:]
        xs = torch.arange(w, device=feat.device).to(dtype) + offset
        ys = torch.arange(h, device=feat.device).to(dtype) + offset
        points.append(torch.stack((xs.repeat(h), ys.repeat_interleave(w))))
        scales.append(strides[level].to(device=feat.device, dtype=dtype).expand(1, h * w))
    return torch.cat(points, 1), torch.cat(scales, 1)


class YOLOv13Detect(Detect):
    """Ultralytics' ``Detect`` for YOLOv13 models; pickled as ``Detect`` (checkpoints hold the stock name).

    Stock ``Detect`` builds its anchors from each level's stride as a Python number - a
    data-dependent conversion that breaks ``torch.compile``'s graph - and caches them per input
    shape. While dynamo traces (``torch.compile``, ``torch.export``) this head builds the same anchors
    with :func:`grid_anchors` instead and leaves the cache alone, so a YOLOv13 model compiles to one
    graph from a cold start; eager calls take the stock path unchanged.
    """

    def _get_decode_boxes(self, x: dict[str, Tensor]) -> Tensor:
        if self.dynamic or not torch.compiler.is_compiling():
            return super()._get_decode_boxes(x)
        anchors, strides = grid_anchors(x["feats"], self.stride)
        return self.decode_bboxes(self.dfl(x["boxes"]), anchors.unsqueeze(0), x.get("angle")) * strides
