"""The seam between layers and backends.

An unpatched layer computes with the reference (``naive``); ``patch()`` swaps the layer's class for
a subclass whose hooks return the backend bound to that layer (see ``yolo13_attn/patching.py``).
"""

from __future__ import annotations

from torch import Tensor

from ..backends.base import AreaAttentionBackend, HypergraphBackend


class AreaAttentionLayer:
    """Mixin of layers that call ``area_attention``."""

    def area_backend(self, q: Tensor, k: Tensor, v: Tensor) -> str | type[AreaAttentionBackend]:
        """Backend for this call: the reference unless patched."""
        return "naive"

    def layer_label(self) -> str:
        """How errors name this layer."""
        return f"{type(self).__name__}(heads={self.num_heads}, head_dim={self.head_dim}, area={self.area})"


class HypergraphLayer:
    """Mixin of layers that call the hypergraph ops."""

    def hypergraph_backend(
        self, x: Tensor, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None
    ) -> str | type[HypergraphBackend]:
        """Backend for this call: the reference unless patched."""
        return "naive"

    def layer_label(self) -> str:
        """How errors name this layer."""
        return type(self).__name__
