"""Backward of the hypergraph aggregation and scatter: one kernel, two modes.

Both ops share the weights ``w[n, m] = exp(l[n, m] - lse[m])`` with logits
``l = scale * <xp[n], P[m]> * mask[n, m]``, so both backward passes have the same shape:

* aggregate (``AGGREGATE=True``; ``he = w^T x``, and ``lse`` itself is an output):
  ``dw = x dhe^T``, ``dl = w * (dw - delta + dlse)`` with ``delta[m] = <dhe[m], he[m]>``
  (FA2's "delta", computed per program from the saved ``he``), and per vertex ``dx = w dhe``.
* scatter (``AGGREGATE=False``; ``xn = w he``):
  ``dw = dxn he^T``, ``dl = w * dw``, and the N-reductions ``dhe = w^T dxn`` and
  ``dlse = -sum_n dl``.
* then in both: ``ds = dl * scale * mask``, per vertex ``dxp = ds P`` and the N-reduction
  ``dP = ds^T xp``.

``SRC`` is ``x`` (aggregate) or ``dxn`` (scatter); ``G`` is ``dhe`` (aggregate) or ``he``
(scatter). Like the forward aggregation, N is split across programs: program (split, b) walks its
``TOKENS_PER_SPLIT`` vertices, writes the per-vertex gradients directly and its share of the
N-reductions (float32) to ``(B, NUM_SPLITS, M, [D])`` partial buffers that the caller sums.
With one split those buffers are the final outputs (the store casts to their dtype).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def hypergraph_bwd_kernel(
    XP,
    P,
    LSE,
    MASK,
    G,
    HE,
    DLSE,
    SRC,
    DXP,
    DX,
    DP_PART,
    DHE_PART,
    DLSE_PART,
    stride_xpb,
    stride_xpn,
    stride_xpd,
    stride_pb,
    stride_pm,
    stride_pd,
    stride_gb,
    stride_gm,
    stride_gd,
    stride_sb,
    stride_sn,
    stride_sd,
    stride_mb,
    stride_mn,
    stride_mm,
    stride_hb,
    stride_hm,
    stride_hd,
    N,
    M,
    D,
    TOKENS_PER_SPLIT,
    NUM_SPLITS,
    scale,
    AGGREGATE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DLSE: tl.constexpr,
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
    mask_md = mask_m[:, None] & mask_d[None, :]

    p = tl.load(P + b * stride_pb + offs_m[:, None] * stride_pm + offs_d[None, :] * stride_pd, mask=mask_md, other=0.0)
    g = tl.load(G + b * stride_gb + offs_m[:, None] * stride_gm + offs_d[None, :] * stride_gd, mask=mask_md, other=0.0)
    g = g.to(SRC.dtype.element_ty)
    lse2 = tl.load(LSE + b * M + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634  # padded m: w = 0
    if AGGREGATE:
        he = tl.load(
            HE + b * stride_hb + offs_m[:, None] * stride_hm + offs_d[None, :] * stride_hd, mask=mask_md, other=0.0
        )
        c = -tl.sum(g.to(tl.float32) * he.to(tl.float32), 1)  # -delta
        if HAS_DLSE:
            c += tl.load(DLSE + b * M + offs_m, mask=mask_m, other=0.0)
    else:
        dhe_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        dlse_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    dp_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo = split * TOKENS_PER_SPLIT
    hi = tl.minimum(lo + TOKENS_PER_SPLIT, N)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        mask_nd = mask_n[:, None] & mask_d[None, :]
        xp = tl.load(
            XP + b * stride_xpb + offs_n[:, None] * stride_xpn + offs_d[None, :] * stride_xpd, mask=mask_nd, other=0.0
        )
        s = tl.dot(xp, tl.trans(p), input_precision=PRECISION) * scale  # (BLOCK_N, BLOCK_M)
        if HAS_MASK:
            drop = tl.load(
                MASK + b * stride_mb + offs_n[:, None] * stride_mn + offs_m[None, :] * stride_mm,
                mask=mask_n[:, None] & mask_m[None, :],
                other=0.0,
            ).to(tl.float32)
            s = s * drop
        w = tl.where(mask_n[:, None], tl.math.exp2(s * 1.4426950408889634 - lse2[None, :]), 0.0)
        src = tl.load(
            SRC + b * stride_sb + offs_n[:, None] * stride_sn + offs_d[None, :] * stride_sd, mask=mask_nd, other=0.0
        )
        dw = tl.dot(src, tl.trans(g), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        if AGGREGATE:
            dl = w * (dw + c[None, :])
            dx = tl.dot(w.to(g.dtype), g, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D)
            tl.store(DX + (b * N + offs_n[:, None]) * D + offs_d[None, :], dx.to(DX.dtype.element_ty), mask=mask_nd)
        else:
            dl = w * dw
            dhe_acc = tl.dot(tl.trans(w).to(src.dtype), src, dhe_acc, input_precision=PRECISION)
            dlse_acc -= tl.sum(dl, 0)
        ds = dl * scale
        if HAS_MASK:
            ds = ds * drop
        dxp = tl.dot(ds.to(p.dtype), p, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D)
        tl.store(DXP + (b * N + offs_n[:, None]) * D + offs_d[None, :], dxp.to(DXP.dtype.element_ty), mask=mask_nd)
        dp_acc = tl.dot(tl.trans(ds).to(xp.dtype), xp, dp_acc, input_precision=PRECISION)  # (BLOCK_M, BLOCK_D)

    part = b * NUM_SPLITS + split
    md_off = (part * M + offs_m[:, None]) * D + offs_d[None, :]
    tl.store(DP_PART + md_off, dp_acc.to(DP_PART.dtype.element_ty), mask=mask_md)
    if not AGGREGATE:
        tl.store(DHE_PART + md_off, dhe_acc.to(DHE_PART.dtype.element_ty), mask=mask_md)
        tl.store(DLSE_PART + part * M + offs_m, dlse_acc, mask=mask_m)


def launch_hypergraph_bwd(
    xp,
    prototypes,
    lse,
    dropout_mask,
    g,
    he,
    dlse,
    src,
    dxp,
    dx,
    dp_part,
    dhe_part,
    dlse_part,
    scale,
    *,
    aggregate,
    tokens_per_split,
    block_n,
    block_m,
    block_d,
    precision,
    num_warps,
    num_stages,
):
    """Launch the backward; the N-reduction buffers are ``(B, cdiv(N, tokens_per_split), M, [D])``.

    Aggregate: ``g = dhe``, ``he`` the forward output, ``dlse`` (B, M) float32 contiguous or None,
    ``src = x``, writes ``dx``. Scatter: ``g = he``, ``src = dxn``, writes the ``dhe``/``dlse`` partials.
    """
    b, n, d = xp.shape
    m = prototypes.shape[1]
    num_splits = triton.cdiv(n, tokens_per_split)
    mask = dropout_mask if dropout_mask is not None else xp  # dummy pointer when HAS_MASK=False
    mask_strides = dropout_mask.stride() if dropout_mask is not None else (0, 0, 0)
    # unused pointers of the other mode point at a live tensor; the kernel never touches them
    hypergraph_bwd_kernel[(num_splits, b)](
        xp,
        prototypes,
        lse,
        mask,
        g,
        he if he is not None else g,
        dlse if dlse is not None else lse,
        src,
        dxp,
        dx if dx is not None else dxp,
        dp_part,
        dhe_part if dhe_part is not None else dp_part,
        dlse_part if dlse_part is not None else lse,
        *xp.stride(),
        *prototypes.stride(),
        *g.stride(),
        *src.stride(),
        *mask_strides,
        *(he.stride() if he is not None else (0, 0, 0)),
        n,
        m,
        d,
        tokens_per_split,
        num_splits,
        scale,
        AGGREGATE=aggregate,
        HAS_MASK=dropout_mask is not None,
        HAS_DLSE=dlse is not None,
        BLOCK_N=block_n,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
