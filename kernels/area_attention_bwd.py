"""Area attention, backward (FlashAttention-2 style), three kernels:

1. ``area_attention_bwd_preprocess_kernel``: ``delta[b, h, n] = sum_d dO * O`` (float32).
2. ``area_attention_bwd_dkdv_kernel``: one program per block of ``BLOCK_N`` keys of one
   (batch, chunk, head) walks over the queries of its chunk, recomputes ``P^T = exp2(K Q^T *
   qk_scale - lse)`` from the forward's base-2 log-sum-exp and accumulates
   ``dV += P^T dO`` and ``dK += dS^T Q`` with ``dS = P * (dO V^T - delta)``.
3. ``area_attention_bwd_dq_kernel``: one program per block of ``BLOCK_M`` queries walks over the
   keys and accumulates ``dQ += dS K``.

No atomics (dq has its own kernel), so the backward is deterministic. q, k, v and dO are read
in place through their strides (the same channel-major ``(B, heads, head_dim, N)`` views as the
forward); dq, dk, dv are written contiguous ``(B, heads, head_dim, N)`` in the input dtype.
The ``scale`` that multiplies dS for dq/dk is the natural one (the base-2 ``qk_scale`` only
enters the exponent).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def area_attention_bwd_preprocess_kernel(
    O,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_od,
    stride_on,
    stride_dob,
    stride_doh,
    stride_dod,
    stride_don,
    H,
    N,
    HEAD_DIM,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_d[:, None] < HEAD_DIM) & (offs_t[None, :] < N)
    o = tl.load(
        O + b * stride_ob + h * stride_oh + offs_d[:, None] * stride_od + offs_t[None, :] * stride_on,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_d[:, None] * stride_dod + offs_t[None, :] * stride_don,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * N + offs_t, tl.sum(o * do, 0), mask=offs_t < N)


@triton.jit
def area_attention_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    stride_qb,
    stride_qh,
    stride_qd,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kd,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vd,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dod,
    stride_don,
    H,
    N,
    N_AREA,
    AREA,
    HEAD_DIM,
    scale,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    num_n = tl.cdiv(N_AREA, BLOCK_N)
    pid = tl.program_id(0)
    pid_n = pid % num_n
    bah = pid // num_n
    h = bah % H
    a = (bah // H) % AREA
    b64 = (bah // (H * AREA)).to(tl.int64)
    chunk = a * N_AREA
    row = (b64 * H + h) * N + chunk  # offset of this chunk in lse / delta (B, H, N)

    q_base = Q + b64 * stride_qb + h * stride_qh + chunk * stride_qn
    do_base = DO + b64 * stride_dob + h * stride_doh + chunk * stride_don

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N_AREA
    mask_d = offs_d < HEAD_DIM
    mask_nd = mask_n[:, None] & mask_d[None, :]

    # this program's K and V tiles (BLOCK_N, BLOCK_D) stay in registers
    k = tl.load(
        K + b64 * stride_kb + h * stride_kh + (chunk + offs_n[:, None]) * stride_kn + offs_d[None, :] * stride_kd,
        mask=mask_nd,
        other=0.0,
    )
    v = tl.load(
        V + b64 * stride_vb + h * stride_vh + (chunk + offs_n[:, None]) * stride_vn + offs_d[None, :] * stride_vd,
        mask=mask_nd,
        other=0.0,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for start_m in range(0, N_AREA, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N_AREA
        qt = tl.load(
            q_base + offs_d[:, None] * stride_qd + offs_m[None, :] * stride_qn,
            mask=mask_d[:, None] & mask_m[None, :],
            other=0.0,
        )  # (BLOCK_D, BLOCK_M)
        do = tl.load(
            do_base + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
            mask=mask_m[:, None] & mask_d[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_D)
        lse = tl.load(LSE + row + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + row + offs_m, mask=mask_m, other=0.0)
        # P^T (BLOCK_N, BLOCK_M), recomputed; padded query columns contribute nothing
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale
        pt = tl.where(mask_m[None, :], tl.math.exp2(st - lse[None, :]), 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)

    dk = dk * scale
    out_off = (b64 * H + h) * HEAD_DIM * N + offs_d[None, :] * N + (chunk + offs_n[:, None])
    tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=mask_nd)


@triton.jit
def area_attention_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    stride_qb,
    stride_qh,
    stride_qd,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kd,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vd,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dod,
    stride_don,
    H,
    N,
    N_AREA,
    AREA,
    HEAD_DIM,
    scale,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    num_m = tl.cdiv(N_AREA, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    bah = pid // num_m
    h = bah % H
    a = (bah // H) % AREA
    b64 = (bah // (H * AREA)).to(tl.int64)
    chunk = a * N_AREA
    row = (b64 * H + h) * N + chunk

    k_base = K + b64 * stride_kb + h * stride_kh + chunk * stride_kn
    v_base = V + b64 * stride_vb + h * stride_vh + chunk * stride_vn

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_AREA
    mask_d = offs_d < HEAD_DIM
    mask_md = mask_m[:, None] & mask_d[None, :]

    q = tl.load(
        Q + b64 * stride_qb + h * stride_qh + (chunk + offs_m[:, None]) * stride_qn + offs_d[None, :] * stride_qd,
        mask=mask_md,
        other=0.0,
    )
    do = tl.load(
        DO + b64 * stride_dob + h * stride_doh + (chunk + offs_m[:, None]) * stride_don + offs_d[None, :] * stride_dod,
        mask=mask_md,
        other=0.0,
    )
    lse = tl.load(LSE + row + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + row + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for start_n in range(0, N_AREA, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N_AREA
        mask_dn = mask_d[:, None] & mask_n[None, :]
        kt = tl.load(k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn, mask=mask_dn, other=0.0)
        vt = tl.load(v_base + offs_d[:, None] * stride_vd + offs_n[None, :] * stride_vn, mask=mask_dn, other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        p = tl.where(mask_n[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)

    dq = dq * scale
    out_off = (b64 * H + h) * HEAD_DIM * N + offs_d[None, :] * N + (chunk + offs_m[:, None])
    tl.store(DQ + out_off, dq.to(DQ.dtype.element_ty), mask=mask_md)


def launch_area_attention_bwd(
    do,
    q,
    k,
    v,
    out,
    lse,
    delta,
    dq,
    dk,
    dv,
    area,
    scale,
    *,
    block_m,
    block_n,
    block_d,
    precision,
    num_warps,
    num_stages,
):
    """Launch the three backward kernels; ``delta`` is a float32 (B, H, N) workspace."""
    b, h, d, n = q.shape
    n_area = n // area
    block_t = 128
    area_attention_bwd_preprocess_kernel[(triton.cdiv(n, block_t), b * h)](
        out,
        do,
        delta,
        *out.stride(),
        *do.stride(),
        h,
        n,
        d,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        num_warps=4,
    )
    strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
    common = (h, n, n_area, area, d, scale, scale * LOG2E)
    meta = dict(
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    area_attention_bwd_dkdv_kernel[(b * area * h * triton.cdiv(n_area, block_n),)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        *strides,
        *common,
        **meta,
    )
    area_attention_bwd_dq_kernel[(b * area * h * triton.cdiv(n_area, block_m),)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        *strides,
        *common,
        **meta,
    )
