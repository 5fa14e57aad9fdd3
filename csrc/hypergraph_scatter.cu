// Hypergraph hyperedge -> vertex scatter, forward (ops/reference.py: hypergraph_scatter_reference):
//
//   xn[b, n] = sum_m exp(logit[n, m] - lse[b, m]) * he[b, m],   logit as in the aggregation
//
// with the aggregation's weights (no renormalisation over the M hyperedges); the weights are recomputed, never
// stored. Fully parallel: block (tile, b) takes 64 vertices of image b, 16 per warp. A warp computes its logits
// S (16 vertices x 16 hyperedges) = xp_rows @ P^T on the tensor cores (mma.m16n8k16), exponentiates against
// lse (padded hyperedges get lse = +inf, weight 0), keeps the weights as the A operand of W @ he (16 x D),
// rounds the output into its own xp rows of shared memory (no longer needed) and stores them as whole rows.
// xp, P and he are read through their strides (16-byte cp.async chunks where the layout allows); xn is written
// contiguous (B, N, D).
#include <torch/library.h>

#include "hypergraph_common.cuh"

namespace yolo13_attn::hypergraph {
namespace {

constexpr int kTileN = 64;  // vertices per block, 16 per warp

struct ScatterParams {
  const uint16_t* xp;
  const uint16_t* p;
  const float* lse;  // (B, M) contiguous
  const uint16_t* he;
  const uint16_t* mask;  // nullptr: no dropout
  int64_t xp_sb, xp_sn, xp_sd, p_sb, p_sm, p_sd, he_sb, he_sm, he_sd, mask_sb, mask_sn, mask_sm;
  int n, m, d;
  float scale_log2;
  bool xp_vec, p_vec, he_vec;
  uint16_t* out;  // (B, N, D) contiguous
};

template <int D_PAD>
struct ScatterSmem {
  static constexpr int kRows = 2 * kMaxM + kTileN;  // P, he, xp (then the output) rows
  static constexpr size_t kBytes = 2 * kRows * pitch(D_PAD);
};

template <typename T, int D_PAD>
__global__ void __launch_bounds__(kThreads) scatter_kernel(const ScatterParams a) {
  constexpr int kPitch = pitch(D_PAD);
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint16_t* p_s = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* he_s = p_s + kMaxM * kPitch;
  uint16_t* xp_s = he_s + kMaxM * kPitch;

  const int64_t b = blockIdx.y;
  const int n0 = blockIdx.x * kTileN;
  const int valid = min(kTileN, a.n - n0);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int c = lane % 4;

  load_tile<kMaxM, D_PAD, kPitch>(p_s, a.p + b * a.p_sb, a.p_sm, a.p_sd, a.m, a.d, a.p_vec);
  load_tile<kMaxM, D_PAD, kPitch>(he_s, a.he + b * a.he_sb, a.he_sm, a.he_sd, a.m, a.d, a.he_vec);
  load_tile<kTileN, D_PAD, kPitch>(xp_s, a.xp + b * a.xp_sb + n0 * a.xp_sn, a.xp_sn, a.xp_sd, valid, a.d, a.xp_vec);
  cp_async_commit();

  // base-2 lse of hyperedges 8j + 2c + e (the columns this lane holds); +inf on padding -> weight 0
  float lse2[2][2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int m = 8 * j + 2 * c + e;
      lse2[j][e] = m < a.m ? a.lse[b * a.m + m] * kLog2e : INFINITY;
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // S (vertices 16w.. x hyperedges) = xp_rows @ P^T: s[j] covers hyperedges 8j..8j+7
  uint16_t* rows = xp_s + 16 * warp * kPitch;
  float s[2][4] = {};
#pragma unroll
  for (int k = 0; k < D_PAD; k += 16) {
    uint32_t ax[4], bp[4];
    ldmatrix_x4(ax, rows + (lane % 16) * kPitch + k + (lane / 16) * 8);
    ldmatrix_x4(bp, p_s + ((lane % 8) + 8 * (lane / 16)) * kPitch + k + ((lane / 8) % 2) * 8);
    const uint32_t b0[2] = {bp[0], bp[1]};
    const uint32_t b1[2] = {bp[2], bp[3]};
    mma_16816<T>(s[0], ax, b0);
    mma_16816<T>(s[1], ax, b1);
  }
  const uint16_t* maskb = a.mask == nullptr ? nullptr : a.mask + b * a.mask_sb;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int n = n0 + 16 * warp + g + (e / 2) * 8;
      const int m = 8 * j + 2 * c + (e % 2);
      float v = s[j][e] * a.scale_log2;
      if (maskb != nullptr && n < a.n && m < a.m) {
        v *= mask_value(maskb, a.mask_sn, a.mask_sm, n, m, kBf16);
      }
      s[j][e] = fast_exp2(v - lse2[j][e % 2]);
    }
  }
  uint32_t w[4];
  c_to_a<T>(w, s[0], s[1]);
  __syncwarp();  // every lane is done reading its xp rows: they now take the output

