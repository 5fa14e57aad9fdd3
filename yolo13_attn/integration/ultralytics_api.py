"""Everything yolo13-attn assumes about Ultralytics' internals, in one module.

Ultralytics has no plug-in interface for new model families, so the library extends it through its
objects: it wraps three functions, registers class names, wraps four ``__setstate__`` methods and, for
a patched ``YOLO`` object, adds a callback and reads a few trainer attributes. Each of those relies on
something Ultralytics does but does not promise; each is named here once and checked by one test in
``tests/test_ultralytics_contract.py``, so a new Ultralytics release that changes one fails in that
named test. The rest of the package imports these names instead of reaching into Ultralytics.

Assumptions (and the test that checks each):

* the installed version is one we test against: ``SUPPORTED`` (``test_installed_version_is_supported``);
* ``DetectionModel`` builds through ``ultralytics.nn.tasks.parse_model(d, ch, verbose)``, looked up at
  call time (``test_detection_model_builds_through_parse_model_at_call_time``);
* model yaml names are resolved by ``ultralytics.nn.tasks.check_yaml(file, hard=False)`` first, which
  returns an empty string for a name it cannot find (``test_yaml_names_resolve_through_check_yaml``);
* ``ultralytics.utils.dist.generate_ddp_command`` calls ``generate_ddp_file(trainer)``, looked up at call
  time, which pickles ``trainer.model`` (``test_ddp_launch_pickles_trainer_model_through_generate_ddp_file``);
* checkpoints hold whole pickled modules found by ``module.Name``, and loading one unpickles its
  ``DetectionModel`` through ``__setstate__`` (``test_checkpoints_unpickle_modules_by_qualified_name``);
* stock Ultralytics has none of YOLOv13's class names (``test_stock_ultralytics_lacks_yolov13_names``);
* YOLO12's ``AAttn``/``ABlock``/``A2C2f`` keep ``nn.Module``'s ``__setstate__`` and their child names
  (``test_stock_area_attention_classes_and_children``);
* YOLO12's ``AAttn`` holds a fused ``qkv`` conv (q, k, v of ``head_dim`` channels per head), ``pe`` and
  ``proj`` (``test_stock_aattn_layout``);
* ``Detect`` reads the class attribute ``legacy`` when it builds (``test_detect_reads_legacy_when_built``)
  and decodes boxes in ``_get_decode_boxes(x)`` from ``x["feats"]``, ``x["boxes"]``, its ``stride``,
  ``dfl`` and ``decode_bboxes`` (``test_detect_decodes_boxes_from_feats_and_boxes``);
* a ``YOLO`` object is an ``ultralytics.engine.model.Model`` holding its module in ``.model``
  (``test_yolo_is_a_model_holding_a_module``);
* ``Model.predict`` builds a new predictor when ``.predictor`` is None and the predictor runs a deep copy
  of the model (``test_predict_rebuilds_a_dropped_predictor_on_a_deep_copy``);
* ``Model.train`` is a plain method an instance attribute can override
  (``test_train_is_a_plain_method``);
* the trainer runs the ``on_pretrain_routine_end`` callbacks of the ``YOLO`` object after it built its
  model and EMA (``test_trainer_runs_callbacks_after_building_model_and_ema``), calls
  ``trainer.final_eval`` looked up on the instance (``test_trainer_calls_final_eval_on_the_instance``),
  whose validation unpickles ``best.pt`` (``test_final_eval_unpickles_the_best_checkpoint``), and
  ``Model.train`` replaces ``.model`` by the best checkpoint at the end
  (``test_train_reloads_the_best_checkpoint``).

``nn/`` subclasses Ultralytics' public building blocks (``Conv``, ``C2f``, ``C3``, ``C3k``, ``Detect``)
directly; the one private method it overrides (``Detect._get_decode_boxes``) is checked above.

What :func:`yolo13_attn.integration.installer.install` changed is listed by :func:`installed`.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ultralytics
import ultralytics.nn
import ultralytics.nn.modules.block as BLOCK_MODULE
import ultralytics.nn.modules.conv as CONV_MODULE
from torch import nn
from ultralytics.engine.model import Model
from ultralytics.nn import tasks
from ultralytics.nn.modules import Concat, Conv, Detect
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER, dist
from ultralytics.utils.ops import make_divisible

#: the Ultralytics releases this library is tested against (``pyproject.toml`` pins the same range)
SUPPORTED = (">=8.4.190", "<8.5")
_OLDEST, _FIRST_UNSUPPORTED = (8, 4, 190), (8, 5)

#: YOLO12's area-attention classes, whose pickled names YOLOv13's layers share
StockAAttn, StockABlock, StockA2C2f = BLOCK_MODULE.AAttn, BLOCK_MODULE.ABlock, BLOCK_MODULE.A2C2f

#: the callback event after which a trainer's model and EMA exist
TRAIN_EVENT = "on_pretrain_routine_end"

_WRAPPED = "__yolo13_attn_wrapped__"

__all__ = [
    "BLOCK_MODULE",
    "CONV_MODULE",
    "LOGGER",
    "SUPPORTED",
    "TRAIN_EVENT",
    "Change",
    "Concat",
    "Conv",
    "Detect",
    "DetectionModel",
    "StockA2C2f",
    "StockAAttn",
    "StockABlock",
    "UnsupportedUltralyticsWarning",
    "add_train_callback",
    "check_version",
    "drop_predictor",
    "ema_model",
    "installed",
    "is_yolo",
    "make_divisible",
    "register_class",
    "remove_train_callback",
    "run_stock_train",
    "set_final_eval",
    "set_train",
    "unset_train",
    "wrap_check_yaml",
    "wrap_generate_ddp_file",
    "wrap_parse_model",
    "wrap_setstate",
]


# ---- the version gate --------------------------------------------------------------------------------


class UnsupportedUltralyticsWarning(UserWarning):
    """The installed Ultralytics is outside :data:`SUPPORTED`."""


def _release(version: str) -> tuple[int, ...]:
    """``"8.4.190"`` -> ``(8, 4, 190)``; suffixes such as ``.dev0`` or ``rc1`` are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def check_version(version: str | None = None) -> bool:
    """Warn (:class:`UnsupportedUltralyticsWarning`) when ``version`` (default: the installed Ultralytics)
    is outside :data:`SUPPORTED`; True when it is inside."""
    version = version or ultralytics.__version__
    if _OLDEST <= _release(version) < _FIRST_UNSUPPORTED:
        return True
    warnings.warn(
        f"yolo13-attn supports Ultralytics {','.join(SUPPORTED)}, found {version}: building and loading YOLOv13 "
        "rely on Ultralytics internals that may have changed (tests/test_ultralytics_contract.py checks each one)",
        UnsupportedUltralyticsWarning,
        stacklevel=3,
    )
    return False


