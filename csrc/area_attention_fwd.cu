// Area attention, forward: softmax(Q K^T * scale) V inside each of `area` contiguous token chunks, reading the
// strided (B, heads, head_dim, N) conv-output views in place; fp16/bf16 on the tensor cores, fp32 accumulation,
// online softmax in base 2. Three kernel families (see csrc/README.md and kernel_for below for which one runs):
//   resident - a block copies its chunk's K/V into shared memory once; each warp takes groups of 16 query rows
//              (mma.sync m16n8k16, ldmatrix, cp.async: the sm80 instruction set, which sm90 runs as is);
//   tiled    - a block of 16 * NW query rows streams the chunk's keys through a cp.async ring (mma.sync);
//   wgmma    - the tiled scheme for one Hopper warpgroup of 64 rows (sm_90a wgmma, wgmma_sm90.cuh).
// In the last (ragged) key block single keys past the chunk end are masked. Outputs:
//   o   (B, heads, head_dim, N) contiguous, in the input dtype;
//   lse (B, heads, N) float32, base 2: max_j(s_j * scale * log2 e) + log2(sum_j exp2(...)), for the backward.

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "area_tiles.cuh"
#include "wgmma_sm90.cuh"

namespace yolo13_attn {
namespace {

constexpr int kBlockN = 64;         // keys per step of the resident kernel's softmax loop
constexpr int kResidentRows = 640;  // chunks up to this many (padded) tokens keep all their keys in shared memory
constexpr int kMaxWarps = 8;

// How P and its row sums are computed (template parameter EXPM of the kernels):
constexpr int kExpF32 = 0;     // fp32 exponentials, row sums added per lane in fp32 (any dtype)
constexpr int kExpF16 = 1;     // exponentials on packed halves, row sums on the tensor cores (float16 only)
constexpr int kExpF32Mma = 2;  // fp32 exponentials rounded to P's dtype, row sums of that P on the tensor cores

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
// With row sums on the tensor cores (EXPM != kExpF32) lt is the C fragment of P times a ones matrix instead, so
// lt[0] / lt[2] hold the complete sums of rows g / g + 8.
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

// The online-softmax update of a warp's 16 rows for one block of BN logits s (the C fragments of S = Q K^T over
// n8 tiles of keys): keys at or past n_valid get -inf, the running maxima move to the block's, and the output
// accumulator and the running sums are rescaled by alpha = exp2(m_old - m_new). Every block holds >= 1 valid key,
// so the new maxima are finite.
template <int D, int EXPM, int BN>
__device__ __forceinline__ void softmax_rescale(RowState<D>& st, float (&s)[BN / 8][4], int n_valid, float qk_scale) {
  const int c = threadIdx.x % 4;
  if (n_valid < BN) {  // the ragged last block
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (nt * 8 + 2 * c + (e & 1) >= n_valid) s[nt][e] = -INFINITY;
      }
    }
  }
  float mt[2][BN / 8];  // a tree, not a chain of dependent fmaxf
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
  float alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float m_new = fmaxf(st.m[r], quad_max(mt[r][0]) * qk_scale);
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
  if constexpr (EXPM != kExpF32) {
    st.lt[0] *= alpha[0];
    st.lt[1] *= alpha[0];
    st.lt[2] *= alpha[1];
    st.lt[3] *= alpha[1];
  } else {
    st.l[0] *= alpha[0];
    st.l[1] *= alpha[1];
  }
}

