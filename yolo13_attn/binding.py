"""A patched layer's binding: which backend was requested, which one serves each call, and why."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .backends.base import Backend, KernelPlan, OpCall
from .backends.registry import AUTO, BackendUnsupportedError, select

LOGGER = logging.getLogger("yolo13_attn")


def exporting() -> bool:
    """True while ONNX/TorchScript tracing or torch.export runs: layers then use the traceable reference."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


@dataclass
class Choice:
    """The backend serving one kind of call, the kernel it runs, and the backends ``auto`` skipped."""

    backend: type[Backend]
    plan: KernelPlan
    skipped: dict[str, list[str]]

    def why(self, requested: str) -> str:
        """Short reason; the full reasons of skipped backends are in ``skipped``."""
        if requested != AUTO:
            return "requested explicitly"
        if not self.skipped:
            return "auto: highest priority"
        return f"auto: {', '.join(self.skipped)} cannot serve it"


@dataclass
class Binding:
    """Attached to a patched layer: ``requested`` backend name and per-call-signature choices.

    ``select`` runs once per distinct call signature (device, dtype, head dim, grad, dropout),
    so steady-state calls cost one dict lookup. ``seen`` is shared by all bindings of one
    ``patch()`` call so that ``auto`` logs each distinct choice once, not once per layer.
    """

    name: str
    op: str
    requested: str
    seen: set = field(default_factory=set)
    check_finite: bool = False
    choices: dict[OpCall, Choice] = field(default_factory=dict)
    last: Choice | None = None

    def choose(self, call: OpCall) -> Choice:
        """Select (or recall) the backend for ``call``; raise naming this layer if none can serve it."""
        choice = self.choices.get(call)
        if choice is None:
            try:
                backend, skipped = select(call, self.requested)
            except BackendUnsupportedError as err:
                raise BackendUnsupportedError(f"{self.name}: {err}") from None
            choice = self.choices[call] = Choice(backend, backend.plan(call), skipped)
            self._log_once(call, choice)
        self.last = choice
        return choice

    def backend_for(self, call: OpCall) -> str | type[Backend]:
        """What the layer passes to the op: the reference while exporting, else the chosen backend."""
        return "naive" if exporting() else self.choose(call).backend

    def _log_once(self, call: OpCall, choice: Choice) -> None:
        key = (call, choice.backend.name)
        if self.requested == AUTO and key not in self.seen:
            self.seen.add(key)
            dtype = str(call.dtype).removeprefix("torch.")
            skipped = "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in choice.skipped.items())
            LOGGER.info(
                "yolo13_attn auto: %s on %s/%s head_dim %d -> %s (%s)%s",
                call.op, call.device_type, dtype, call.head_dim, choice.backend.name, choice.plan.kernel,
                f"; skipped {skipped}" if skipped else "",
            )
