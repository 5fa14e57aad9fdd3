"""HyperACE's adaptive hypergraph computation: AdaHyperedgeGen, AdaHGConv, AdaHGComputation, C3AH, HyperACE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from ultralytics.nn.modules.conv import Conv

from ..functional import hypergraph_aggregate, hypergraph_scatter
from ..ops.reference import hyperedge_logits, hypergraph_scale
from .blocks import DSBottleneck, DSC3k, FuseModule
from .layer_hooks import HypergraphLayer

CONTEXTS = ("mean", "max", "both")


class AdaHyperedgeGen(nn.Module):
    """Per-image hyperedge prototypes and vertex-hyperedge participation.

    ``forward(X (B, N, D)) -> A (B, N, M)``: softmax over the N vertices of the (dropped-out in
    training) logits ``<pre_head_proj(X), P> / (heads * sqrt(D / heads))``.
    """

    def __init__(
        self, node_dim: int, num_hyperedges: int, num_heads: int = 4, dropout: float = 0.1, context: str = "both"
    ):
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"AdaHyperedgeGen context must be one of {CONTEXTS}, got {context!r}")
        self.num_heads = num_heads
        self.num_hyperedges = num_hyperedges
        self.head_dim = node_dim // num_heads
        self.context = context
        self.prototype_base = nn.Parameter(torch.empty(num_hyperedges, node_dim))
        nn.init.xavier_uniform_(self.prototype_base)
        context_dim = 2 * node_dim if context == "both" else node_dim
        self.context_net = nn.Linear(context_dim, num_hyperedges * node_dim)
        self.pre_head_proj = nn.Linear(node_dim, node_dim)
        self.dropout = nn.Dropout(dropout)

    @property
    def scale(self) -> float:
        return hypergraph_scale(self.prototype_base.shape[1], self.num_heads)

    def prototypes(self, x: Tensor) -> Tensor:
        """``(B, N, D)`` -> per-image prototypes ``(B, M, D)`` = base + context_net(context)."""
        if self.context == "mean":
            context = x.mean(dim=1)
        elif self.context == "max":
            context = x.amax(dim=1)
        else:
            context = torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1)
        offsets = self.context_net(context).view(x.shape[0], *self.prototype_base.shape)
        return self.prototype_base.unsqueeze(0) + offsets

    def dropout_mask(self, x: Tensor) -> Tensor | None:
        """The training-mode logit dropout drawn once as a multiplicative ``(B, N, M)`` mask (0 or 1/(1-p)).

        ``dropout(logits) == logits * dropout(ones)`` and both draw the same random numbers, so
        every backend applies the same mask for the same random state. None in eval or when p = 0.
        """
        if not self.training or self.dropout.p == 0:
            return None
        ones = torch.ones(x.shape[0], x.shape[1], self.prototype_base.shape[0], device=x.device, dtype=x.dtype)
        return F.dropout(ones, self.dropout.p, training=True)

    def forward(self, x: Tensor) -> Tensor:
        logits = hyperedge_logits(self.pre_head_proj(x), self.prototypes(x), self.scale, self.dropout_mask(x))
        return logits.softmax(dim=1)


class AdaHGConv(HypergraphLayer, nn.Module):
    """Adaptive hypergraph convolution on tokens ``(B, N, D)`` -> ``(B, N, D)``.

    Vertex -> hyperedge aggregation (``hypergraph_aggregate``), ``edge_proj``, hyperedge -> vertex
    scatter with the same weights (``hypergraph_scatter``), ``node_proj``, residual.
    """

    def __init__(
        self, embed_dim: int, num_hyperedges: int = 16, num_heads: int = 4, dropout: float = 0.1, context: str = "both"
    ):
        super().__init__()
        self.edge_generator = AdaHyperedgeGen(embed_dim, num_hyperedges, num_heads, dropout, context)
        self.edge_proj = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.node_proj = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        gen = self.edge_generator
        prototypes, xp, mask = gen.prototypes(x), gen.pre_head_proj(x), gen.dropout_mask(x)
        backend = self.hypergraph_backend(x, xp, prototypes, mask)
        he, lse = hypergraph_aggregate(x, xp, prototypes, gen.scale, mask, backend=backend, layer=self)
        xn = hypergraph_scatter(xp, prototypes, lse, self.edge_proj(he), gen.scale, mask, backend=backend, layer=self)
        return self.node_proj(xn) + x


class AdaHGComputation(nn.Module):
    """AdaHGConv on the pixels of a feature map: ``(B, C, H, W)`` -> ``(B, C, H, W)``."""

    def __init__(
        self, embed_dim: int, num_hyperedges: int = 16, num_heads: int = 8, dropout: float = 0.1, context: str = "both"
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.hgnn = AdaHGConv(embed_dim, num_hyperedges, num_heads, dropout, context)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if c != self.embed_dim:
            raise ValueError(f"{type(self).__name__}: expected {self.embed_dim} channels, got input {tuple(x.shape)}")
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C), a view
        return self.hgnn(tokens).transpose(1, 2).reshape(b, c, h, w)


class C3AH(nn.Module):
    """CSP block around AdaHGComputation: ``cv3(cat(m(cv1(x)), cv2(x)))``."""

    def __init__(self, c1: int, c2: int, e: float = 1.0, num_hyperedges: int = 8, context: str = "both"):
        super().__init__()
        c_ = int(c2 * e)
        if c_ % 16:
            raise ValueError(f"C3AH hidden width int(c2 * e) = {c_} must be a multiple of 16")
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.m = AdaHGComputation(c_, num_hyperedges, c_ // 16, 0.1, context)
        self.cv3 = Conv(2 * c_, c2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class HyperACE(nn.Module):
    """Hypergraph-based adaptive correlation enhancement over [P3, P4, P5] at P4 resolution."""

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        num_hyperedges: int = 8,
        dsc3k: bool = True,
        shortcut: bool = False,
        e1: float = 0.5,
        e2: float = 1,
        context: str = "both",
        channel_adjust: bool = True,
    ):
        super().__init__()
        self.c = c = int(c2 * e1)
        self.cv1 = Conv(c1, 3 * c, 1, 1)
        self.cv2 = Conv((4 + n) * c, c2, 1)
        self.m = nn.ModuleList(
            DSC3k(c, c, 2, shortcut, k1=3, k2=7) if dsc3k else DSBottleneck(c, c, shortcut=shortcut) for _ in range(n)
        )
        self.fuse = FuseModule(c1, channel_adjust)
        self.branch1 = C3AH(c, c, e2, num_hyperedges, context)
        self.branch2 = C3AH(c, c, e2, num_hyperedges, context)

    def forward(self, x: list[Tensor]) -> Tensor:
        y = list(self.cv1(self.fuse(x)).chunk(3, 1))
        out1 = self.branch1(y[1])
        out2 = self.branch2(y[1])
        y.extend(m(y[-1]) for m in self.m)
        y[1] = out1
        y.append(out2)
        return self.cv2(torch.cat(y, 1))
