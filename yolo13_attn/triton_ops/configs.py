"""Tile choices, keyed on bucketed shapes so that YOLO's many sizes share a handful of compiled kernels.

No ``triton.autotune``: autotuning benchmarks on first call (host syncs, many launches), which
must not happen inside CUDA-graph capture or a compiled region. The tables below were picked on
an H100 (a one-off tuning script, in git history; ``bench/results/triton_h100_2026-11-24.md``); every value
is a pure function of ``(bucket(N), BLOCK_D, dtype)`` and of the SM count, so the launch path has no host sync.

Only ``constexpr`` tile sizes select a compiled variant; token counts, strides and split sizes are
runtime arguments (Triton specialises only on ``== 1`` and divisibility by 16 of those).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def dot_precision(dtype: torch.dtype) -> str:
    """``ieee`` (full fp32 FMA, no TF32) for float32 - plain PyTorch fp32 matmuls do not use TF32
    either, and the equivalence rule compares against them; the half types use the tensor cores
    natively (the string is then ignored)."""
    return "ieee" if dtype == torch.float32 else "tf32"


@dataclass(frozen=True)
class AreaConfig:
    block_m: int
    block_n: int
    block_d: int
    precision: str
    num_warps: int = 4
    num_stages: int = 2

    def launch_kwargs(self) -> dict:
        return dict(
            block_m=self.block_m,
            block_n=self.block_n,
            block_d=self.block_d,
            precision=self.precision,
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )


@dataclass(frozen=True)
class HypergraphConfig:
    block_n: int
    block_m: int
    block_d: int
    precision: str
    tokens_per_split: int
    num_warps: int = 4
    num_stages: int = 2

    def launch_kwargs(self, *, split: bool = True) -> dict:
        kw = dict(
            block_n=self.block_n,
            block_m=self.block_m,
            block_d=self.block_d,
            precision=self.precision,
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )
        if split:
            kw["tokens_per_split"] = self.tokens_per_split
        return kw


def area_fwd_config(n_area: int, head_dim: int, dtype: torch.dtype) -> AreaConfig:
    """Forward tiles. H100 sweep on x P4 B=16 fp16 (bench/results): (64, 32, 4 warps, 3 stages)
    0.094 ms, (64, 64, 4, 3) 0.096, (128, 32, 4, 3) 0.099, (64, 64, 4, 2) 0.108, (128, 64, 8, 2)
    0.133, (128, 128, 8, 2) 0.204 - small key blocks waste less of a 400-token chunk."""
    block_d = max(16, next_pow2(head_dim))
    bucket = next_pow2(n_area)
    fp32 = dtype == torch.float32
    if bucket <= 16:
        bm = bn = 16
    elif bucket <= 32:
        bm = bn = 32
    else:
        bm, bn = 64, 32
    return AreaConfig(bm, bn, block_d, dot_precision(dtype), 4, 2 if fp32 else 3)


def area_bwd_config(n_area: int, head_dim: int, dtype: torch.dtype) -> AreaConfig:
    """Backward tiles. H100 sweep on x P4 B=16 fp16: (64, 64, 4 warps, 2 stages) 0.283 ms;
    (32, 64) 0.41, (128, 64, 8 warps) 0.60, (64, 32) 0.69, (32, 32) 0.79."""
    block_d = max(16, next_pow2(head_dim))
    bucket = next_pow2(n_area)
    fp32 = dtype == torch.float32
    if bucket <= 16:
        bm = bn = 16
    elif bucket <= 32 or block_d >= 128 or (fp32 and block_d >= 64):
        bm = bn = 32
    else:
        bm = bn = 64
    return AreaConfig(bm, bn, block_d, dot_precision(dtype), 4, 2)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def target_programs(device: torch.device, waves: float) -> int:
    """About ``waves`` waves of programs on a GPU; a few on the CPU interpreter (to exercise the split path)."""
    if device.type == "cuda":
        return int(waves * _sm_count(device.index if device.index is not None else torch.cuda.current_device()))
    return 4


def _split(n: int, batch: int, block_n: int, device: torch.device, waves: float) -> int:
    """Tokens per split: a multiple of ``block_n`` such that ``batch * splits`` ~ ``target_programs``
    (at least ``block_n``, also for empty inputs: callers divide by it)."""
    blocks = -(-n // block_n)
    splits = max(1, min(blocks, -(-target_programs(device, waves) // max(batch, 1))))
    return max(1, -(-blocks // splits)) * block_n


def hypergraph_aggregate_config(
    batch: int, n: int, m: int, d: int, dtype: torch.dtype, device: torch.device
) -> HypergraphConfig:
    """H100 sweep, x B=16 (D=384, M=12, N=1600) fp16: block_n 32, 128 tokens per split (13 splits,
    208 programs ~ 1.5 waves), 4 warps: 0.029 ms; 8 warps 0.037; 64 tokens per split 0.041."""
    block_d = max(16, next_pow2(d))
    block_m = max(16, next_pow2(m))
    block_n = max(16, min(64, 16384 // block_d))
    return HypergraphConfig(
        block_n, block_m, block_d, dot_precision(dtype), _split(n, batch, block_n, device, 1.5), 4, 2
    )


def hypergraph_scatter_config(
    batch: int, n: int, m: int, d: int, dtype: torch.dtype, device: torch.device
) -> HypergraphConfig:
    """H100 sweep, x B=16 fp16: block_n 16 or 32 with 4 warps 0.0214 ms; 8 warps 0.024-0.026."""
    block_d = max(16, next_pow2(d))
    block_m = max(16, next_pow2(m))
    block_n = max(16, min(64, 8192 // block_d))  # 32 x 512 spills at 4 warps
    return HypergraphConfig(block_n, block_m, block_d, dot_precision(dtype), n, 4, 2)


def hypergraph_bwd_config(
    batch: int, n: int, m: int, d: int, dtype: torch.dtype, device: torch.device
) -> HypergraphConfig:
    """H100 sweep, x B=16 fp16: block_n 16, 64 tokens per split (25 splits, 400 programs ~ 3 waves),
    4 warps, 2 stages: aggregate 0.059 / scatter 0.066 ms; 8 warps 1 stage 0.069 / 0.080."""
    block_d = max(16, next_pow2(d))
    block_m = max(16, next_pow2(m))
    block_n = max(16, min(64, 8192 // block_d))
    return HypergraphConfig(
        block_n, block_m, block_d, dot_precision(dtype), _split(n, batch, block_n, device, 3.0), 4, 2
    )


def with_overrides(config, overrides: dict | None):
    """``config`` with fields replaced (benchmarks / tests force tile sizes or split counts)."""
    return replace(config, **overrides) if overrides else config
