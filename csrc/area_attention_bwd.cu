// Area attention, backward (FlashAttention-2 style), three kernels on one stream, no atomics (deterministic):
//   1. delta[b, h, n] = sum_d dO * O                                        (float32, (B, heads, N))
//   2. dK, dV: a block of 16 * NW keys of one (batch, chunk, head) walks over the chunk's queries in blocks of
//      64, recomputes P^T = exp2(K Q^T * scale * log2 e - lse) from the forward's base-2 lse and accumulates
//      dV += P^T dO, dK += dS^T Q with dS = P * (dO V^T - delta);
//   3. dQ: a block of 16 * NW queries walks over the chunk's keys and accumulates dQ += dS K.
// dK and dQ are multiplied by the natural `scale` at the end (base 2 only enters the exponent). q, k, v, dO are
// read in place through their strides (as in the forward); dq, dk, dv are contiguous (B, heads, head_dim, N).

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "area_tiles.cuh"

namespace yolo13_attn {
namespace {

constexpr int kBwdBlock = 64;  // tokens per step of the inner loops
constexpr int kDeltaThreads = 256;

template <typename T>
struct BwdParams {
  Bhdn<T> q, k, v, dout;
  const T* o;
  const float* lse;
  float* delta;
  T *dq, *dk, *dv;
  AreaShape shape;
  float scale, qk_scale;
  bool vec_out;
};

// delta = rowsum(dO * O) per token, one thread per token (O contiguous, dO strided).
template <typename T, int D>
__global__ void area_attention_bwd_delta_kernel(const BwdParams<T> p) {
  const int per_row = (p.shape.N + kDeltaThreads - 1) / kDeltaThreads;
  const int bh = blockIdx.x / per_row;
  const int n = (blockIdx.x % per_row) * kDeltaThreads + threadIdx.x;
  if (n >= p.shape.N) return;
  const int b = bh / p.shape.H, h = bh % p.shape.H;
  const T* o = p.o + int64_t(bh) * D * p.shape.N + n;
  const T* dout = p.dout.ptr + b * p.dout.sb + h * p.dout.sh + n * p.dout.sn;
  float acc = 0.f;
#pragma unroll
  for (int d = 0; d < D; ++d) acc += to_float(o[int64_t(d) * p.shape.N]) * to_float(dout[d * p.dout.sd]);
  p.delta[int64_t(bh) * p.shape.N + n] = acc;
}

// Rows [t0, t0 + n) of a (B, heads, N) float32 row vector of this chunk into s (zero past `valid`).
template <int NT>
__device__ __forceinline__ void load_rows(float* s, const float* base, int t0, int n, int valid) {
  for (int i = threadIdx.x; i < n; i += NT) {
    const bool ok = i < valid;
    cp_async_4(s + i, ok ? base + t0 + i : base, ok);
  }
}

template <typename T, int D, int NW, bool TD>
__global__ void __launch_bounds__(NW * 32) area_attention_bwd_dkdv_kernel(const BwdParams<T> p) {
  constexpr int BK = 16 * NW, BQ = kBwdBlock, NT = NW * 32;
  using KTile = TileLayout<BK, D, TD>;
  using QTile = TileLayout<BQ, D, TD>;
  using OTile = TileLayout<BK, D, false>;
  static_assert(OTile::ELEMS <= 4 * QTile::ELEMS, "staging tile must fit");
  __shared__ __align__(16) T smem[2 * KTile::ELEMS + 4 * QTile::ELEMS];
  __shared__ __align__(16) float srow[2][2][BQ];  // [buffer][lse, delta][query]
  T* sk = smem;
  T* sv = smem + KTile::ELEMS;
  T* sq = sv + KTile::ELEMS;          // 2 buffers
  T* sdo = sq + 2 * QTile::ELEMS;     // 2 buffers

  const AreaShape& sh = p.shape;
  const ChunkBlock cb = chunk_block(sh, BK);
  const int tid = threadIdx.x;
  const int k0 = cb.blk * BK;
  const int k_valid = min(BK, sh.L - k0);
  const T* qb = p.q.at(cb);
  const T* dob = p.dout.at(cb);
  const int64_t row = (int64_t(cb.b) * sh.H + cb.h) * sh.N + cb.chunk;  // this chunk in lse / delta

  load_tile<T, D, TD>(sk, KTile::PITCH, BK, p.k.at(cb), p.k.sd, p.k.sn, p.k.vec, k0, k_valid, tid, NT);
  load_tile<T, D, TD>(sv, KTile::PITCH, BK, p.v.at(cb), p.v.sd, p.v.sn, p.v.vec, k0, k_valid, tid, NT);
  auto load_queries = [&](int buf, int q0) {
    const int valid = min(BQ, sh.L - q0);
    load_tile<T, D, TD>(sq + buf * QTile::ELEMS, QTile::PITCH, BQ, qb, p.q.sd, p.q.sn, p.q.vec, q0, valid, tid, NT);
    load_tile<T, D, TD>(sdo + buf * QTile::ELEMS, QTile::PITCH, BQ, dob, p.dout.sd, p.dout.sn, p.dout.vec, q0, valid,
                        tid, NT);
    load_rows<NT>(srow[buf][0], p.lse + row, q0, BQ, valid);
    load_rows<NT>(srow[buf][1], p.delta + row, q0, BQ, valid);
  };
  load_queries(0, 0);
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, c = lane % 4;
  const int r0 = warp * 16;
  const bool active = r0 < k_valid;

  uint32_t kf[D / 16][4], vf[D / 16][4];
  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  }

