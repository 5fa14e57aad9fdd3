"""``patch()`` / ``unpatch()``: per-model, reversible backend swaps for the attention layers.

Works on an Ultralytics ``YOLO`` object, a ``DetectionModel`` or any ``nn.Module`` holding YOLOv13
``AAttn``/``AdaHGConv`` layers or stock (YOLO12) ``AAttn`` layers. Each layer gets its own
:class:`~yolo13_attn.binding.Binding`, so two models patched differently coexist.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from torch import nn

from .backends.base import OPS, OpCall
from .backends.registry import default_backend, validate_name
from .binding import Binding
from .layer_kinds import BINDING_ATTR, LayerKind, bind, kind_of, unbind

BackendSpec = str | Mapping[str, str] | None
YOLO_STATE_ATTR = "_yolo13_patch"
TRAIN_EVENT = "on_pretrain_routine_end"


@dataclass(frozen=True)
class LayerReport:
    """One patched layer: what was asked for, what serves it, in which dtype, and why."""

    name: str
    op: str
    requested: str
    backend: str
    kernel: str
    compute_dtype: str
    why: str
    skipped: dict[str, list[str]] = field(default_factory=dict)


def _resolve_spec(backend: BackendSpec) -> dict[str, str]:
    """``"flash"`` -> every op on flash; ``{"area": "flash"}`` -> only the ops named; None -> env default."""
    if backend is None:
        backend = default_backend()
    if isinstance(backend, str):
        return {op: validate_name(backend.lower()) for op in OPS}
    unknown = set(backend) - set(OPS)
    if unknown:
        raise ValueError(f"unknown op(s) {sorted(unknown)} in backend dict; ops are {list(OPS)}")
    return {op: validate_name(name.lower()) for op, name in backend.items()}


def _root_module(target: nn.Module) -> nn.Module:
    """The nn.Module holding the layers: ``YOLO.model`` for an Ultralytics YOLO object."""
    inner = getattr(target, "model", None) if is_yolo(target) else target
    if not isinstance(inner, nn.Module):
        raise TypeError(f"cannot patch {type(target).__name__}: its model is {type(inner).__name__}, not a PyTorch module (exported formats cannot be patched)")
    return inner


def is_yolo(target: object) -> bool:
    from ultralytics.engine.model import Model

    return isinstance(target, Model)


def _patchable(root: nn.Module) -> Iterator[tuple[str, nn.Module, LayerKind]]:
    for name, module in root.named_modules():
        kind = kind_of(module)
        if kind is not None:
            yield name or type(module).__name__, module, kind


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every patchable attention layer of ``model`` (YOLO object or module)."""
    return [(name, layer) for name, layer, _ in _patchable(_root_module(model))]


def _planning_call(layer: nn.Module, kind: LayerKind) -> OpCall:
    """The call an eval-mode forward of ``layer`` will make, from its parameters (device, dtype)."""
    param = next(layer.parameters())
    return OpCall(kind.op, param.device, param.dtype, kind.head_dim(layer))


def _patch_module(root: nn.Module, spec: dict[str, str], check_finite: bool = False) -> int:
    """Bind every patchable layer of ``root`` whose op is in ``spec``; check each plan now."""
    seen: set = set()
    count = 0
    for name, layer, kind in list(_patchable(root)):
        if kind.op not in spec:
            continue
        binding = Binding(name, kind.op, spec[kind.op], seen, check_finite)
        binding.choose(_planning_call(layer, kind))  # raises now if an explicit backend cannot serve it
        unbind(layer)
        bind(layer, kind, binding)
        count += 1
    return count


def _unpatch_module(root: nn.Module) -> int:
    return sum(unbind(m) for m in list(root.modules()))


