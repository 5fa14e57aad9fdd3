// Shared pieces of the hypergraph kernels (hypergraph_aggregate.cu, hypergraph_scatter.cu): the strided tile
// loader into shared memory, the host-side input checks and the dispatch over dtype and padded feature width.
//
// Shapes (ops/reference.py): x, xp (B, N, D) any strides; prototypes P (B, M, D); mask (B, N, M) or none;
// M <= 16 hyperedges (padded to one 16-row mma tile), D <= 512 (padded to D_PAD, a multiple of 32).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "checks.cuh"
#include "mma_sm80.cuh"

namespace yolo13_attn::hypergraph {

constexpr int kMaxM = 16;     // hyperedges per image: one m16 tile
constexpr int kMaxD = 512;    // feature width: the largest padded width instantiated
constexpr int kThreads = 128; // 4 warps per block
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Row pitch (elements) of a shared tile of `cols` 16-bit columns: +8 elements (16 bytes) so that the 8 rows one
// ldmatrix reads fall into 8 different 16-byte bank groups.
__host__ __device__ constexpr int pitch(int cols) { return cols + 8; }

// Copies the (ROWS x COLS) window [0, ROWS) x [0, COLS) of a strided 2-D view of 16-bit values into shared
// memory (row pitch PITCH), zero-filling rows >= rows_valid and columns >= cols_valid.
// vec: the columns are contiguous in memory and every row start is 16-byte aligned, so whole 8-column chunks go
// by 16-byte cp.async (the caller commits and waits); otherwise, and for a chunk cut by cols_valid, element
// loads. Called by all kThreads threads of the block.
template <int ROWS, int COLS, int PITCH>
__device__ __forceinline__ void load_tile(uint16_t* smem, const uint16_t* g, int64_t stride_row, int64_t stride_col,
                                          int rows_valid, int cols_valid, bool vec) {
  static_assert(COLS % 8 == 0, "tiles are whole 16-byte chunks wide");
  constexpr int kChunks = COLS / 8;
  for (int i = threadIdx.x; i < ROWS * kChunks; i += kThreads) {
    const int r = i / kChunks;
    const int c = (i % kChunks) * 8;
    uint16_t* dst = smem + r * PITCH + c;
    const bool row_ok = r < rows_valid;
    if (vec && (!row_ok || c >= cols_valid || c + 8 <= cols_valid)) {
      const bool ok = row_ok && c < cols_valid;
      cp_async_16(dst, ok ? g + r * stride_row + c : g, ok);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        dst[e] = (row_ok && c + e < cols_valid) ? g[r * stride_row + (c + e) * stride_col] : uint16_t(0);
      }
    }
  }
}

// Whether a (rows x cols) window with strides (stride_row, 1) starting at `p` can be read in 16-byte chunks.
inline bool vectorizable(const void* p, int64_t stride_row, int64_t stride_col, int64_t stride_batch) {
  return stride_col == 1 && stride_row % 8 == 0 && stride_batch % 8 == 0 &&
         reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// The multiplicative logit mask value for (token n, hyperedge m), as float; 1 without a mask.
__device__ __forceinline__ float mask_value(const uint16_t* mask, int64_t stride_n, int64_t stride_m, int n, int m,
                                            bool is_bf16) {
  const uint16_t bits = mask[n * stride_n + m * stride_m];
  if (is_bf16) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
  }
  return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  }
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, o);
  }
  return x;
}

// ---- host side ------------------------------------------------------------------------------------------------

inline void check_input(const at::Tensor& t, const char* op, const char* name, const at::Tensor& like) {
  YOLO13_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got a tensor on ", t.device());
  YOLO13_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but the other inputs are on ",
              like.device());
  YOLO13_CHECK(t.dim() == 3, op, ": ", name, " must be 3-D, got shape ", t.sizes());
  YOLO13_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but the features are ", like.scalar_type(), " (all inputs share one dtype)");
}

inline void check_dtype_and_sizes(const at::Tensor& t, const char* op, int64_t m, int64_t d) {
  YOLO13_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op,
              ": float16 and bfloat16 only, got ", t.scalar_type());
  static_assert(kMaxM == 16 && kMaxD == 512, "the messages below name the limits");
  YOLO13_CHECK(m <= 16, op, ": at most 16 hyperedges (M), got ", m);
  YOLO13_CHECK(d <= 512, op, ": feature width D at most 512, got ", d);
}

inline void check_scale(double scale, const char* op) {
  YOLO13_CHECK(std::isfinite(scale) && scale > 0, op, ": scale must be finite and > 0, got ", scale);
}

inline void check_mask(const c10::optional<at::Tensor>& mask, const char* op, const at::Tensor& like, int64_t b,
                       int64_t n, int64_t m) {
  if (!mask.has_value()) {
    return;
  }
  check_input(*mask, op, "dropout_mask", like);
  YOLO13_CHECK(mask->size(0) == b && mask->size(1) == n && mask->size(2) == m, op, ": dropout_mask must be (B, N, M) = (",
              b, ", ", n, ", ", m, "), got ", mask->sizes());
}

// The smallest instantiated padded width >= d (d <= kMaxD).
inline int padded_width(int64_t d) { return d <= 64 ? 64 : d <= 128 ? 128 : d <= 256 ? 256 : d <= 384 ? 384 : 512; }

// Calls f(std::integral_constant<int, D_PAD>{}) with D_PAD = padded_width(d).
template <typename F>
void dispatch_width(int64_t d, F&& f) {
  switch (padded_width(d)) {
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    case 256:
      return f(std::integral_constant<int, 256>{});
    case 384:
      return f(std::integral_constant<int, 384>{});
    default:
      return f(std::integral_constant<int, 512>{});
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T = __half or __nv_bfloat16 (the dtype was checked before).
template <typename F>
void dispatch_half(at::ScalarType dtype, F&& f) {
  if (dtype == at::kHalf) {
    f(TypeTag<__half>{});
  } else {
    f(TypeTag<__nv_bfloat16>{});
  }
}

// The 16-bit elements of a half/bfloat16 tensor as raw bits (the kernels convert where they compute).
inline const uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); }
inline const uint16_t* bits_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? bits(*t) : nullptr;
}

// An attribute of the current device (cudaDeviceGetAttribute: no synchronisation; ATen's device-properties
// header is avoided because it pulls in the cuBLAS/cuSPARSE headers, which a bare CUDA toolkit may lack).
inline int device_attribute(cudaDeviceAttr attribute) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, c10::cuda::current_device()));
  return value;
}

// Dynamic shared memory above the 48 KB default needs an explicit opt-in per kernel (and must fit the device).
template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes, const char* op) {
  const size_t limit = static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  YOLO13_CHECK(bytes <= limit, op, ": needs ", bytes, " bytes of shared memory per block for this feature width, the ",
              "device allows ", limit);
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace yolo13_attn::hypergraph