// P for keys 16 t .. 16 t + 15 of the block as the A fragment of the P V product, its row sums added to the
// running sums (see EXPM). kExpF16: the exponentials of the max-subtracted fp32 logits are taken on packed halves
// (P is rounded to half for the P V product anyway). kExpF32Mma: fp32 exponentials rounded to P's dtype; the row
// sums of the rounded P (the P the product uses) come from one tensor-core product with a ones matrix instead of
// 16 fp32 additions.
template <typename T, int D, int EXPM, int BN>
__device__ __forceinline__ void p_fragment(RowState<D>& st, const float (&s)[BN / 8][4], int t, float qk_scale,
                                           uint32_t (&pf)[4]) {
  if constexpr (EXPM == kExpF16) {
    static_assert(std::is_same_v<T, __half>, "half-precision exponentials feed a float16 P V product");
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // a0..a3 = rows g / g + 8 of n8 tiles 2t and 2t + 1
      const float* x = s[2 * t + i / 2] + 2 * (i % 2);
      const float m = st.m[i % 2];
      pf[i] = exp2_half2(pack2<T>(fmaf(x[0], qk_scale, -m), fmaf(x[1], qk_scale, -m)));
    }
  } else {
    float e[2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int i = 0; i < 4; ++i) e[h][i] = fast_exp2(fmaf(s[2 * t + h][i], qk_scale, -st.m[i / 2]));
    }
    if constexpr (EXPM == kExpF32) {
      st.l[0] += (e[0][0] + e[0][1]) + (e[1][0] + e[1][1]);
      st.l[1] += (e[0][2] + e[0][3]) + (e[1][2] + e[1][3]);
    }
    c_to_a<T>(pf, e[0], e[1]);
  }
  if constexpr (EXPM != kExpF32) {
    const uint32_t ones[2] = {pack2<T>(1.f, 1.f), pack2<T>(1.f, 1.f)};
    mma_16816<T>(st.lt, pf, ones);
  }
}

// Fold keys [n0, n0 + n_valid) (n_valid <= BN, BN a multiple of 16) of the K/V tiles into a warp's state with
// mma.sync: S = Q K^T (whole 16-key steps past n_valid skipped), the online softmax, O += P V.
template <typename T, int D, bool TD, int EXPM = kExpF32, int BN = kBlockN>
__device__ __forceinline__ void attend_block(RowState<D>& st, const uint32_t (&qf)[D / 16][4], const T* sk,
                                             const T* sv, int pitch, int n0, int n_valid, float qk_scale) {
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
  softmax_rescale<D, EXPM, BN>(st, s, n_valid, qk_scale);
#pragma unroll
  for (int t = 0; t < BN / 16; ++t) {
    if (t * 16 < n_valid) {
      uint32_t pf[4];
      p_fragment<T, D, EXPM, BN>(st, s, t, qk_scale, pf);
      uint32_t vf[D / 8][2];
      load_b_tokens_k<T, D, TD>(vf, sv, pitch, n0 + t * 16);
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) mma_16816<T>(st.acc[dt], pf, vf[dt]);
    }
  }
}

// Normalise a warp's 16 rows into a DT staging tile (rows r0.. of pitch `pitch`) and store the lse of the rows
// below `valid` (lse: this tile's first token).
template <typename T, int D, int EXPM = kExpF32>
__device__ __forceinline__ void finish_rows(const RowState<D>& st, T* stage, int pitch, int r0, float* lse,
                                            int valid) {
  const int lane = threadIdx.x % 32, g = lane / 4;
  const float l0 = EXPM != kExpF32 ? st.lt[0] : quad_sum(st.l[0]);
  const float l1 = EXPM != kExpF32 ? st.lt[2] : quad_sum(st.l[1]);
  stage_rows<T, D>(stage, pitch, st.acc, r0, 1.f / l0, 1.f / l1);
  if (lane % 4 == 0) {
    if (r0 + g < valid) lse[r0 + g] = st.m[0] + __log2f(l0);
    if (r0 + g + 8 < valid) lse[r0 + g + 8] = st.m[1] + __log2f(l1);
  }
}