class PatchHandle:
    """Returned by :func:`patch`: reports per layer, ``undo()``, and a context-manager form."""

    def __init__(self, target: nn.Module, spec: dict[str, str]):
        self.target = target
        self.spec = spec

    def report(self) -> list[LayerReport]:
        rows = []
        for name, layer, kind in _patchable(_root_module(self.target)):
            binding: Binding | None = layer.__dict__.get(BINDING_ATTR)
            if binding is None:
                rows.append(LayerReport(name, kind.op, "-", "naive (unpatched)", "reference", "-", "op not patched"))
                continue
            choice = binding.last
            rows.append(
                LayerReport(
                    name,
                    kind.op,
                    binding.requested,
                    choice.backend.name,
                    choice.plan.kernel + (f" [{choice.plan.note}]" if choice.plan.note else ""),
                    str(choice.plan.compute_dtype).removeprefix("torch."),
                    choice.why(binding.requested),
                    choice.skipped,
                )
            )
        return rows

    def __str__(self) -> str:
        """The per-layer table, then each reason ``auto`` skipped a backend, once."""
        report = self.report()
        header = ("layer", "op", "requested", "backend", "kernel", "compute dtype", "why")
        rows = [header] + [(r.name, r.op, r.requested, r.backend, r.kernel, r.compute_dtype, r.why) for r in report]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        reasons = {(r.op, name, "; ".join(why)) for r in report for name, why in r.skipped.items()}
        lines += [f"  {op}/{name} skipped: {why}" for op, name, why in sorted(reasons)]
        return "\n".join(lines)

    def undo(self) -> None:
        unpatch(self.target)

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


Repatch = Callable[[nn.Module], int]


def _repatch_trainer(repatch: Repatch, trainer) -> None:
    """Callback: patch the model the trainer built from the yaml, and its EMA copy."""
    model = getattr(trainer.model, "module", trainer.model)  # unwrap DDP
    repatch(model)
    ema = getattr(trainer, "ema", None)
    if ema is not None and ema.ema is not model:
        repatch(ema.ema)


def _train_and_repatch(yolo, repatch: Repatch, *args, **kwargs):
    """``YOLO.train`` reloads ``yolo.model`` from the best checkpoint when it ends: patch that too."""
    result = type(yolo).train(yolo, *args, **kwargs)
    repatch(_root_module(yolo))
    return result


def patch(model: nn.Module, backend: BackendSpec = None, *, check_finite: bool = False) -> PatchHandle:
    """Serve the attention layers of ``model`` with ``backend``.

    Args:
        model: an Ultralytics ``YOLO`` object, a ``DetectionModel`` or any module holding YOLOv13
            ``AAttn``/``AdaHGConv`` or stock YOLO12 ``AAttn`` layers.
        backend: ``"auto"``, ``"naive"``, ``"sdpa"``, ``"flash"``, ``"triton"``, ``"cuda"``, a dict per op
            (``{"area": "flash", "hypergraph": "sdpa"}``; ops not named stay unpatched), or None for
            ``$YOLO13_ATTN_BACKEND`` (default ``auto``).
        check_finite: raise ValueError naming the layer when an attention input holds NaN/inf.
            Costs a host sync per layer call (breaks CUDA-graph capture): for debugging.

    Returns:
        A :class:`PatchHandle` (``print(handle)`` shows the per-layer table; ``handle.undo()``).

    Raises:
        BackendUnsupportedError: an explicitly named backend cannot serve a layer (all reasons given).
    """
    spec = _resolve_spec(backend)
    root = _root_module(model)
    if _patch_module(root, spec, check_finite) == 0:
        warnings.warn(f"yolo13_attn.patch: {type(root).__name__} has no attention layers to patch for ops {sorted(spec)}", stacklevel=2)
    if is_yolo(model):
        _install_yolo_hooks(model, functools.partial(_patch_module, spec=spec, check_finite=check_finite))
    return PatchHandle(model, spec)


def _install_yolo_hooks(yolo, repatch: Repatch) -> None:
    """Models the YOLO object's trainer builds, and the one ``train()`` reloads, get the same patch."""
    _remove_yolo_hooks(yolo)
    callback = functools.partial(_repatch_trainer, repatch)
    yolo.add_callback(TRAIN_EVENT, callback)
    yolo.__dict__["train"] = functools.partial(_train_and_repatch, yolo, repatch)
    yolo.__dict__[YOLO_STATE_ATTR] = callback


def _remove_yolo_hooks(yolo) -> None:
    callback = yolo.__dict__.pop(YOLO_STATE_ATTR, None)
    if callback is not None:
        yolo.callbacks[TRAIN_EVENT].remove(callback)
        yolo.__dict__.pop("train", None)


def unpatch(model: nn.Module) -> int:
    """Restore every patched layer of ``model`` (and a YOLO object's hooks); returns how many."""
    if is_yolo(model):
        _remove_yolo_hooks(model)
    return _unpatch_module(_root_module(model))
