"""Official-format checkpoints: YOLOv13 layers pickle under Ultralytics' qualified names.

An official ``yolov13*.pt`` pickles its layers as ``ultralytics.nn.modules.block.<Name>`` (and
``ultralytics.nn.modules.conv.DSConv``). Names stock Ultralytics lacks are registered there, so
those load as our classes. Three names clash with stock YOLO12 classes (``AAttn``, ``ABlock``,
``A2C2f``): our versions pickle *as* the stock name (so the official YOLOv13 code loads what we
save), and the stock classes' ``__setstate__`` is wrapped to turn an object whose state has the
YOLOv13 shape (an AAttn with a ``qk`` conv, a block holding one) into our class. YOLO12 objects
keep their class. ``copy.deepcopy`` takes the same path, so it preserves the class too.

The head of a YOLOv13 model is :class:`~yolo13_attn.nn.YOLOv13Detect`, pickled as stock ``Detect``;
``DetectionModel.__setstate__`` is wrapped to give a loaded (or deep-copied) YOLOv13 model that head
again, and to bind it to a patch while a patched trainer validates its own checkpoint.

A checkpoint we save also says what it needs: before the first object of each name stock
Ultralytics lacks, the pickle checks that the name exists. Stock Ultralytics without
``import yolo13_attn`` then fails with a ``KeyError`` whose message says to ``import yolo13_attn``
(instead of pickle's ``Can't get attribute 'DSC3k2'``), while the official YOLOv13 code, which has
those classes, passes the check and loads the file as before. Official checkpoints carry no such
check (we cannot change them): without the import they fail with pickle's message.
"""

from __future__ import annotations

import copyreg
import importlib
import operator
from collections.abc import Callable
from typing import Any

from torch import nn

from .. import nn as v13
from . import ultralytics_api as ul

_REGISTERED = {
    ul.BLOCK_MODULE: (
        v13.DSBottleneck,
        v13.DSC3k,
        v13.DSC3k2,
        v13.AdaHyperedgeGen,
        v13.AdaHGConv,
        v13.AdaHGComputation,
        v13.C3AH,
        v13.FuseModule,
        v13.HyperACE,
        v13.DownsampleConv,
        v13.FullPAD_Tunnel,
    ),
    ul.CONV_MODULE: (v13.DSConv,),
}


def _children(state: dict[str, Any]) -> dict[str, nn.Module]:
    return state.get("_modules") or {}


def _is_v13_aattn(state: dict[str, Any]) -> bool:
    return "qk" in _children(state)


def _is_v13_ablock(state: dict[str, Any]) -> bool:
    return isinstance(_children(state).get("attn"), v13.AAttn)


def _is_v13_a2c2f(state: dict[str, Any]) -> bool:
    blocks = _children(state).get("m")
    return blocks is not None and any(isinstance(m, v13.ABlock) for m in blocks.modules())


#: ours -> (the stock class it pickles as, "this state is YOLOv13's")
_SHARED: dict[type[nn.Module], tuple[type[nn.Module], Callable[[dict[str, Any]], bool]]] = {
    v13.AAttn: (ul.StockAAttn, _is_v13_aattn),
    v13.ABlock: (ul.StockABlock, _is_v13_ablock),
    v13.A2C2f: (ul.StockA2C2f, _is_v13_a2c2f),
}


#: ours -> the stock class it pickles as, restored by the model-level upgrade below
_HEADS: dict[type[nn.Module], type[nn.Module]] = {v13.YOLOv13Detect: ul.Detect}


def pickled_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The class an instance of ``cls`` is pickled as (the stock class for the shared names)."""
    return _SHARED[cls][0] if cls in _SHARED else _HEADS.get(cls, cls)


def qualified_name(cls: type[nn.Module]) -> str:
    """``module.Name`` as checkpoints record it (``ultralytics.nn.modules.block.A2C2f``)."""
    pickled = pickled_class(cls)
    return f"{pickled.__module__}.{pickled.__name__}"


class _Call:
    """Pickles as ``fn(*args)``: unpickling calls ``fn`` (a stdlib function every loader has)."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args


