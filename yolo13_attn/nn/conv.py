"""DSConv: depthwise-separable convolution (plain ``nn.Conv2d`` children, as YOLOv13 names them)."""

from __future__ import annotations

from torch import Tensor, nn


class DSConv(nn.Module):
    """Depthwise ``k x k`` conv -> pointwise 1x1 conv -> BatchNorm -> SiLU.

    Input ``(B, c_in, H, W)`` -> output ``(B, c_out, H / s, W / s)``.
    """

    def __init__(
        self, c_in: int, c_out: int, k: int = 3, s: int = 1, p: int | None = None, d: int = 1, bias: bool = False
    ):
        super().__init__()
        padding = d * (k - 1) // 2 if p is None else p
        self.dw = nn.Conv2d(c_in, c_in, k, stride=s, padding=padding, dilation=d, groups=c_in, bias=bias)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=bias)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.pw(self.dw(x))))
