"""Which backend serves a patched layer's call: planned ahead, looked up per call.

A patched model has one :class:`PatchState`: a stack of :class:`PatchEntry` (one per ``patch()``
call still in force). For each op the entry nearest the top that names the op decides it. Each
patched layer holds a :class:`Binding` (its name, its op, the state). Copies of the model made by
``copy.deepcopy`` (Ultralytics' predictor, EMA) share the state, so they follow re-patching.

Choices are planned when ``patch()`` runs, for every device of the machine, floating dtype and head
dim of the model, with and without autograd and logit dropout. A call then only builds a tuple key
from its tensors and reads a dict: under ``torch.compile`` that traces without graph breaks (no
dataclass is built and no backend is selected inside the traced region), and re-patching changes
the dict that dynamo guards on, so a compiled model recompiles for the new backend.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .backends.base import HYPERGRAPH, Backend, KernelPlan, OpCall
from .backends.registry import AUTO, BackendUnsupportedError, auto_order, get_backend, select

#: ``(device, dtype, head_dim, requires_grad, has_dropout_mask, compiling)``: what decides the backend of one call
CallKey = tuple[str, torch.dtype, int, bool, bool, bool]
PLANNED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def exporting() -> bool:
    """True under real export (TorchScript tracing, ONNX export, ``torch.export``), not under ``torch.compile``.

    Patched layers then run the traceable reference. ``torch.compiler.is_exporting()`` cannot be used
    as is: dynamo folds it to True while tracing for ``torch.compile`` on torch 2.6-2.13 (2.14 reads
    the flag); the flag behind it, set only by ``torch.export``, is read directly instead. Torch
    releases without that flag (<= 2.4) keep the custom ops under ``torch.export``, which trace
    through their fake implementations.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    return bool(getattr(torch.compiler, "_is_exporting_flag", False))


def device_name(device: torch.device) -> str:
    """``cpu`` / ``cuda:0``: how call keys name a device."""
    return device.type if device.index is None else f"{device.type}:{device.index}"


def _grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def area_call_key(q: Tensor, k: Tensor, v: Tensor) -> CallKey:
    """The key of ``area_attention(q, k, v)`` with q/k/v ``(B, heads, head_dim, N)``."""
    return (device_name(q.device), q.dtype, q.shape[2], _grad(q, k, v), False, torch.compiler.is_compiling())


def hypergraph_call_key(x: Tensor, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None) -> CallKey:
    """The key of a hypergraph call with x/xp ``(B, N, D)``, prototypes ``(B, M, D)``."""
    compiling = torch.compiler.is_compiling()
    return (device_name(x.device), x.dtype, x.shape[-1], _grad(x, xp, prototypes), dropout_mask is not None, compiling)


def grouped_conv_call_key(x: Tensor, weight: Tensor, bias: Tensor | None) -> CallKey:
    """The key of a grouped convolution of x ``(B, C_in, H, W)`` with weight ``(C_out, C_in / groups, kh, kw)``."""
    grad = _grad(x, weight, *(() if bias is None else (bias,)))
    return (device_name(x.device), x.dtype, weight.shape[1], grad, False, torch.compiler.is_compiling())


def call_of(op: str, key: CallKey) -> OpCall:
    device, dtype, head_dim, grad, mask, compiling = key
    return OpCall(op, torch.device(device), dtype, head_dim, grad, mask, compiling)


