"""Area attention, forward: softmax attention inside ``area`` contiguous token chunks.

Layout (see ``yolo13_attn/ops/reference.py``): q, k, v are ``(B, heads, head_dim, N)`` strided views
of convolution outputs - channel-major, so for an NCHW conv output the token axis N is the
contiguous one (stride 1) and head_dim has stride N; for channels-last the token stride is C.
The kernel reads them in place through their four strides: no transpose, no ``contiguous()``,
no cast. Token ``n`` belongs to chunk ``n // (N // area)``; attention never crosses a chunk.

One program computes ``BLOCK_M`` query rows of one (batch, chunk, head) against every key of
that chunk with the online softmax of FlashAttention (running max ``m_i``, running sum ``l_i``,
rescaled accumulator), in base 2: ``qk_scale = scale * log2(e)`` so ``exp(x * scale)`` becomes
``exp2(x * qk_scale)``. Matmuls run on the tensor cores in the input dtype (fp16/bf16) with
float32 accumulation; float32 inputs use ``input_precision="ieee"`` (full fp32, no TF32).

Outputs:
* ``O``   ``(B, heads, head_dim, N)`` in the input dtype, contiguous - ``.view(B, C, H, W)`` is free.
* ``LSE`` ``(B, heads, N)`` float32: ``m_i + log2(l_i)``, the base-2 log-sum-exp of the scaled
  logits of each query row, kept for the backward pass.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_kd,
    stride_kn,
    stride_vd,
    stride_vn,
    offs_d,
    mask_d,
    lo,
    hi,
    n_area,
    qk_scale,
    BLOCK_N: tl.constexpr,
    MASK_KEYS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Fold key blocks ``[lo, hi)`` of one chunk into the running (acc, l_i, m_i) of ``q``."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_kt = mask_d[:, None]  # (BLOCK_D, 1) for K^T
        mask_v = mask_d[None, :]  # (1, BLOCK_D) for V
        if MASK_KEYS:  # only the ragged last block pays for the token mask
            mask_kt = mask_kt & (offs_n[None, :] < n_area)
            mask_v = mask_v & (offs_n[:, None] < n_area)
        # K^T tile (BLOCK_D, BLOCK_N) straight from the channel-major layout
        kt = tl.load(k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn, mask=mask_kt, other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION)
        if MASK_KEYS:
            s = tl.where(offs_n[None, :] < n_area, s, float("-inf"))
        # online softmax (qk_scale > 0 folded into one FMA per score); every block holds >= 1
        # valid key, so m_new is finite
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # V tile (BLOCK_N, BLOCK_D)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=mask_v, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def area_attention_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
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
    H,
    N,
    N_AREA,
    AREA,
    HEAD_DIM,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # 1-D grid: the query blocks of one (batch, chunk, head) are neighbours, so their K/V hit L2
    num_m = tl.cdiv(N_AREA, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    bah = pid // num_m
    h = bah % H
    a = (bah // H) % AREA
    b = bah // (H * AREA)
    chunk = a * N_AREA  # first token of this chunk

    b64 = b.to(tl.int64)
    q_base = Q + b64 * stride_qb + h * stride_qh + chunk * stride_qn
    k_base = K + b64 * stride_kb + h * stride_kh + chunk * stride_kn
    v_base = V + b64 * stride_vb + h * stride_vh + chunk * stride_vn

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # token index inside the chunk
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_AREA
    mask_d = offs_d < HEAD_DIM

    # Q tile (BLOCK_M, BLOCK_D); padded rows/cols are zeros and never stored
    q = tl.load(
        q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # full key blocks without token masks, then the ragged tail (0 or 1 block)
    n_full = (N_AREA // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_kd,
        stride_kn,
        stride_vd,
        stride_vn,
        offs_d,
        mask_d,
        0,
        n_full,
        N_AREA,
        qk_scale,
        BLOCK_N,
        False,
        PRECISION,
    )
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_kd,
        stride_kn,
        stride_vd,
        stride_vn,
        offs_d,
        mask_d,
        n_full,
        N_AREA,
        N_AREA,
        qk_scale,
        BLOCK_N,
        True,
        PRECISION,
    )

    # epilogue: normalise, store O (contiguous (B, H, D, N)) and the base-2 lse
    acc = acc / l_i[:, None]
    tokens = chunk + offs_m
    o_base = O + (b64 * H + h) * HEAD_DIM * N
    tl.store(
        o_base + offs_d[None, :] * N + tokens[:, None],
        acc.to(O.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )
    tl.store(LSE + (b64 * H + h) * N + tokens, m_i + tl.math.log2(l_i), mask=mask_m)


def launch_area_attention_fwd(
    q, k, v, out, lse, area, scale, *, block_m, block_n, block_d, precision, num_warps, num_stages
):
    """Launch the forward on ``(B, H, D, N)`` q/k/v (any strides) into contiguous ``out`` and ``lse`` (B, H, N)."""
    b, h, d, n = q.shape
    n_area = n // area
    grid = (b * area * h * triton.cdiv(n_area, block_m),)
    area_attention_fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        h,
        n,
        n_area,
        area,
        d,
        scale * LOG2E,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )
