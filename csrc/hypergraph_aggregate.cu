// Hypergraph vertex -> hyperedge aggregation, forward (ops/reference.py: hypergraph_aggregate_reference):
//
//   logit[n, m] = scale * <xp[b, n], P[b, m]>   (* mask[b, n, m])
//   lse[b, m]   = logsumexp_n logit[n, m]                       (float32, natural log)
//   he[b, m]    = sum_n exp(logit[n, m] - lse[b, m]) * x[b, n]
//
// Attention with the M <= 16 prototypes as queries, xp as keys and x as values, softmax over the N vertices.
// B * M rows cannot fill a GPU, so N is split across blocks (grid (splits, B), B * splits ~ one wave of resident
// blocks):
//
// 1. aggregate_kernel: a block of 4 warps runs an online softmax over its split's vertices, 32 per tile, the
//    tiles of x and xp double-buffered in shared memory by cp.async (16-byte chunks where the layout allows).
//    Per tile, warp w computes the transposed logits S^T (16 x 8) of vertices 8w..8w+7 on the tensor cores
//    (mma.m16n8k16, A = P, B = xp), scaled to base 2, into shared memory; then every warp reads all 16 x 32
//    logits, updates the (identical) running max / sum, and adds W^T (16 x 32) @ x (32 x D/4) for its quarter
//    of the feature columns into an fp32 register accumulator. x is read either channel-major ((B, D, H, W)
//    feature maps seen as (B, N, D): vertices contiguous, ldmatrix) or token-major (ldmatrix.trans).
//    With one split the block normalises and writes he / lse; otherwise its unnormalised accumulator and
//    running max / sum go to a float32 workspace.
// 2. combine_kernel: block (b, m) merges the splits.
#include <torch/library.h>

#include <algorithm>

#include "hypergraph_common.cuh"

