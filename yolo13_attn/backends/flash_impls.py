"""The three implementations behind the ``flash`` backend, and which one serves a call.

In this order, the first that can serve the call (``choose``):

1. ``fa2``: the flash-attn 2 package's ``flash_attn_func`` (``pip install flash-attn``, a CUDA build
   from source), when installed.
2. ``fa4``: FlashAttention-4 (``pip install flash-attn-4``, imported as ``flash_attn.cute``, kernels in
   the CuTe DSL, compiled on the first call of each configuration), when it imports and the GPU is
   sm90 (Hopper) or sm100 (Blackwell), for calls without autograd.
3. ``torch``: the FA2 kernel bundled in PyTorch (``aten._scaled_dot_product_flash_attention``).

The choice is made per device (its compute capability), head dim and autograd need, once, and read
from a dict afterwards, so the traced call path of ``torch.compile`` does no package or device
lookups. ``$YOLO13_ATTN_FLASH_IMPL`` (``fa2``, ``fa4`` or ``torch``) forces one implementation;
:func:`forced` does the same for a block of code (the kernel sweep times them side by side). A
forced implementation that cannot serve a call makes the ``flash`` backend decline it, with the
reason.

Every implementation takes and returns the FlashAttention layout: q ``(batch, seq_q, heads, d)``,
k/v ``(batch, seq_k, heads, d)``, contiguous, fp16 or bf16; it returns
``(out (batch, seq_q, heads, d), lse (batch, heads, seq_q) float32, natural log)``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

ENV = "YOLO13_ATTN_FLASH_IMPL"
HALF_DTYPES = frozenset({torch.float16, torch.bfloat16})
#: compute capability majors the FA4 path serves: sm90 (Hopper), sm100 (Blackwell: B200, B300)
FA4_ARCH_MAJORS = (9, 10)
#: the device type FA4 runs on (tests run a double of it on the CPU)
FA4_DEVICE_TYPE = "cuda"
#: FA4 selects a different kernel for queries longer than one 128-row tile (sm100); warm-ups cover both
FA4_TILE_M = 128


def _is_regular_package(name: str) -> bool:
    """``name`` is installed as a package with an ``__init__.py`` (FA4 alone leaves ``flash_attn`` a
    namespace package holding ``cute``: not the flash-attn 2 package)."""
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin not in (None, "namespace")


#: decided once at import, so the per-call path does no package lookups (and traces under torch.compile)
FLASH_ATTN_INSTALLED = _is_regular_package("flash_attn")


def flash_attn_func() -> Callable[..., object]:
    """The flash-attn 2 package's ``flash_attn_func`` (tests substitute a contract-checking double)."""
    from flash_attn import flash_attn_func as func

    return func


@functools.cache
def fa4_version() -> str | None:
    """The installed flash-attn-4 version (package metadata only: nothing is imported), or None."""
    try:
        return importlib.metadata.version("flash-attn-4")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def fa4_function() -> tuple[Callable[..., object] | None, str]:
    """``(flash_attn.cute.flash_attn_func, "")``, or ``(None, why not)``. Imported on first use (it loads
    the CuTe DSL); tests substitute a double of its documented API."""
    try:
        from flash_attn.cute import flash_attn_func as func
    except Exception as err:  # noqa: BLE001 - any import failure (a missing CUDA DSL runtime) is the reason
        return None, f"flash-attn-4 {fa4_version()}: flash_attn.cute does not import: {type(err).__name__}: {err}"
    return func, ""


def _capability(device: torch.device) -> tuple[int, int] | None:
    """``(major, minor)`` of a CUDA device; None when PyTorch sees no CUDA device."""
    return torch.cuda.get_device_capability(device) if torch.cuda.is_available() else None


# ---- the three implementations ------------------------------------------------------------------


