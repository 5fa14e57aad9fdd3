"""The models ``bench/model_latency.py`` times, and their equivalence check against float64.

Each model is built from its yaml on stock Ultralytics with seeded random weights (nothing is
downloaded), BatchNorm calibrated on random images so activations stay O(1), then BN fused.
The check runs at batch 1: every patchable layer (attention, grouped convolution), patched, on the
input it sees in the float64 model's forward, under the flash rule (baseline: the unpatched layer in
the baseline dtype), as ``tests/test_model_equivalence.py`` does. The detections against the float64 model are reported,
not judged: with random weights rounding differences grow through the network (a backend whose
every layer is within its bound can land past the bound on the detections), and fp16 detections of
the larger models can overflow, which makes their bound infinite.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import _common as C
import torch

import yolo13_attn
from yolo13_attn.testing import baseline_dtype, calibrate_batchnorm, flash_rule, randomize_weights


def build_base(scale: str, seed: int, calib_hw: tuple[int, int]) -> tuple[torch.nn.Module, int]:
    """YOLOv13-<scale> and its parameter count: seeded weights, BN calibrated then fused; eval, float32, CPU."""
    from ultralytics import YOLO

    torch.manual_seed(seed)  # the calibration forward runs in train mode: its dropout masks shape the BN statistics
    model = YOLO(f"yolov13{scale}.yaml").model
    n_params = sum(p.numel() for p in model.parameters())
    randomize_weights(model, seed=seed)
    calibrate_batchnorm(model, torch.rand(2, 3, *calib_hw, generator=torch.Generator().manual_seed(seed + 1)))
    model.fuse(verbose=False)
    return model.eval(), n_params


def detections(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class Reference:
    """One model at one image size: the float64 forward of ``x`` ``(1, 3, H, W)``, per patchable layer too."""

    base: torch.nn.Module
    x: torch.Tensor
    det64: torch.Tensor = None
    layers64: dict[str, tuple] = field(default_factory=dict)  #: layer -> (its float64 input, its float64 output)
    _baselines: dict = field(default_factory=dict)

    def __post_init__(self):
        model64 = copy.deepcopy(self.base).to(device=self.x.device, dtype=torch.float64)
        hooks = [
            layer.register_forward_hook(self._capture(name)) for name, layer in yolo13_attn.patchable_layers(model64)
        ]
        try:
            with torch.inference_mode():
                self.det64 = detections(model64(self.x.double()))
        finally:
            for h in hooks:
                h.remove()

    def _capture(self, name: str):
        def hook(_module, args, out):
            self.layers64[name] = (args[0], out)

        return hook

    def baseline(self, dtype: torch.dtype, compute: torch.dtype, unpatched: torch.nn.Module | None = None) -> tuple:
        """(detections, {layer: output}) of the unpatched model computing in ``compute``, cast to ``dtype``;
        from ``unpatched`` when given (a model in ``compute``), else from a copy of the base model."""
        if (dtype, compute) not in self._baselines:
            m = unpatched or copy.deepcopy(self.base).to(device=self.x.device, dtype=compute)
            modules = dict(m.named_modules())
            with torch.inference_mode():
                det = detections(m(self.x.to(compute))).to(dtype)
                layers = {n: modules[n](i.to(compute)).to(dtype) for n, (i, _) in self.layers64.items()}
            self._baselines[(dtype, compute)] = (det, layers)
        return self._baselines[(dtype, compute)]

    def check(self, model: torch.nn.Module, dtype: torch.dtype, handle) -> dict:
        """The flash rule per patchable layer of ``model`` (patched by ``handle``; None: unpatched) and for its
        detections."""
        compute = baseline_dtype(dtype, *(C.report_compute_dtypes(handle) if handle else ()))
        base_det, base_layers = self.baseline(dtype, compute)
        modules, layers = dict(model.named_modules()), {}
        with torch.inference_mode():
            for name, (inp, out64) in self.layers64.items():
                rep = flash_rule(modules[name](inp.to(dtype)), out64, base_layers[name])
                layers[name] = {"err": rep.candidate, "bound": rep.bound, "baseline_err": rep.baseline, "pass": rep.ok}
            det = flash_rule(detections(model(self.x.to(dtype))), self.det64, base_det)
        dets = {"err": det.candidate, "bound": det.bound, "baseline_err": det.baseline, "within_bound": det.ok}
        # pass: every patchable layer within its bound; the detections are reported, not judged (module docstring)
        check = {"pass": all(v["pass"] for v in layers.values()), "baseline_dtype": C.dtype_name(compute), "batch": 1}
        check |= {"layers_checked": len(layers), "layers": layers, "detections": dets}
        if layers:
            worst = max(layers, key=lambda n: layers[n]["err"] / layers[n]["bound"] if layers[n]["bound"] else math.inf)
            check |= {"worst_layer": worst, **{k: layers[worst][k] for k in ("err", "bound", "baseline_err")}}
        return check
