"""Input checks shared by every op entry point: one place that names the layer and the constraint."""

from __future__ import annotations

import torch
from torch import Tensor

#: what names a layer in an error: its name, or a module whose ``layer_label()`` gives it (built only on error)
LayerRef = object


def _where(layer: LayerRef) -> str:
    if layer is None:
        return ""
    label = layer.layer_label() if hasattr(layer, "layer_label") else str(layer)
    return f"{label}: "


def check_area_inputs(q: Tensor, k: Tensor, v: Tensor, area: int, layer: LayerRef = None) -> None:
    """Validate area-attention inputs ``(B, heads, head_dim, N)``; raise ValueError naming ``layer``."""
    where = _where(layer)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{where}area attention expects {name} of rank 4 (B, heads, head_dim, N), got {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"{where}q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"{where}q, k, v must share dtype and device")
    n = q.shape[-1]
    if area < 1 or n % area:
        raise ValueError(f"{where}token count N={n} (shape {tuple(q.shape)}) is not divisible by area={area}")


def check_hypergraph_inputs(x: Tensor, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None, layer: LayerRef = None) -> None:
    """Validate hypergraph inputs x/xp ``(B, N, D)``, prototypes ``(B, M, D)``, mask ``(B, N, M)``."""
    where = _where(layer)
    if x.dim() != 3 or xp.shape != x.shape:
        raise ValueError(f"{where}hypergraph expects x and xp of shape (B, N, D), got {tuple(x.shape)} and {tuple(xp.shape)}")
    b, n, d = x.shape
    if prototypes.dim() != 3 or prototypes.shape[0] != b or prototypes.shape[2] != d:
        raise ValueError(f"{where}prototypes must be (B={b}, M, D={d}), got {tuple(prototypes.shape)}")
    if dropout_mask is not None and dropout_mask.shape != (b, n, prototypes.shape[1]):
        raise ValueError(f"{where}dropout_mask must be (B, N, M)={(b, n, prototypes.shape[1])}, got {tuple(dropout_mask.shape)}")
    if not (x.device == xp.device == prototypes.device):
        raise ValueError(f"{where}x, xp and prototypes must be on one device")


def check_scatter_inputs(xp: Tensor, prototypes: Tensor, lse: Tensor, he: Tensor, dropout_mask: Tensor | None, layer: LayerRef = None) -> None:
    """Validate scatter inputs: as the aggregation's, plus he ``(B, M, D)`` and lse ``(B, M)``."""
    check_hypergraph_inputs(xp, xp, prototypes, dropout_mask, layer)
    if he.shape != prototypes.shape or lse.shape != prototypes.shape[:2]:
        raise ValueError(
            f"{_where(layer)}he must be (B, M, D)={tuple(prototypes.shape)} and lse (B, M)={tuple(prototypes.shape[:2])}, "
            f"got {tuple(he.shape)} and {tuple(lse.shape)}"
        )


def check_finite(layer: str, **tensors: Tensor) -> None:
    """Raise ValueError naming ``layer`` if any tensor holds NaN or inf (host sync: opt-in only)."""
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{layer}: input {name} {tuple(t.shape)} contains NaN or inf")