namespace yolo13_attn::hypergraph {
namespace {

constexpr int kTileN = 32;  // vertices per tile (one 8-vertex mma column block per warp)

struct AggregateParams {
  const uint16_t* x;
  const uint16_t* xp;
  const uint16_t* p;
  const uint16_t* mask;  // nullptr: no dropout
  int64_t x_sb, x_sn, x_sd, xp_sb, xp_sn, xp_sd, p_sb, p_sm, p_sd, mask_sb, mask_sn, mask_sm;
  int n, m, d, tokens_per_split, num_splits;
  float scale_log2;  // scale * log2(e): the logits in base 2
  bool x_vec, xp_vec, p_vec;
  uint16_t* he;     // (B, M, D) contiguous
  float* lse;       // (B, M)
  float* part_acc;  // (B, S, M, D) with S > 1 splits
  float* part_max;  // (B, S, M), base-2 running max
  float* part_sum;  // (B, S, M)
};

// Shared-memory layout (16-bit elements, then float logits) for padded width D_PAD and STAGES tile buffers.
template <int D_PAD, bool X_CM, int STAGES>
struct AggregateSmem {
  static constexpr int kStages = STAGES;
  static constexpr int kP = kMaxM * pitch(D_PAD);
  static constexpr int kXp = kTileN * pitch(D_PAD);
  static constexpr int kX = X_CM ? D_PAD * pitch(kTileN) : kTileN * pitch(D_PAD);
  static constexpr int kLogitPitch = kTileN + 4;
  static constexpr size_t kBytes = 2 * (kP + kStages * (kXp + kX)) + 4 * kMaxM * kLogitPitch;
};

template <typename T, int D_PAD, bool X_CM, int STAGES>
__global__ void __launch_bounds__(kThreads) aggregate_kernel(const AggregateParams a) {
  using S = AggregateSmem<D_PAD, X_CM, STAGES>;
  constexpr int kPitch = pitch(D_PAD);
  constexpr int kCols = D_PAD / 4;  // feature columns per warp in the accumulation
  constexpr int kColTiles = kCols / 8;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;

  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint16_t* p_s = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* xp_s = p_s + S::kP;
  uint16_t* x_s = xp_s + S::kStages * S::kXp;
  float* logit_s = reinterpret_cast<float*>(x_s + S::kStages * S::kX);

  const int split = blockIdx.x;
  const int64_t b = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int c = lane % 4;
  const int lo = split * a.tokens_per_split;
  const int hi = min(lo + a.tokens_per_split, a.n);
  const int num_tiles = cdiv(hi - lo, kTileN);
  const uint16_t* xb = a.x + b * a.x_sb;
  const uint16_t* xpb = a.xp + b * a.xp_sb;
  const uint16_t* maskb = a.mask == nullptr ? nullptr : a.mask + b * a.mask_sb;

  auto load = [&](int tile, int stage) {
    const int n0 = lo + tile * kTileN;
    const int valid = min(kTileN, hi - n0);
    load_tile<kTileN, D_PAD, kPitch>(xp_s + stage * S::kXp, xpb + n0 * a.xp_sn, a.xp_sn, a.xp_sd, valid, a.d,
                                     a.xp_vec);
    if constexpr (X_CM) {  // [feature][vertex]
      load_tile<D_PAD, kTileN, pitch(kTileN)>(x_s + stage * S::kX, xb + n0 * a.x_sn, a.x_sd, a.x_sn, a.d, valid,
                                               a.x_vec);
    } else {  // [vertex][feature]
      load_tile<kTileN, D_PAD, kPitch>(x_s + stage * S::kX, xb + n0 * a.x_sn, a.x_sn, a.x_sd, valid, a.d, a.x_vec);
    }
    cp_async_commit();
  };

  load_tile<kMaxM, D_PAD, kPitch>(p_s, a.p + b * a.p_sb, a.p_sm, a.p_sd, a.m, a.d, a.p_vec);
  load(0, 0);

  float acc[kColTiles][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};  // rows g and g + 8, identical in every warp
  float row_sum[2] = {0.f, 0.f};               // this lane's share of the sum; quad-reduced at the end

  for (int tile = 0; tile < num_tiles; ++tile) {
    const int stage = S::kStages == 2 ? tile & 1 : 0;
    if (S::kStages == 2 && tile + 1 < num_tiles) {
      load(tile + 1, stage ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    // S^T (16 hyperedges x 8 vertices 8w..8w+7) = P @ xp_tile^T, base-2 logits into shared memory
    {
      const uint16_t* xps = xp_s + stage * S::kXp;
      float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int k = 0; k < D_PAD; k += 32) {
        uint32_t a0[4], a1[4], bx[4];
        ldmatrix_x4(a0, p_s + (lane % 16) * kPitch + k + (lane / 16) * 8);
        ldmatrix_x4(a1, p_s + (lane % 16) * kPitch + k + 16 + (lane / 16) * 8);
        ldmatrix_x4(bx, xps + (8 * warp + lane % 8) * kPitch + k + (lane / 8) * 8);
        const uint32_t b0[2] = {bx[0], bx[1]};
        const uint32_t b1[2] = {bx[2], bx[3]};
        mma_16816<T>(s, a0, b0);
        mma_16816<T>(s, a1, b1);
      }
      const int n0 = lo + tile * kTileN;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = g + (e / 2) * 8;
        const int col = 8 * warp + 2 * c + (e % 2);
        const int n = n0 + col;
        float v = s[e] * a.scale_log2;
        if (n >= hi) {
          v = -INFINITY;
        } else if (maskb != nullptr && row < a.m) {
          v *= mask_value(maskb, a.mask_sn, a.mask_sm, n, row, kBf16);
        }
        logit_s[row * S::kLogitPitch + col] = v;
      }
    }
    __syncthreads();

    // online softmax over the tile's 32 vertices; acc (16 x D/4) += W^T @ x_tile[:, warp's columns]
    {
      float v[2][2][4];  // [row g / g+8][k-step][vertices 16j + 2c, +1, 16j + 8 + 2c, +1]
      uint32_t w[2][4];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float* row = logit_s + (g + 8 * r) * S::kLogitPitch + 16 * j;
          v[r][j][0] = row[2 * c];
          v[r][j][1] = row[2 * c + 1];
          v[r][j][2] = row[8 + 2 * c];
          v[r][j][3] = row[9 + 2 * c];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            mx = fmaxf(mx, v[r][j][e]);
          }
        }
        const float new_max = fmaxf(row_max[r], quad_max(mx));  // finite: every tile holds a valid vertex
        const float alpha = fast_exp2(row_max[r] - new_max);
        row_max[r] = new_max;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            v[r][j][e] = fast_exp2(v[r][j][e] - new_max);
            sum += v[r][j][e];
          }
        }
        row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
        for (int t = 0; t < kColTiles; ++t) {
          acc[t][2 * r] *= alpha;
          acc[t][2 * r + 1] *= alpha;
        }
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        w[j][0] = pack2<T>(v[0][j][0], v[0][j][1]);
        w[j][1] = pack2<T>(v[1][j][0], v[1][j][1]);
        w[j][2] = pack2<T>(v[0][j][2], v[0][j][3]);
        w[j][3] = pack2<T>(v[1][j][2], v[1][j][3]);
      }
      const uint16_t* xs = x_s + stage * S::kX;
