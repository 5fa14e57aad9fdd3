// Warpgroup matrix products of Hopper (sm_90a): wgmma.mma_async with the A operand in registers and the B operand
// in shared memory, fp32 accumulation. Compiled only for sm_90a (YOLO13_ATTN_WGMMA); other targets see none of it.
//
// Register fragments: a warpgroup is 4 warps; warp w holds rows 16w..16w+15 of the 64-row A and D matrices in
// exactly the layout of mma.sync m16n8k16 (mma_sm80.cuh): the A fragment of a k16 step is 4 registers of 2 halves,
// and n8 block j of D is d[4j .. 4j+3]. So the softmax code of the mma.sync kernels reads wgmma results unchanged.
//
// Shared-memory B operand (no swizzle, the "interleave" canonical layout): 8 x 8 core matrices of 16-bit values,
// each 128 contiguous bytes = 8 rows of 16 bytes. A tile of BN tokens x D channels read from a channel-major
// (token stride 1) view is stored as 16-byte chunks of 8 tokens of one channel, chunk (d, token group tg) at
// byte 16 * (tg * D + d) (kv_chunk_offset). Core matrix (channel group dg, token group tg) is then the 128 bytes
// at 16 * (tg * D + 8 dg), and the same bytes serve both products:
//   S = Q K^T: B = K^T is (k = channel) x (n = token), token-contiguous = "MN-major" (transpose flag 1):
//              leading byte offset (between k groups of 8 channels) 128, stride byte offset (n groups) 16 D;
//              k16 step s starts at 256 s.
//   O = P V:   B = V is (k = token) x (n = channel), token-contiguous = "K-major" (transpose flag 0):
//              leading byte offset (between the two 8-token halves of a k16 step) 16 D, stride byte offset
//              (n groups of 8 channels) 128; k16 step t starts at 32 D t.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define YOLO13_ATTN_WGMMA 1
#endif

namespace yolo13_attn {

// Byte offset of the chunk (channel d, tokens 8 tg .. 8 tg + 7) in a K/V tile of D channels.
template <int D>
__host__ __device__ constexpr int kv_chunk_offset(int d, int tg) {
  return 16 * (tg * D + d);
}

// The 64-bit shared-memory matrix descriptor: start address, leading / stride byte offsets (all in 16-byte
// units), no swizzle (layout type 0), base offset 0.
__device__ __forceinline__ uint64_t smem_desc(const void* start, uint32_t leading_bytes, uint32_t stride_bytes) {
  const uint64_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(start));
  return ((addr & 0x3FFFF) >> 4) | (uint64_t((leading_bytes >> 4) & 0x3FFF) << 16) |
         (uint64_t((stride_bytes >> 4) & 0x3FFF) << 32);
}

#ifdef YOLO13_ATTN_WGMMA

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins an accumulator register at this point of the program: the wgmma asm statements define their outputs
// when they are issued, not when wgmma_wait returns, so without this the compiler may move reads of the
// results above the wait (or writes of the operands below the issue).
template <int R, int C>
__device__ __forceinline__ void fence_operands(float (&d)[R][C]) {
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = 0; j < C; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
  }
}

// Shared memory written by ordinary stores / cp.async becomes visible to wgmma (the async proxy).
__device__ __forceinline__ void fence_smem_for_wgmma() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

#define YOLO13_WGMMA_D64                                                                                            \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),           \
      "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),       \
      "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),       \
      "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),       \
      "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define YOLO13_WGMMA_D32                                                                                            \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),           \
      "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),       \
      "+f"(d[3][2]), "+f"(d[3][3])

#define YOLO13_WGMMA_N64(TYPE)                                                                                      \
  asm volatile(                                                                                                     \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"                                                                  \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                                   \
      " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
      "%23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"                 \
      : YOLO13_WGMMA_D64                                                                                            \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TRANS_B), "r"(int(accumulate)))
#define YOLO13_WGMMA_N32(TYPE)                                                                                      \
  asm volatile(                                                                                                     \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %22, 0;\n"                                                                  \
      "wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE                                                   \
      " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, "  \
      "1, %21;\n}\n"                                                                                                \
      : YOLO13_WGMMA_D32                                                                                            \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TRANS_B), "r"(int(accumulate)))

// d (64 x 64, fp32) (+)= a (64 x 16, registers) * B (16 x 64, shared memory); TRANS_B: B is MN-major.
template <typename T, int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b,
                                                bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    YOLO13_WGMMA_N64("f16");
  } else {
    YOLO13_WGMMA_N64("bf16");
  }
}

// d (64 x 32, fp32) (+)= a (64 x 16, registers) * B (16 x 32, shared memory).
template <typename T, int TRANS_B>
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[4][4], const uint32_t (&a)[4], uint64_t b,
                                                bool accumulate) {
  if constexpr (std::is_same_v<T, __half>) {
    YOLO13_WGMMA_N32("f16");
  } else {
    YOLO13_WGMMA_N32("bf16");
  }
}

// d (64 x N) (+)= a * B for N = 32 or 64 (the key block of S = Q K^T).
template <typename T, int TRANS_B, int N>
__device__ __forceinline__ void wgmma_m64nk16(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b,
                                              bool accumulate) {
  if constexpr (N == 64) {
    wgmma_m64n64k16<T, TRANS_B>(d, a, b, accumulate);
  } else {
    static_assert(N == 32, "key blocks of 32 or 64");
    wgmma_m64n32k16<T, TRANS_B>(d, a, b, accumulate);
  }
}

#undef YOLO13_WGMMA_N64
#undef YOLO13_WGMMA_N32
#undef YOLO13_WGMMA_D64
#undef YOLO13_WGMMA_D32

#endif  // YOLO13_ATTN_WGMMA

}  // namespace yolo13_attn
