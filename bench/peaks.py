"""The GPU's peak figures, for the floors of the kernel sweep: measured once on the device in use.

* memory bandwidth: a device-to-device copy of 1 GiB (bytes read + bytes written per second), the
  bandwidth kernels can reach in practice. The datasheet figure from the device properties
  (2 x memory clock x bus width, where PyTorch exposes them) is recorded next to it.
* tensor-core FLOP/s: an 8192^3 fp16 and bf16 matrix product on random data (cuBLAS).
* fp32 FLOP/s: a 4096^3 fp32 matrix product with TF32 off (plain FP32 FMA).
* L2 size: ``torch.cuda.get_device_properties().L2_cache_size``.

Measuring needs no table of GPU models, so the floors are right on any GPU; it takes well under a
second.
"""

from __future__ import annotations

import torch
from timing import time_calls


def _matmul_flops(n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    timing = time_calls([lambda: a @ b], "cuda", graph=False, samples=5, min_sample_ms=20.0, max_total_s=0.5)
    return 2 * n**3 / (timing.median * 1e-3)


def measure_peaks() -> dict:
    """``{"bw_Bps", "datasheet_bw_Bps", "flops": {dtype: FLOP/s}, "l2_bytes", "how"}`` of CUDA device 0."""
    props = torch.cuda.get_device_properties(0)
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy = time_calls([lambda: dst.copy_(src)], "cuda", graph=False, samples=5, min_sample_ms=5.0, max_total_s=0.5)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        flops = {
            "fp16": _matmul_flops(8192, torch.float16),
            "bf16": _matmul_flops(8192, torch.bfloat16),
            "fp32": _matmul_flops(4096, torch.float32),
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.cuda.empty_cache()
    return {
        "bw_Bps": 2 * 2**30 / (copy.median * 1e-3),
        "datasheet_bw_Bps": 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None,
        "flops": flops,
        "l2_bytes": props.L2_cache_size,
        "how": "measured on this GPU at the start of the run: 1 GiB device-to-device copy (read + written), "
        "8192^3 fp16/bf16 and 4096^3 fp32 (TF32 off) matrix products",
    }