def _fa2_package(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    out, lse, _ = flash_attn_func()(q, k, v, softmax_scale=scale, return_attn_probs=True)
    return out, lse


def _torch_bundled(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, False, False, scale=scale
    )[:2]
    return out.transpose(1, 2), lse


#: (device index, dtype, head_dim, seq_q > FA4_TILE_M) FA4 has run with: its kernel for these is compiled
_FA4_WARM: set[tuple] = set()


def _fa4_warm_key(q: Tensor) -> tuple:
    return (q.device.index, q.dtype, q.shape[-1], q.shape[1] > FA4_TILE_M)


def _capturing(q: Tensor) -> bool:
    return q.is_cuda and torch.cuda.is_current_stream_capturing()


@torch.library.custom_op("yolo13_attn::flash4_attention", mutates_args=())
def _fa4_op(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """FA4 forward as one opaque op: ``torch.compile`` traces its fake, never FA4's Python."""
    key = _fa4_warm_key(q)
    if key not in _FA4_WARM and _capturing(q):
        raise RuntimeError(
            f"FlashAttention-4 compiles its kernel on the first call, which cannot happen during CUDA-graph "
            f"capture: no {str(q.dtype).removeprefix('torch.')} head_dim {q.shape[-1]} call ran on {q.device} "
            "before. Run the model once before capturing, or call "
            "yolo13_attn.backends.flash.prepare(device, dtype, head_dim) first"
        )
    func, why_not = fa4_function()
    if func is None:
        raise RuntimeError(why_not)
    # FA4 launches on (and reads the arch of) the current device
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        out, lse = func(q, k, v, softmax_scale=scale, causal=False, return_lse=True)
    _FA4_WARM.add(key)
    return out, lse


@_fa4_op.register_fake
def _(q, k, v, scale):
    b, s, h, _ = q.shape
    return q.new_empty((b, s, h, v.shape[-1])), q.new_empty((b, h, s), dtype=torch.float32)


def _fa4(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return torch.ops.yolo13_attn.flash4_attention(q, k, v, float(scale))


@dataclass(frozen=True)
class FlashImpl:
    """One implementation and what it supports, as used by this library (``declaration()`` for reports)."""

    key: str
    kernel: str
    dtypes: frozenset[torch.dtype]
    head_dims: str
    dropout: bool
    backward: bool
    notes: str
    attention: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]

    def declaration(self) -> dict[str, object]:
        return {
            "kernel": self.kernel,
            "dtypes": sorted(str(d).removeprefix("torch.") for d in self.dtypes),
            "head_dims": self.head_dims,
            "dropout": self.dropout,
            "backward": self.backward,
            "notes": self.notes,
        }


FA2 = FlashImpl(
    "fa2",
    "flash_attn.flash_attn_func (flash-attn 2)",
    HALF_DTYPES,
    "<= 256",
    dropout=True,
    backward=True,
    notes="sm80+; its own autograd",
    attention=_fa2_package,
)
FA4 = FlashImpl(
    "fa4",
    "flash_attn.cute.flash_attn_func (FlashAttention-4)",
    HALF_DTYPES,
    "sm90: 8-256, multiple of 8; sm100: 8-128, multiple of 8, or 256",
    dropout=False,
    backward=False,
    notes=(
        "sm90/sm100; inference only here (its public API runs the backward only through its own "
        "autograd.Function, which torch.compile cannot trace): calls needing gradients go to the next "
        "implementation; compiles its kernel on the first call per dtype and head_dim"
    ),
    attention=_fa4,
)
TORCH = FlashImpl(
    "torch",
    "torch bundled FA2 (aten._scaled_dot_product_flash_attention)",
    HALF_DTYPES,
    "<= 256, multiple of 8",
    dropout=True,
    backward=True,
    notes="sm80+; always present",
    attention=_torch_bundled,
)
ORDER = (FA2, FA4, TORCH)
IMPLS = {impl.key: impl for impl in ORDER}


def _fa4_head_dim_reason(head_dim: int, major: int) -> str:
    if major == 9 and 8 <= head_dim <= 256 and head_dim % 8 == 0:
        return ""
    if major == 10 and ((8 <= head_dim <= 128 and head_dim % 8 == 0) or head_dim == 256):
        return ""
    allowed = "8-256, multiple of 8" if major == 9 else "8-128, multiple of 8, or 256"
    return f"FA4 on sm{major}x serves head_dim {allowed}, not {head_dim}"


def _reasons(impl: FlashImpl, device: torch.device, head_dim: int, requires_grad: bool) -> list[str]:
    """Why ``impl`` cannot serve a call on ``device`` (the flash backend's declaration checked the rest)."""
    if impl is FA2:
        return [] if FLASH_ATTN_INSTALLED else ["flash-attn 2 not installed"]
    if impl is TORCH:
        return []
    if fa4_version() is None:
        return ["flash-attn-4 not installed"]
    if device.type != FA4_DEVICE_TYPE:
        return [f"FA4 runs on CUDA, not {device.type}"]
    capability = _capability(device)
    if capability is None:
        return ["no CUDA device visible to PyTorch"]
    major, minor = capability
    if major not in FA4_ARCH_MAJORS:
        return [f"FA4 serves sm90/sm100 here, {device} is sm{major}{minor}"]
    reasons = [r for r in (_fa4_head_dim_reason(head_dim, major),) if r]
    if requires_grad:
        reasons.append("FA4 is inference-only here and the call needs gradients")
    return reasons or [r for r in (fa4_function()[1],) if r]


def _positive(impl: FlashImpl, device: torch.device) -> str:
    if impl is FA2:
        return "flash-attn 2 installed"
    major, minor = _capability(device)
    return f"flash-attn-4 {fa4_version()} on {device} (sm{major}{minor})"


@dataclass(frozen=True)
class ImplChoice:
    """The implementation serving one kind of call (``impl`` None: a forced one that cannot) and why."""

    impl: FlashImpl | None
    reason: str

    def describe(self) -> str:
        return f"{self.impl.kernel if self.impl else 'none'}: {self.reason}"


_forced_key: str | None = os.environ.get(ENV, "").strip() or None


def forced_key() -> str | None:
    """The forced implementation (``$YOLO13_ATTN_FLASH_IMPL`` or :func:`forced`), checked; None: choose."""
    if _forced_key is not None and _forced_key not in IMPLS:
        raise ValueError(f"{ENV}={_forced_key!r}: must be one of {', '.join(IMPLS)} (or unset)")
    return _forced_key


@contextlib.contextmanager
def forced(key: str | None) -> Iterator[None]:
    """Force implementation ``key`` (``fa2``/``fa4``/``torch``; None: leave the choice as it is) inside the block."""
    global _forced_key
    if key is None:
        yield
        return
    if key not in IMPLS:
        raise ValueError(f"flash implementation {key!r}: must be one of {', '.join(IMPLS)}")
    previous, _forced_key = _forced_key, key
    try:
        yield
    finally:
        _forced_key = previous


def _normalized(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def choose(device: torch.device | str, head_dim: int, requires_grad: bool) -> ImplChoice:
    """Pick the implementation for a call on ``device`` (uncached: see :func:`choice_for`)."""
    device, key = _normalized(device), forced_key()
    if key is not None:
        impl = IMPLS[key]
        why_not = _reasons(impl, device, head_dim, requires_grad)
        if why_not:
            return ImplChoice(None, f"forced by {ENV}={key}, which cannot serve it: {'; '.join(why_not)}")
        return ImplChoice(impl, f"forced by {ENV}={key}")
    skipped = []
    for impl in ORDER[:-1]:
        why_not = _reasons(impl, device, head_dim, requires_grad)
        if not why_not:
            return ImplChoice(impl, "; ".join([*skipped, _positive(impl, device)]))
        skipped.append("; ".join(why_not))
    return ImplChoice(TORCH, "; ".join(skipped))  # serves every call the flash backend's declaration accepts


#: (device type, device index, head_dim, requires_grad, forced key) -> choice
_CHOICES: dict[tuple, ImplChoice] = {}


def choice_for(device: torch.device | str, head_dim: int, requires_grad: bool) -> ImplChoice:
    """The remembered choice for calls of this kind (planning fills it, so traced calls only read a dict)."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    key = (device.type, device.index, head_dim, requires_grad, _forced_key)
    choice = _CHOICES.get(key)
    if choice is None:
        choice = _CHOICES[key] = choose(device, head_dim, requires_grad)
    return choice


def warm_up(device: torch.device | str, dtype: torch.dtype, head_dim: int) -> ImplChoice:
    """Run one tiny call per kernel variant when FA4 serves inference on ``device`` at ``head_dim`` in
    ``dtype`` (fp16/bf16), so that its compilation happens now, not inside CUDA-graph capture."""
    device = _normalized(device)
    choice = choice_for(device, head_dim, False)
    if choice.impl is FA4:
        with torch.no_grad():
            for seq in (FA4_TILE_M, 2 * FA4_TILE_M):
                q, k, v = (torch.randn(1, seq, 1, head_dim, device=device, dtype=dtype) for _ in range(3))
                FA4.attention(q, k, v, head_dim**-0.5)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return choice
