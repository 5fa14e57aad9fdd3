// Area attention tiles: how the kernels of area_attention_fwd.cu / area_attention_bwd.cu read the strided
// (B, heads, head_dim, N) conv-output views into shared memory, pull tensor-core fragments out of it, and
// write contiguous (B, heads, head_dim, N) results.
//
// Shared-memory tiles hold `ROWS` tokens x D channels in one of two layouts, chosen per launch from q's
// strides (the template flag TD):
//   DT (TD = false): s[d][token], row pitch ROWS + 8 - the NCHW layout (token stride 1);
//   TD (TD = true):  s[token][d], row pitch D + 8    - the channels-last layout (head_dim stride 1).
// The 8-element pad keeps ldmatrix's eight 16-byte rows on distinct banks. A tensor whose strides and
// alignment allow it is copied with 16-byte cp.async (8 tokens or 8 channels per copy); any other view
// (odd chunk lengths, odd strides) is read element by element into the same layout.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "checks.cuh"
#include "mma_sm80.cuh"

namespace yolo13_attn {

// The shapes of one launch: L = N / area tokens per chunk (area strips never mix).
struct AreaShape {
  int B, H, N, L, area;
};

// The (batch, chunk, head) and the block of `rows` tokens inside that chunk that this thread block owns: a
// 1-D grid with the blocks of one (batch, chunk, head) next to each other, so their shared K/V meet in L2.
struct ChunkBlock {
  int b, h, blk;
  int64_t chunk;  // the chunk's first token
};

__device__ __forceinline__ ChunkBlock chunk_block(const AreaShape& sh, int rows, unsigned block = blockIdx.x) {
  const int per_chunk = (sh.L + rows - 1) / rows;
  const int bah = block / per_chunk;
  const int a = (bah / sh.H) % sh.area;
  return ChunkBlock{bah / (sh.H * sh.area), bah % sh.H, static_cast<int>(block % per_chunk), int64_t(a) * sh.L};
}

inline unsigned grid_size(const AreaShape& sh, int rows) {
  const int64_t blocks = int64_t((sh.L + rows - 1) / rows) * sh.area * sh.H * sh.B;
  YOLO13_CHECK(blocks < (int64_t(1) << 31), "yolo13_attn cuda area attention: too many blocks (", blocks, ")");
  return static_cast<unsigned>(blocks);
}

// One (B, heads, head_dim, N) operand: data pointer, strides in elements, and whether the 16-byte
// copies are valid for the tile layout of the launch.
template <typename T>
struct Bhdn {
  const T* ptr;
  int64_t sb, sh, sd, sn;
  bool vec;

