"""Backends: one file per backend, each declaring what it supports (see ``base.py``)."""

from .base import AREA, HYPERGRAPH, AreaAttentionBackend, Backend, HypergraphBackend, KernelPlan, OpCall
from .registry import (
    AUTO,
    BACKEND_NAMES,
    PRIORITY,
    BackendUnsupportedError,
    available_backends,
    default_backend,
    get_backend,
    select,
    validate_name,
    validate_spec,
)

__all__ = [
    "AREA",
    "AUTO",
    "BACKEND_NAMES",
    "HYPERGRAPH",
    "PRIORITY",
    "AreaAttentionBackend",
    "Backend",
    "BackendUnsupportedError",
    "HypergraphBackend",
    "KernelPlan",
    "OpCall",
    "available_backends",
    "default_backend",
    "get_backend",
    "select",
    "validate_name",
    "validate_spec",
]
