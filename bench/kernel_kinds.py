"""GPU kernels grouped by what they do, from their names (first matching pattern wins).

Shared by the profilers (``bench/train_profile.py``, ``bench/compiled_profile.py``). Inductor's
generated kernels are named ``triton_{poi,red,per}_fused_<ops>``: a pure ``clone``/``copy`` is a
layout copy, other pointwise kernels are fused elementwise work, ``red``/``per`` are reductions.
"""

from __future__ import annotations

import re

KINDS = (
    ("attention", r"flash|fmha|sdpa|area_attention|hypergraph|softmax"),
    ("layout copy", r"direct_copy|nchwToNhwc|nhwcToNchw|tensorTransform|transpose|CatArray|copy_|_(clone|copy)_\d+$"),
    ("depthwise conv", r"depthwise|dwconv|conv2d_c1_k1"),
    ("elementwise", r"triton_poi|elementwise|vectorized|unrolled"),
    ("reduction", r"triton_red|triton_per|(?<!splitK)reduce"),
    ("conv/GEMM", r"conv|cudnn|nvjet|cutlass|gemm|xmma|implicit|wgrad|dgrad|splitK"),
    ("normalisation", r"batch_norm|bn_|welford"),
    ("memset", r"[Mm]emset|fill"),
)


def kind_of(kernel: str) -> str:
    """The kind of the kernel called ``kernel`` (``"other"`` if no pattern matches)."""
    return next((kind for kind, pat in KINDS if re.search(pat, kernel)), "other")
