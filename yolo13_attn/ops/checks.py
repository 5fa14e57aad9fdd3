"""Input checks shared by every op entry point: one place that names the layer, the argument and the constraint.

Every backend receives only inputs that passed these checks, so the rules are the same on all of them:

* **Types.** Tensors must be tensors; ``area`` an ``int`` (not ``bool``, not ``float``); ``scale`` a finite
  real number > 0; ``layout`` one of :data:`AREA_LAYOUTS`. Nothing is computed (or cached) before they pass.
* **One dtype.** All floating inputs of a call (q/k/v; x/xp/prototypes/he and the dropout mask) must share
  one floating dtype: no backend casts silently. Inside ``torch.autocast`` they are first cast to the
  autocast dtype, as PyTorch's own matmuls are (so AMP behaves the same on every backend).
* **lse.** The log-sum-exp is float32 for half and float32 inputs and float64 for float64 inputs,
  wherever it is returned or accepted.
* **Empty inputs** (B = 0, N = 0, M = 0) are valid; every backend returns the reference's answer.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

#: what names a layer in an error: its name, or a module whose ``layer_label()`` gives it (built only on error)
LayerRef = object

#: ``"bhdn"``: per-head channel-major views of the convolution outputs (B, heads, head_dim, N), the layers'
#: layout; ``"bhnd"``: SDPA's (B, heads, N, head_dim)
AREA_LAYOUTS = ("bhdn", "bhnd")


def _where(layer: LayerRef) -> str:
    if layer is None:
        return ""
    label = layer.layer_label() if hasattr(layer, "layer_label") else str(layer)
    return f"{label}: "


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the hypergraph log-sum-exp for inputs of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_tensors(where: str, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{where}{name} must be a torch.Tensor, got {type(t).__name__}")


def _autocast(tensors: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """Inside ``torch.autocast`` for the tensors' device: the floating ones cast to the autocast dtype."""
    first = next(t for t in tensors.values() if t is not None)
    device_type = first.device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return {n: t.to(dtype) if t is not None and t.is_floating_point() else t for n, t in tensors.items()}


def _one_dtype_and_device(where: str, tensors: dict[str, Tensor | None]) -> None:
    present = {name: t for name, t in tensors.items() if t is not None}
    dtypes = {t.dtype for t in present.values()}
    if len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
        listing = ", ".join(f"{name} {_dtype_name(t.dtype)}" for name, t in present.items())
        rule = "share one dtype (no backend casts silently)" if len(dtypes) > 1 else "be floating point"
        raise ValueError(f"{where}inputs must {rule}, got {listing}")
    if len({t.device for t in present.values()}) > 1:
        listing = ", ".join(f"{name} {t.device}" for name, t in present.items())
        raise ValueError(f"{where}inputs must be on one device, got {listing}")


def checked_tensors(where: str, **tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """``tensors`` (None allowed for optional ones) after the type, autocast, dtype and device rules."""
    _check_tensors(where, **tensors)
    tensors = _autocast(tensors)
    _one_dtype_and_device(where, tensors)
    return tuple(tensors.values())


def check_scale(scale: object, layer: LayerRef = None) -> float:
    """``scale`` as a float; it must be a finite real number > 0 (every backend's kernels assume so)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{_where(layer)}scale must be a real number, got {type(scale).__name__} {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{_where(layer)}scale must be finite and > 0, got {scale!r}")
    return float(scale)


def _count(where: str, name: str, value: object, meaning: str) -> int:
    """``value`` as an int >= 1: TypeError for anything but an integer (bool and float included), ValueError below 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}{name} must be an int ({meaning}), got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{where}{name} must be >= 1, got {int(value)}")
    return int(value)


def check_area(area: object, n: int, shape: tuple[int, ...], layer: LayerRef = None) -> int:
    """``area`` as an int: an integer >= 1 (not a bool or float) dividing the token count ``n``."""
    where = _where(layer)
    area = _count(where, "area", area, "the number of strips")
    if n % area:
        raise ValueError(f"{where}token count N={n} (shape {shape}) is not divisible by area={area}")
    return area


def check_area_inputs(
    q: Tensor, k: Tensor, v: Tensor, area: object, layout: object, layer: LayerRef = None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Validate area-attention inputs given in ``layout``.

    Returns:
        q, k, v as ``(B, heads, head_dim, N)`` views (transposed, without a copy, for ``"bhnd"``) and
        ``area`` as an int. Raises TypeError/ValueError naming ``layer``, the argument and the constraint.
    """
    where = _where(layer)
    if layout not in AREA_LAYOUTS:
        raise ValueError(
            f"{where}layout must be 'bhdn' (B, heads, head_dim, N: per-head views of the conv outputs) or "
            f"'bhnd' (B, heads, N, head_dim: SDPA's), got {layout!r}"
        )
    q, k, v = checked_tensors(where, q=q, k=k, v=v)
    dims = "(B, heads, head_dim, N)" if layout == "bhdn" else "(B, heads, N, head_dim)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{where}area attention expects {name} of rank 4 {dims}, got {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"{where}q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2 if layout == "bhdn" else 3] == 0:
        raise ValueError(f"{where}head_dim is 0 in q of shape {tuple(q.shape)} {dims}: there is nothing to attend with")
    area = check_area(area, q.shape[3 if layout == "bhdn" else 2], tuple(q.shape), layer)
    if layout == "bhnd":
        q, k, v = (t.transpose(2, 3) for t in (q, k, v))
    return q, k, v, area


def _check_mask(where: str, mask: Tensor | None, expected: tuple[int, int, int]) -> None:
    if mask is not None and tuple(mask.shape) != expected:
        raise ValueError(f"{where}dropout_mask must be (B, N, M)={expected}, got {tuple(mask.shape)}")


def _check_tokens(where: str, x: Tensor, xp: Tensor, prototypes: Tensor) -> None:
    if x.dim() != 3 or xp.shape != x.shape:
        raise ValueError(
            f"{where}hypergraph expects x and xp of shape (B, N, D), got {tuple(x.shape)} and {tuple(xp.shape)}"
        )
    b, _, d = x.shape
    if prototypes.dim() != 3 or prototypes.shape[0] != b or prototypes.shape[2] != d:
        raise ValueError(f"{where}prototypes must be (B={b}, M, D={d}), got {tuple(prototypes.shape)}")


def check_hypergraph_inputs(
    x: Tensor, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None, layer: LayerRef = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Validate aggregation inputs x/xp ``(B, N, D)``, prototypes ``(B, M, D)``, mask ``(B, N, M)``.

    Returns the inputs (cast to the autocast dtype inside ``torch.autocast``).
    """
    where = _where(layer)
    x, xp, prototypes, dropout_mask = checked_tensors(
        where, x=x, xp=xp, prototypes=prototypes, dropout_mask=dropout_mask
    )
    _check_tokens(where, x, xp, prototypes)
    _check_mask(where, dropout_mask, (x.shape[0], x.shape[1], prototypes.shape[1]))
    return x, xp, prototypes, dropout_mask


def check_scatter_inputs(
    xp: Tensor, prototypes: Tensor, lse: Tensor, he: Tensor, dropout_mask: Tensor | None, layer: LayerRef = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Validate scatter inputs: xp ``(B, N, D)``, prototypes and he ``(B, M, D)``, lse ``(B, M)`` in
    :func:`lse_dtype`, mask ``(B, N, M)``. Returns them (autocast applied, lse untouched)."""
    where = _where(layer)
    _check_tensors(where, lse=lse)
    xp, prototypes, he, dropout_mask = checked_tensors(
        where, xp=xp, prototypes=prototypes, he=he, dropout_mask=dropout_mask
    )
    _check_tokens(where, xp, xp, prototypes)
    _check_mask(where, dropout_mask, (xp.shape[0], xp.shape[1], prototypes.shape[1]))
    if he.shape != prototypes.shape or lse.shape != prototypes.shape[:2]:
        raise ValueError(
            f"{where}he must be (B, M, D)={tuple(prototypes.shape)} and lse (B, M)={tuple(prototypes.shape[:2])}, "
            f"got {tuple(he.shape)} and {tuple(lse.shape)}"
        )
    expected = lse_dtype(he.dtype)
    if lse.dtype != expected:
        raise ValueError(
            f"{where}lse must be {_dtype_name(expected)} for {_dtype_name(he.dtype)} inputs (as hypergraph_aggregate "
            f"returns it), got {_dtype_name(lse.dtype)}"
        )
    if lse.device != he.device:
        raise ValueError(f"{where}lse is on {lse.device}, the other inputs on {he.device}")
    return xp, prototypes, lse, he, dropout_mask


def check_grouped_conv_inputs(
    x: Tensor, weight: Tensor, bias: Tensor | None, groups: object, layer: LayerRef = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """x ``(B, C_in, H, W)``, weight ``(C_out, C_in / groups, kh, kw)`` and bias ``(C_out,)`` of a grouped
    convolution, after the shared tensor rules; ``groups`` an int >= 1 dividing C_in and C_out."""
    where = _where(layer)
    x, weight, bias = checked_tensors(where, x=x, weight=weight, bias=bias)
    groups = _count(where, "groups", groups, "the number of channel groups")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"{where}x must be (B, C_in, H, W) and weight (C_out, C_in / groups, kh, kw), got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    c_out, c_in_group = weight.shape[:2]
    if x.shape[1] != c_in_group * groups or c_out % groups:
        raise ValueError(
            f"{where}x has {x.shape[1]} channels; weight {tuple(weight.shape)} with groups={groups} needs "
            f"C_in = {c_in_group * groups} and C_out divisible by {groups}"
        )
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{where}bias must be ({c_out},), got {tuple(bias.shape)}")
    return x, weight, bias


def check_finite(layer: str, **tensors: Tensor) -> None:
    """Raise ValueError naming ``layer`` if any tensor holds NaN or inf (host sync: opt-in only)."""
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{layer}: input {name} {tuple(t.shape)} contains NaN or inf")
