"""What every backend declares, and how a call is checked against the declaration.

In the xformers manner each backend is a class that states what it supports (devices, dtypes,
head dims, autograd, determinism) and answers :meth:`Backend.not_supported_reasons` for a concrete
call. Dispatch (``registry.py``) is a priority list over those answers, so "can this backend
serve this call?" has exactly one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

AREA = "area"
HYPERGRAPH = "hypergraph"
GROUPED_CONV = "grouped_conv"
OPS = (AREA, HYPERGRAPH, GROUPED_CONV)


@dataclass(frozen=True)
class OpCall:
    """The facts about one call of an op that decide which backend may serve it.

    ``head_dim`` is the per-head width for area attention, the full embedding width D for the
    hypergraph (its aggregation is one attention head of width D) and the input channels per group
    for a grouped convolution. ``compiling``: the call is traced
    by ``torch.compile`` (``auto`` may then choose differently).
    """

    op: str
    device: torch.device
    dtype: torch.dtype
    head_dim: int
    requires_grad: bool = False
    has_dropout_mask: bool = False
    compiling: bool = False

    @property
    def device_type(self) -> str:
        return self.device.type

    @classmethod
    def for_area(cls, q: Tensor, k: Tensor, v: Tensor) -> OpCall:
        """Describe ``area_attention(q, k, v, ...)`` with q/k/v ``(B, heads, head_dim, N)``."""
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return cls(AREA, q.device, q.dtype, q.shape[2], grad)

    @classmethod
    def for_hypergraph(cls, x: Tensor, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None) -> OpCall:
        """Describe a hypergraph call with x/xp ``(B, N, D)`` and prototypes ``(B, M, D)``."""
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, xp, prototypes))
        return cls(HYPERGRAPH, x.device, x.dtype, x.shape[-1], grad, dropout_mask is not None)

    @classmethod
    def for_grouped_conv(cls, x: Tensor, weight: Tensor, bias: Tensor | None) -> OpCall:
        """Describe a grouped convolution of x ``(B, C_in, H, W)`` with weight ``(C_out, C_in / groups, kh, kw)``."""
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
        return cls(GROUPED_CONV, x.device, x.dtype, weight.shape[1], grad)


@dataclass(frozen=True)
class KernelPlan:
    """What a backend will run for a call: the concrete kernel and the dtype it computes in."""

    kernel: str
    compute_dtype: torch.dtype
    note: str = ""


class Backend:
    """Base class of one op's implementation in one backend.

    Subclasses set the class attributes and implement :meth:`plan` plus the op's entry points
    (``forward`` for area attention; ``aggregate``/``scatter`` for the hypergraph).
    """

    name: ClassVar[str]
    #: ``auto``'s rank for this op, lower first (measured: bench/results); None: auto never picks it
    priority: ClassVar[float | None] = None
    #: the rank under ``torch.compile``, where inductor fuses the reference's math itself
    compiled_priority: ClassVar[float | None] = None
    op: ClassVar[str]
    devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    #: devices / dtypes for which ``auto`` may pick this backend (None: all it supports)
    auto_devices: ClassVar[frozenset[str] | None] = None
    auto_dtypes: ClassVar[frozenset[torch.dtype] | None] = None
    dtypes: ClassVar[frozenset[torch.dtype]] = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
    min_head_dim: ClassVar[int] = 1
    max_head_dim: ClassVar[int | None] = None
    head_dim_multiple: ClassVar[int] = 1
    supports_backward: ClassVar[bool] = True
    supports_dropout_mask: ClassVar[bool] = True
    deterministic: ClassVar[bool] = True
    description: ClassVar[str] = ""

    @classmethod
    def availability_reasons(cls) -> list[str]:
        """Why this backend cannot run at all on this machine (missing package, not built, ...)."""
        return []

    @classmethod
    def is_available(cls) -> bool:
        return not cls.availability_reasons()

    @classmethod
    def not_supported_reasons(cls, call: OpCall) -> list[str]:
        """Every reason this backend cannot serve ``call``; empty when it can."""
        return cls.environment_reasons(call) + cls.layer_reasons(call)

    @classmethod
    def environment_reasons(cls, call: OpCall) -> list[str]:
        """Reasons that come from where the call runs: package, build, device, dtype, GPU generation."""
        reasons = list(cls.availability_reasons())
        if call.op != cls.op:
            reasons.append(f"implements op {cls.op!r}, not {call.op!r}")
        if call.device_type not in cls.devices:
            reasons.append(f"device {call.device_type!r} not supported (supports {sorted(cls.devices)})")
        if call.dtype not in cls.dtypes:
            names = sorted(str(d).removeprefix("torch.") for d in cls.dtypes)
            reasons.append(f"dtype {str(call.dtype).removeprefix('torch.')} not supported (supports {names})")
        return reasons + cls.extra_reasons(call)

    @classmethod
    def layer_reasons(cls, call: OpCall) -> list[str]:
        """Reasons that come from the layer itself (its head width, training with autograd or logit
        dropout): a layer this backend cannot serve by construction. ``patch()`` lets such layers
        fall back to the fastest backend that can serve them, unless ``strict=True``."""
        reasons = []
        if call.head_dim < cls.min_head_dim or (cls.max_head_dim is not None and call.head_dim > cls.max_head_dim):
            reasons.append(f"head_dim {call.head_dim} outside [{cls.min_head_dim}, {cls.max_head_dim or 'inf'}]")
        elif call.head_dim % cls.head_dim_multiple:
            reasons.append(f"head_dim {call.head_dim} not a multiple of {cls.head_dim_multiple}")
        if call.requires_grad and not cls.supports_backward:
            reasons.append("no backward: inputs require grad")
        if call.has_dropout_mask and not cls.supports_dropout_mask:
            reasons.append("cannot apply the training-mode logit dropout mask")
        return reasons

    @classmethod
    def auto_reasons(cls, call: OpCall) -> list[str]:
        """Why ``auto`` must not pick this backend for ``call`` even though it could serve it."""
        reasons = []
        if cls.auto_devices is not None and call.device_type not in cls.auto_devices:
            reasons.append(f"serves {call.device_type!r} only when requested explicitly")
        if cls.auto_dtypes is not None and call.dtype not in cls.auto_dtypes:
            reasons.append(f"serves {str(call.dtype).removeprefix('torch.')} only when requested explicitly")
        return reasons

    @classmethod
    def extra_reasons(cls, call: OpCall) -> list[str]:
        """Backend-specific constraints beyond the declared ones."""
        return []

    @classmethod
    def plan(cls, call: OpCall) -> KernelPlan:
        """The kernel this backend runs for ``call`` and its compute dtype (for reports)."""
        raise NotImplementedError

    @classmethod
    def prepare(cls, call: OpCall) -> None:
        """Do ahead of time what the first ``call`` would (a just-in-time kernel compile), so that it
        never happens inside CUDA-graph capture or ``torch.compile``; ``patch()`` calls it."""

    @classmethod
    def capabilities(cls) -> dict[str, object]:
        """The declaration as plain data, for ``available_backends()`` and ``info``."""
        return {
            "op": cls.op,
            "devices": sorted(cls.devices),
            "dtypes": sorted(str(d).removeprefix("torch.") for d in cls.dtypes),
            "head_dim": [cls.min_head_dim, cls.max_head_dim],
            "backward": cls.supports_backward,
            "dropout_mask": cls.supports_dropout_mask,
            "deterministic": cls.deterministic,
        }


class AreaAttentionBackend(Backend):
    """Area attention: ``forward(q, k, v, area, scale) -> o``, all ``(B, heads, head_dim, N)``."""

    op: ClassVar[str] = AREA

    @classmethod
    def forward(cls, q: Tensor, k: Tensor, v: Tensor, area: int, scale: float) -> Tensor:
        raise NotImplementedError


class HypergraphBackend(Backend):
    """Hypergraph aggregation and scatter, with the shapes of ``ops/reference.py``."""

    op: ClassVar[str] = HYPERGRAPH

    @classmethod
    def aggregate(
        cls, x: Tensor, xp: Tensor, prototypes: Tensor, scale: float, dropout_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(he (B, M, D), lse (B, M))``: lse float32, float64 for float64 inputs (``ops/checks.py``)."""
        raise NotImplementedError

    @classmethod
    def scatter(
        cls, xp: Tensor, prototypes: Tensor, lse: Tensor, he: Tensor, scale: float, dropout_mask: Tensor | None
    ) -> Tensor:
        """``xn (B, N, D)``."""
        raise NotImplementedError


class GroupedConvBackend(Backend):
    """A grouped 2-D convolution (``ops/grouped_conv.py``): ``forward(x, weight, bias, stride, padding,
    dilation, groups)`` with x ``(B, C_in, H, W)`` and weight ``(C_out, C_in / groups, kh, kw)``."""

    op: ClassVar[str] = GROUPED_CONV

    @classmethod
    def forward(cls, x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> Tensor:
        raise NotImplementedError