// The end of a tiled or wgmma block of BM query rows [m0, m0 + m_valid) of one chunk: once every copy has landed
// and every warp is done with the K/V buffers, each active warp normalises its 16 rows into the staging tile
// (which overlays them) and writes their lse; then the block stores the tile as contiguous (D, N) rows of o.
template <typename T, int D, int EXPM, int BM, int NT>
__device__ __forceinline__ void write_block(const RowState<D>& st, T* stage, const FwdParams<T>& p,
                                            const ChunkBlock& cb, int m0, int m_valid, bool active) {
  constexpr int PITCH = TileLayout<BM, D, false>::PITCH;
  const AreaShape& sh = p.shape;
  const int64_t head = int64_t(cb.b) * sh.H + cb.h;
  cp_async_wait<0>();
  __syncthreads();
  if (active) {
    finish_rows<T, D, EXPM>(st, stage, PITCH, (threadIdx.x / 32) * 16, p.lse + head * sh.N + cb.chunk + m0, m_valid);
  }
  __syncthreads();
  store_tile<T, D>(p.o + head * D * sh.N + cb.chunk + m0, stage, PITCH, BM, sh.N, m_valid, p.vec_out, threadIdx.x,
                   NT);
}

// Chunks of <= kResidentRows tokens: `splits` blocks per (batch, chunk, head) each copy the chunk's K and V into
// shared memory once; block `split` owns the chunk's 16-row query groups split, split + splits, ..., and its warps
// take every warps-th of those, double-buffering their own Q tiles and staging their own outputs, with no
// block-wide barrier after the K/V copy. (splits > 1 only when there are too few chunks to fill the GPU.)
template <typename T, int D, bool TD, int EXPM, int MINB>
__global__ void __launch_bounds__(kMaxWarps * 32, MINB) area_attention_fwd_resident_kernel(const FwdParams<T> p,
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
      attend_block<T, D, TD, EXPM>(st, qf, sk, sv, pitch, n0, min(kBlockN, sh.L - n0), p.qk_scale);
    }
    const int valid = min(16, sh.L - g * 16);
    __syncwarp();
    finish_rows<T, D, EXPM>(st, cur, OPITCH, 0, p.lse + row0 + g * 16, valid);
    __syncwarp();
    store_tile<T, D>(ob + g * 16, cur, OPITCH, 16, sh.N, valid, p.vec_out, lane, 32);
    __syncwarp();
  }
}

