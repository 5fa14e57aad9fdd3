"""YOLOv13's convolutional blocks: DS bottlenecks, the FullPAD tunnel and the HyperACE plumbing."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from ultralytics.nn.modules.block import C3, C2f
from ultralytics.nn.modules.conv import Conv

from .conv import DSConv


class DSBottleneck(nn.Module):
    """Two DSConvs (kernels ``k1`` then ``k2``) with a residual when ``shortcut`` and ``c1 == c2``."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5, k1: int = 3, k2: int = 5, d2: int = 1):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = DSConv(c1, c_, k1)
        self.cv2 = DSConv(c_, c2, k2, d=d2)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class DSC3k(C3):
    """Ultralytics' C3 whose bottlenecks are ``n`` DSBottlenecks."""

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        shortcut: bool = True,
        g: int = 1,
        e: float = 0.5,
        k1: int = 3,
        k2: int = 5,
        d2: int = 1,
    ):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(DSBottleneck(c_, c_, shortcut, 1.0, k1, k2, d2) for _ in range(n)))


class DSC3k2(C2f):
    """Ultralytics' C2f whose blocks are DSC3k (``dsc3k=True``, scales l/x) or DSBottleneck."""

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        dsc3k: bool = False,
        e: float = 0.5,
        g: int = 1,
        shortcut: bool = True,
        k1: int = 3,
        k2: int = 7,
        d2: int = 1,
    ):
        super().__init__(c1, c2, n, shortcut, g, e)
        c = self.c
        self.m = nn.ModuleList(
            DSC3k(c, c, 2, shortcut, g, 1.0, k1, k2, d2) if dsc3k else DSBottleneck(c, c, shortcut, 1.0, k1, k2, d2)
            for _ in range(n)
        )


class FuseModule(nn.Module):
    """Fuse [P3, P4, P5] at P4 resolution: avg-pool P3, upsample P5, concat, 1x1 conv to ``c_in``."""

    def __init__(self, c_in: int, channel_adjust: bool):
        super().__init__()
        self.downsample = nn.AvgPool2d(kernel_size=2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv_out = Conv(4 * c_in if channel_adjust else 3 * c_in, c_in, 1)

    def forward(self, x: list[Tensor]) -> Tensor:
        return self.conv_out(torch.cat([self.downsample(x[0]), x[1], self.upsample(x[2])], dim=1))


class DownsampleConv(nn.Module):
    """2x average-pool, then a 1x1 Conv doubling the channels (identity when ``channel_adjust=False``)."""

    def __init__(self, in_channels: int, channel_adjust: bool = True):
        super().__init__()
        self.downsample = nn.AvgPool2d(kernel_size=2)
        self.channel_adjust = Conv(in_channels, in_channels * 2, 1) if channel_adjust else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.channel_adjust(self.downsample(x))


class FullPAD_Tunnel(nn.Module):  # noqa: N801 - the official (pickled) class name
    """Gated residual ``a + gate * b`` for inputs ``[a, b]``; the gate starts at 0."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: list[Tensor]) -> Tensor:
        return x[0] + self.gate * x[1]
