"""``patch()`` / ``unpatch()``: per-model, atomic, reversible backend swaps for the attention layers.

Works on an Ultralytics ``YOLO`` object, a ``DetectionModel`` or any ``nn.Module`` holding YOLOv13
``AAttn``/``AdaHGConv`` layers or stock (YOLO12) ``AAttn`` layers.

Semantics (README, "Patch semantics"):

* **Atomic.** Every choice is planned before any layer changes; a refused patch leaves the model as it was.
* **A stack per model.** Each ``patch()`` pushes an entry; for each op the newest entry naming it
  decides. ``handle.undo()`` removes that handle's entry only, so nested patches, partial specs
  (``{"area": ...}``) and ``with patch(...)`` compose. ``unpatch(model)`` clears the stack.
* **Copies follow.** Deep copies (Ultralytics' predictor and EMA) share the model's patch state, so
  they run the patch in force when they run; models a YOLO object's trainer builds or loads
  (the trainer's model, EMA, the final validation of ``best.pt``, the reloaded best model) are
  bound to the same state.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
import weakref
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn

from .backends.base import AREA, HYPERGRAPH
from .backends.registry import AUTO, DEFAULT_BACKEND_ENV, BackendUnsupportedError, default_backend, validate_spec
from .binding import Binding, Choice, OpPlan, PatchEntry, PatchState, call_of, device_name, machine_devices
from .integration.ultralytics_api import (
    add_train_callback,
    drop_predictor,
    ema_model,
    is_yolo,
    remove_train_callback,
    run_stock_train,
    set_final_eval,
    set_train,
    unset_train,
)
from .layer_kinds import BINDING_ATTR, LayerKind, bind, kind_of, unbind

LOGGER = logging.getLogger("yolo13_attn")
ATTENTION_OPS = (AREA, HYPERGRAPH)
BackendSpec = str | Mapping[str, str] | None
YOLO_STATE_ATTR = "_yolo13_patch"

#: root module -> its patch state (weak: a model that goes away takes its state along)
_STATES: weakref.WeakKeyDictionary[nn.Module, PatchState] = weakref.WeakKeyDictionary()
#: set while a trainer validates a checkpoint it saved: models unpickled meanwhile get this state
_LOADING_FOR: ContextVar[PatchState | None] = ContextVar("yolo13_attn_loading_for", default=None)


@dataclass(frozen=True)
class LayerReport:
    """One layer: what was asked for (and where that came from), what serves it, in which dtype, why.

    ``backend``/``kernel``/``compute_dtype`` describe an inference call on the layer's current device
    and dtype; ``train_backend`` the same call with autograd (and logit dropout) in training;
    ``compiled_backend`` the inference call traced by ``torch.compile``.
    """

    name: str
    op: str
    requested: str
    backend: str
    kernel: str
    compute_dtype: str
    why: str
    skipped: dict[str, list[str]] = field(default_factory=dict)
    source: str = "-"
    train_backend: str = "-"
    compiled_backend: str = "-"


def _resolve_spec(backend: BackendSpec) -> dict[str, tuple[str, str]]:
    """``{op: (backend name, where it came from)}``: a name applies to every op, a dict to the ops it
    names, None to every op with ``$YOLO13_ATTN_BACKEND`` (or ``auto``)."""
    if backend is None:
        source = f"${DEFAULT_BACKEND_ENV}" if os.environ.get(DEFAULT_BACKEND_ENV, "").strip() else "default"
        return {op: (name, source) for op, name in validate_spec(default_backend()).items()}
    return {op: (name, "argument") for op, name in validate_spec(backend).items()}


def _root_module(target: nn.Module) -> nn.Module:
    """The nn.Module holding the layers: ``YOLO.model`` for an Ultralytics YOLO object."""
    inner = getattr(target, "model", None) if is_yolo(target) else target
    if not isinstance(inner, nn.Module):
        raise TypeError(
            f"cannot patch {type(target).__name__}: its model is {type(inner).__name__}, not a PyTorch module "
            "(exported formats cannot be patched)"
        )
    return inner


def _patchable(root: nn.Module) -> Iterator[tuple[str, nn.Module, LayerKind]]:
    for name, module in root.named_modules():
        kind = kind_of(module)
        if kind is not None:
            yield name or type(module).__name__, module, kind


def patchable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every layer ``patch()`` serves in ``model`` (YOLO object or module): the attention
    layers and the grouped (not depthwise) convolutions."""
    return [(name, layer) for name, layer, _ in _patchable(_root_module(model))]


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every patchable attention layer of ``model`` (YOLO object or module)."""
    return [(name, layer) for name, layer, kind in _patchable(_root_module(model)) if kind.op in ATTENTION_OPS]


def _layer_key(layer: nn.Module, kind: LayerKind, training: bool = False, compiling: bool = False) -> tuple:
    """The call key of ``layer`` on its current device and dtype (inference, or a training call)."""
    param = next(layer.parameters())
    return (
        device_name(param.device),
        param.dtype,
        kind.head_dim(layer),
        training,
        training and kind.logit_dropout(layer),
        compiling,
    )


def _plan_entry(spec: dict[str, tuple[str, str]], layers: list, check_finite: bool, strict: bool) -> PatchEntry:
    """Plan every call the layers can make on this machine; raise if a layer can run nowhere."""
    plans = {op: OpPlan(op, name, source, strict) for op, (name, source) in spec.items()}
    devices = machine_devices()
    for op, plan in plans.items():
        plan.plan_ahead({kind.head_dim(layer) for _, layer, kind in layers if kind.op == op}, devices)
    for name, layer, kind in layers:
        key = _layer_key(layer, kind)
        plan = plans[kind.op]
        if not any(plan.plan((device, *key[1:])).backend for device in devices):
            raise BackendUnsupportedError(f"{name}: {plan.plan(key).error}")
    for key in {(kind.op, _layer_key(layer, kind)) for _, layer, kind in layers}:
        choice = plans[key[0]].plan(key[1])
        if choice.backend is not None:
            choice.backend.prepare(call_of(*key))  # just-in-time compiles now, not inside capture or tracing
    return PatchEntry(plans, check_finite)


def _state_for(root: nn.Module) -> PatchState:
    """``root``'s patch state; a copy of a patched model gets its own, starting from the original's stack."""
    state = _STATES.get(root)
    if state is None:
        inherited = next((m.__dict__[BINDING_ATTR].state for m in root.modules() if BINDING_ATTR in m.__dict__), None)
        state = _STATES[root] = inherited.copy() if inherited is not None else PatchState()
    return state


def bind_model(root: nn.Module, state: PatchState) -> int:
    """Make ``root``'s layers follow ``state``: bind those whose op a patch names, restore the rest."""
    _STATES[root] = state
    count = 0
    for name, layer, kind in list(_patchable(root)):
        if kind.op in state.active:
            bind(layer, kind, Binding(name, kind.op, state))
            count += 1
        else:
            unbind(layer)
    return count