// Tiled: a block of BM = 16 * NW query rows of one (batch, chunk, head) streams the chunk's keys in blocks of BN
// through a ring of STAGES shared-memory buffers filled by cp.async (block j + STAGES - 1 is requested while block j
// is computed; one barrier per key block). Small tiles keep registers and shared memory low, so that many blocks
// share an SM and one block's softmax overlaps another's matrix products. MINB: blocks per SM the register budget
// is sized for (__launch_bounds__).
template <typename T, int D, bool TD, int EXPM, bool VEC, int NW, int BN, int STAGES, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB) area_attention_fwd_tiled_kernel(const FwdParams<T> p) {
  constexpr int BM = 16 * NW, NT = NW * 32;
  using QTile = TileLayout<BM, D, TD>;
  using KVTile = TileLayout<BN, D, TD>;
  using OTile = TileLayout<BM, D, false>;
  constexpr int ELEMS = QTile::ELEMS + 2 * STAGES * KVTile::ELEMS;
  __shared__ __align__(16) T smem[ELEMS > OTile::ELEMS ? ELEMS : OTile::ELEMS];
  T* sq = smem;
  T* sk = smem + QTile::ELEMS;          // STAGES buffers
  T* sv = sk + STAGES * KVTile::ELEMS;  // STAGES buffers

  const AreaShape& sh = p.shape;
  const ChunkBlock cb = chunk_block(sh, BM);
  const int m0 = cb.blk * BM;
  const int m_valid = min(BM, sh.L - m0);
  const T* kb = p.k.at(cb);
  const T* vb = p.v.at(cb);
  const int tid = threadIdx.x;
  const int n_blocks = (sh.L + BN - 1) / BN;
  auto load_kv = [&](int j) {
    const int n0 = j * BN, valid = min(BN, sh.L - n0);
    T* k_dst = sk + (j % STAGES) * KVTile::ELEMS;
    T* v_dst = sv + (j % STAGES) * KVTile::ELEMS;
    if constexpr (VEC) {
      load_tile_vec<T, BN, D, TD, NT>(k_dst, kb, p.k.sd, p.k.sn, n0, valid, tid);
      load_tile_vec<T, BN, D, TD, NT>(v_dst, vb, p.v.sd, p.v.sn, n0, valid, tid);
    } else {
      load_tile<T, D, TD>(k_dst, KVTile::PITCH, BN, kb, p.k.sd, p.k.sn, false, n0, valid, tid, NT);
      load_tile<T, D, TD>(v_dst, KVTile::PITCH, BN, vb, p.v.sd, p.v.sn, false, n0, valid, tid, NT);
    }
  };
  if constexpr (VEC) {
    load_tile_vec<T, BM, D, TD, NT>(sq, p.q.at(cb), p.q.sd, p.q.sn, m0, m_valid, tid);
  } else {
    load_tile<T, D, TD>(sq, QTile::PITCH, BM, p.q.at(cb), p.q.sd, p.q.sn, false, m0, m_valid, tid, NT);
  }
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {  // one commit group per key block, empty past the last
    if (j < n_blocks) load_kv(j);
    cp_async_commit();
  }

  const int r0 = (tid / 32) * 16;
  const bool active = r0 < m_valid;  // warp-uniform
  uint32_t qf[D / 16][4];
  RowState<D> st;
  st.reset();
  for (int j = 0; j < n_blocks; ++j) {
    cp_async_wait<STAGES - 2>();  // block j (and the Q tile) has landed, for this thread's copies
    __syncthreads();              // ... and every thread's; every warp is done with block j - 1
    if (j + STAGES - 1 < n_blocks) load_kv(j + STAGES - 1);  // into the buffers of block j - 1
    cp_async_commit();
    if (active) {
      if (j == 0) load_a_rows<T, D, TD>(qf, sq, QTile::PITCH, r0);
      const int stage = j % STAGES;
      attend_block<T, D, TD, EXPM, BN>(st, qf, sk + stage * KVTile::ELEMS, sv + stage * KVTile::ELEMS,
                                        KVTile::PITCH, 0, min(BN, sh.L - j * BN), p.qk_scale);
    }
  }
  write_block<T, D, EXPM, BM, NT>(st, smem, p, cb, m0, m_valid, active);
}

#ifdef YOLO13_ATTN_WGMMA
// attend_block for a warpgroup (4 warps, 64 query rows) with Hopper's wgmma: S = Q K^T (64 x 64) and O += P V
// (64 x 32) as asynchronous warpgroup products (BN = 32 or 64 keys), K and V read from the chunked tiles of wgmma_sm90.cuh through the
// descriptors kd / vd of this block's buffers; the softmax in between is attend_block's, on the same fragments,
// with all BN keys (masked ones have P = 0 and zero-filled V rows).
template <typename T, int EXPM, int BN>
__device__ __forceinline__ void attend_block_wgmma(RowState<32>& st, const uint32_t (&qf)[2][4], uint64_t kd,
                                                   uint64_t vd, int n_valid, float qk_scale) {
  constexpr int D = 32;
  float s[BN / 8][4];
  wgmma_fence();
  fence_operands(s);
  // k16 step kk of K^T starts 256 kk bytes in (descriptor addresses count 16-byte units)
  wgmma_m64nk16<T, 1, BN>(s, qf[0], kd, false);
  wgmma_m64nk16<T, 1, BN>(s, qf[1], kd + 256 / 16, true);
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(s);
  softmax_rescale<D, EXPM, BN>(st, s, n_valid, qk_scale);
  uint32_t pf[BN / 16][4];
#pragma unroll
  for (int t = 0; t < BN / 16; ++t) p_fragment<T, D, EXPM, BN>(st, s, t, qk_scale, pf[t]);
  fence_operands(st.acc);
  wgmma_fence();  // the accumulator was rescaled in registers
#pragma unroll
  for (int t = 0; t < BN / 16; ++t) wgmma_m64n32k16<T, 0>(st.acc, pf[t], vd + 32 * D * t / 16, true);
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(st.acc);
}
#endif

