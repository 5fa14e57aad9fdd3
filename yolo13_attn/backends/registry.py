"""The backend registry and the one dispatch rule.

``auto`` walks an order of backends and takes the first whose declaration accepts the call: the
order measured fastest for the call's GPU, op, mode (inference or training) and dtype
(:mod:`.measured`), then the backends the measurements do not rank by their declared priority;
an explicitly named backend either accepts the call or raises :class:`BackendUnsupportedError`
with every reason. Selection looks only at the call (device of the tensors, dtype, head dim,
grad), never at global device state.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path

from .base import AREA, OPS, Backend, OpCall
from .measured import measured_order

AUTO = "auto"
DEFAULT_BACKEND_ENV = "YOLO13_ATTN_BACKEND"

_BACKENDS: dict[tuple[str, str], type[Backend]] = {}
_ALL_LOADED = False


class BackendUnsupportedError(RuntimeError):
    """An explicitly requested backend cannot serve a call; the message lists every reason."""


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` the implementation of ``(cls.op, cls.name)``.

    A backend is one module of this package that declares its classes and decorates them; nothing
    else lists backends. Another package may register its own classes too.
    """
    if cls.op not in OPS:
        raise ValueError(f"{cls.__name__}: unknown op {cls.op!r}; ops are {list(OPS)}")
    if not cls.name.isidentifier() or cls.name == AUTO:
        raise ValueError(f"{cls.__name__}: {cls.name!r} cannot name a backend")
    _BACKENDS[(cls.op, cls.name)] = cls
    return cls


def _load_backends() -> None:
    """Import every module of this package once; each backend module registers its own classes."""
    global _ALL_LOADED
    if not _ALL_LOADED:
        _ALL_LOADED = True
        for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if module.name not in ("base", "registry", "measured"):
                importlib.import_module(f"{__package__}.{module.name}")


def backend_names() -> tuple[str, ...]:
    """Every registered backend name, the reference first, then by the area op's ``auto`` rank, fastest last."""
    _load_backends()
    rank = {cls.name: cls.priority or 0 for (op, _), cls in _BACKENDS.items() if op == AREA}
    return tuple(sorted({name for _, name in _BACKENDS}, key=lambda name: -rank.get(name, 0)))


def priority(op: str, compiling: bool = False) -> tuple[str, ...]:
    """``auto``'s order for ``op``, fastest first, from each backend's declared ``priority`` (or
    ``compiled_priority`` under ``torch.compile``, where None leaves the backend out)."""
    _load_backends()
    ranked = []
    for (backend_op, name), cls in _BACKENDS.items():
        rank = cls.compiled_priority if compiling else cls.priority
        if backend_op == op and rank is not None:
            ranked.append((rank, name))
    return tuple(name for _, name in sorted(ranked))


def auto_order(call: OpCall) -> tuple[tuple[str, ...], str]:
    """``auto``'s order for ``call`` and what it rests on: the measured order (among the backends
    :func:`priority` admits for the call's compile state), then the rest by declared priority."""
    declared = priority(call.op, call.compiling)
    measured = measured_order(call)
    if measured is None:
        return declared, "declared priority (no measurements for this GPU, mode and dtype)"
    first = tuple(name for name in measured.names if name in declared)
    return first + tuple(name for name in declared if name not in first), measured.basis


def _valid() -> str:
    return ", ".join((AUTO, *backend_names()))


def validate_name(value: object, *, source: str = "backend") -> str:
    """The backend ``value`` names, stripped and lower-cased: ``auto`` or one of :func:`backend_names`.

    ``source`` says where the value came from (an argument such as ``backend`` or ``backend['area']``,
    or ``$YOLO13_ATTN_BACKEND``); both errors name it and list the valid names.

    Raises:
        TypeError: ``value`` is not a ``str`` (bytes, a number, None, a class, ...).
        ValueError: ``value`` is a string but not a backend name.
    """
    if not isinstance(value, str):
        raise TypeError(
            f"{source} must be a backend name (str), got {type(value).__name__} {value!r}; valid backends: {_valid()}"
        )
    name = value.strip().lower()
    if name != AUTO and name not in backend_names():
        raise ValueError(f"{source}={value!r} is not a backend; valid backends: {_valid()}")
    return name