  // The first token of `chunk` in batch b, head h.
  __device__ __forceinline__ const T* at(const ChunkBlock& cb) const {
    return ptr + cb.b * sb + cb.h * sh + cb.chunk * sn;
  }
};

template <int ROWS, int D, bool TD>
struct TileLayout {
  static constexpr int PITCH = TD ? D + 8 : ROWS + 8;
  static constexpr int ELEMS = TD ? ROWS * PITCH : D * PITCH;
};

// Element (token, d) of a tile with row pitch `pitch` (the loaders below take the pitch at run time, so that
// one code path serves fixed-size tiles and whole chunks kept in shared memory).
template <bool TD>
__device__ __forceinline__ int tile_at(int pitch, int token, int d) {
  return TD ? token * pitch + d : d * pitch + token;
}

// Copy tokens [t0, t0 + rows) of one chunk (base: the chunk's first token of one (b, h)) into s; tokens at or
// past `valid` (relative to t0) are zero. Threads tid = 0 .. nt-1 take part (a block, or one warp).
template <typename T, int D, bool TD>
__device__ __forceinline__ void load_tile(T* s, int pitch, int rows, const T* base, int64_t sd, int64_t sn,
                                          bool vec, int t0, int valid, int tid, int nt) {
  if (vec) {
    if constexpr (TD) {  // head_dim stride 1: 8 channels of one token per copy
      constexpr int PER_ROW = D / 8;
      for (int i = tid; i < rows * PER_ROW; i += nt) {
        const int t = i / PER_ROW, d = (i % PER_ROW) * 8;
        const bool ok = t < valid;
        cp_async_16(s + tile_at<TD>(pitch, t, d), ok ? base + (t0 + t) * sn + d : base, ok);
      }
    } else {  // token stride 1: 8 tokens of one channel per copy (valid is a multiple of 8)
      const int per_row = rows / 8;
      for (int i = tid; i < D * per_row; i += nt) {
        const int d = i / per_row, t = (i % per_row) * 8;
        const bool ok = t < valid;
        cp_async_16(s + tile_at<TD>(pitch, t, d), ok ? base + d * sd + (t0 + t) : base, ok);
      }
    }
  } else {
    const T zero = from_float<T>(0.f);
    for (int i = tid; i < rows * D; i += nt) {
      // consecutive threads take consecutive tokens (DT) or channels (TD): the smaller stride, usually
      const int t = TD ? i / D : i % rows, d = TD ? i % D : i / rows;
      s[tile_at<TD>(pitch, t, d)] = t < valid ? base[d * sd + (t0 + t) * sn] : zero;
    }
  }
}

// load_tile for a tile of ROWS tokens whose operand takes 16-byte copies (Bhdn::vec), with the shape known at
// compile time: every thread issues a fixed, unrolled set of copies (no run-time division, few live registers).
template <typename T, int ROWS, int D, bool TD, int NT>
__device__ __forceinline__ void load_tile_vec(T* s, const T* base, int64_t sd, int64_t sn, int t0, int valid,
                                              int tid) {
  constexpr int PITCH = TileLayout<ROWS, D, TD>::PITCH;
  constexpr int PER_ROW = TD ? D / 8 : ROWS / 8;  // 16-byte copies per shared-memory row
  constexpr int COPIES = (TD ? ROWS : D) * PER_ROW;
#pragma unroll
  for (int c = 0; c < (COPIES + NT - 1) / NT; ++c) {
    const int i = tid + c * NT;
    if (COPIES % NT == 0 || i < COPIES) {
      const int t = TD ? i / PER_ROW : (i % PER_ROW) * 8, d = TD ? (i % PER_ROW) * 8 : i / PER_ROW;
      const bool ok = t < valid;
      cp_async_16(s + tile_at<TD>(PITCH, t, d), ok ? base + d * sd + (t0 + t) * sn : base, ok);
    }
  }
}

// A fragments (16 tokens as rows, k = channels) of rows [r0, r0 + 16) for every k16 step of D.
template <typename T, int D, bool TD>
__device__ __forceinline__ void load_a_rows(uint32_t (&a)[D / 16][4], const T* s, int pitch, int r0) {
  const int lane = threadIdx.x % 32, j = lane / 8, r = lane % 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    if constexpr (TD) {
      ldmatrix4<false>(a[kk], s + tile_at<TD>(pitch, r0 + lane % 16, kk * 16 + (lane / 16) * 8));
    } else {
      ldmatrix4<true>(a[kk], s + tile_at<TD>(pitch, r0 + (j % 2) * 8, kk * 16 + (j / 2) * 8 + r));
    }
  }
}

// B fragments (n = 8 tokens [n0, n0 + 8), k = channels) for every k16 step of D.
template <typename T, int D, bool TD>
__device__ __forceinline__ void load_b_tokens_n(uint32_t (&b)[D / 16][2], const T* s, int pitch, int n0) {
  const int lane = threadIdx.x % 32, j = lane / 8, r = lane % 8;
#pragma unroll
  for (int q = 0; q < D / 32; ++q) {
    uint32_t x[4];
    if constexpr (TD) {
      ldmatrix4<false>(x, s + tile_at<TD>(pitch, n0 + r, q * 32 + j * 8));
    } else {
      ldmatrix4<true>(x, s + tile_at<TD>(pitch, n0, q * 32 + j * 8 + r));
    }
    b[2 * q][0] = x[0];
    b[2 * q][1] = x[1];
    b[2 * q + 1][0] = x[2];
    b[2 * q + 1][1] = x[3];
  }
}

// B fragments (k = 16 tokens [k0, k0 + 16), n = channels) for every n8 tile of D.
template <typename T, int D, bool TD>
__device__ __forceinline__ void load_b_tokens_k(uint32_t (&b)[D / 8][2], const T* s, int pitch, int k0) {
  const int lane = threadIdx.x % 32, j = lane / 8, r = lane % 8;
#pragma unroll
  for (int p = 0; p < D / 16; ++p) {
    uint32_t x[4];
    if constexpr (TD) {
      ldmatrix4<true>(x, s + tile_at<TD>(pitch, k0 + (j % 2) * 8 + r, p * 16 + (j / 2) * 8));
    } else {
      ldmatrix4<false>(x, s + tile_at<TD>(pitch, k0 + (j % 2) * 8, p * 16 + (j / 2) * 8 + r));
    }
    b[2 * p][0] = x[0];
    b[2 * p][1] = x[1];
    b[2 * p + 1][0] = x[2];
    b[2 * p + 1][1] = x[3];
  }
}

