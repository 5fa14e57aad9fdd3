"""YOLOv13's layers, written from ../shared/yolov13-spec.md with the official child names."""

from .area_attention import A2C2f, AAttn, ABlock
from .blocks import DSC3k, DSC3k2, DownsampleConv, DSBottleneck, FullPAD_Tunnel, FuseModule
from .conv import DSConv
from .head import YOLOv13Detect
from .hypergraph import C3AH, AdaHGComputation, AdaHGConv, AdaHyperedgeGen, HyperACE

__all__ = [
    "A2C2f",
    "AAttn",
    "ABlock",
    "C3AH",
    "DSC3k",
    "DSC3k2",
    "DSBottleneck",
    "DSConv",
    "AdaHGComputation",
    "AdaHGConv",
    "AdaHyperedgeGen",
    "DownsampleConv",
    "FullPAD_Tunnel",
    "FuseModule",
    "HyperACE",
    "YOLOv13Detect",
]
