"""The layer classes ``patch()`` knows, and the patched subclass each one gets.

Patching a layer swaps its class for a subclass (made once per class) whose backend hooks read
the layer's :class:`~yolo13_attn.binding.Binding`. The subclass pickles as the original class
without the binding (a checkpoint of a patched model holds no patched state), while
``copy.deepcopy`` keeps class and binding (so EMA copies and ``AutoBackend`` copies stay patched).
"""

from __future__ import annotations

import copy
import copyreg
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from . import nn as v13
from .backends.base import AREA, GROUPED_CONV, HYPERGRAPH
from .binding import Binding, area_call_key, grouped_conv_call_key, hypergraph_call_key
from .functional import area_attention, grouped_conv2d
from .integration.ultralytics_api import Conv, StockAAttn
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


def _grouped_conv(self: Conv, x: Tensor) -> Tensor:
    conv = self.conv
    backend = self.grouped_conv_backend(x, conv.weight, conv.bias)
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    return grouped_conv2d(x, conv.weight, conv.bias, *args, backend=backend, layer=self)


def grouped_conv_forward(self: Conv, x: Tensor) -> Tensor:
    """Ultralytics ``Conv.forward`` (conv -> BN -> act) with the convolution served by a backend."""
    return self.act(self.bn(_grouped_conv(self, x)))


def grouped_conv_forward_fuse(self: Conv, x: Tensor) -> Tensor:
    """Ultralytics ``Conv.forward_fuse`` (conv with BN folded in -> act) with the convolution served by a backend."""
    return self.act(_grouped_conv(self, x))


def _is_grouped(layer: Conv) -> bool:
    """A grouped convolution that is not depthwise: 1 < groups < C_in, zero padding."""
    conv = layer.conv
    return 1 < conv.groups < conv.in_channels and conv.padding_mode == "zeros"


@dataclass(frozen=True)
class LayerKind:
    """A patchable layer class: its op, its head width (a grouped convolution's input channels per
    group), whether it drops logits out in training, extra overrides, and which instances it covers."""

    op: str
    cls: type[nn.Module]
    head_dim: Callable[[Any], int]
    overrides: dict[str, Any] = field(default_factory=dict)
    logit_dropout: Callable[[Any], bool] = lambda layer: False
    covers: Callable[[Any], bool] = lambda layer: True


LAYER_KINDS: tuple[LayerKind, ...] = (
    LayerKind(AREA, v13.AAttn, lambda m: m.head_dim),
    LayerKind(AREA, StockAAttn, lambda m: m.head_dim, {"forward": yolo12_aattn_forward}),
    LayerKind(
        HYPERGRAPH,
        v13.AdaHGConv,
        lambda m: m.edge_generator.prototype_base.shape[1],
        logit_dropout=lambda m: m.edge_generator.dropout.p > 0,
    ),
    LayerKind(
        GROUPED_CONV,
        Conv,
        lambda m: m.conv.in_channels // m.conv.groups,
        {"forward": grouped_conv_forward, "forward_fuse": grouped_conv_forward_fuse},
        covers=_is_grouped,
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

    def grouped_conv_backend(self, x: Tensor, weight: Tensor, bias: Tensor | None):
        if self.binding.check_finite:
            check_finite(self.binding.name, x=x)
        return self.binding.backend_for(grouped_conv_call_key(x, weight, bias))

    def unpatched_twin(self) -> nn.Module:
        """A shallow copy of this layer as its original class, without the binding."""
        twin = object.__new__(self._unpatched_class)
        twin.__dict__.update((k, v) for k, v in self.__dict__.items() if k != BINDING_ATTR)
        return twin

    def __reduce_ex__(self, protocol: int):
        """Pickled as the unpatched layer would be (a checkpoint holds no patched state). Pickle refuses a
        ``copyreg.__newobj__`` of a class other than the object's own, so that form becomes the equivalent
        ``copyreg._reconstructor`` one (``object.__new__`` of the original class, then its state)."""
        reduced = self.unpatched_twin().__reduce_ex__(protocol)
        if reduced[0] is copyreg.__newobj__ and len(reduced[1]) == 1:
            reduced = (copyreg._reconstructor, (reduced[1][0], object, None), *reduced[2:])
        return reduced

    def __deepcopy__(self, memo: dict) -> nn.Module:
        """Same class and binding; registered in ``memo`` first, so attributes that refer back to the layer
        (``forward = forward_fuse`` after Ultralytics' ``fuse()``) copy to the clone."""
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        state = copy.deepcopy({k: v for k, v in self.__dict__.items() if k != BINDING_ATTR}, memo)
        clone.__setstate__(state)
        clone.__dict__[BINDING_ATTR] = copy.deepcopy(self.binding, memo)
        return clone


_PATCHED: dict[type, type] = {}


def kind_of(layer: nn.Module) -> LayerKind | None:
    """The LayerKind of a (patched or unpatched) layer, or None if it is not patchable."""
    cls = getattr(type(layer), "_unpatched_class", type(layer))
    return next((kind for kind in LAYER_KINDS if kind.cls is cls and kind.covers(layer)), None)


def _follow_class(layer: nn.Module, previous: type) -> None:
    """Instance attributes holding a method of the layer's ``previous`` class bound to the layer (Ultralytics'
    ``fuse()`` sets ``forward = forward_fuse``) re-resolve on its current class; other attributes stay."""
    for attr, value in list(vars(layer).items()):
        if inspect.ismethod(value) and value.__self__ is layer:
            name = value.__func__.__name__
            if getattr(previous, name, None) is value.__func__:
                layer.__dict__[attr] = getattr(layer, name)


def _renamed(fn: Callable, name: str, owner: str) -> Callable:
    """``fn`` as the method ``name`` of ``owner``: a method bound to a layer (``forward = forward_fuse`` after
    ``fuse()``) pickles by its function's name, which must then name the original class's method."""
    method = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    method.__qualname__, method.__doc__, method.__kwdefaults__ = f"{owner}.{name}", fn.__doc__, fn.__kwdefaults__
    return method


def patched_class(kind: LayerKind) -> type[nn.Module]:
    """The patched subclass of ``kind.cls`` (created once)."""
    if kind.cls not in _PATCHED:
        namespace = {
            "_unpatched_class": kind.cls,
            "__module__": kind.cls.__module__,
            "__qualname__": kind.cls.__qualname__,
        }
        overrides = {name: _renamed(fn, name, kind.cls.__qualname__) for name, fn in kind.overrides.items()}
        _PATCHED[kind.cls] = type(kind.cls.__name__, (PatchedLayer, kind.cls), {**namespace, **overrides})
    return _PATCHED[kind.cls]


def bind(layer: nn.Module, kind: LayerKind, binding: Binding) -> None:
    """Patch ``layer`` in place."""
    previous = type(layer)
    layer.__class__ = patched_class(kind)
    layer.__dict__[BINDING_ATTR] = binding
    _follow_class(layer, previous)


def unbind(layer: nn.Module) -> bool:
    """Restore ``layer``'s original class; False if it was not patched."""
    original = getattr(type(layer), "_unpatched_class", None)
    if original is None:
        return False
    layer.__dict__.pop(BINDING_ATTR, None)
    previous, layer.__class__ = type(layer), original
    _follow_class(layer, previous)
    return True