def _choice_row(name: str, kind: LayerKind, layer: nn.Module, binding: Binding | None) -> LayerReport:
    plan = None if binding is None else binding.plan()
    if plan is None:
        return LayerReport(name, kind.op, "-", "naive (unpatched)", "reference", "-", "op not patched")
    choice: Choice = plan.plan(_layer_key(layer, kind))
    train, compiled = (plan.plan(_layer_key(layer, kind, **flag)) for flag in ({"training": True}, {"compiling": True}))
    train_backend, compiled_backend = (c.backend.name if c.backend else "none: " + c.error for c in (train, compiled))
    if choice.backend is None:
        return LayerReport(
            name, kind.op, plan.requested, "-", "-", "-", choice.error, {}, plan.source, train_backend, compiled_backend
        )
    return LayerReport(
        name,
        kind.op,
        plan.requested,
        choice.backend.name,
        choice.plan.kernel + (f" [{choice.plan.note}]" if choice.plan.note else ""),
        str(choice.plan.compute_dtype).removeprefix("torch."),
        choice.why(plan.requested, plan.source),
        choice.skipped,
        plan.source,
        train_backend,
        compiled_backend,
    )


def report(model: nn.Module) -> list[LayerReport]:
    """One :class:`LayerReport` per attention layer of ``model`` (YOLO object or module)."""
    return [
        _choice_row(name, kind, layer, layer.__dict__.get(BINDING_ATTR))
        for name, layer, kind in _patchable(_root_module(model))
    ]