  // xn rows (16 x D) = W @ he, 16 columns per step, rounded into the warp's rows
#pragma unroll 4
  for (int d0 = 0; d0 < D_PAD; d0 += 16) {
    uint32_t bh[4];
    ldmatrix_x4_trans(bh, he_s + (lane % 16) * kPitch + d0 + (lane / 16) * 8);
    const uint32_t b0[2] = {bh[0], bh[1]};
    const uint32_t b1[2] = {bh[2], bh[3]};
    float o[2][4] = {};
    mma_16816<T>(o[0], w, b0);
    mma_16816<T>(o[1], w, b1);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int col = d0 + 8 * j + 2 * c;
      *reinterpret_cast<uint32_t*>(rows + g * kPitch + col) = pack2<T>(o[j][0], o[j][1]);
      *reinterpret_cast<uint32_t*>(rows + (g + 8) * kPitch + col) = pack2<T>(o[j][2], o[j][3]);
    }
  }
  __syncwarp();

  // the warp's 16 rows out, 16 bytes at a time where D allows
  const int my_rows = min(16, valid - 16 * warp);
  uint16_t* out = a.out + (b * a.n + n0 + 16 * warp) * a.d;
  if (a.d % 8 == 0) {
    const int chunks = a.d / 8;
    for (int i = lane; i < my_rows * chunks; i += 32) {
      const int r = i / chunks;
      const int col = (i % chunks) * 8;
      *reinterpret_cast<uint4*>(out + r * a.d + col) = *reinterpret_cast<const uint4*>(rows + r * kPitch + col);
    }
  } else {
    for (int i = lane; i < my_rows * a.d; i += 32) {
      out[i] = rows[(i / a.d) * kPitch + i % a.d];
    }
  }
}

constexpr const char* kOp = "cuda_hypergraph_scatter";