// Write a warp's C fragments (16 rows [r0, r0 + 16) x D channels, times row factors f0 for row g and f1
// for row g + 8) into a DT staging tile s[d][token] of row pitch `pitch`.
template <typename T, int D>
__device__ __forceinline__ void stage_rows(T* s, int pitch, const float (&acc)[D / 8][4], int r0, float f0,
                                           float f1) {
  const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int d = dt * 8 + 2 * c + e;
      s[tile_at<false>(pitch, r0 + g, d)] = from_float<T>(acc[dt][e] * f0);
      s[tile_at<false>(pitch, r0 + g + 8, d)] = from_float<T>(acc[dt][2 + e] * f1);
    }
  }
}

// Store `valid` of `rows` tokens of a DT staging tile to a contiguous (D, N) slice at out (its first token
// first): 16-byte stores when `vec` (token offset and N multiples of 8), else one element at a time.
template <typename T, int D>
__device__ __forceinline__ void store_tile(T* out, const T* s, int pitch, int rows, int64_t n_total, int valid,
                                           bool vec, int tid, int nt) {
  if (vec) {
    const int per_row = rows / 8;
    for (int i = tid; i < D * per_row; i += nt) {
      const int d = i / per_row, t = (i % per_row) * 8;
      if (t < valid) {
        *reinterpret_cast<uint4*>(out + d * n_total + t) =
            *reinterpret_cast<const uint4*>(s + tile_at<false>(pitch, t, d));
      }
    }
  } else {
    for (int i = tid; i < D * rows; i += nt) {
      const int d = i / rows, t = i % rows;
      if (t < valid) out[d * n_total + t] = s[tile_at<false>(pitch, t, d)];
    }
  }
}

// ---- host side --------------------------------------------------------------------------------------

// Check one (B, heads, head_dim, N) operand against q (shape, dtype, device).
inline void check_operand(const at::Tensor& t, const at::Tensor& q, const char* name) {
  YOLO13_CHECK(t.dim() == 4, "yolo13_attn cuda area attention: ", name,
              " must be 4-D (B, heads, head_dim, N), got ", t.dim(), "-D");
  YOLO13_CHECK(t.sizes() == q.sizes(), "yolo13_attn cuda area attention: ", name, " has shape ", t.sizes(),
              ", q has ", q.sizes());
  YOLO13_CHECK(t.scalar_type() == q.scalar_type(), "yolo13_attn cuda area attention: ", name, " is ",
              t.scalar_type(), ", q is ", q.scalar_type());
  YOLO13_CHECK(t.is_cuda() && t.device() == q.device(), "yolo13_attn cuda area attention: ", name,
              " must be a CUDA tensor on q's device (", q.device(), "), got ", t.device());
}

// Validate q (and the chunking) and return the launch shape.
inline AreaShape check_area(const at::Tensor& q, int64_t area) {
  YOLO13_CHECK(q.dim() == 4, "yolo13_attn cuda area attention: q must be 4-D (B, heads, head_dim, N), got ",
              q.dim(), "-D");
  YOLO13_CHECK(q.is_cuda(), "yolo13_attn cuda area attention: tensors must be on a CUDA device, got ", q.device());
  YOLO13_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
              "yolo13_attn cuda area attention: dtype must be float16 or bfloat16, got ", q.scalar_type());
  YOLO13_CHECK(q.size(2) == 32, "yolo13_attn cuda area attention: head_dim must be 32 (the kernels are built for "
              "YOLOv13's head_dim 32), got ", q.size(2));
  const int64_t n = q.size(3);
  YOLO13_CHECK(area >= 1 && n % area == 0, "yolo13_attn cuda area attention: N=", n,
              " is not divisible by area=", area);
  YOLO13_CHECK(n < (int64_t(1) << 31) && q.size(0) * q.size(1) < (int64_t(1) << 31),
              "yolo13_attn cuda area attention: tensor too large for 32-bit token indices");
  return AreaShape{static_cast<int>(q.size(0)), static_cast<int>(q.size(1)), static_cast<int>(n),
                   static_cast<int>(n / area), static_cast<int>(area)};
}

inline bool multiple_of_8(const at::Tensor& t, int dim) { return t.size(dim) == 1 || t.stride(dim) % 8 == 0; }

// The operand's descriptor for a launch whose tiles use layout TD (see the top of this file).
template <typename T>
Bhdn<T> describe(const at::Tensor& t, bool td, const AreaShape& shape) {
  const bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && multiple_of_8(t, 0) &&
                       multiple_of_8(t, 1);
  const bool vec = td ? aligned && t.stride(2) == 1 && multiple_of_8(t, 3)
                      : aligned && t.stride(3) == 1 && multiple_of_8(t, 2) && shape.L % 8 == 0;
  return Bhdn<T>{reinterpret_cast<const T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3), vec};
}

// Channels-last views (head_dim stride 1, token stride > 1) get TD tiles; everything else DT tiles.
inline bool use_td_tiles(const at::Tensor& q) { return q.stride(2) == 1 && q.stride(3) != 1; }

}  // namespace yolo13_attn
