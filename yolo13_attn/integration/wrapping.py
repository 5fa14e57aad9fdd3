"""One way to wrap an Ultralytics function: replace a module attribute once, keep the original reachable."""

from __future__ import annotations

import functools
from collections.abc import Callable


def wrap_once(owner: object, attr: str, make: Callable[[Callable], Callable]) -> None:
    """Replace ``owner.attr`` by ``make(original)`` once (idempotent across re-imports).

    The wrapper carries ``__wrapped__`` (the original) and ``__yolo13_attn_wrapped__``.
    """
    original = getattr(owner, attr)
    if getattr(original, "__yolo13_attn_wrapped__", False):
        return
    wrapper = functools.wraps(original)(make(original))
    wrapper.__yolo13_attn_wrapped__ = True
    setattr(owner, attr, wrapper)
