"""Teach Ultralytics' model builder the YOLOv13 yaml.

Stock Ultralytics builds models in ``ultralytics.nn.tasks.parse_model`` and keeps its per-module
rules in sets built inside that function, so new modules cannot be registered with it. We wrap it
instead: a model dict that names no YOLOv13 module goes to the original parser untouched (stock
models build exactly as before); a YOLOv13 dict is built here, by the rules the official YOLOv13
model files imply (the YOLOv13 paper, arXiv 2506.17733, and the official model's layer names and
parameter counts, which ``tests/test_yolov13_model.py`` checks), using Ultralytics' own stock layers
(``Conv``, ``Concat``, ``Detect``, ``torch.nn``) and ``make_divisible``.

``DetectionModel`` looks ``parse_model`` up in its module at call time, so every (re)build -
``YOLO("yolov13n.yaml")``, trainers rebuilding from ``model.yaml`` - passes through the wrapper.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import nn as v13
from .checkpoints import qualified_name
from .ultralytics_api import LOGGER, Concat, Conv, Detect, make_divisible, wrap_check_yaml, wrap_parse_model

CFG_DIR = Path(__file__).parent / "cfg"

#: module names that only a YOLOv13 yaml uses (A2C2f is shared with YOLO12, so it is no marker)
YOLOV13_MARKERS = frozenset(
    {"DSConv", "DSC3k2", "DSC3k", "DSBottleneck", "HyperACE", "DownsampleConv", "FullPAD_Tunnel", "C3AH"}
)
LARGE_SCALES = frozenset({"l", "x"})


@dataclass
class _Build:
    """Scale factors and the running list of output channels (``channels[i]`` = layer i's output)."""

    depth: float
    width: float
    max_channels: float
    scale: str
    nc: int
    channels: list[int]
    reg_max: int = 16
    end2end: bool | None = None
    legacy: bool = True
    save: list[int] = field(default_factory=list)

    def width_scaled(self, c: int) -> int:
        return make_divisible(min(c, self.max_channels) * self.width, 8)

    def depth_scaled(self, n: int) -> int:
        return max(round(n * self.depth), 1) if n > 1 else n


# A rule maps (build, from, repeats, args) -> (constructor args, output channels, instances).
Rule = Callable[[_Build, "int | list[int]", int, list], tuple[list, int, int]]


def _standard(build: _Build, f: int, n: int, args: list) -> tuple[list, int, int]:
    """[c1, c2 scaled by width, *rest]; ``n`` stacked instances (Conv, DSConv)."""
    c2 = build.width_scaled(args[0])
    return [build.channels[f], c2, *args[1:]], c2, n


def _with_repeats(build: _Build, f: int, n: int, args: list) -> tuple[list, int, int]:
    """As :func:`_standard` with the repeat count inserted at args[2]; one instance; non-legacy."""
    args, c2, _ = _standard(build, f, n, args)
    args.insert(2, n)
    build.legacy = False
    return args, c2, 1


def _dsc3k2(build: _Build, f: int, n: int, args: list) -> tuple[list, int, int]:
    args, c2, n = _with_repeats(build, f, n, args)
    if build.scale in LARGE_SCALES:
        args[3:4] = [True]  # dsc3k
    return args, c2, n


def _a2c2f(build: _Build, f: int, n: int, args: list) -> tuple[list, int, int]:
    args, c2, n = _with_repeats(build, f, n, args)
    if build.scale in LARGE_SCALES:
        args.extend((True, 1.5))  # residual, mlp_ratio
    return args, c2, n


def _hyperace(build: _Build, f: list[int], n: int, args: list) -> tuple[list, int, int]:
    c1, c2 = build.channels[f[1]], build.width_scaled(args[0])
    factor = {"n": 0.5, "x": 1.5}.get(build.scale)
    hyperedges = int(args[1] * factor) if factor else args[1]
    args = [c1, c2, n, hyperedges, *args[2:]]
    if build.scale in LARGE_SCALES:
        args.append(False)  # channel_adjust
    build.legacy = False
    return args, c2, 1


def _downsample_conv(build: _Build, f: int, n: int, args: list) -> tuple[list, int, int]:
    c1 = build.channels[f]
    if build.scale in LARGE_SCALES:
        return [c1, False], c1, n
    return [c1], 2 * c1, n


def _first_input(build: _Build, f: int | list[int], n: int, args: list) -> tuple[list, int, int]:
    """Output channels = those of the (first) input: FullPAD_Tunnel, nn.* layers."""
    return args, build.channels[f[0] if isinstance(f, list) else f], n


def _concat(build: _Build, f: list[int], n: int, args: list) -> tuple[list, int, int]:
    return args, sum(build.channels[i] for i in f), n


def _detect(build: _Build, f: list[int], n: int, args: list) -> tuple[list, int, int]:
    Detect.legacy = build.legacy  # a class attribute, as the stock parser sets it
    return [*args, build.reg_max, build.end2end, [build.channels[i] for i in f]], args[0], n


RULES: dict[str, tuple[type[nn.Module], Rule]] = {
    "Conv": (Conv, _standard),
    "DSConv": (v13.DSConv, _standard),
    "DSC3k2": (v13.DSC3k2, _dsc3k2),
    "A2C2f": (v13.A2C2f, _a2c2f),
    "HyperACE": (v13.HyperACE, _hyperace),
    "DownsampleConv": (v13.DownsampleConv, _downsample_conv),
    "FullPAD_Tunnel": (v13.FullPAD_Tunnel, _first_input),
    "Concat": (Concat, _concat),
    "Detect": (v13.YOLOv13Detect, _detect),
}


def is_yolov13(d: dict) -> bool:
    """Whether a model dict names any YOLOv13-only module."""
    return any(row[2] in YOLOV13_MARKERS for row in d.get("backbone", []) + d.get("head", []))


def _resolve(name: str) -> tuple[type[nn.Module], Rule]:
    if name.startswith("nn."):
        return getattr(torch.nn, name[3:]), _first_input
    if name not in RULES:
        raise ValueError(f"YOLOv13 yaml: module {name!r} is not supported here (supported: {sorted(RULES)} and nn.*)")
    return RULES[name]


def _literal(value: object, d: dict) -> object:
    """Yaml string args: a top-level key (``nc``) gives its value, a Python literal its value, else the string."""
    if not isinstance(value, str):
        return value
    if value in d:
        return d[value]
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def parse_yolov13(d: dict, ch: int, verbose: bool = True) -> tuple[nn.Sequential, list[int]]:
    """Build a YOLOv13 model dict into ``(nn.Sequential of layers, sorted save list)``.

    The contract of ``ultralytics.nn.tasks.parse_model``: each layer gets ``i`` (index), ``f``
    (from), ``type`` and ``np`` (parameter count) attributes.
    """
    if d.get("activation"):
        raise ValueError("YOLOv13 yaml: an 'activation' override is not supported")
    scales, scale = d.get("scales"), d.get("scale")
    if scales:
        if not scale:
            scale = next(iter(scales))
            LOGGER.warning(f"no model scale passed. Assuming scale='{scale}'.")
        depth, width, max_channels = scales[scale]
    else:
        depth, width, max_channels = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0), float("inf")
    build = _Build(depth, width, max_channels, scale or "", d["nc"], [ch], d.get("reg_max", 16), d.get("end2end"))
    if verbose:
        LOGGER.info(f"\n{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<45}{'arguments':<30}")
    layers = []
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        cls, rule = _resolve(name)
        args = [_literal(a, d) for a in args]
        repeats = build.depth_scaled(n)
        args, c2, instances = rule(build, f, repeats, args)
        layer = nn.Sequential(*(cls(*args) for _ in range(instances))) if instances > 1 else cls(*args)
        layer.i, layer.f, layer.type = i, f, qualified_name(cls)
        layer.np = sum(p.numel() for p in layer.parameters())
        if verbose:
            LOGGER.info(f"{i:>3}{f!s:>20}{repeats:>3}{layer.np:10.0f}  {layer.type:<45}{args!s:<30}")
        build.save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(layer)
        build.channels = ([] if i == 0 else build.channels) + [c2]
    return nn.Sequential(*layers), sorted(build.save)


def _parse_model_wrapper(original: Callable) -> Callable:
    def parse_model(d, ch, verbose=True):
        return parse_yolov13(d, ch, verbose) if is_yolov13(d) else original(d, ch, verbose)

    return parse_model


def packaged_yaml(file: str | Path) -> Path | None:
    """Our shipped yaml for a bare YOLOv13 config name (``yolov13.yaml``, ``yolov13n.yaml``), if any."""
    path = CFG_DIR / Path(str(file)).name
    return path if path.is_file() else None


def _check_yaml_wrapper(original: Callable) -> Callable:
    def check_yaml(file, suffix=(".yaml", ".yml"), hard=True):
        return (
            original(file, suffix, hard=False) or (str(packaged_yaml(file) or "")) or original(file, suffix, hard=hard)
        )

    return check_yaml


def install() -> None:
    """Wrap ``parse_model`` (and ``check_yaml``, to find the packaged yaml) in ``ultralytics.nn.tasks``."""
    wrap_parse_model(_parse_model_wrapper, "wrapped: model dicts naming YOLOv13 modules are built by yolo13_attn")
    wrap_check_yaml(_check_yaml_wrapper, "wrapped: finds yolo13_attn's packaged yolov13.yaml (n/s/l/x)")