  const int n_blocks = (sh.L + BQ - 1) / BQ;
  for (int j = 0; j < n_blocks; ++j) {
    if (j + 1 < n_blocks) {
      load_queries((j + 1) & 1, (j + 1) * BQ);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (active) {
      if (j == 0) {
        load_a_rows<T, D, TD>(kf, sk, KTile::PITCH, r0);
        load_a_rows<T, D, TD>(vf, sv, KTile::PITCH, r0);
      }
      const T* sqj = sq + (j & 1) * QTile::ELEMS;
      const T* sdoj = sdo + (j & 1) * QTile::ELEMS;
      const float* lse = srow[j & 1][0];
      const float* delta = srow[j & 1][1];
      const int q_valid = min(BQ, sh.L - j * BQ);

      // P^T (keys x queries) and dP^T = V dO^T
      float pt[BQ / 8][4], ds[BQ / 8][4];
#pragma unroll
      for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) pt[nt][e] = ds[nt][e] = 0.f;
        if ((nt / 2) * 16 < q_valid) {
          uint32_t bq[D / 16][2], bdo[D / 16][2];
          load_b_tokens_n<T, D, TD>(bq, sqj, QTile::PITCH, nt * 8);
          load_b_tokens_n<T, D, TD>(bdo, sdoj, QTile::PITCH, nt * 8);
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk) {
            mma_16816<T>(pt[nt], kf[kk], bq[kk]);
            mma_16816<T>(ds[nt], vf[kk], bdo[kk]);
          }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nt * 8 + 2 * c + (e & 1);
          const float pv = qi < q_valid ? fast_exp2(fmaf(pt[nt][e], p.qk_scale, -lse[qi])) : 0.f;
          pt[nt][e] = pv;
          ds[nt][e] = pv * (ds[nt][e] - delta[qi]);
        }
      }
      // dV += P^T dO, dK += dS^T Q
#pragma unroll
      for (int t = 0; t < BQ / 16; ++t) {
        if (t * 16 < q_valid) {
          uint32_t ap[4], as[4];
          c_to_a<T>(ap, pt[2 * t], pt[2 * t + 1]);
          c_to_a<T>(as, ds[2 * t], ds[2 * t + 1]);
          uint32_t bdo[D / 8][2], bq[D / 8][2];
          load_b_tokens_k<T, D, TD>(bdo, sdoj, QTile::PITCH, t * 16);
          load_b_tokens_k<T, D, TD>(bq, sqj, QTile::PITCH, t * 16);
#pragma unroll
          for (int dt = 0; dt < D / 8; ++dt) {
            mma_16816<T>(dv[dt], ap, bdo[dt]);
            mma_16816<T>(dk[dt], as, bq[dt]);
          }
        }
      }
    }
    __syncthreads();
  }

  const int64_t out = (int64_t(cb.b) * sh.H + cb.h) * D * sh.N + cb.chunk + k0;
  T* so = sq;
  if (active) stage_rows<T, D>(so, OTile::PITCH, dv, r0, 1.f, 1.f);
  __syncthreads();
  store_tile<T, D>(p.dv + out, so, OTile::PITCH, BK, sh.N, k_valid, p.vec_out, tid, NT);
  __syncthreads();
  if (active) stage_rows<T, D>(so, OTile::PITCH, dk, r0, p.scale, p.scale);
  __syncthreads();
  store_tile<T, D>(p.dk + out, so, OTile::PITCH, BK, sh.N, k_valid, p.vec_out, tid, NT);
}