#pragma unroll
      for (int t = 0; t < kColTiles; ++t) {
        const int d0 = warp * kCols + t * 8;
        uint32_t bx[4];
        if constexpr (X_CM) {
          ldmatrix_x4(bx, xs + (d0 + lane % 8) * pitch(kTileN) + (lane / 8) * 8);
        } else {
          ldmatrix_x4_trans(bx, xs + lane * kPitch + d0);
        }
        const uint32_t b0[2] = {bx[0], bx[1]};
        const uint32_t b1[2] = {bx[2], bx[3]};
        mma_16816<T>(acc[t], w[0], b0);
        mma_16816<T>(acc[t], w[1], b1);
      }
    }
    __syncthreads();  // the next load overwrites this tile's stage and the logits
    if (S::kStages == 1 && tile + 1 < num_tiles) {
      load(tile + 1, 0);
    }
  }

  const bool single = a.num_splits == 1;
  const int64_t part = b * a.num_splits + split;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    const float sum = quad_sum(row_sum[r]);
    if (row >= a.m) {
      continue;
    }
    const float inv = 1.f / sum;
#pragma unroll
    for (int t = 0; t < kColTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = warp * kCols + t * 8 + 2 * c + e;
        if (col < a.d) {
          if (single) {
            const T h = from_float<T>(acc[t][2 * r + e] * inv);
            a.he[(b * a.m + row) * a.d + col] = *reinterpret_cast<const uint16_t*>(&h);
          } else {
            a.part_acc[(part * a.m + row) * a.d + col] = acc[t][2 * r + e];
          }
        }
      }
    }
    if (warp == 0 && c == 0) {
      if (single) {
        a.lse[b * a.m + row] = (row_max[r] + log2f(sum)) * kLn2;
      } else {
        a.part_max[part * a.m + row] = row_max[r];
        a.part_sum[part * a.m + row] = sum;
      }
    }
  }
}

constexpr int kCombineWarps = 8;

// Block (b * M + m, 32-column chunk): merge the splits' partials, rescaled to the global running max. Every warp
// reduces the (few, cached) running maxima and sums itself; the accumulators are read with the splits spread
// over the warps and the columns over the lanes (128-byte rows), then summed across warps in shared memory.
template <typename T>
__global__ void __launch_bounds__(kCombineWarps * 32) combine_kernel(const AggregateParams a) {
  __shared__ float partial[kCombineWarps][32];
  const int64_t bm = blockIdx.x;
  const int64_t b = bm / a.m;
  const int m = static_cast<int>(bm % a.m);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int col = blockIdx.y * 32 + lane;
  const int64_t first = b * a.num_splits * a.m + m;  // (b, split 0, m) in the (B, S, M) partials
  float total_max = -INFINITY;
  for (int s = lane; s < a.num_splits; s += 32) {
    total_max = fmaxf(total_max, a.part_max[first + s * a.m]);
  }
  total_max = warp_max(total_max);
  float total_sum = 0.f;
  for (int s = lane; s < a.num_splits; s += 32) {
    total_sum += exp2f(a.part_max[first + s * a.m] - total_max) * a.part_sum[first + s * a.m];
  }
  total_sum = warp_sum(total_sum);
  float acc = 0.f;
  if (col < a.d) {
#pragma unroll 4
    for (int s = warp; s < a.num_splits; s += kCombineWarps) {
      acc += exp2f(a.part_max[first + s * a.m] - total_max) * a.part_acc[(first + s * a.m) * a.d + col];
    }
  }
  partial[warp][lane] = acc;
  __syncthreads();
  if (warp == 0) {
    float he = 0.f;
#pragma unroll
    for (int w = 0; w < kCombineWarps; ++w) {
      he += partial[w][lane];
    }
    if (col < a.d) {
      const T h = from_float<T>(he / total_sum);
      a.he[bm * a.d + col] = *reinterpret_cast<const uint16_t*>(&h);
    }
    if (blockIdx.y == 0 && lane == 0) {
      a.lse[bm] = (total_max + log2f(total_sum)) * kLn2;
    }
  }
}

constexpr const char* kOp = "cuda_hypergraph_aggregate";

constexpr int kMaxSplits = 4096;

