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

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "area_tiles.cuh"

namespace yolo13_attn {
namespace {

constexpr int kBlockN = 64;         // keys per step of the softmax loop
constexpr int kResidentRows = 640;  // chunks up to this many (padded) tokens keep all their keys in shared memory
constexpr int kMaxWarps = 8;

template <typename T>
struct FwdParams {
  Bhdn<T> q, k, v;
  T* o;
  float* lse;
  AreaShape shape;
  float qk_scale;  // scale * log2(e)
  bool vec_out;
};

// A warp's running state for its 16 query rows: the output accumulator and, per row (g and g + 8 of the
// quad), the running max of the base-2 scaled logits and this lane's part of the running sum.
// With half-precision exponentials (EXP16) the row sums come from the tensor cores instead: lt is the C fragment
// of P times a ones matrix, so lt[0] / lt[2] hold the complete sums of rows g / g + 8.
template <int D>
struct RowState {
  float acc[D / 8][4];
  float m[2], l[2];
  float lt[4];

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
    lt[0] = lt[1] = lt[2] = lt[3] = 0.f;
  }
};

// exp2 of two packed halves in one MUFU operation.
__device__ __forceinline__ uint32_t exp2_half2(uint32_t x) {
  uint32_t y;
  asm("ex2.approx.f16x2 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// Fold keys [n0, n0 + n_valid) (n_valid <= 64) of the K/V tiles into a warp's state: S = Q K^T on the tensor
// cores, online softmax in exp2 (whole 16-key steps past n_valid skipped, single keys masked), O += P V.
// EXP16 (float16 only): the exponentials of the max-subtracted fp32 logits are taken on packed halves - P is
// rounded to half for the P V product anyway - and the row sums are P times ones on the tensor cores.
template <typename T, int D, bool TD, bool EXP16 = false>
__device__ __forceinline__ void attend_block(RowState<D>& st, const uint32_t (&qf)[D / 16][4], const T* sk,
                                             const T* sv, int pitch, int n0, int n_valid, float qk_scale) {
  constexpr int BN = kBlockN;
  const int c = threadIdx.x % 4;
  float s[BN / 8][4];
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) {
    s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    if ((nt / 2) * 16 < n_valid) {
      uint32_t kf[D / 16][2];
      load_b_tokens_n<T, D, TD>(kf, sk, pitch, n0 + nt * 8);
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
  // every block holds >= 1 valid key, so the new maxima are finite; a tree, not a chain of dependent fmaxf
  float mt[2][BN / 8];
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) {
    mt[0][nt] = fmaxf(s[nt][0], s[nt][1]);
    mt[1][nt] = fmaxf(s[nt][2], s[nt][3]);
  }
#pragma unroll
  for (int width = BN / 16; width >= 1; width /= 2) {
#pragma unroll
    for (int i = 0; i < width; ++i) {
      mt[0][i] = fmaxf(mt[0][i], mt[0][i + width]);
      mt[1][i] = fmaxf(mt[1][i], mt[1][i + width]);
    }
  }
  const float mx[2] = {mt[0][0], mt[1][0]};
  float alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float m_new = fmaxf(st.m[r], quad_max(mx[r]) * qk_scale);
    alpha[r] = fast_exp2(st.m[r] - m_new);
    st.m[r] = m_new;
  }
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    st.acc[dt][0] *= alpha[0];
    st.acc[dt][1] *= alpha[0];
    st.acc[dt][2] *= alpha[1];
    st.acc[dt][3] *= alpha[1];
  }
  if constexpr (EXP16) {
    static_assert(std::is_same_v<T, __half>, "half-precision exponentials feed a float16 P V product");
    const uint32_t ones[2] = {pack2<T>(1.f, 1.f), pack2<T>(1.f, 1.f)};
    st.lt[0] *= alpha[0];
    st.lt[1] *= alpha[0];
    st.lt[2] *= alpha[1];
    st.lt[3] *= alpha[1];
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) {
      if (t * 16 < n_valid) {
        uint32_t pf[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // a0..a3 = rows g / g + 8 of n8 tiles 2t and 2t + 1
          const float* x = s[2 * t + i / 2] + 2 * (i % 2);
          const float m = st.m[i % 2];
          pf[i] = exp2_half2(pack2<T>(fmaf(x[0], qk_scale, -m), fmaf(x[1], qk_scale, -m)));
        }
        mma_16816<T>(st.lt, pf, ones);
        uint32_t vf[D / 8][2];
        load_b_tokens_k<T, D, TD>(vf, sv, pitch, n0 + t * 16);
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) mma_16816<T>(st.acc[dt], pf, vf[dt]);
      }
    }
    return;
  }
  float rs[2][2] = {{0.f, 0.f}, {0.f, 0.f}};  // [row][even / odd column]: two short chains per row
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = fast_exp2(fmaf(s[nt][e], qk_scale, -st.m[e / 2]));
      rs[e / 2][e & 1] += s[nt][e];
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) st.l[r] = st.l[r] * alpha[r] + (rs[r][0] + rs[r][1]);
#pragma unroll
  for (int t = 0; t < BN / 16; ++t) {
    if (t * 16 < n_valid) {
      uint32_t pf[4];
      c_to_a<T>(pf, s[2 * t], s[2 * t + 1]);
      uint32_t vf[D / 8][2];
      load_b_tokens_k<T, D, TD>(vf, sv, pitch, n0 + t * 16);
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) mma_16816<T>(st.acc[dt], pf, vf[dt]);
    }
  }
}