# ---- what install() changed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One change made to Ultralytics: the dotted name changed and how."""

    target: str
    how: str

    def __str__(self) -> str:
        return f"{self.target}: {self.how}"


_CHANGES: dict[str, Change] = {}


def installed() -> list[Change]:
    """Every change ``import yolo13_attn`` made to Ultralytics, in the order made."""
    return list(_CHANGES.values())


def _record(target: str, how: str) -> None:
    _CHANGES.setdefault(target, Change(target, how))


def _wrap(owner: Any, attr: str, make: Callable[[Callable], Callable], how: str) -> Callable:
    """Replace ``owner.attr`` by ``make(original)`` once (idempotent); the wrapper keeps ``__wrapped__``."""
    original = getattr(owner, attr)
    if not getattr(original, _WRAPPED, False):
        wrapper = functools.wraps(original)(make(original))
        setattr(wrapper, _WRAPPED, True)
        setattr(owner, attr, wrapper)
    _record(f"{_dotted(owner)}.{attr}", how)
    return getattr(owner, attr)


def _dotted(owner: Any) -> str:
    """``ultralytics.nn.tasks`` for a module, ``ultralytics.nn.modules.block.AAttn`` for a class."""
    return f"{owner.__module__}.{owner.__qualname__}" if isinstance(owner, type) else owner.__name__


