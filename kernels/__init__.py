"""Triton kernels of yolo13-attn (shipped as ``yolo13_attn.kernels``).

One kernel family per file, each readable top to bottom like Triton's fused-attention tutorial.
Only ``@triton.jit`` code and the launch-grid helpers live here; the autograd / ``torch.library``
glue is in ``yolo13_attn/triton_ops``.

* :mod:`.area_attention_fwd` - area attention forward (online softmax, strided channel-major q/k/v).
* :mod:`.area_attention_bwd` - FA2-style backward: delta preprocess, dk/dv kernel, dq kernel.
* :mod:`.hypergraph_aggregate` - vertex -> hyperedge: split-N online softmax + combine.
* :mod:`.hypergraph_scatter` - hyperedge -> vertex: recomputed weights times hyperedge features.
* :mod:`.hypergraph_bwd` - backward of both hypergraph ops (per-token grads + split-N partials).

Every kernel is written to run under the Triton interpreter (``TRITON_INTERPRET=1``) too.
"""

from . import area_attention_bwd, area_attention_fwd, hypergraph_aggregate, hypergraph_bwd, hypergraph_scatter

__all__ = ["area_attention_bwd", "area_attention_fwd", "hypergraph_aggregate", "hypergraph_bwd", "hypergraph_scatter"]