// Vertices per split (whole tiles). Each split adds an M x D float32 partial to the workspace (written and read
// again: M / tokens_per_split of the input bytes each way), so splits are as long as possible while the grid
// still fills the GPU: up to one wave of resident blocks, at least 4 tiles per split where that keeps one block
// per SM. `forced` > 0 fixes it instead (rounded up to a tile; tests of the split / combine paths).
int tokens_per_split(int64_t batch, int64_t n, int64_t forced, int blocks_per_sm) {
  const int tiles = cdiv(static_cast<int>(n), kTileN);
  const int min_tiles = cdiv(tiles, kMaxSplits);
  if (forced > 0) {
    const int64_t forced_tiles = (std::min<int64_t>(forced, n) + kTileN - 1) / kTileN;
    return std::max(static_cast<int>(forced_tiles), min_tiles) * kTileN;
  }
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount);
  const int64_t wave = std::max<int64_t>(1, sms * blocks_per_sm / batch);
  const int64_t fill = (sms + batch - 1) / batch;
  const int64_t want_splits = std::clamp<int64_t>(std::min<int64_t>(wave, std::max<int64_t>(fill, tiles / 4)), 1, tiles);
  return std::max(cdiv(tiles, static_cast<int>(want_splits)), min_tiles) * kTileN;
}