class NameCheckingReconstructor:
    """``copyreg._reconstructor`` for ``module.Name``, which pickles as "check that ``module.Name`` exists,
    then ``copyreg._reconstructor``".

    Copies call it directly. In a pickle it is written before the class it rebuilds, as
    ``getitem(({getattr(module, Name, None): 0}[getattr(module, Name, message)], _reconstructor), 1)``:
    where ``module.Name`` exists (our import, or the official YOLOv13 code) the lookup succeeds and the
    result is ``copyreg._reconstructor``; where it does not, the lookup raises ``KeyError(message)``.
    """

    def __init__(self, cls: type[nn.Module]):
        self.module, self.name = cls.__module__, cls.__name__

    def __call__(self, cls: type, base: type, state: object) -> object:
        return copyreg._reconstructor(cls, base, state)

    def __reduce__(self) -> tuple:
        message = (
            f"{self.module}.{self.name} is a YOLOv13 layer that stock Ultralytics lacks: run `import yolo13_attn` "
            "(the yolo13-attn library) before loading this checkpoint"
        )
        module = _Call(importlib.import_module, self.module)
        present = _Call(getattr, module, self.name, None)
        check = _Call(operator.getitem, {present: 0}, _Call(getattr, module, self.name, message))
        return operator.getitem, ((check, copyreg._reconstructor), 1)


#: one per registered class, so a pickle writes each check once (pickle memoizes the object)
_RECONSTRUCTORS: dict[type[nn.Module], NameCheckingReconstructor] = {}


def reduce_as(cls: type[nn.Module], state: dict[str, Any]) -> tuple:
    """A pickle reduction that rebuilds an object of ``cls`` (by qualified name) from ``state``; for a
    name stock Ultralytics lacks, the pickle first checks that the name exists."""
    return (_RECONSTRUCTORS.get(cls, copyreg._reconstructor), (cls, object, None), state)


def _reduce_as_stock(self: nn.Module, protocol: int) -> tuple:
    return reduce_as(pickled_class(type(self)), self.__dict__)


def _upgrading_setstate(
    stock: type[nn.Module], ours: type[nn.Module], is_ours: Callable[[dict[str, Any]], bool]
) -> Callable[[Callable], Callable]:
    """``stock.__setstate__`` wrapper: an object whose state has YOLOv13's shape becomes ``ours``."""

    def make(original: Callable) -> Callable:
        def __setstate__(self: nn.Module, state: dict[str, Any]) -> None:
            if type(self) is stock and is_ours(state):
                self.__class__ = ours
                nn.Module.__setstate__(self, state)
            else:
                original(self, state)

        return __setstate__

    return make


def is_yolov13(model: nn.Module) -> bool:
    """True for a model holding YOLOv13's own layers (HyperACE marks every YOLOv13 scale)."""
    return any(isinstance(m, v13.HyperACE) for m in model.modules())


def _upgrading_model_setstate(original: Callable) -> Callable:
    def __setstate__(self: nn.Module, state: dict[str, Any]) -> None:
        original(self, state)
        if is_yolov13(self):
            for ours, stock in _HEADS.items():
                for module in self.modules():
                    if type(module) is stock:
                        module.__class__ = ours
            from ..patching import bind_if_loading  # patching imports this module

            bind_if_loading(self)

    return __setstate__


def install() -> None:
    """Register the YOLOv13 class names in Ultralytics' modules and set up the shared names."""
    for module, classes in _REGISTERED.items():
        for cls in classes:
            ul.register_class(module, cls, "added: a YOLOv13 layer, so that YOLOv13 checkpoints find it")
            _RECONSTRUCTORS[cls] = NameCheckingReconstructor(cls)
            cls.__reduce_ex__ = _reduce_as_stock
    for ours in _HEADS:
        ours.__reduce_ex__ = _reduce_as_stock
    ul.wrap_setstate(
        ul.DetectionModel,
        _upgrading_model_setstate,
        "wrapped: a loaded or copied YOLOv13 model gets YOLOv13Detect back (and a trainer's patch)",
    )
    for ours, (stock, is_ours) in _SHARED.items():
        ours.__reduce_ex__ = _reduce_as_stock
        ul.wrap_setstate(
            stock,
            _upgrading_setstate(stock, ours, is_ours),
            f"wrapped: an object with YOLOv13's state becomes yolo13_attn's {ours.__name__} (YOLO12's stays)",
        )
