"""YOLOv13's area attention: AAttn, ABlock and A2C2f.

YOLOv13's AAttn is not stock Ultralytics' (YOLO12) AAttn: separate ``qk`` and ``v`` convolutions
and a 5x5 positional conv. The three classes share their pickled names with YOLO12's, so
``integration/checkpoints.py`` makes them pickle as ``ultralytics.nn.modules.block.<Name>``
and load back into the right class.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from ultralytics.nn.modules.block import C3k
from ultralytics.nn.modules.conv import Conv

from ..functional import area_attention
from .layer_hooks import AreaAttentionLayer


def heads_view(t: Tensor, num_heads: int) -> Tensor:
    """``(B, heads * head_dim, H, W)`` -> ``(B, heads, head_dim, H * W)`` without a copy."""
    return t.unflatten(1, (num_heads, -1)).flatten(3)


class AAttn(AreaAttentionLayer, nn.Module):
    """Area attention (YOLOv13 layout): input/output ``(B, dim, H, W)``.

    ``q``/``k`` are channels ``[0, dim)``/``[dim, 2 dim)`` of the ``qk`` conv, head ``j`` owns channels
    ``[j * head_dim, (j + 1) * head_dim)``; tokens are pixels in row-major order cut into ``area``
    horizontal strips. Returns ``proj(attention + pe(v))``.
    """

    def __init__(self, dim: int, num_heads: int, area: int = 1):
        super().__init__()
        self.area = area
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        all_head_dim = self.head_dim * num_heads
        self.qk = Conv(dim, all_head_dim * 2, 1, act=False)
        self.v = Conv(dim, all_head_dim, 1, act=False)
        self.proj = Conv(all_head_dim, dim, 1, act=False)
        self.pe = Conv(all_head_dim, dim, 5, 1, 2, g=dim, act=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        qk = self.qk(x)
        v = self.v(x)
        q, k = qk.chunk(2, dim=1)
        q, k, vh = (heads_view(t, self.num_heads) for t in (q, k, v))
        out = area_attention(q, k, vh, self.area, layout="bhdn", backend=self.area_backend(q, k, vh), layer=self)
        return self.proj(out.view(b, -1, h, w) + self.pe(v))


class ABlock(nn.Module):
    """``x + attn(x)`` then ``x + mlp(x)``; input/output ``(B, dim, H, W)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 1.2, area: int = 1):
        super().__init__()
        self.attn = AAttn(dim, num_heads=num_heads, area=area)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(Conv(dim, hidden, 1), Conv(hidden, dim, 1, act=False))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class A2C2f(nn.Module):
    """Residual-enhanced C2f with area-attention blocks (``a2``) or C3k blocks.

    Input ``(B, c1, H, W)`` -> ``(B, c2, H, W)``; the hidden width ``int(c2 * e)`` must be a multiple
    of 32 (head_dim 32).
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        a2: bool = True,
        area: int = 1,
        residual: bool = False,
        mlp_ratio: float = 2.0,
        e: float = 0.5,
        g: int = 1,
        shortcut: bool = True,
    ):
        super().__init__()
        c_ = int(c2 * e)
        if c_ % 32:
            raise ValueError(f"A2C2f hidden width int(c2 * e) = {c_} must be a multiple of 32 (head_dim 32)")
        num_heads = c_ // 32
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv((1 + n) * c_, c2, 1)
        self.gamma = nn.Parameter(0.01 * torch.ones(c2), requires_grad=True) if a2 and residual else None
        self.m = nn.ModuleList(
            nn.Sequential(*(ABlock(c_, num_heads, mlp_ratio, area) for _ in range(2)))
            if a2
            else C3k(c_, c_, 2, shortcut, g)
            for _ in range(n)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        z = self.cv2(torch.cat(y, 1))
        return x + self.gamma.view(1, -1, 1, 1) * z if self.gamma is not None else z
