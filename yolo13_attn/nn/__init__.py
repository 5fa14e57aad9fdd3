"""YOLOv13's layers, written from the YOLOv13 paper (arXiv 2506.17733) with the official model's child names."""

from .area_attention import A2C2f, AAttn, ABlock
from .blocks import DownsampleConv, DSBottleneck, DSC3k, DSC3k2, FullPAD_Tunnel, FuseModule
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