void aggregate_out(const at::Tensor& x, const at::Tensor& xp, const at::Tensor& prototypes, double scale,
                   const c10::optional<at::Tensor>& dropout_mask, at::Tensor& he, at::Tensor& lse,
                   int64_t forced_tokens_per_split, int64_t stages) {
  check_input(x, kOp, "x", x);
  check_input(xp, kOp, "xp", x);
  check_input(prototypes, kOp, "prototypes", x);
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2), m = prototypes.size(1);
  YOLO13_CHECK(xp.sizes() == x.sizes(), kOp, ": xp must be shaped like x ", x.sizes(), ", got ", xp.sizes());
  YOLO13_CHECK(prototypes.size(0) == batch && prototypes.size(2) == d, kOp, ": prototypes must be (B, M, D) = (",
              batch, ", M, ", d, "), got ", prototypes.sizes());
  check_dtype_and_sizes(x, kOp, m, d);
  check_mask(dropout_mask, kOp, x, batch, n, m);
  check_scale(scale, kOp);
  YOLO13_CHECK(he.device() == x.device() && he.scalar_type() == x.scalar_type() && he.is_contiguous() &&
                  he.sizes() == at::IntArrayRef({batch, m, d}),
              kOp, ": he must be a contiguous (B, M, D) tensor of x's dtype and device");
  YOLO13_CHECK(lse.device() == x.device() && lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                  lse.sizes() == at::IntArrayRef({batch, m}),
              kOp, ": lse must be a contiguous (B, M) float32 tensor on x's device");
  YOLO13_CHECK(n < (int64_t{1} << 30) && batch < 65536, kOp, ": N < 2^30 and B < 65536, got N = ", n, ", B = ",
              batch);
  if (batch * m * d == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  if (n == 0) {  // a softmax over no vertices: lse = -inf, he = 0 (a sum of nothing), as the reference
    he.zero_();
    lse.fill_(-INFINITY);
    return;
  }
  const int width = padded_width(d);
  stages = stages == 0 ? (width <= 384 ? 2 : 1) : stages;
  YOLO13_CHECK((stages == 2 && width <= 384) || (stages == 1 && width >= 256), kOp, ": stages=", stages,
              " is not built for D = ", d, " (2 stages for D <= 384, 1 stage for D > 128)");
  const bool x_cm = x.stride(1) == 1 && x.stride(2) != 1;
  AggregateParams a{};
  a.x = bits(x);
  a.xp = bits(xp);
  a.p = bits(prototypes);
  a.mask = bits_or_null(dropout_mask);
  a.x_sb = x.stride(0), a.x_sn = x.stride(1), a.x_sd = x.stride(2);
  a.xp_sb = xp.stride(0), a.xp_sn = xp.stride(1), a.xp_sd = xp.stride(2);
  a.p_sb = prototypes.stride(0), a.p_sm = prototypes.stride(1), a.p_sd = prototypes.stride(2);
  if (dropout_mask.has_value()) {
    a.mask_sb = dropout_mask->stride(0), a.mask_sn = dropout_mask->stride(1), a.mask_sm = dropout_mask->stride(2);
  }
  a.n = static_cast<int>(n), a.m = static_cast<int>(m), a.d = static_cast<int>(d);
  a.scale_log2 = static_cast<float>(scale) * kLog2e;
  a.x_vec = x_cm ? vectorizable(a.x, a.x_sd, a.x_sn, a.x_sb) : vectorizable(a.x, a.x_sn, a.x_sd, a.x_sb);
  a.xp_vec = vectorizable(a.xp, a.xp_sn, a.xp_sd, a.xp_sb);
  a.p_vec = vectorizable(a.p, a.p_sm, a.p_sd, a.p_sb);
  a.he = reinterpret_cast<uint16_t*>(he.data_ptr());
  a.lse = lse.data_ptr<float>();
  at::Tensor workspace;  // acc (B, S, M, D), then max and sum (B, S, M) each; kept alive until the launches
  auto plan = [&](int blocks_per_sm) {
    a.tokens_per_split = tokens_per_split(batch, n, forced_tokens_per_split, blocks_per_sm);
    a.num_splits = cdiv(static_cast<int>(n), a.tokens_per_split);
    if (a.num_splits > 1) {
      const int64_t s = a.num_splits;
      workspace = at::empty({batch * s * m * (d + 2)}, x.options().dtype(at::kFloat));
      a.part_acc = workspace.data_ptr<float>();
      a.part_max = a.part_acc + batch * s * m * d;
      a.part_sum = a.part_max + batch * s * m;
    }
  };
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_half(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_width(d, [&](auto width) {
      constexpr int kWidth = decltype(width)::value;
      auto launch = [&](auto channel_major, auto stage_count) {
        constexpr bool kCm = decltype(channel_major)::value;
        constexpr int kStages = decltype(stage_count)::value;
        const size_t smem = AggregateSmem<kWidth, kCm, kStages>::kBytes;
        auto kernel = aggregate_kernel<T, kWidth, kCm, kStages>;
        set_smem(kernel, smem, kOp);
        int blocks_per_sm = 1;
        C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kThreads, smem));
        plan(std::max(blocks_per_sm, 1));
        kernel<<<dim3(a.num_splits, batch), kThreads, smem, stream>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      auto staged = [&](auto channel_major) {
        if constexpr (kWidth <= 384) {
          if (stages == 2) {
            launch(channel_major, std::integral_constant<int, 2>{});
          }
        }
        if constexpr (kWidth >= 256) {
          if (stages == 1) {
            launch(channel_major, std::integral_constant<int, 1>{});
          }
        }
      };
      if (x_cm) {
        staged(std::true_type{});
      } else {
        staged(std::false_type{});
      }
    });
    if (a.num_splits > 1) {
      combine_kernel<T><<<dim3(batch * m, cdiv(a.d, 32)), kCombineWarps * 32, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

std::tuple<at::Tensor, at::Tensor> aggregate(const at::Tensor& x, const at::Tensor& xp, const at::Tensor& prototypes,
                                             double scale, const c10::optional<at::Tensor>& dropout_mask) {
  YOLO13_CHECK(x.dim() == 3 && prototypes.dim() == 3, kOp, ": x (B, N, D) and prototypes (B, M, D) must be 3-D, got ",
              x.sizes(), " and ", prototypes.sizes());
  at::Tensor he = at::empty({x.size(0), prototypes.size(1), x.size(2)}, x.options());
  at::Tensor lse = at::empty({x.size(0), prototypes.size(1)}, x.options().dtype(at::kFloat));
  aggregate_out(x, xp, prototypes, scale, dropout_mask, he, lse, 0, 0);
  return {he, lse};
}

}  // namespace
}  // namespace yolo13_attn::hypergraph

TORCH_LIBRARY_FRAGMENT(yolo13_attn, m) {
  m.def(
      "cuda_hypergraph_aggregate(Tensor x, Tensor xp, Tensor prototypes, float scale, Tensor? dropout_mask) "
      "-> (Tensor, Tensor)");
  m.def(
      "cuda_hypergraph_aggregate_out(Tensor x, Tensor xp, Tensor prototypes, float scale, Tensor? dropout_mask, "
      "Tensor(a!) he, Tensor(b!) lse, int tokens_per_split=0, int stages=0) -> ()");
}

TORCH_LIBRARY_IMPL(yolo13_attn, CUDA, m) {
  m.impl("cuda_hypergraph_aggregate", &yolo13_attn::hypergraph::aggregate);
  m.impl("cuda_hypergraph_aggregate_out", &yolo13_attn::hypergraph::aggregate_out);
}