# ---- building: parse_model, check_yaml --------------------------------------------------------------


def wrap_parse_model(make: Callable[[Callable], Callable], how: str) -> None:
    """Wrap ``ultralytics.nn.tasks.parse_model(d, ch, verbose=True)`` (and its ``ultralytics.nn`` alias)."""
    ultralytics.nn.parse_model = _wrap(tasks, "parse_model", make, how)
    _record("ultralytics.nn.parse_model", "re-pointed to the wrapped ultralytics.nn.tasks.parse_model")


def wrap_check_yaml(make: Callable[[Callable], Callable], how: str) -> None:
    """Wrap ``ultralytics.nn.tasks.check_yaml(file, suffix, hard)``, which ``yaml_model_load`` calls."""
    _wrap(tasks, "check_yaml", make, how)


# ---- multi-GPU training ------------------------------------------------------------------------------


def wrap_generate_ddp_file(make: Callable[[Callable], Callable], how: str) -> None:
    """Wrap ``ultralytics.utils.dist.generate_ddp_file(trainer)``, which pickles ``trainer.model``."""
    _wrap(dist, "generate_ddp_file", make, how)


# ---- checkpoints ---------------------------------------------------------------------------------------


def register_class(module: Any, cls: type[nn.Module], how: str) -> None:
    """Make ``cls`` ``module.<cls.__name__>`` (where checkpoints look it up); refuse a name already taken."""
    existing = getattr(module, cls.__name__, None)
    if existing is not None and existing is not cls:
        raise RuntimeError(
            f"{module.__name__}.{cls.__name__} already exists in Ultralytics {ultralytics.__version__}; "
            "yolo13-attn cannot register YOLOv13's class under that name"
        )
    cls.__module__ = module.__name__
    setattr(module, cls.__name__, cls)
    _record(f"{module.__name__}.{cls.__name__}", how)


def wrap_setstate(cls: type[nn.Module], make: Callable[[Callable], Callable], how: str) -> None:
    """Wrap ``cls.__setstate__`` (unpickling and ``copy.deepcopy`` call it with the instance's ``__dict__``)."""
    _wrap(cls, "__setstate__", make, how)


# ---- a YOLO object, its predictor and its trainer --------------------------------------------------


def is_yolo(target: object) -> bool:
    """True for an Ultralytics ``YOLO`` (any ``Model``); its module is ``target.model``."""
    return isinstance(target, Model)


def drop_predictor(yolo: Model) -> None:
    """Make the next ``predict()`` build a new predictor (on a fresh deep copy of ``yolo.model``)."""
    yolo.predictor = None


def add_train_callback(yolo: Model, callback: Callable[[Any], None]) -> None:
    """Run ``callback(trainer)`` once the trainer of ``yolo`` has built its model and EMA."""
    yolo.add_callback(TRAIN_EVENT, callback)


def remove_train_callback(yolo: Model, callback: Callable[[Any], None]) -> None:
    yolo.callbacks[TRAIN_EVENT].remove(callback)


def set_train(yolo: Model, train: Callable[..., Any]) -> None:
    """``yolo.train(...)`` calls ``train`` instead of ``Model.train`` (an instance attribute)."""
    yolo.__dict__["train"] = train


def unset_train(yolo: Model) -> None:
    yolo.__dict__.pop("train", None)


def run_stock_train(yolo: Model, *args: Any, **kwargs: Any) -> Any:
    """``Model.train`` of ``yolo``'s class; it ends by loading the best checkpoint into ``yolo.model``."""
    return type(yolo).train(yolo, *args, **kwargs)


def ema_model(trainer: Any) -> nn.Module | None:
    """The trainer's EMA copy of its model, if it has one."""
    ema = getattr(trainer, "ema", None)
    return None if ema is None else ema.ema


def set_final_eval(trainer: Any, run: Callable[[Callable[[], None]], None]) -> None:
    """The trainer's final validation (of ``best.pt``) becomes ``run(original_final_eval)``; once per trainer."""
    if "final_eval" not in trainer.__dict__:
        trainer.final_eval = functools.partial(run, trainer.final_eval)
