"""Hypergraph vertex -> hyperedge aggregation, forward.

For every image b and hyperedge m (``M <= 16`` prototypes, padded to ``BLOCK_M = 16``):

    logit[n, m] = scale * <xp[b, n], P[b, m]>   (* mask[b, n, m] in training)
    lse[b, m]   = logsumexp_n logit[n, m]
    he[b, m]    = sum_n exp(logit[n, m] - lse[b, m]) * x[b, n]

This is attention with the M prototypes as the queries, ``xp`` as keys and ``x`` as values; the
softmax runs over the N vertices. ``B * M`` rows alone cannot fill an H100, so N is split across
programs (split-K / flash-decoding style):

1. ``hypergraph_aggregate_partial_kernel``: program (split s, image b) runs the online softmax
   over its ``TOKENS_PER_SPLIT`` vertices for all M prototypes at once - logits
   ``(BLOCK_N, BLOCK_M) = xp_tile @ P^T`` on the tensor cores, then ``acc (BLOCK_M, BLOCK_D) +=
   w^T @ x_tile`` - and writes its unnormalised ``acc`` with its running max / sum (base 2) to a
   float32 workspace. With a single split it normalises and writes ``he``/``lse`` directly.
2. ``hypergraph_aggregate_combine_kernel``: program (b, m, D-chunk) merges the splits' partials,
   ``BLOCK_S`` splits at a time.

x, xp (B, N, D), P (B, M, D) and mask (B, N, M) are read through their strides. D is padded to
a power of two ``BLOCK_D`` (masked loads: padding costs registers, not bandwidth).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def hypergraph_aggregate_partial_kernel(
    X,
    XP,
    P,
    MASK,
    HE,
    LSE,
    PART_ACC,
    PART_M,
    PART_L,
    stride_xb,
    stride_xn,
    stride_xd,
    stride_xpb,
    stride_xpn,
    stride_xpd,
    stride_pb,
    stride_pm,
    stride_pd,
    stride_mb,
    stride_mn,
    stride_mm,
    N,
    M,
    D,
    TOKENS_PER_SPLIT,
    NUM_SPLITS,
    scale,
    HAS_MASK: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D

    # the prototypes of image b, transposed: (BLOCK_D, BLOCK_M), zeros in the padding
    pt = tl.load(
        P + b * stride_pb + offs_d[:, None] * stride_pd + offs_m[None, :] * stride_pm,
        mask=mask_d[:, None] & mask_m[None, :],
        other=0.0,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo = split * TOKENS_PER_SPLIT
    hi = tl.minimum(lo + TOKENS_PER_SPLIT, N)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        mask_nd = mask_n[:, None] & mask_d[None, :]
        xp = tl.load(
            XP + b * stride_xpb + offs_n[:, None] * stride_xpn + offs_d[None, :] * stride_xpd, mask=mask_nd, other=0.0
        )
        s = tl.dot(xp, pt, input_precision=PRECISION) * scale  # (BLOCK_N, BLOCK_M) natural logits
        if HAS_MASK:
            drop = tl.load(
                MASK + b * stride_mb + offs_n[:, None] * stride_mn + offs_m[None, :] * stride_mm,
                mask=mask_n[:, None] & mask_m[None, :],
                other=0.0,
            )
            s = s * drop.to(tl.float32)
        s = tl.where(mask_n[:, None], s * 1.4426950408889634, float("-inf"))  # base 2
        # online softmax over the vertices (axis 0); each block holds >= 1 valid vertex
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.math.exp2(m_i - m_new)
        w = tl.math.exp2(s - m_new[None, :])
        l_i = l_i * alpha + tl.sum(w, 0)
        x = tl.load(
            X + b * stride_xb + offs_n[:, None] * stride_xn + offs_d[None, :] * stride_xd, mask=mask_nd, other=0.0
        )
        acc = tl.dot(tl.trans(w).to(x.dtype), x, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    mask_md = mask_m[:, None] & mask_d[None, :]
    if SINGLE_SPLIT:
        # one split covers all N: normalise here, no combine pass
        he = acc / l_i[:, None]
        tl.store(HE + (b * M + offs_m[:, None]) * D + offs_d[None, :], he.to(HE.dtype.element_ty), mask=mask_md)
        tl.store(LSE + b * M + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=mask_m)
    else:
        part = b * NUM_SPLITS + split  # workspace (B, NUM_SPLITS, M, [D])
        tl.store(PART_ACC + (part * M + offs_m[:, None]) * D + offs_d[None, :], acc, mask=mask_md)
        tl.store(PART_M + part * M + offs_m, m_i, mask=mask_m)
        tl.store(PART_L + part * M + offs_m, l_i, mask=mask_m)


@triton.jit
def hypergraph_aggregate_combine_kernel(
    HE,
    LSE,
    PART_ACC,
    PART_M,
    PART_L,
    M,
    D,
    NUM_SPLITS,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # program (b * M + m, d-chunk); the splits are read BLOCK_S at a time (no long dependent chain)
    bm = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    b = bm // M
    m = bm % M
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    # pass 1: the global running max over the splits
    m_vec = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    for s0 in range(0, NUM_SPLITS, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        part = (b * NUM_SPLITS + offs_s) * M + m
        m_vec = tl.maximum(m_vec, tl.load(PART_M + part, mask=offs_s < NUM_SPLITS, other=float("-inf")))
    m_tot = tl.max(m_vec, 0)
    # pass 2: rescale each split's sum and accumulator to that max and add up
    l_vec = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for s0 in range(0, NUM_SPLITS, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask_s = offs_s < NUM_SPLITS
        part = (b * NUM_SPLITS + offs_s) * M + m
        w = tl.math.exp2(tl.load(PART_M + part, mask=mask_s, other=float("-inf")) - m_tot)  # 0 on padding
        l_vec += w * tl.load(PART_L + part, mask=mask_s, other=0.0)
        a = tl.load(PART_ACC + part[:, None] * D + offs_d[None, :], mask=mask_s[:, None] & mask_d[None, :], other=0.0)
        acc += tl.sum(a * w[:, None], 0)
    l_tot = tl.sum(l_vec, 0)
    tl.store(HE + bm * D + offs_d, (acc / l_tot).to(HE.dtype.element_ty), mask=mask_d)
    tl.store(LSE + bm, (m_tot + tl.math.log2(l_tot)) * 0.6931471805599453, mask=pid_d == 0)


def launch_hypergraph_aggregate(
    x,
    xp,
    prototypes,
    dropout_mask,
    he,
    lse,
    scale,
    *,
    workspace,
    tokens_per_split,
    block_n,
    block_m,
    block_d,
    precision,
    num_warps,
    num_stages,
):
    """Launch the aggregation into ``he`` (B, M, D) contiguous and ``lse`` (B, M) float32.

    ``workspace`` is None for a single split, else ``(acc (B, S, M, D), m (B, S, M), l (B, S, M))``
    float32 with ``S = cdiv(N, tokens_per_split)``.
    """
    b, n, d = x.shape
    m = prototypes.shape[1]
    num_splits = triton.cdiv(n, tokens_per_split)
    single = num_splits == 1
    part_acc, part_m, part_l = (he, lse, lse) if single else workspace
    mask = dropout_mask if dropout_mask is not None else x  # dummy pointer when HAS_MASK=False
    mask_strides = dropout_mask.stride() if dropout_mask is not None else (0, 0, 0)
    hypergraph_aggregate_partial_kernel[(num_splits, b)](
        x,
        xp,
        prototypes,
        mask,
        he,
        lse,
        part_acc,
        part_m,
        part_l,
        *x.stride(),
        *xp.stride(),
        *prototypes.stride(),
        *mask_strides,
        n,
        m,
        d,
        tokens_per_split,
        num_splits,
        scale,
        HAS_MASK=dropout_mask is not None,
        SINGLE_SPLIT=single,
        BLOCK_N=block_n,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if not single:
        block_dc = min(block_d, 128)
        hypergraph_aggregate_combine_kernel[(b * m, triton.cdiv(d, block_dc))](
            he,
            lse,
            part_acc,
            part_m,
            part_l,
            m,
            d,
            num_splits,
            BLOCK_S=16,
            BLOCK_D=block_dc,
            num_warps=4,
        )
