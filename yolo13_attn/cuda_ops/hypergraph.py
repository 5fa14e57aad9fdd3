"""Hypergraph aggregation / scatter on the CUDA C++ kernels of ``csrc/``: launchers and fake implementations.

``csrc/hypergraph_aggregate.cu`` and ``csrc/hypergraph_scatter.cu`` register, when the extension is loaded,

* ``torch.ops.yolo13_attn.cuda_hypergraph_aggregate(x, xp, prototypes, scale, dropout_mask) -> (he, lse)``
* ``torch.ops.yolo13_attn.cuda_hypergraph_scatter(xp, prototypes, lse, he, scale, dropout_mask) -> xn``

and ``..._out`` variants writing into given buffers (tests poison them with NaN). Shapes as in
``ops/reference.py``: x, xp ``(B, N, D)`` any strides (x typically the transposed view of a ``(B, D, H, W)``
map), prototypes and he ``(B, M, D)``, mask ``(B, N, M)``; he ``(B, M, D)`` contiguous, lse ``(B, M)`` float32
natural log, xn ``(B, N, D)`` contiguous. float16 / bfloat16, M <= 16, D <= 512. Forward only (no autograd is
registered; the ``cuda`` backend declares no backward).

As in ``triton_ops/hypergraph.py``, the floating inputs of one op are brought to one compute dtype (``x.dtype``
for the aggregation, ``he.dtype`` for the scatter) - a copy only when a caller mixes dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernel_glue import as_dtype, lse32
from .build import load_extension

AGGREGATE = "yolo13_attn::cuda_hypergraph_aggregate"
SCATTER = "yolo13_attn::cuda_hypergraph_scatter"

_registered = False


def _fake_aggregate(x, xp, prototypes, scale, dropout_mask):
    b, _, d = x.shape
    m = prototypes.shape[1]
    return x.new_empty((b, m, d)), x.new_empty((b, m), dtype=torch.float32)


def _fake_scatter(xp, prototypes, lse, he, scale, dropout_mask):
    return he.new_empty(xp.shape)


def _fake_out(*args, **kwargs) -> None:
    return None


def ensure_loaded() -> None:
    """Load (or build) the extension and register the fake implementations of the hypergraph ops, once."""
    global _registered
    if _registered:
        return
    load_extension()
    torch.library.register_fake(AGGREGATE)(_fake_aggregate)
    torch.library.register_fake(SCATTER)(_fake_scatter)
    torch.library.register_fake(AGGREGATE + "_out")(_fake_out)
    torch.library.register_fake(SCATTER + "_out")(_fake_out)
    _registered = True


#: the widest hyperedge count and feature width the kernels are built for (csrc/hypergraph_common.cuh)
MAX_HYPEREDGES = 16
MAX_WIDTH = 512


def check_sizes(prototypes: Tensor) -> None:
    """ValueError for M or D beyond what the kernels are built for, before any launch (the C++ ops check again)."""
    m, d = prototypes.shape[1], prototypes.shape[2]
    if m > MAX_HYPEREDGES or d > MAX_WIDTH:
        raise ValueError(
            f"cuda hypergraph kernels take at most {MAX_HYPEREDGES} hyperedges and D <= {MAX_WIDTH}, "
            f"got prototypes of shape {tuple(prototypes.shape)}"
        )


def _operands(dtype: torch.dtype, xp: Tensor, prototypes: Tensor, dropout_mask: Tensor | None):
    """Load the ops, check M and D, and bring xp, the prototypes and the mask to the activations' ``dtype``."""
    ensure_loaded()
    check_sizes(prototypes)
    return as_dtype(xp, dtype), as_dtype(prototypes, dtype), as_dtype(dropout_mask, dtype)


def aggregate_forward(
    x: Tensor,
    xp: Tensor,
    prototypes: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    *,
    he: Tensor | None = None,
    lse: Tensor | None = None,
    tokens_per_split: int = 0,
    stages: int = 0,
) -> tuple[Tensor, Tensor]:
    """``he (B, M, D)`` in x's dtype and ``lse (B, M)`` float32, written into ``he`` / ``lse`` when given.

    Tuning and test knobs (0: automatic): ``tokens_per_split`` fixes the split of N across blocks (rounded up to
    32 vertices; automatic: about one wave of resident blocks); ``stages`` the number of shared-memory tile
    buffers of the aggregation kernel (2 for D <= 384, 1 for D > 128; automatic: 2, and 1 above 384).
    """
    dtype = x.dtype
    xp, prototypes, dropout_mask = _operands(dtype, xp, prototypes, dropout_mask)
    b, _, d = x.shape
    m = prototypes.shape[1]
    he = torch.empty((b, m, d), dtype=dtype, device=x.device) if he is None else he
    lse = torch.empty((b, m), dtype=torch.float32, device=x.device) if lse is None else lse
    torch.ops.yolo13_attn.cuda_hypergraph_aggregate_out(
        x, xp, prototypes, float(scale), dropout_mask, he, lse, int(tokens_per_split), int(stages)
    )
    return he, lse


def scatter_forward(
    xp: Tensor,
    prototypes: Tensor,
    lse: Tensor,
    he: Tensor,
    scale: float,
    dropout_mask: Tensor | None = None,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """``xn (B, N, D)`` contiguous in he's dtype, written into ``out`` when given."""
    dtype = he.dtype
    xp, prototypes, dropout_mask = _operands(dtype, xp, prototypes, dropout_mask)
    out = torch.empty(xp.shape, dtype=dtype, device=he.device) if out is None else out
    torch.ops.yolo13_attn.cuda_hypergraph_scatter_out(xp, prototypes, lse32(lse), he, float(scale), dropout_mask, out)
    return out


def hypergraph_aggregate(
    x: Tensor, xp: Tensor, prototypes: Tensor, scale: float, dropout_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Vertex -> hyperedge aggregation through the custom op: ``(he (B, M, D), lse (B, M) float32)``."""
    xp, prototypes, dropout_mask = _operands(x.dtype, xp, prototypes, dropout_mask)
    return torch.ops.yolo13_attn.cuda_hypergraph_aggregate(x, xp, prototypes, float(scale), dropout_mask)


def hypergraph_scatter(
    xp: Tensor, prototypes: Tensor, lse: Tensor, he: Tensor, scale: float, dropout_mask: Tensor | None = None
) -> Tensor:
    """Hyperedge -> vertex scatter through the custom op: ``xn (B, N, D)`` in he's dtype."""
    xp, prototypes, dropout_mask = _operands(he.dtype, xp, prototypes, dropout_mask)
    return torch.ops.yolo13_attn.cuda_hypergraph_scatter(xp, prototypes, lse32(lse), he, float(scale), dropout_mask)
