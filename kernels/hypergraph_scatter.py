"""Hypergraph hyperedge -> vertex scatter, forward.

    xn[b, n] = sum_m exp(logit[b, n, m] - lse[b, m]) * he[b, m]

with the aggregation's weights (softmax over the vertices; no renormalisation over the M
hyperedges). The weights are recomputed, never stored: one program takes ``BLOCK_N`` vertices of
one image, computes their logits against the (at most 16, padded to ``BLOCK_M``) prototypes on
the tensor cores, exponentiates against ``lse`` and multiplies by ``he (BLOCK_M, BLOCK_D)``.
Padded hyperedges get ``lse = +inf`` so their weight is exactly 0.

xp (B, N, D), P (B, M, D), he (B, M, D) and mask (B, N, M) are read through their strides;
``xn`` is written contiguous (B, N, D) in the dtype of ``he``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def hypergraph_scatter_kernel(
    XP,
    P,
    LSE,
    HE,
    MASK,
    OUT,
    stride_xpb,
    stride_xpn,
    stride_xpd,
    stride_pb,
    stride_pm,
    stride_pd,
    stride_hb,
    stride_hm,
    stride_hd,
    stride_mb,
    stride_mn,
    stride_mm,
    N,
    M,
    D,
    scale,
    HAS_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_m = offs_m < M
    mask_d = offs_d < D
    mask_md = mask_m[:, None] & mask_d[None, :]

    pt = tl.load(
        P + b * stride_pb + offs_d[:, None] * stride_pd + offs_m[None, :] * stride_pm,
        mask=mask_d[:, None] & mask_m[None, :],
        other=0.0,
    )  # (BLOCK_D, BLOCK_M)
    he = tl.load(
        HE + b * stride_hb + offs_m[:, None] * stride_hm + offs_d[None, :] * stride_hd, mask=mask_md, other=0.0
    )  # (BLOCK_M, BLOCK_D)
    lse2 = tl.load(LSE + b * M + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634

    xp = tl.load(
        XP + b * stride_xpb + offs_n[:, None] * stride_xpn + offs_d[None, :] * stride_xpd,
        mask=mask_n[:, None] & mask_d[None, :],
        other=0.0,
    )
    s = tl.dot(xp, pt, input_precision=PRECISION) * scale  # (BLOCK_N, BLOCK_M)
    if HAS_MASK:
        drop = tl.load(
            MASK + b * stride_mb + offs_n[:, None] * stride_mn + offs_m[None, :] * stride_mm,
            mask=mask_n[:, None] & mask_m[None, :],
            other=0.0,
        )
        s = s * drop.to(tl.float32)
    w = tl.math.exp2(s * 1.4426950408889634 - lse2[None, :])
    xn = tl.dot(w.to(he.dtype), he, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D)
    tl.store(
        OUT + (b * N + offs_n[:, None]) * D + offs_d[None, :],
        xn.to(OUT.dtype.element_ty),
        mask=mask_n[:, None] & mask_d[None, :],
    )


def launch_hypergraph_scatter(
    xp, prototypes, lse, he, dropout_mask, out, scale, *, block_n, block_m, block_d, precision, num_warps, num_stages
):
    """Launch the scatter into ``out`` (B, N, D) contiguous; ``lse`` is (B, M) float32 contiguous."""
    b, n, d = xp.shape
    m = prototypes.shape[1]
    mask = dropout_mask if dropout_mask is not None else xp  # dummy pointer when HAS_MASK=False
    mask_strides = dropout_mask.stride() if dropout_mask is not None else (0, 0, 0)
    hypergraph_scatter_kernel[(triton.cdiv(n, block_n), b)](
        xp,
        prototypes,
        lse,
        he,
        mask,
        out,
        *xp.stride(),
        *prototypes.stride(),
        *he.stride(),
        *mask_strides,
        n,
        m,
        d,
        scale,
        HAS_MASK=dropout_mask is not None,
        BLOCK_N=block_n,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