// Normalise a warp's 16 rows into a DT staging tile (rows r0.. of pitch `pitch`) and store the lse of the rows
// below `valid` (lse: this tile's first token).
template <typename T, int D, bool EXP16 = false>
__device__ __forceinline__ void finish_rows(const RowState<D>& st, T* stage, int pitch, int r0, float* lse,
                                            int valid) {
  const int lane = threadIdx.x % 32, g = lane / 4;
  const float l0 = EXP16 ? st.lt[0] : quad_sum(st.l[0]), l1 = EXP16 ? st.lt[2] : quad_sum(st.l[1]);
  stage_rows<T, D>(stage, pitch, st.acc, r0, 1.f / l0, 1.f / l1);
  if (lane % 4 == 0) {
    if (r0 + g < valid) lse[r0 + g] = st.m[0] + __log2f(l0);
    if (r0 + g + 8 < valid) lse[r0 + g + 8] = st.m[1] + __log2f(l1);
  }
}

// Chunks of <= kResidentRows tokens: `splits` blocks per (batch, chunk, head) each copy the chunk's K and V into
// shared memory once; block `split` owns the chunk's 16-row query groups split, split + splits, ..., and its warps
// take every warps-th of those, double-buffering their own Q tiles and staging their own outputs, with no
// block-wide barrier after the K/V copy. (splits > 1 only when there are too few chunks to fill the GPU.)
template <typename T, int D, bool TD, bool EXP16>
__global__ void __launch_bounds__(kMaxWarps * 32, 2) area_attention_fwd_resident_kernel(const FwdParams<T> p,
                                                                                        int rows, int splits) {
  constexpr int WBUF = TileLayout<16, D, TD>::ELEMS > TileLayout<16, D, false>::ELEMS
                           ? TileLayout<16, D, TD>::ELEMS
                           : TileLayout<16, D, false>::ELEMS;
  constexpr int QPITCH = TileLayout<16, D, TD>::PITCH, OPITCH = TileLayout<16, D, false>::PITCH;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  const int pitch = TD ? D + 8 : rows + 8;
  const int kv_elems = TD ? rows * pitch : D * pitch;
  T* sk = reinterpret_cast<T*>(smem_bytes);
  T* sv = sk + kv_elems;
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* wbuf = sv + kv_elems + warp * 2 * WBUF;

  const AreaShape& sh = p.shape;
  const int split = blockIdx.x % splits;
  const ChunkBlock cb = chunk_block(sh, sh.L, blockIdx.x / splits);
  const T* qb = p.q.at(cb);
  load_tile<T, D, TD>(sk, pitch, rows, p.k.at(cb), p.k.sd, p.k.sn, p.k.vec, 0, sh.L, threadIdx.x, blockDim.x);
  load_tile<T, D, TD>(sv, pitch, rows, p.v.at(cb), p.v.sd, p.v.sn, p.v.vec, 0, sh.L, threadIdx.x, blockDim.x);
  const int groups = (sh.L + 15) / 16;
  const int stride = warps * splits;  // between one warp's consecutive groups
  const int first = split + warp * splits;
  if (first < groups) {
    load_tile<T, D, TD>(wbuf, QPITCH, 16, qb, p.q.sd, p.q.sn, p.q.vec, first * 16, min(16, sh.L - first * 16), lane,
                        32);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  const int64_t row0 = (int64_t(cb.b) * sh.H + cb.h) * sh.N + cb.chunk;  // this chunk in lse
  T* ob = p.o + (int64_t(cb.b) * sh.H + cb.h) * D * sh.N + cb.chunk;
  RowState<D> st;
  for (int it = 0, g = first; g < groups; ++it, g += stride) {
    T* cur = wbuf + (it & 1) * WBUF;
    const int next = g + stride;
    if (next < groups) {
      load_tile<T, D, TD>(wbuf + ((it + 1) & 1) * WBUF, QPITCH, 16, qb, p.q.sd, p.q.sn, p.q.vec, next * 16,
                          min(16, sh.L - next * 16), lane, 32);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    uint32_t qf[D / 16][4];
    load_a_rows<T, D, TD>(qf, cur, QPITCH, 0);
    st.reset();
    for (int n0 = 0; n0 < sh.L; n0 += kBlockN) {
      attend_block<T, D, TD, EXP16>(st, qf, sk, sv, pitch, n0, min(kBlockN, sh.L - n0), p.qk_scale);
    }
    const int valid = min(16, sh.L - g * 16);
    __syncwarp();
    finish_rows<T, D, EXP16>(st, cur, OPITCH, 0, p.lse + row0 + g * 16, valid);
    __syncwarp();
    store_tile<T, D>(ob + g * 16, cur, OPITCH, 16, sh.N, valid, p.vec_out, lane, 32);
    __syncwarp();
  }
}

// Longer chunks: a block of 16 * NW query rows streams the chunk's keys in double-buffered blocks of 64.
template <typename T, int D, int NW, bool TD>
__global__ void __launch_bounds__(NW * 32, 3) area_attention_fwd_stream_kernel(const FwdParams<T> p) {
  constexpr int BM = 16 * NW, BN = kBlockN, NT = NW * 32;
  using QTile = TileLayout<BM, D, TD>;
  using KVTile = TileLayout<BN, D, TD>;
  using OTile = TileLayout<BM, D, false>;
  static_assert(OTile::ELEMS <= QTile::ELEMS + 2 * KVTile::ELEMS, "staging tile must fit");
  __shared__ __align__(16) T smem[QTile::ELEMS + 4 * KVTile::ELEMS];
  T* sq = smem;
  T* sk = smem + QTile::ELEMS;     // 2 buffers
  T* sv = sk + 2 * KVTile::ELEMS;  // 2 buffers

  const AreaShape& sh = p.shape;
  const ChunkBlock cb = chunk_block(sh, BM);
  const int m0 = cb.blk * BM;
  const int m_valid = min(BM, sh.L - m0);
  const T* kb = p.k.at(cb);
  const T* vb = p.v.at(cb);
  const int tid = threadIdx.x;
  load_tile<T, D, TD>(sq, QTile::PITCH, BM, p.q.at(cb), p.q.sd, p.q.sn, p.q.vec, m0, m_valid, tid, NT);
  load_tile<T, D, TD>(sk, KVTile::PITCH, BN, kb, p.k.sd, p.k.sn, p.k.vec, 0, min(BN, sh.L), tid, NT);
  load_tile<T, D, TD>(sv, KVTile::PITCH, BN, vb, p.v.sd, p.v.sn, p.v.vec, 0, min(BN, sh.L), tid, NT);
  cp_async_commit();

  const int r0 = (threadIdx.x / 32) * 16;
  const bool active = r0 < m_valid;  // warp-uniform
  uint32_t qf[D / 16][4];
  RowState<D> st;
  st.reset();
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
      if (j == 0) load_a_rows<T, D, TD>(qf, sq, QTile::PITCH, r0);
      attend_block<T, D, TD>(st, qf, sk + (j & 1) * KVTile::ELEMS, sv + (j & 1) * KVTile::ELEMS, KVTile::PITCH, 0,
                             min(BN, sh.L - j * BN), p.qk_scale);
    }
    __syncthreads();  // the next iteration's copies overwrite this block's buffers
  }
  if (active) {
    finish_rows<T, D>(st, smem, OTile::PITCH, r0, p.lse + (int64_t(cb.b) * sh.H + cb.h) * sh.N + cb.chunk + m0,
                      m_valid);
  }
  __syncthreads();
  T* ob = p.o + (int64_t(cb.b) * sh.H + cb.h) * D * sh.N + cb.chunk + m0;
  store_tile<T, D>(ob, smem, OTile::PITCH, BM, sh.N, m_valid, p.vec_out, tid, NT);
}