template <typename T, int D, int NW, bool TD>
__global__ void __launch_bounds__(NW * 32) area_attention_bwd_dq_kernel(const BwdParams<T> p) {
  constexpr int BM = 16 * NW, BN = kBwdBlock, NT = NW * 32;
  using QTile = TileLayout<BM, D, TD>;
  using KVTile = TileLayout<BN, D, TD>;
  using OTile = TileLayout<BM, D, false>;
  static_assert(OTile::ELEMS <= 2 * QTile::ELEMS + 4 * KVTile::ELEMS, "staging tile must fit");
  __shared__ __align__(16) T smem[2 * QTile::ELEMS + 4 * KVTile::ELEMS];
  T* sq = smem;
  T* sdo = smem + QTile::ELEMS;
  T* sk = sdo + QTile::ELEMS;       // 2 buffers
  T* sv = sk + 2 * KVTile::ELEMS;   // 2 buffers

  const AreaShape& sh = p.shape;
  const ChunkBlock cb = chunk_block(sh, BM);
  const int tid = threadIdx.x;
  const int m0 = cb.blk * BM;
  const int m_valid = min(BM, sh.L - m0);
  const T* kb = p.k.at(cb);
  const T* vb = p.v.at(cb);

  load_tile<T, D, TD>(sq, QTile::PITCH, BM, p.q.at(cb), p.q.sd, p.q.sn, p.q.vec, m0, m_valid, tid, NT);
  load_tile<T, D, TD>(sdo, QTile::PITCH, BM, p.dout.at(cb), p.dout.sd, p.dout.sn, p.dout.vec, m0, m_valid, tid, NT);
  load_tile<T, D, TD>(sk, KVTile::PITCH, BN, kb, p.k.sd, p.k.sn, p.k.vec, 0, min(BN, sh.L), tid, NT);
  load_tile<T, D, TD>(sv, KVTile::PITCH, BN, vb, p.v.sd, p.v.sn, p.v.vec, 0, min(BN, sh.L), tid, NT);
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int r0 = warp * 16;
  const bool active = r0 < m_valid;

  // per-thread rows g and g + 8: lse (+inf past the chunk end, so that P = 0 there) and delta
  const int64_t row = (int64_t(cb.b) * sh.H + cb.h) * sh.N + cb.chunk + m0 + r0;
  float lse[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = r0 + g + 8 * r < m_valid;
    lse[r] = ok ? p.lse[row + g + 8 * r] : INFINITY;
    delta[r] = ok ? p.delta[row + g + 8 * r] : 0.f;
  }

  uint32_t qf[D / 16][4], dof[D / 16][4];
  float dq[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  const int n_blocks = (sh.L + BN - 1) / BN;
  for (int j = 0; j < n_blocks; ++j) {
    if (j + 1 < n_blocks) {
      const int nb = (j + 1) & 1, n0 = (j + 1) * BN;
      load_tile<T, D, TD>(sk + nb * KVTile::ELEMS, KVTile::PITCH, BN, kb, p.k.sd, p.k.sn, p.k.vec, n0,
                          min(BN, sh.L - n0), tid, NT);
      load_tile<T, D, TD>(sv + nb * KVTile::ELEMS, KVTile::PITCH, BN, vb, p.v.sd, p.v.sn, p.v.vec, n0,
                          min(BN, sh.L - n0), tid, NT);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (active) {
      if (j == 0) {
        load_a_rows<T, D, TD>(qf, sq, QTile::PITCH, r0);
        load_a_rows<T, D, TD>(dof, sdo, QTile::PITCH, r0);
      }
      const T* skj = sk + (j & 1) * KVTile::ELEMS;
      const T* svj = sv + (j & 1) * KVTile::ELEMS;
      const int n_valid = min(BN, sh.L - j * BN);

      float ds[BN / 8][4];
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int e = 0; e < 4; ++e) ds[nt][e] = 0.f;
        if ((nt / 2) * 16 < n_valid) {
          uint32_t bk[D / 16][2], bv[D / 16][2];
          load_b_tokens_n<T, D, TD>(bk, skj, KVTile::PITCH, nt * 8);
          load_b_tokens_n<T, D, TD>(bv, svj, KVTile::PITCH, nt * 8);
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk) {
            mma_16816<T>(s, qf[kk], bk[kk]);
            mma_16816<T>(ds[nt], dof[kk], bv[kk]);
          }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool ok = nt * 8 + 2 * c + (e & 1) < n_valid;
          const float pv = ok ? fast_exp2(fmaf(s[e], p.qk_scale, -lse[e / 2])) : 0.f;
          ds[nt][e] = pv * (ds[nt][e] - delta[e / 2]);
        }
      }
#pragma unroll
      for (int t = 0; t < BN / 16; ++t) {
        if (t * 16 < n_valid) {
          uint32_t as[4];
          c_to_a<T>(as, ds[2 * t], ds[2 * t + 1]);
          uint32_t bk[D / 8][2];
          load_b_tokens_k<T, D, TD>(bk, skj, KVTile::PITCH, t * 16);
#pragma unroll
          for (int dt = 0; dt < D / 8; ++dt) mma_16816<T>(dq[dt], as, bk[dt]);
        }
      }
    }
    __syncthreads();
  }

  T* so = smem;
  if (active) stage_rows<T, D>(so, OTile::PITCH, dq, r0, p.scale, p.scale);
  __syncthreads();
  store_tile<T, D>(p.dq + (int64_t(cb.b) * sh.H + cb.h) * D * sh.N + cb.chunk + m0, so, OTile::PITCH, BM, sh.N,
                   m_valid, p.vec_out, tid, NT);
}