def validate_spec(spec: object, *, source: str = "backend") -> dict[str, str]:
    """``patch()``'s backend argument as ``{op: name}``: a name serves every op it implements (``auto`` every op),
    a dict only the ops it names.

    Raises:
        TypeError: ``spec`` is neither a str nor a mapping (bytes included), or a name in it is not a str.
        ValueError: an unknown backend name, or an unknown op in a mapping.
    """
    if isinstance(spec, str):
        name = validate_name(spec, source=source)
        return {op: name for op in OPS if name == AUTO or (op, name) in _BACKENDS}
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"{source} must be a backend name (str) or a dict {{op: name}} over the ops {list(OPS)}, "
            f"got {type(spec).__name__} {spec!r}; valid backends: {_valid()}"
        )
    unknown = [op for op in spec if op not in OPS]
    if unknown:
        raise ValueError(f"{source}: unknown op(s) {unknown!r} in backend dict; ops are {list(OPS)}")
    return {op: validate_name(name, source=f"{source}[{op!r}]") for op, name in spec.items()}


def default_backend() -> str:
    """The backend ``patch()`` uses when none is given: ``$YOLO13_ATTN_BACKEND`` (unset or empty: ``auto``).

    An invalid value raises the errors of :func:`validate_name`, naming the environment variable.
    """
    return validate_name(os.environ.get(DEFAULT_BACKEND_ENV, "").strip() or AUTO, source=f"${DEFAULT_BACKEND_ENV}")


def resolve(backend: object, op: str, describe: Callable[[], OpCall]) -> type[Backend]:
    """The class serving one call of ``op``: ``backend`` is a backend class of ``op`` (used as is) or a
    name (``describe()`` builds the call, then :func:`select` picks).

    Raises:
        TypeError: ``backend`` is neither a name nor a backend class of ``op``.
        ValueError: an unknown name. BackendUnsupportedError: as :func:`select`.
    """
    if isinstance(backend, type) and issubclass(backend, Backend):
        if backend.op != op:
            raise TypeError(f"backend {backend.__name__} implements op {backend.op!r}, not {op!r}")
        return backend
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a backend name (str) or a backend class, got {type(backend).__name__} {backend!r}; "
            f"valid backends: {_valid()}"
        )
    return select(describe(), validate_name(backend))[0]


def get_backend(op: str, name: str) -> type[Backend]:
    """The class implementing ``op`` in backend ``name`` (any case)."""
    _load_backends()
    key = (op, validate_name(name))
    if key not in _BACKENDS:
        raise BackendUnsupportedError(f"backend {name!r} has no {op} implementation")
    return _BACKENDS[key]


def backends_for(op: str) -> list[type[Backend]]:
    """All backends of ``op`` in priority order."""
    return [get_backend(op, name) for name in priority(op)]


def select(call: OpCall, requested: str) -> tuple[type[Backend], dict[str, list[str]]]:
    """Pick the backend for ``call``.

    Returns the backend and, for ``auto``, the reasons each higher-priority backend was skipped.
    Raises :class:`BackendUnsupportedError` when the requested backend (or, for ``auto``, every
    backend) cannot serve the call.
    """
    requested = validate_name(requested)
    names = auto_order(call)[0] if requested == AUTO else (requested,)
    skipped: dict[str, list[str]] = {}
    for name in names:
        backend = get_backend(call.op, name)
        reasons = backend.not_supported_reasons(call) or (backend.auto_reasons(call) if requested == AUTO else [])
        if not reasons:
            return backend, skipped
        skipped[name] = reasons
    detail = "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in skipped.items())
    who = "no backend can" if requested == AUTO else f"backend {requested!r} cannot"
    raise BackendUnsupportedError(f"{who} serve this {call.op} call ({_describe(call)}) -- {detail}")


def _describe(call: OpCall) -> str:
    dtype = str(call.dtype).removeprefix("torch.")
    extra = ", requires grad" if call.requires_grad else ""
    extra += ", under torch.compile" if call.compiling else ""
    extra += ", logit dropout" if call.has_dropout_mask else ""
    return f"{call.device_type}, {dtype}, head_dim {call.head_dim}{extra}"


def available_backends() -> dict[str, dict[str, dict[str, object]]]:
    """Every backend of every op: availability, reasons, and declared capabilities."""
    _load_backends()
    report: dict[str, dict[str, dict[str, object]]] = {}
    for op in OPS:
        report[op] = {}
        for backend in backends_for(op):
            reasons = backend.availability_reasons()
            report[op][backend.name] = {
                "available": not reasons,
                "reasons": reasons,
                "description": backend.description,
                **backend.capabilities(),
            }
    return report