void scatter_out(const at::Tensor& xp, const at::Tensor& prototypes, const at::Tensor& lse, const at::Tensor& he,
                 double scale, const c10::optional<at::Tensor>& dropout_mask, at::Tensor& out) {
  check_input(he, kOp, "he", he);
  check_input(xp, kOp, "xp", he);
  check_input(prototypes, kOp, "prototypes", he);
  const int64_t batch = xp.size(0), n = xp.size(1), d = xp.size(2), m = prototypes.size(1);
  YOLO13_CHECK(prototypes.size(0) == batch && prototypes.size(2) == d, kOp, ": prototypes must be (B, M, D) = (",
              batch, ", M, ", d, "), got ", prototypes.sizes());
  YOLO13_CHECK(he.sizes() == prototypes.sizes(), kOp, ": he must be shaped like prototypes ", prototypes.sizes(),
              ", got ", he.sizes());
  YOLO13_CHECK(lse.is_cuda() && lse.device() == he.device() && lse.scalar_type() == at::kFloat &&
                  lse.is_contiguous() && lse.sizes() == at::IntArrayRef({batch, m}),
              kOp, ": lse must be a contiguous (B, M) = (", batch, ", ", m, ") float32 tensor on ", he.device(),
              ", got ", lse.scalar_type(), " ", lse.sizes(), " on ", lse.device());
  check_dtype_and_sizes(he, kOp, m, d);
  check_mask(dropout_mask, kOp, he, batch, n, m);
  check_scale(scale, kOp);
  YOLO13_CHECK(out.device() == he.device() && out.scalar_type() == he.scalar_type() && out.is_contiguous() &&
                  out.sizes() == xp.sizes(),
              kOp, ": out must be a contiguous (B, N, D) tensor of he's dtype and device");
  YOLO13_CHECK(n < (int64_t{1} << 30) && batch < 65536, kOp, ": N < 2^30 and B < 65536, got N = ", n, ", B = ",
              batch);
  if (out.numel() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(he.device());
  if (m == 0) {  // a sum over no hyperedges
    out.zero_();
    return;
  }
  ScatterParams a{};
  a.xp = bits(xp);
  a.p = bits(prototypes);
  a.lse = lse.data_ptr<float>();
  a.he = bits(he);
  a.mask = bits_or_null(dropout_mask);
  a.xp_sb = xp.stride(0), a.xp_sn = xp.stride(1), a.xp_sd = xp.stride(2);
  a.p_sb = prototypes.stride(0), a.p_sm = prototypes.stride(1), a.p_sd = prototypes.stride(2);
  a.he_sb = he.stride(0), a.he_sm = he.stride(1), a.he_sd = he.stride(2);
  if (dropout_mask.has_value()) {
    a.mask_sb = dropout_mask->stride(0), a.mask_sn = dropout_mask->stride(1), a.mask_sm = dropout_mask->stride(2);
  }
  a.n = static_cast<int>(n), a.m = static_cast<int>(m), a.d = static_cast<int>(d);
  a.scale_log2 = static_cast<float>(scale) * kLog2e;
  a.xp_vec = vectorizable(a.xp, a.xp_sn, a.xp_sd, a.xp_sb);
  a.p_vec = vectorizable(a.p, a.p_sm, a.p_sd, a.p_sb);
  a.he_vec = vectorizable(a.he, a.he_sm, a.he_sd, a.he_sb);
  a.out = reinterpret_cast<uint16_t*>(out.data_ptr());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(cdiv(static_cast<int>(n), kTileN), batch);
  dispatch_half(he.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_width(d, [&](auto width) {
      constexpr int kWidth = decltype(width)::value;
      const size_t smem = ScatterSmem<kWidth>::kBytes;
      auto kernel = scatter_kernel<T, kWidth>;
      set_smem(kernel, smem, kOp);
      kernel<<<grid, kThreads, smem, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor scatter(const at::Tensor& xp, const at::Tensor& prototypes, const at::Tensor& lse, const at::Tensor& he,
                   double scale, const c10::optional<at::Tensor>& dropout_mask) {
  at::Tensor out = at::empty(xp.sizes(), he.options().memory_format(at::MemoryFormat::Contiguous));
  scatter_out(xp, prototypes, lse, he, scale, dropout_mask, out);
  return out;
}

}  // namespace
}  // namespace yolo13_attn::hypergraph

TORCH_LIBRARY_FRAGMENT(yolo13_attn, m) {
  m.def(
      "cuda_hypergraph_scatter(Tensor xp, Tensor prototypes, Tensor lse, Tensor he, float scale, "
      "Tensor? dropout_mask) -> Tensor");
  m.def(
      "cuda_hypergraph_scatter_out(Tensor xp, Tensor prototypes, Tensor lse, Tensor he, float scale, "
      "Tensor? dropout_mask, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(yolo13_attn, CUDA, m) {
  m.impl("cuda_hypergraph_scatter", &yolo13_attn::hypergraph::scatter);
  m.impl("cuda_hypergraph_scatter_out", &yolo13_attn::hypergraph::scatter_out);
}