def format_report(rows: list[LayerReport]) -> str:
    """The per-layer table, then each reason ``auto`` skipped a backend, once."""
    header = ("layer", "op", "requested", "backend", "kernel", "compute dtype", "training", "compiled", "why")
    table = [header] + [
        (r.name, r.op, r.requested, r.backend, r.kernel, r.compute_dtype, r.train_backend, r.compiled_backend, r.why)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    reasons = {(r.op, name, "; ".join(why)) for r in rows for name, why in r.skipped.items()}
    lines += [f"  {op}/{name} skipped: {why}" for op, name, why in sorted(reasons)]
    return "\n".join(lines)


class PatchHandle:
    """Returned by :func:`patch`: ``report()``, ``undo()`` of this patch only, and a context-manager form."""

    def __init__(self, target: nn.Module, state: PatchState | None, entry: PatchEntry | None):
        self.target = target
        self.state = state
        self.entry = entry

    @property
    def active(self) -> bool:
        """True until :meth:`undo` (or ``unpatch``) removed this patch."""
        return self.state is not None and self.entry in self.state.entries

    def report(self) -> list[LayerReport]:
        return report(self.target)

    def __str__(self) -> str:
        return format_report(self.report())

    def undo(self) -> None:
        """Remove this patch; the layers return to what the patches beneath it (or none) say."""
        if not self.active:
            return
        self.state.remove(self.entry)
        _apply(self.target, self.state)

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _apply(target: nn.Module, state: PatchState) -> int:
    """Bind ``target``'s model to ``state``; keep a YOLO object's hooks and predictor in step."""
    count = bind_model(_root_module(target), state)
    if is_yolo(target):
        _remove_yolo_hooks(target)
        if state.entries:
            _install_yolo_hooks(target, state)
        drop_predictor(target)  # the predictor holds a copy made before this change: rebuild it
    return count


def patch(
    model: nn.Module, backend: BackendSpec = None, *, strict: bool = False, check_finite: bool = False
) -> PatchHandle:
    """Serve the attention layers of ``model`` with ``backend``.

    Args:
        model: an Ultralytics ``YOLO`` object, a ``DetectionModel`` or any module holding YOLOv13
            ``AAttn``/``AdaHGConv`` or stock YOLO12 ``AAttn`` layers.
        backend: ``"auto"``, ``"naive"``, ``"sdpa"``, ``"flash"``, ``"triton"``, ``"cuda"``, a dict per op
            (``{"area": "flash", "hypergraph": "sdpa"}``; ops not named keep what they had), or None for
            ``$YOLO13_ATTN_BACKEND`` (default ``auto``).
        strict: a layer the named backend cannot serve by construction (FA2 with head_dim > 256 or
            with the hypergraph's training-mode logit dropout, ...) raises instead of running the
            fastest backend that can serve it (the default, with one warning naming each such layer).
        check_finite: raise ValueError naming the layer when an attention input holds NaN/inf.
            Costs a host sync per layer call (breaks CUDA-graph capture): for debugging.

    Returns:
        A :class:`PatchHandle` (``print(handle)`` shows the per-layer table; ``handle.undo()``).

    Raises:
        BackendUnsupportedError: a named backend cannot serve a layer on any device of this machine
            (all reasons given); the model is left as it was.
        TypeError, ValueError: ``backend`` is not a backend name, a dict of them, or None.
    """
    spec = _resolve_spec(backend)
    root = _root_module(model)
    layers = [item for item in _patchable(root) if item[2].op in spec]
    if not layers:
        warnings.warn(
            f"yolo13_attn.patch: {type(root).__name__} has no layers to patch for ops {sorted(spec)}",
            stacklevel=2,
        )
        return PatchHandle(model, None, None)
    entry = _plan_entry(spec, layers, check_finite, strict)
    state = _state_for(root)
    state.push(entry)
    _apply(model, state)
    _announce(type(root).__name__, entry, layers)
    _warn_fallbacks(type(root).__name__, entry, layers)
    return PatchHandle(model, state, entry)


def _warn_fallbacks(model_name: str, entry: PatchEntry, layers: list) -> None:
    """One warning per patched model naming each layer that runs a fallback backend, and why."""
    found: dict[str, set[str]] = {}
    for name, layer, kind in layers:
        plan = entry.plans[kind.op]
        for training in (False, True):
            own = _layer_key(layer, kind, training=training)
            for key, choice in plan.choices.items():
                if choice.fallback and key[1:] == own[1:]:
                    mode = "training" if training else "inference"
                    found.setdefault(name, set()).add(
                        f"{mode} on {key[0]} -> {choice.backend.name} ({choice.fallback})"
                    )
    if found:
        lines = "\n".join(f"  {name}: {'; '.join(sorted(why))}" for name, why in found.items())
        warnings.warn(
            f"yolo13_attn.patch({model_name}): {len(found)} layer(s) cannot be served by the requested backend "
            f"by construction and run the fastest backend that can (strict=True raises instead):\n{lines}",
            stacklevel=3,
        )


def _announce(model_name: str, entry: PatchEntry, layers: list) -> None:
    """One log line per patched model saying what ``auto`` chose for its inference and training calls, and
    why: in the model's dtype, and for a float32 model on a GPU also in float16 (what AMP training and
    half-precision inference run)."""
    parts = []
    for op, plan in entry.plans.items():
        op_layers = [(layer, kind) for _, layer, kind in layers if kind.op == op]
        if plan.requested != AUTO or not op_layers:
            continue
        layer, kind = op_layers[0]
        device, dtype, *rest = _layer_key(layer, kind)
        dtypes = [dtype] + ([torch.float16] if device.startswith("cuda") and dtype == torch.float32 else [])
        for dt in dtypes:
            train_key = (device, dt, *_layer_key(layer, kind, training=True)[2:])
            infer, train = plan.plan((device, dt, *rest)), plan.plan(train_key)
            names = [c.backend.name if c.backend else "none" for c in (infer, train)]
            why = (
                [infer.basis]
                if infer.basis == train.basis
                else [f"inference: {infer.basis}", f"training: {train.basis}"]
            )
            parts.append(
                f"{op} x{len(op_layers)} on {device}/{str(dt).removeprefix('torch.')} -> {names[0]} (inference), "
                f"{names[1]} (training) [{'; '.join(why)}]"
            )
    if parts:
        LOGGER.info("auto patched %s: %s", model_name, "; ".join(parts))


def unpatch(model: nn.Module) -> int:
    """Remove every patch of ``model`` (and a YOLO object's hooks); returns how many layers were patched."""
    root = _root_module(model)
    count = sum(BINDING_ATTR in layer.__dict__ for _, layer, _ in _patchable(root))
    state = _STATES.get(root)
    if state is not None:
        for entry in list(state.entries):
            state.remove(entry)
    _apply(model, state or PatchState())
    return count


# ---- models a YOLO object's trainer builds or loads ----------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    for attr in ("module", "_orig_mod"):
        model = getattr(model, attr, model)
    return model


def _bind_trainer_models(state: PatchState, trainer) -> None:
    """Callback: the trainer's model (rebuilt from the yaml) and its EMA follow the patch; so does the
    model its final validation loads from ``best.pt``."""
    model = _unwrap(trainer.model)
    bind_model(model, state)
    ema = ema_model(trainer)
    if ema is not None and ema is not model:
        bind_model(ema, state)
    set_final_eval(trainer, functools.partial(_validate_with_patch, state))


def _validate_with_patch(state: PatchState, final_eval) -> None:
    with models_loaded_follow(state):
        final_eval()


@contextlib.contextmanager
def models_loaded_follow(state: PatchState) -> Iterator[None]:
    """Within this block, YOLOv13 models unpickled from checkpoints are bound to ``state``."""
    token = _LOADING_FOR.set(state)
    try:
        yield
    finally:
        _LOADING_FOR.reset(token)


def bind_if_loading(model: nn.Module) -> None:
    """Called for each model unpickled from a checkpoint: bind it inside :func:`models_loaded_follow`."""
    state = _LOADING_FOR.get()
    if state is not None:
        bind_model(model, state)


def _train_and_rebind(yolo, state: PatchState, *args, **kwargs):
    """``YOLO.train`` replaces ``yolo.model`` with the best checkpoint when it ends: bind that too."""
    result = run_stock_train(yolo, *args, **kwargs)
    _apply(yolo, state)
    return result


def _install_yolo_hooks(yolo, state: PatchState) -> None:
    callback = functools.partial(_bind_trainer_models, state)
    add_train_callback(yolo, callback)
    set_train(yolo, functools.partial(_train_and_rebind, yolo, state))
    yolo.__dict__[YOLO_STATE_ATTR] = callback


def _remove_yolo_hooks(yolo) -> None:
    callback = yolo.__dict__.pop(YOLO_STATE_ATTR, None)
    if callback is not None:
        remove_train_callback(yolo, callback)
        unset_train(yolo)