// Hopper: one warpgroup of 64 query rows per block, the tiled kernel's key-block ring (cp.async into STAGES
// buffers of BN keys in the chunked layout of wgmma_sm90.cuh) and attend_block_wgmma, with fp32 exponentials and
// the row sums on the tensor cores (kExpF32Mma). Each thread copies the same two chunks of every key block, so its
// source pointers only advance by one block of tokens per step. Channel-major (token stride 1) operands with
// 16-byte copies only; built for sm_90a, a trap elsewhere (the host launches it only on sm90).
template <typename T, int BN, int STAGES, int MINB>
__global__ void __launch_bounds__(128, MINB) area_attention_fwd_wgmma_kernel(const FwdParams<T> p) {
#ifdef YOLO13_ATTN_WGMMA
  constexpr int D = 32, BM = 64, NT = 128;
  // row sums on the tensor cores for both dtypes: the per-lane fp32 sums (kExpF32) gave wrong bfloat16 outputs
  // with 32-key blocks in the GPU tests (cause not found), so that combination is not built
  constexpr int EXPM = kExpF32Mma;
  constexpr int CHUNKS = D * BN / 8 / NT;  // 16-byte copies per thread per tensor and key block
  using QTile = TileLayout<BM, D, false>;
  constexpr int KV_ELEMS = BN * D;
  constexpr int KV_BYTES = KV_ELEMS * int(sizeof(T));
  __shared__ __align__(128) T smem[QTile::ELEMS + 2 * STAGES * KV_ELEMS];
  T* sq = smem;
  char* sk = reinterpret_cast<char*>(smem + QTile::ELEMS);  // STAGES buffers
  char* sv = sk + STAGES * KV_BYTES;                         // STAGES buffers

  const AreaShape& sh = p.shape;
  const ChunkBlock cb = chunk_block(sh, BM);
  const int m0 = cb.blk * BM;
  const int m_valid = min(BM, sh.L - m0);
  const int tid = threadIdx.x;
  const int n_blocks = (sh.L + BN - 1) / BN;
  // this thread's chunks: 8 consecutive threads take 8 channels of one token group (128 contiguous bytes)
  const T* k_src[CHUNKS];
  const T* v_src[CHUNKS];
  int dst[CHUNKS], first[CHUNKS];
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int i = tid + c * NT;
    const int d = i % 8 + 8 * (i / BN), tg = (i / 8) % (BN / 8);
    first[c] = tg * 8;
    dst[c] = kv_chunk_offset<D>(d, tg);
    k_src[c] = p.k.at(cb) + d * p.k.sd + first[c] * p.k.sn;
    v_src[c] = p.v.at(cb) + d * p.v.sd + first[c] * p.v.sn;
  }
  const int64_t k_step = BN * p.k.sn, v_step = BN * p.v.sn;
  auto load_kv = [&](int j) {  // key block j; the source pointers stand at block j
    const int stage = j % STAGES, left = sh.L - j * BN;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const bool ok = first[c] < left;
      cp_async_16(sk + stage * KV_BYTES + dst[c], ok ? k_src[c] : p.k.ptr, ok);
      cp_async_16(sv + stage * KV_BYTES + dst[c], ok ? v_src[c] : p.v.ptr, ok);
      k_src[c] += k_step;
      v_src[c] += v_step;
    }
  };
  load_tile_vec<T, BM, D, false, NT>(sq, p.q.at(cb), p.q.sd, p.q.sn, m0, m_valid, tid);
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    if (j < n_blocks) load_kv(j);
    cp_async_commit();
  }
  // descriptors of stage 0 (see wgmma_sm90.cuh); stage s is s * KV_BYTES / 16 further
  const uint64_t kd0 = smem_desc(sk, 128, 16 * D), vd0 = smem_desc(sv, 16 * D, 128);
  const int r0 = (tid / 32) * 16;
  uint32_t qf[D / 16][4];
  RowState<D> st;
  st.reset();
  for (int j = 0; j < n_blocks; ++j) {
    cp_async_wait<STAGES - 2>();
    fence_smem_for_wgmma();  // this thread's copies, visible to the tensor cores' reads
    __syncthreads();
    if (j + STAGES - 1 < n_blocks) load_kv(j + STAGES - 1);
    cp_async_commit();
    if (j == 0) load_a_rows<T, D, false>(qf, sq, QTile::PITCH, r0);
    const uint64_t stage_offset = (j % STAGES) * (KV_BYTES / 16);
    attend_block_wgmma<T, EXPM, BN>(st, qf, kd0 + stage_offset, vd0 + stage_offset, min(BN, sh.L - j * BN),
                                p.qk_scale);
  }
  write_block<T, D, EXPM, BM, NT>(st, smem, p, cb, m0, m_valid, true);