// Warps per block of the resident kernel: the count in [4, 8] that leaves the fewest idle warps in the last
// round of 16-row groups (fewer groups than 4: one warp each).
inline int resident_warps(int groups) {
  if (groups < 4) return groups;
  int best = kMaxWarps, best_idle = kMaxWarps;
  for (int w = kMaxWarps; w >= 4; --w) {
    const int idle = w * ((groups + w - 1) / w) - groups;
    if (idle < best_idle) best = w, best_idle = idle;
  }
  return best;
}

// Streaming multiprocessors of the current device (cached per device; no stream work, capture-safe).
inline int sm_count() {
  static int counts[64] = {0};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int& n = counts[device % 64];
  if (n == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

template <typename T, int D, bool TD, bool EXP16>
void launch_resident(const FwdParams<T>& p, int rows, cudaStream_t stream) {
  constexpr int WBUF = TileLayout<16, D, TD>::ELEMS > TileLayout<16, D, false>::ELEMS
                           ? TileLayout<16, D, TD>::ELEMS
                           : TileLayout<16, D, false>::ELEMS;
  auto smem_bytes = [](int r, int warps) {
    const int kv = TD ? r * (D + 8) : D * (r + 8);
    return static_cast<int>((2 * kv + warps * 2 * WBUF) * sizeof(T));
  };
  auto kernel = area_attention_fwd_resident_kernel<T, D, TD, EXP16>;
  static const bool configured = [&] {  // allow the largest resident configuration, once per instantiation
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes(kResidentRows, kMaxWarps)));
    return true;
  }();
  (void)configured;
  // split a chunk's query groups over several blocks when the chunks alone would leave SMs idle
  const int groups = rows / 16;
  const int64_t chunks = int64_t(p.shape.B) * p.shape.area * p.shape.H;
  const int splits = static_cast<int>(std::min<int64_t>(groups, (3 * sm_count() + chunks - 1) / chunks));
  const int warps = resident_warps((groups + splits - 1) / splits);
  const unsigned blocks = grid_size(p.shape, p.shape.L) * static_cast<unsigned>(splits);
  kernel<<<blocks, warps * 32, smem_bytes(rows, warps), stream>>>(p, rows, splits);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Half-precision exponentials for float16 (see attend_block): on unless YOLO13_ATTN_CUDA_EXP16=0.
inline bool exp16_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("YOLO13_ATTN_CUDA_EXP16");
    return value == nullptr || std::string(value) != "0";
  }();
  return enabled;
}

template <typename T, int D, bool TD>
void launch_fwd(const FwdParams<T>& p, cudaStream_t stream) {
  const int rows = (p.shape.L + 15) / 16 * 16;  // a pitch of rows + 8 keeps ldmatrix conflict-free
  if (rows > kResidentRows) {
    area_attention_fwd_stream_kernel<T, D, 4, TD><<<grid_size(p.shape, 64), 128, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if constexpr (std::is_same_v<T, __half>) {
    exp16_enabled() ? launch_resident<T, D, TD, true>(p, rows, stream) : launch_resident<T, D, TD, false>(p, rows, stream);
  } else {
    launch_resident<T, D, TD, false>(p, rows, stream);
  }
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
  if (td) {
    launch_fwd<T, 32, true>(p, stream);
  } else {
    launch_fwd<T, 32, false>(p, stream);
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
