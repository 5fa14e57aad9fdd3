"""The one place that imports the Triton kernels.

Installed, they are the package ``yolo13_attn.kernels`` (setuptools maps the top-level
``kernels/`` directory there). In a source checkout without install that package does not exist,
so the top-level ``kernels/`` next to ``yolo13_attn/`` is loaded *as* ``yolo13_attn.kernels`` - by
path, so an unrelated installed package called ``kernels`` can never shadow it.

Importing this module imports triton; ``TRITON_INTERPRET=1`` must be set before that to run the
kernels on CPU (Triton decides compiled vs interpreted when the kernels are decorated).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_source_checkout_kernels():
    root = Path(__file__).resolve().parents[2] / "kernels"
    init = root / "__init__.py"
    if not init.is_file():
        raise ImportError(f"yolo13_attn.kernels is not installed and {root} does not exist")
    spec = importlib.util.spec_from_file_location("yolo13_attn.kernels", init, submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["yolo13_attn.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("yolo13_attn.kernels", None)
        raise
    return module


try:
    from yolo13_attn import kernels  # installed: package-dir mapping kernels/ -> yolo13_attn/kernels
except ImportError:
    kernels = _load_source_checkout_kernels()

area_attention_fwd = kernels.area_attention_fwd
area_attention_bwd = kernels.area_attention_bwd
hypergraph_aggregate = kernels.hypergraph_aggregate
hypergraph_scatter = kernels.hypergraph_scatter
hypergraph_bwd = kernels.hypergraph_bwd


def interpreted() -> bool:
    """True when the kernels were decorated under ``TRITON_INTERPRET=1`` (they run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(area_attention_fwd.area_attention_fwd_kernel, InterpretedFunction)
