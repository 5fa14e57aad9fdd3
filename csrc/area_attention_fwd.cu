// Area attention, forward: softmax(Q K^T * scale) V inside each of `area` contiguous token chunks, reading the
// strided (B, heads, head_dim, N) conv-output views in place; fp16/bf16 on the tensor cores (mma.sync
// m16n8k16, ldmatrix, cp.async double buffering: the sm80 instruction set, which sm90 runs as is), fp32
// accumulation, online softmax in base 2.
//
// One block of NW warps takes 16 * NW query tokens of one (batch, chunk, head); each warp owns 16 query rows
// and walks over the chunk's keys in blocks of 64. Key blocks are loaded while the previous one is computed;
// in the last (ragged) block whole 16-key steps past the chunk end are skipped and single keys masked, and
// warps whose 16 rows all lie past the chunk end skip the math. Outputs:
//   o   (B, heads, head_dim, N) contiguous, in the input dtype;
//   lse (B, heads, N) float32, base 2: max_j(s_j * scale * log2 e) + log2(sum_j exp2(...)), for the backward.

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>

#include "area_tiles.cuh"

namespace yolo13_attn {
namespace {

constexpr int kBlockN = 64;

template <typename T>
struct FwdParams {
  Bhdn<T> q, k, v;
  T* o;
  float* lse;
  AreaShape shape;
  float qk_scale;  // scale * log2(e)
  bool vec_out;
};

template <typename T, int D, int NW, bool TD>
__global__ void __launch_bounds__(NW * 32) area_attention_fwd_kernel(const FwdParams<T> p) {
  constexpr int BM = 16 * NW, BN = kBlockN, NT = NW * 32;
  using QTile = TileLayout<BM, D, TD>;
  using KVTile = TileLayout<BN, D, TD>;
  using OTile = TileLayout<BM, D, false>;
  static_assert(OTile::ELEMS <= QTile::ELEMS + 2 * KVTile::ELEMS, "staging tile must fit");
  __shared__ __align__(16) T smem[QTile::ELEMS + 4 * KVTile::ELEMS];
  T* sq = smem;
  T* sk = smem + QTile::ELEMS;      // 2 buffers
  T* sv = sk + 2 * KVTile::ELEMS;   // 2 buffers

  const AreaShape& sh = p.shape;
  const ChunkBlock cb = chunk_block(sh, BM);
  const int m0 = cb.blk * BM;
  const int m_valid = min(BM, sh.L - m0);
  const T* qb = p.q.at(cb);
  const T* kb = p.k.at(cb);
  const T* vb = p.v.at(cb);

  load_tile<T, BM, D, TD, NT>(sq, qb, p.q.sd, p.q.sn, p.q.vec, m0, m_valid);
  load_tile<T, BN, D, TD, NT>(sk, kb, p.k.sd, p.k.sn, p.k.vec, 0, min(BN, sh.L));
  load_tile<T, BN, D, TD, NT>(sv, vb, p.v.sd, p.v.sn, p.v.vec, 0, min(BN, sh.L));
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, c = lane % 4;
  const int r0 = warp * 16;
  const bool active = r0 < m_valid;  // warp-uniform

  uint32_t qf[D / 16][4];
  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_i[2] = {-INFINITY, -INFINITY}, l_i[2] = {0.f, 0.f};

  const int n_blocks = (sh.L + BN - 1) / BN;
  for (int j = 0; j < n_blocks; ++j) {
    if (j + 1 < n_blocks) {
      const int nb = (j + 1) & 1, n0 = (j + 1) * BN;
      load_tile<T, BN, D, TD, NT>(sk + nb * KVTile::ELEMS, kb, p.k.sd, p.k.sn, p.k.vec, n0, min(BN, sh.L - n0));
      load_tile<T, BN, D, TD, NT>(sv + nb * KVTile::ELEMS, vb, p.v.sd, p.v.sn, p.v.vec, n0, min(BN, sh.L - n0));
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (active) {
      if (j == 0) load_a_rows<T, BM, D, TD>(qf, sq, r0);
      const T* skj = sk + (j & 1) * KVTile::ELEMS;
      const T* svj = sv + (j & 1) * KVTile::ELEMS;
      const int n_valid = min(BN, sh.L - j * BN);

      float s[BN / 8][4];
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
        if ((nt / 2) * 16 < n_valid) {
          uint32_t kf[D / 16][2];
          load_b_tokens_n<T, BN, D, TD>(kf, skj, nt * 8);
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk) mma_16816<T>(s[nt], qf[kk], kf[kk]);
        }
      }
      if (n_valid < BN) {  // the ragged last block: keys past the chunk end get -inf
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (nt * 8 + 2 * c + (e & 1) >= n_valid) s[nt][e] = -INFINITY;
          }
        }
      }
      // online softmax; every block holds >= 1 valid key, so the new maxima are finite
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
      }
      float alpha[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float m_new = fmaxf(m_i[r], quad_max(mx[r]) * p.qk_scale);
        alpha[r] = fast_exp2(m_i[r] - m_new);
        m_i[r] = m_new;
      }
      float rs[2] = {0.f, 0.f};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] = fast_exp2(fmaf(s[nt][e], p.qk_scale, -m_i[e / 2]));
          rs[e / 2] += s[nt][e];
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) l_i[r] = l_i[r] * alpha[r] + rs[r];
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        acc[dt][0] *= alpha[0];
        acc[dt][1] *= alpha[0];
        acc[dt][2] *= alpha[1];
        acc[dt][3] *= alpha[1];
      }