def machine_devices() -> list[str]:
    """``cpu`` and every CUDA device PyTorch sees: the devices a patched layer may run on."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class Choice:
    """The backend serving one call key (``backend`` None: no backend can, ``error`` says why).

    ``fallback``: why the requested backend cannot serve this layer by construction, when the
    fastest backend that can serves it instead. ``basis``: what ``auto``'s order rested on (measured
    timings or declared priority).
    """

    backend: type[Backend] | None
    plan: KernelPlan | None
    skipped: dict[str, list[str]]
    error: str = ""
    fallback: str = ""
    basis: str = ""

    def why(self, requested: str, source: str) -> str:
        """Short reason; the full reasons of skipped backends are in ``skipped``."""
        if self.fallback:
            return f"fallback: {requested} ({source}) cannot serve this layer: {self.fallback}"
        if requested != AUTO:
            return f"requested ({source})"
        skipped = f"; {', '.join(self.skipped)} cannot serve it" if self.skipped else ""
        return f"auto ({source}): {self.basis}{skipped}"


@dataclass
class OpPlan:
    """One op's backend request (``requested``, from ``source``) and its planned choices per call key."""

    op: str
    requested: str
    source: str
    strict: bool = False
    choices: dict[CallKey, Choice] = field(default_factory=dict)

    def plan(self, key: CallKey) -> Choice:
        """Select (and remember) the backend for ``key``; a call no backend can serve gets an error choice.

        A named backend that runs here but cannot serve the layer by construction (its head width,
        autograd, logit dropout) falls back to what ``auto`` picks, unless ``strict``.
        """
        choice = self.choices.get(key)
        if choice is None:
            call = call_of(self.op, key)
            try:
                backend, skipped = select(call, self.requested)
                basis = auto_order(call)[1] if self.requested == AUTO else ""
                choice = Choice(backend, backend.plan(call), skipped, basis=basis)
            except BackendUnsupportedError as err:
                choice = Choice(None, None, {}, str(err))
                requested = self._requested_backend()
                if requested is not None and not self.strict and not requested.environment_reasons(call):
                    backend, skipped = select(call, AUTO)
                    fallback = "; ".join(requested.layer_reasons(call))
                    choice = Choice(backend, backend.plan(call), skipped, fallback=fallback, basis=auto_order(call)[1])
            self.choices[key] = choice
        return choice

    def _requested_backend(self) -> type[Backend] | None:
        """The named backend's class for this op (None for ``auto`` or a backend without this op)."""
        try:
            return None if self.requested == AUTO else get_backend(self.op, self.requested)
        except BackendUnsupportedError:
            return None

    def plan_ahead(self, head_dims: set[int], devices: list[str]) -> None:
        """Plan every call the layers can make on ``devices``: dtypes x head dims x grad x dropout x compiled."""
        masks = (False, True) if self.op == HYPERGRAPH else (False,)
        for key in itertools.product(devices, PLANNED_DTYPES, sorted(head_dims), (False, True), masks, (False, True)):
            self.plan(key)


@dataclass(eq=False)
class PatchEntry:
    """What one ``patch()`` call asked for: a plan per op it names, and its options."""

    plans: dict[str, OpPlan]
    check_finite: bool = False


@dataclass(eq=False)
class PatchState:
    """The stack of patches in force on one model (shared with its deep copies)."""

    entries: list[PatchEntry] = field(default_factory=list)
    #: op -> the entry deciding it: the nearest the top that names the op (kept in step with ``entries``)
    active: dict[str, PatchEntry] = field(default_factory=dict)

    def push(self, entry: PatchEntry) -> None:
        self.entries.append(entry)
        self._refresh()

    def remove(self, entry: PatchEntry) -> None:
        self.entries.remove(entry)
        self._refresh()

    def _refresh(self) -> None:
        self.active = {op: entry for entry in self.entries for op in entry.plans}

    def copy(self) -> PatchState:
        """A new state with the same entries (a copy of the model patched on its own from now on)."""
        state = PatchState()
        for entry in self.entries:
            state.push(entry)
        return state


@dataclass(eq=False)
class Binding:
    """Attached to a patched layer: its name (for errors and reports), its op, the model's patch state."""

    name: str
    op: str
    state: PatchState

    def plan(self) -> OpPlan | None:
        entry = self.state.active.get(self.op)
        return None if entry is None else entry.plans[self.op]

    @property
    def requested(self) -> str | None:
        """The backend name the patch in force asked for (None when no patch names this op)."""
        plan = self.plan()
        return None if plan is None else plan.requested

    @property
    def check_finite(self) -> bool:
        entry = self.state.active.get(self.op)
        return entry is not None and entry.check_finite

    def backend_for(self, key: CallKey) -> str | type[Backend]:
        """What the layer passes to the op: the reference while exporting or when no patch names the
        op, else the planned backend for ``key`` (raises naming this layer if none can serve it)."""
        entry = self.state.active.get(self.op)
        if entry is None or exporting():
            return "naive"
        plan = entry.plans[self.op]
        choice = plan.choices.get(key)
        if choice is None:  # a call patch() did not foresee (a new device): plan it now
            choice = plan.plan(key)
        if choice.backend is None:
            raise BackendUnsupportedError(f"{self.name}: {choice.error}")
        return choice.backend

    def __deepcopy__(self, memo: dict) -> Binding:
        """Copies of a patched model share its patch state (they follow re-patching)."""
        return Binding(self.name, self.op, self.state)