template <typename T, int D, int NW, bool TD>
void launch_bwd(const BwdParams<T>& p, cudaStream_t stream) {
  const int64_t delta_blocks = int64_t((p.shape.N + kDeltaThreads - 1) / kDeltaThreads) * p.shape.B * p.shape.H;
  YOLO13_CHECK(delta_blocks < (int64_t(1) << 31), "yolo13_attn cuda area attention: too many blocks");
  area_attention_bwd_delta_kernel<T, D><<<static_cast<unsigned>(delta_blocks), kDeltaThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  area_attention_bwd_dkdv_kernel<T, D, NW, TD><<<grid_size(p.shape, 16 * NW), NW * 32, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  area_attention_bwd_dq_kernel<T, D, NW, TD><<<grid_size(p.shape, 16 * NW), NW * 32, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void run_bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const at::Tensor& o, const at::Tensor& lse, at::Tensor& delta, at::Tensor& dq, at::Tensor& dk,
             at::Tensor& dv, const AreaShape& shape, double scale) {
  const bool td = use_td_tiles(q);
  BwdParams<T> p{describe<T>(q, td, shape),
                 describe<T>(k, td, shape),
                 describe<T>(v, td, shape),
                 describe<T>(grad_out, td, shape),
                 reinterpret_cast<const T*>(o.data_ptr()),
                 lse.data_ptr<float>(),
                 delta.data_ptr<float>(),
                 reinterpret_cast<T*>(dq.data_ptr()),
                 reinterpret_cast<T*>(dk.data_ptr()),
                 reinterpret_cast<T*>(dv.data_ptr()),
                 shape,
                 static_cast<float>(scale),
                 static_cast<float>(scale * 1.4426950408889634),
                 shape.N % 8 == 0 && shape.L % 8 == 0};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (td) {
    launch_bwd<T, 32, 4, true>(p, stream);
  } else {
    launch_bwd<T, 32, 4, false>(p, stream);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> area_attention_backward(const at::Tensor& grad_out,
                                                                       const at::Tensor& q, const at::Tensor& k,
                                                                       const at::Tensor& v, const at::Tensor& o,
                                                                       const at::Tensor& lse, int64_t area,
                                                                       double scale) {
  const AreaShape shape = check_area(q, area);
  check_operand(k, q, "k");
  check_operand(v, q, "v");
  check_operand(grad_out, q, "grad_out");
  check_operand(o, q, "o");
  YOLO13_CHECK(o.is_contiguous(), "yolo13_attn cuda area attention backward: o must be contiguous (the forward's)");
  YOLO13_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.dim() == 3 &&
                  lse.size(0) == q.size(0) && lse.size(1) == q.size(1) && lse.size(2) == q.size(3) &&
                  lse.device() == q.device(),
              "yolo13_attn cuda area attention backward: lse must be the forward's contiguous float32 (B, heads, N)");
  YOLO13_CHECK(std::isfinite(scale) && scale > 0, "yolo13_attn cuda area attention: scale must be finite and > 0, got ",
              scale);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  if (q.numel() == 0) return {dq, dk, dv};
  at::Tensor delta = at::empty(lse.sizes(), lse.options());
  if (q.scalar_type() == at::kHalf) {
    run_bwd<__half>(grad_out, q, k, v, o, lse, delta, dq, dk, dv, shape, scale);
  } else {
    run_bwd<__nv_bfloat16>(grad_out, q, k, v, o, lse, delta, dq, dk, dv, shape, scale);
  }
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(yolo13_attn, m) {
  m.def(
      "cuda_area_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, int area, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(yolo13_attn, CUDA, m) { m.impl("cuda_area_attention_backward", &area_attention_backward); }

}  // namespace yolo13_attn
