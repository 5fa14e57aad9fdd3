"""Backends: one file per backend, each declaring what it supports (see ``base.py``)."""

from .base import AREA, HYPERGRAPH, AreaAttentionBackend, Backend, HypergraphBackend, KernelPlan, OpCall
from .registry import (
    AUTO,
    BackendUnsupportedError,
    available_backends,
    backend_names,
    default_backend,
    get_backend,
    priority,
    select,
    validate_name,
    validate_spec,
)

__all__ = [
    "AREA",
    "AUTO",
    "HYPERGRAPH",
    "AreaAttentionBackend",
    "Backend",
    "BackendUnsupportedError",
    "HypergraphBackend",
    "KernelPlan",
    "OpCall",
    "available_backends",
    "backend_names",
    "priority",
    "default_backend",
    "get_backend",
    "select",
    "validate_name",
    "validate_spec",
]
