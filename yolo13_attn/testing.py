"""The equivalence rule, shared by the tests and the benchmarks' pre-timing checks.

flash-attn's rule: a backend's max error against a float64 reference must be within ``factor``
(2x) of the error plain PyTorch makes in the same dtype, plus a tiny absolute slack. Outputs are
poisoned with NaN before a kernel runs, so an unwritten element fails the check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: absolute slack added to the 2x bound, per compute dtype (a few ulps at unit scale)
ABS_SLACK = {
    torch.float64: 1e-12,
    torch.float32: 1e-6,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


@dataclass(frozen=True)
class ErrorReport:
    """Max-abs errors of a candidate and of the plain-PyTorch baseline against float64."""

    candidate: float
    baseline: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.candidate <= self.bound


def baseline_dtype(dtype: torch.dtype, *compute_dtypes: torch.dtype) -> torch.dtype:
    """The plain-PyTorch baseline's dtype: the input ``dtype``, or the least precise dtype a backend
    computes in where that is less precise (flash computes fp32 layers in fp16)."""
    return max((dtype, *compute_dtypes), key=lambda d: torch.finfo(d).eps)


def max_abs_error(out: Tensor, ref: Tensor) -> float:
    """Max |out - ref| in float64; NaN anywhere (e.g. an unwritten poisoned element) gives inf."""
    diff = (out.double() - ref.double()).abs()
    return float("inf") if bool(torch.isnan(diff).any()) else float(diff.max()) if diff.numel() else 0.0


def flash_rule(out: Tensor, ref64: Tensor, baseline: Tensor, factor: float = 2.0) -> ErrorReport:
    """Compare ``out`` and the same-dtype ``baseline`` against the float64 ``ref64``."""
    base = max_abs_error(baseline, ref64)
    slack = ABS_SLACK.get(baseline.dtype, 1e-6)
    return ErrorReport(max_abs_error(out, ref64), base, factor * base + slack)


def assert_flash_rule(out: Tensor, ref64: Tensor, baseline: Tensor, what: str, factor: float = 2.0) -> ErrorReport:
    """Assert the flash rule and the shape; the message carries both errors."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}"
    report = flash_rule(out, ref64, baseline, factor)
    assert report.ok, (
        f"{what}: max error {report.candidate:.3e} > {factor}x plain-PyTorch error {report.baseline:.3e} "
        f"+ slack (bound {report.bound:.3e})"
    )
    return report


def poisoned_like(t: Tensor) -> Tensor:
    """A tensor shaped like ``t`` filled with NaN: write a kernel's output into it to catch holes."""
    return torch.full_like(t, float("nan"))


def random_normal(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: str | torch.device,
    generator: torch.Generator | None = None,
    scale: float = 1.0,
) -> Tensor:
    """Fresh N(0, scale^2) values (never zeros), drawn in float32 then cast."""
    return (torch.randn(shape, generator=generator, device=device) * scale).to(dtype)


@torch.no_grad()
def randomize_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random weights with O(1) activations, so every layer (attention included) matters.

    Freshly built YOLOv13 layers start near-silent (attention convs at std 0.02, FullPAD gates at
    0), which would let a wrong attention backend pass a whole-model test. Conv/Linear weights get
    std ``1/sqrt(fan_in)``, BatchNorm random affine and running statistics, scalar gates and
    ``gamma`` values around 0.5.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(t: Tensor, mean: float, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=generator) * std + mean)

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = module.weight[0].numel()
            normal(module.weight, 0.0, fan_in**-0.5)
            if module.bias is not None:
                normal(module.bias, 0.0, 0.1)
        elif isinstance(module, torch.nn.BatchNorm2d):
            normal(module.weight, 1.0, 0.1)
            normal(module.bias, 0.0, 0.1)
            normal(module.running_mean, 0.0, 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    for name, param in model.named_parameters():
        if name.endswith(("gate", "gamma")):
            normal(param, 0.5, 0.1)
        elif name.endswith("prototype_base"):
            normal(param, 0.0, 1.0)
    return model


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, x: Tensor) -> torch.nn.Module:
    """Set every BatchNorm's running statistics to the batch statistics of a forward on ``x``.

    After :func:`randomize_weights` this keeps activations normalised layer after layer, as in
    a trained network, so tiny rounding differences are not amplified without bound by random
    weights. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration forward
    model.train()(x)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()