#pragma unroll
      for (int t = 0; t < BN / 16; ++t) {
        if (t * 16 < n_valid) {
          uint32_t pf[4];
          c_to_a<T>(pf, s[2 * t], s[2 * t + 1]);
          uint32_t vf[D / 8][2];
          load_b_tokens_k<T, BN, D, TD>(vf, svj, t * 16);
#pragma unroll
          for (int dt = 0; dt < D / 8; ++dt) mma_16816<T>(acc[dt], pf, vf[dt]);
        }
      }
    }
    __syncthreads();  // the next iteration's copies overwrite this block's buffers
  }

  // epilogue: normalise, stage o through shared memory (reusing the tiles), store o and lse
  T* so = smem;
  if (active) {
    const float l0 = quad_sum(l_i[0]), l1 = quad_sum(l_i[1]);
    stage_rows<T, BM, D>(so, acc, r0, 1.f / l0, 1.f / l1);
    const int g = lane / 4;
    if (c == 0) {
      float* lse = p.lse + (int64_t(cb.b) * sh.H + cb.h) * sh.N + cb.chunk + m0;
      if (r0 + g < m_valid) lse[r0 + g] = m_i[0] + __log2f(l0);
      if (r0 + g + 8 < m_valid) lse[r0 + g + 8] = m_i[1] + __log2f(l1);
    }
  }
  __syncthreads();
  T* ob = p.o + (int64_t(cb.b) * sh.H + cb.h) * D * sh.N + cb.chunk + m0;
  store_tile<T, BM, D, NT>(ob, so, sh.N, m_valid, p.vec_out);
}

template <typename T, int D, int NW, bool TD>
void launch_fwd(const FwdParams<T>& p, cudaStream_t stream) {
  area_attention_fwd_kernel<T, D, NW, TD><<<grid_size(p.shape, 16 * NW), NW * 32, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void run_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& o, at::Tensor& lse,
             const AreaShape& shape, double scale) {
  const bool td = use_td_tiles(q);
  FwdParams<T> p{describe<T>(q, td, shape),
                 describe<T>(k, td, shape),
                 describe<T>(v, td, shape),
                 reinterpret_cast<T*>(o.data_ptr()),
                 lse.data_ptr<float>(),
                 shape,
                 static_cast<float>(scale * 1.4426950408889634),
                 shape.N % 8 == 0 && shape.L % 8 == 0};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  static const bool eight = std::getenv("YOLO13_TUNE_FWD_WARPS8") != nullptr;
  if (td) {
    eight ? launch_fwd<T, 32, 8, true>(p, stream) : launch_fwd<T, 32, 4, true>(p, stream);
  } else {
    eight ? launch_fwd<T, 32, 8, false>(p, stream) : launch_fwd<T, 32, 4, false>(p, stream);
  }
}

std::tuple<at::Tensor, at::Tensor> area_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, int64_t area, double scale) {
  const AreaShape shape = check_area(q, area);
  check_operand(k, q, "k");
  check_operand(v, q, "v");
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "yolo13_attn cuda area attention: scale must be finite and > 0, got ",
              scale);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor o = at::empty(q.sizes(), q.options());  // contiguous (B, heads, head_dim, N)
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(3)}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {o, lse};
  if (q.scalar_type() == at::kHalf) {
    run_fwd<__half>(q, k, v, o, lse, shape, scale);
  } else {
    run_fwd<__nv_bfloat16>(q, k, v, o, lse, shape, scale);
  }
  return {o, lse};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(yolo13_attn, m) {
  m.def("cuda_area_attention(Tensor q, Tensor k, Tensor v, int area, float scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(yolo13_attn, CUDA, m) { m.impl("cuda_area_attention", &area_attention_forward); }

}  // namespace yolo13_attn
