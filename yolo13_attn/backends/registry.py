"""The backend registry and the one dispatch rule.

``auto`` walks a priority list and takes the first backend whose declaration accepts the call;
an explicitly named backend either accepts the call or raises :class:`BackendUnsupportedError`
with every reason. Selection looks only at the call (device of the tensors, dtype, head dim,
grad), never at global device state.
"""

from __future__ import annotations

import os

from .base import AREA, HYPERGRAPH, OPS, Backend, OpCall

BACKEND_NAMES = ("naive", "sdpa", "flash", "triton", "cuda")
AUTO = "auto"
DEFAULT_BACKEND_ENV = "YOLO13_ATTN_BACKEND"

# Fastest first; measured on an H100 (bench/results). The fused, layout-aware kernels lead.
PRIORITY: dict[str, tuple[str, ...]] = {
    AREA: ("triton", "cuda", "flash", "sdpa", "naive"),
    HYPERGRAPH: ("triton", "cuda", "sdpa", "flash", "naive"),
}
# Under torch.compile inductor fuses the reference's softmax and layout copies itself; flash's
# cast-and-copy path measured slower there than inductor's own code, so auto leaves it out.
PRIORITY_COMPILED: dict[str, tuple[str, ...]] = {
    AREA: ("triton", "cuda", "sdpa", "naive"),
    HYPERGRAPH: ("triton", "cuda", "sdpa", "naive"),
}

_BACKENDS: dict[tuple[str, str], type[Backend]] = {}
_ALL_LOADED = False


class BackendUnsupportedError(RuntimeError):
    """An explicitly requested backend cannot serve a call; the message lists every reason."""


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` the implementation of ``(cls.op, cls.name)``."""
    if cls.name not in BACKEND_NAMES or cls.op not in OPS:
        raise ValueError(f"unknown backend {cls.name!r} / op {cls.op!r}")
    _BACKENDS[(cls.op, cls.name)] = cls
    return cls


def _load_backends() -> None:
    """Import every backend module once; each registers its own classes when imported."""
    global _ALL_LOADED
    if not _ALL_LOADED:
        from . import cuda, flash, naive, sdpa, triton  # noqa: F401

        _ALL_LOADED = True


def validate_name(name: object, *, source: str = "backend") -> str:
    """Return ``name`` (lower-cased) if it is a backend name or ``auto``; raise naming ``source`` (the
    argument or environment variable it came from) and listing the valid names otherwise."""
    valid = ", ".join((AUTO, *BACKEND_NAMES))
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a backend name (str), got {type(name).__name__} {name!r}; valid backends: {valid}")
    if name.lower() != AUTO and name.lower() not in BACKEND_NAMES:
        raise ValueError(f"{source}: unknown backend {name!r}; valid backends: {valid}")
    return name.lower()


def default_backend() -> str:
    """The backend ``patch()`` uses when none is given: ``$YOLO13_ATTN_BACKEND`` or ``auto``."""
    value = os.environ.get(DEFAULT_BACKEND_ENV, "").strip()
    return validate_name(value, source=f"environment variable {DEFAULT_BACKEND_ENV}") if value else AUTO


def get_backend(op: str, name: str) -> type[Backend]:
    """The class implementing ``op`` in backend ``name``."""
    _load_backends()
    validate_name(name)
    return _BACKENDS[(op, name)]


def backends_for(op: str) -> list[type[Backend]]:
    """All backends of ``op`` in priority order."""
    return [get_backend(op, name) for name in PRIORITY[op]]


def select(call: OpCall, requested: str) -> tuple[type[Backend], dict[str, list[str]]]:
    """Pick the backend for ``call``.

    Returns the backend and, for ``auto``, the reasons each higher-priority backend was skipped.
    Raises :class:`BackendUnsupportedError` when the requested backend (or, for ``auto``, every
    backend) cannot serve the call.
    """
    names = (PRIORITY_COMPILED if call.compiling else PRIORITY)[call.op] if requested == AUTO else (requested,)
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
    for op in (AREA, HYPERGRAPH):
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
