"""The layer classes ``patch()`` knows, and the patched subclass each one gets.

Patching a layer swaps its class for a subclass (made once per class) whose backend hooks read
the layer's :class:`~yolo13_attn.binding.Binding`. The subclass pickles as the original class
without the binding (a checkpoint of a patched model holds no patched state), while
``copy.deepcopy`` keeps class and binding (so EMA copies and ``AutoBackend`` copies stay patched).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from . import nn as v13
from .backends.base import AREA, HYPERGRAPH
from .binding import Binding, area_call_key, hypergraph_call_key
from .functional import area_attention
from .integration.ultralytics_api import StockAAttn
from .nn.area_attention import heads_view
from .ops.checks import check_finite

BINDING_ATTR = "_yolo13_binding"


def yolo12_aattn_forward(self: StockAAttn, x: Tensor) -> Tensor:
    """Stock (YOLO12) AAttn through ``area_attention``: its fused ``qkv`` conv holds, per head, q, k, v
    of ``head_dim`` channels each; ``pe`` is a 7x7 depthwise conv on v."""
    b, _, h, w = x.shape
    qkv = heads_view(self.qkv(x), self.num_heads)  # (B, heads, 3 * head_dim, N)
    q, k, v = qkv.split(self.head_dim, dim=2)
    out = area_attention(q, k, v, self.area, layout="bhdn", backend=self.area_backend(q, k, v), layer=self)
    v_image = v.reshape(b, -1, h, w)
    return self.proj(out.view(b, -1, h, w) + self.pe(v_image))


@dataclass(frozen=True)
class LayerKind:
    """A patchable layer class: its op, its attention head width, whether it drops logits out in
    training, and extra overrides."""

    op: str
    cls: type[nn.Module]
    head_dim: Callable[[Any], int]
    overrides: dict[str, Any] = field(default_factory=dict)
    logit_dropout: Callable[[Any], bool] = lambda layer: False


LAYER_KINDS: tuple[LayerKind, ...] = (
    LayerKind(AREA, v13.AAttn, lambda m: m.head_dim),
    LayerKind(AREA, StockAAttn, lambda m: m.head_dim, {"forward": yolo12_aattn_forward}),
    LayerKind(
        HYPERGRAPH,
        v13.AdaHGConv,
        lambda m: m.edge_generator.prototype_base.shape[1],
        logit_dropout=lambda m: m.edge_generator.dropout.p > 0,
    ),
)


class PatchedLayer:
    """Mixin placed first in a patched layer's class: backend hooks that read the binding."""

    _unpatched_class: type[nn.Module]

    @property
    def binding(self) -> Binding:
        return self.__dict__[BINDING_ATTR]

    def layer_label(self) -> str:
        return self.binding.name

    def area_backend(self, q: Tensor, k: Tensor, v: Tensor):
        if self.binding.check_finite:
            check_finite(self.binding.name, q=q, k=k, v=v)
        return self.binding.backend_for(area_call_key(q, k, v))

    def hypergraph_backend(self, x: Tensor, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None):
        if self.binding.check_finite:
            check_finite(self.binding.name, x=x, xp=xp, prototypes=prototypes)
        return self.binding.backend_for(hypergraph_call_key(x, xp, prototypes, dropout_mask))

    def unpatched_twin(self) -> nn.Module:
        """A shallow copy of this layer as its original class, without the binding."""
        twin = object.__new__(self._unpatched_class)
        twin.__dict__.update((k, v) for k, v in self.__dict__.items() if k != BINDING_ATTR)
        return twin

    def __reduce_ex__(self, protocol: int):
        """Pickled exactly as the unpatched layer would be (a checkpoint holds no patched state)."""
        return self.unpatched_twin().__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict) -> nn.Module:
        clone = copy.deepcopy(self.unpatched_twin(), memo)
        clone.__class__ = type(self)
        clone.__dict__[BINDING_ATTR] = copy.deepcopy(self.binding, memo)
        memo[id(self)] = clone
        return clone


_PATCHED: dict[type, type] = {}


def kind_of(layer: nn.Module) -> LayerKind | None:
    """The LayerKind of a (patched or unpatched) layer, or None if it is not patchable."""
    cls = getattr(type(layer), "_unpatched_class", type(layer))
    return next((kind for kind in LAYER_KINDS if kind.cls is cls), None)


def patched_class(kind: LayerKind) -> type[nn.Module]:
    """The patched subclass of ``kind.cls`` (created once)."""
    if kind.cls not in _PATCHED:
        namespace = {
            "_unpatched_class": kind.cls,
            "__module__": kind.cls.__module__,
            "__qualname__": kind.cls.__qualname__,
        }
        _PATCHED[kind.cls] = type(kind.cls.__name__, (PatchedLayer, kind.cls), {**namespace, **kind.overrides})
    return _PATCHED[kind.cls]


def bind(layer: nn.Module, kind: LayerKind, binding: Binding) -> None:
    """Patch ``layer`` in place."""
    layer.__class__ = patched_class(kind)
    layer.__dict__[BINDING_ATTR] = binding


def unbind(layer: nn.Module) -> bool:
    """Restore ``layer``'s original class; False if it was not patched."""
    original = getattr(type(layer), "_unpatched_class", None)
    if original is None:
        return False
    layer.__dict__.pop(BINDING_ATTR, None)
    layer.__class__ = original
    return True