#else
  __trap();  // the host launches this kernel only on sm90 devices, for which the build emits sm_90a code
#endif
}

// Warps per block of the resident kernel, in [4, 8] (fewer groups than 4: one warp each): with few_rounds, the
// fewest warps that take the groups in the fewest rounds (more warps per SM where registers allow), else the
// count that leaves the fewest idle warps in the last round.
inline int resident_warps(int groups, bool few_rounds) {
  if (groups < 4) return groups;
  int best = kMaxWarps, best_cost = 1 << 30;
  for (int w = kMaxWarps; w >= 4; --w) {
    const int rounds = (groups + w - 1) / w;
    const int cost = few_rounds ? rounds : w * rounds - groups;
    if (cost <= best_cost) best = w, best_cost = cost;
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

// MINB: blocks per SM the registers are sized for (2: up to 128 registers; 3: 80, with more warps per block).
template <typename T, int D, bool TD, int EXPM, int MINB>
void launch_resident(const FwdParams<T>& p, int rows, cudaStream_t stream) {
  constexpr int WBUF = TileLayout<16, D, TD>::ELEMS > TileLayout<16, D, false>::ELEMS
                           ? TileLayout<16, D, TD>::ELEMS
                           : TileLayout<16, D, false>::ELEMS;
  auto smem_bytes = [](int r, int warps) {
    const int kv = TD ? r * (D + 8) : D * (r + 8);
    return static_cast<int>((2 * kv + warps * 2 * WBUF) * sizeof(T));
  };
  auto kernel = area_attention_fwd_resident_kernel<T, D, TD, EXPM, MINB>;
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
  const int warps = resident_warps((groups + splits - 1) / splits, MINB > 2);
  const unsigned blocks = grid_size(p.shape, p.shape.L) * static_cast<unsigned>(splits);
  kernel<<<blocks, warps * 32, smem_bytes(rows, warps), stream>>>(p, rows, splits);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Operands without 16-byte copies (odd chunk lengths or strides, see describe) take one tiled configuration
// with element-wise loads.
template <typename T, int D, bool TD, int EXPM, int NW, int BN, int STAGES, int MINB>
void launch_tiled(const FwdParams<T>& p, cudaStream_t stream) {
  const unsigned blocks = grid_size(p.shape, 16 * NW);
  if (p.q.vec && p.k.vec && p.v.vec) {
    area_attention_fwd_tiled_kernel<T, D, TD, EXPM, true, NW, BN, STAGES, MINB><<<blocks, NW * 32, 0, stream>>>(p);
  } else {
    area_attention_fwd_tiled_kernel<T, D, TD, EXPM, false, 4, 64, 2, 3><<<grid_size(p.shape, 64), 128, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether the current device runs the sm_90a wgmma kernels (compute capability 9.0; cached per device).
inline bool wgmma_device() {
  static int caps[64] = {0};  // 0 unknown, 1 no, 2 yes
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int& cap = caps[device % 64];
  if (cap == 0) {
    int major = 0, minor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    cap = major == 9 && minor == 0 ? 2 : 1;
  }
  return cap == 2;
}

// The wgmma kernel where it applies (sm90, channel-major operands with 16-byte copies); false otherwise.
template <typename T, bool TD, int BN, int STAGES, int MINB>
bool launch_wgmma(const FwdParams<T>& p, cudaStream_t stream) {
  if constexpr (TD) {
    return false;  // channels-last tiles: not built for wgmma
  } else {
    if (!(p.q.vec && p.k.vec && p.v.vec) || !wgmma_device()) return false;
    area_attention_fwd_wgmma_kernel<T, BN, STAGES, MINB><<<grid_size(p.shape, 64), 128, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
}

// The forward kernels a caller may ask for (`kernel` of cuda_area_attention_config; tests run each one):
//   1 resident (chunks of at most kResidentRows tokens);
//   2 tiled, 4 warps, 64-key blocks, 2 stages (any chunk length);
//   3 / 4 wgmma, 32-key blocks, 3 / 2 stages, and 5 wgmma, 64-key blocks, 4 stages (sm90, channel-major
//   16-byte-copyable operands; kernel 2 otherwise);
//   6 resident with registers for 3 blocks per SM (80) and up to 8 warps per block (the automatic choice's).
constexpr int kKernels = 7;

// The automatic choice (kernel 0), from the H100 tuning sweep (bench/cuda_area_tuning.py, csrc/README.md), by the
// number of 64-row blocks in the grid: up to 200 (under two per SM: each block's latency is the time) the wgmma
// kernel with the longest key blocks and deepest prefetch, whatever the chunk length; then, while the chunk fits
// in shared memory, the lighter wgmma kernels up to ~1.4k blocks (about 1.5 waves of 7 blocks per SM) and the
// resident kernel with registers for 3 blocks per SM beyond (K/V read once per chunk, the fewest instructions;
// for chunks of at most 128 tokens already from ~900 blocks); the tiled kernel for longer chunks. The wgmma
// kernels hand channel-last or unaligned operands, and GPUs other than sm90, to kernel 2; for those the resident
// kernel is taken whenever the chunk fits.
inline int kernel_for(const AreaShape& shape, bool wgmma_ok) {
  const int rows = (shape.L + 15) / 16 * 16;
  const int64_t blocks = int64_t(shape.B) * shape.area * shape.H * ((shape.L + 63) / 64);
  if (wgmma_ok && blocks <= 200) return 5;
  if (rows > kResidentRows) return 2;
  const bool short_chunks = rows <= 128 && blocks > 900;  // e.g. 80-token chunks: the resident kernel wins early
  if (wgmma_ok && blocks <= 1400 && !short_chunks) return blocks <= 400 ? 3 : 4;
  return 6;
}

template <typename T, int D, bool TD, int EXPM>
void launch_fwd(const FwdParams<T>& p, int kernel, cudaStream_t stream) {
  const int rows = (p.shape.L + 15) / 16 * 16;  // a pitch of rows + 8 keeps ldmatrix conflict-free
  const bool wgmma_ok = !TD && p.q.vec && p.k.vec && p.v.vec && wgmma_device();
  switch (kernel == 0 ? kernel_for(p.shape, wgmma_ok) : kernel) {
    case 1:
      YOLO13_CHECK(rows <= kResidentRows, "yolo13_attn cuda area attention: the resident kernel takes chunks of at most ",
                   kResidentRows, " tokens, got ", p.shape.L);
      return launch_resident<T, D, TD, EXPM, 2>(p, rows, stream);
    case 2: return launch_tiled<T, D, TD, EXPM, 4, 64, 2, 4>(p, stream);
    case 3:
      if (!launch_wgmma<T, TD, 32, 3, 6>(p, stream)) launch_tiled<T, D, TD, EXPM, 4, 64, 2, 4>(p, stream);
      return;
    case 4:
      if (!launch_wgmma<T, TD, 32, 2, 7>(p, stream)) launch_tiled<T, D, TD, EXPM, 4, 64, 2, 4>(p, stream);
      return;
    case 5:
      if (!launch_wgmma<T, TD, 64, 4, 5>(p, stream)) launch_tiled<T, D, TD, EXPM, 4, 64, 2, 4>(p, stream);
      return;
    case 6:
      YOLO13_CHECK(rows <= kResidentRows, "yolo13_attn cuda area attention: the resident kernel takes chunks of at most ",
                   kResidentRows, " tokens, got ", p.shape.L);
      return launch_resident<T, D, TD, EXPM, 3>(p, rows, stream);
    default: YOLO13_CHECK(false, "yolo13_attn cuda area attention: no forward kernel ", kernel);
  }
}

template <typename T>
void run_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& o, at::Tensor& lse,
             const AreaShape& shape, double scale, int kernel, int exp_mode) {
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
  auto launch = [&](auto mode) {
    constexpr int EXPM = decltype(mode)::value;
    td ? launch_fwd<T, 32, true, EXPM>(p, kernel, stream) : launch_fwd<T, 32, false, EXPM>(p, kernel, stream);
  };
  if (exp_mode == kExpF32) {
    launch(std::integral_constant<int, kExpF32>{});
  } else if constexpr (std::is_same_v<T, __half>) {
    exp_mode == kExpF16 ? launch(std::integral_constant<int, kExpF16>{})
                        : launch(std::integral_constant<int, kExpF32Mma>{});
  } else {
    launch(std::integral_constant<int, kExpF32Mma>{});
  }
}

// `kernel`: 0 = automatic, else one of the forward kernels above; `exp_mode`: how the mma.sync kernels take P and
// its row sums (kExpF32, kExpF16 - float16 only, bfloat16 takes kExpF32Mma - or kExpF32Mma, the default); the
// wgmma kernels always use kExpF32Mma.
std::tuple<at::Tensor, at::Tensor> area_attention_forward_config(const at::Tensor& q, const at::Tensor& k,
                                                                 const at::Tensor& v, int64_t area, double scale,
                                                                 int64_t kernel, int64_t exp_mode) {
  const AreaShape shape = check_area(q, area);
  check_operand(k, q, "k");
  check_operand(v, q, "v");
  YOLO13_CHECK(std::isfinite(scale) && scale > 0, "yolo13_attn cuda area attention: scale must be finite and > 0, got ",
               scale);
  YOLO13_CHECK(kernel >= 0 && kernel < kKernels, "yolo13_attn cuda area attention: kernel must be in [0, ", kKernels,
               "), got ", kernel);
  YOLO13_CHECK(exp_mode >= -1 && exp_mode <= kExpF32Mma,
               "yolo13_attn cuda area attention: exp_mode must be -1, 0, 1 or 2, got ", exp_mode);
  if (exp_mode == -1) exp_mode = q.scalar_type() == at::kHalf ? kExpF32Mma : kExpF32;
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor o = at::empty(q.sizes(), q.options());  // contiguous (B, heads, head_dim, N)
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(3)}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {o, lse};
  if (q.scalar_type() == at::kHalf) {
    run_fwd<__half>(q, k, v, o, lse, shape, scale, static_cast<int>(kernel), static_cast<int>(exp_mode));
  } else {
    run_fwd<__nv_bfloat16>(q, k, v, o, lse, shape, scale, static_cast<int>(kernel), static_cast<int>(exp_mode));
  }
  return {o, lse};
}

std::tuple<at::Tensor, at::Tensor> area_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, int64_t area, double scale) {
  return area_attention_forward_config(q, k, v, area, scale, 0, -1);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(yolo13_attn, m) {
  m.def("cuda_area_attention(Tensor q, Tensor k, Tensor v, int area, float scale) -> (Tensor, Tensor)");
  m.def(
      "cuda_area_attention_config(Tensor q, Tensor k, Tensor v, int area, float scale, int kernel, int exp_mode) -> "
      "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(yolo13_attn, CUDA, m) {
  m.impl("cuda_area_attention", &area_attention_forward);
  m.impl("cuda_area_attention_config", &area_attention_forward_config);
}

}  // namespace yolo13_attn
