"""Adversarial inputs (issue 11): every bad input or misuse found in review stays fixed.

Each test names the symptom the old code showed. Backends run where this machine can run them
(Triton on CPU through its interpreter); the README's quickstart blocks run as written, offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from backend_cases import AREA_BACKENDS, HYPERGRAPH_BACKENDS, skip_unless_supported

import yolo13_attn
from yolo13_attn import BackendUnsupportedError, area_attention, hypergraph_aggregate, hypergraph_scatter, patch
from yolo13_attn.backends import AREA, HYPERGRAPH, OpCall, get_backend, priority, validate_name, validate_spec
from yolo13_attn.backends.registry import DEFAULT_BACKEND_ENV, default_backend
from yolo13_attn.nn import AAttn, AdaHGConv
from yolo13_attn.ops.reference import (
    area_attention_reference,
    hypergraph_aggregate_reference,
    hypergraph_scatter_reference,
)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VALID = "valid backends: auto, naive, sdpa, flash, cuda, triton"


def qkv(b=1, heads=2, head_dim=16, n=8, dtype=torch.float32):
    return tuple(torch.randn(b, heads, head_dim, n, dtype=dtype) for _ in range(3))


def tokens(b=1, n=7, d=16, m=3, dtype=torch.float32):
    """x, xp ``(B, N, D)`` and prototypes ``(B, M, D)``."""
    return torch.randn(b, n, d, dtype=dtype), torch.randn(b, n, d, dtype=dtype), torch.randn(b, m, d, dtype=dtype)


# --- area: integers only, validated before anything is computed or cached ---------------------------------


@pytest.mark.parametrize("backend", AREA_BACKENDS)
def test_float_area_is_refused_and_poisons_nothing(backend):
    """Old: area=2.0 passed the divisibility check, failed inside einops and poisoned its recipe cache,
    so every later valid call at that shape failed, unpatched layers included."""
    q, k, v = qkv()
    skip_unless_supported(AREA, backend, OpCall.for_area(q, k, v))
    with pytest.raises(TypeError, match=r"area must be an int .* got float 2\.0"):
        area_attention(q, k, v, 2.0, layout="bhdn", backend=backend)
    out = area_attention(q, k, v, 2, layout="bhdn", backend=backend)
    torch.testing.assert_close(out, area_attention_reference(q, k, v, 2))
    layer = AAttn(64, 2, area=2).eval()
    with torch.no_grad():
        assert layer(torch.randn(1, 64, 2, 4)).shape == (1, 64, 2, 4)


@pytest.mark.parametrize(
    "area,error,match",
    [
        (True, TypeError, "area must be an int .* got bool True"),
        ("2", TypeError, "area must be an int .* got str '2'"),
        (torch.tensor(2), TypeError, "area must be an int .* got Tensor"),
        (0, ValueError, "area must be >= 1, got 0"),
        (-2, ValueError, "area must be >= 1, got -2"),
        (3, ValueError, r"token count N=8 .* not divisible by area=3"),
    ],
    ids=["bool", "str", "tensor", "zero", "negative", "non-divisor"],
)
def test_bad_area_values_name_the_argument(area, error, match):
    with pytest.raises(error, match=match):
        area_attention(*qkv(), area, layout="bhdn")


def test_numpy_integer_area_is_an_int():
    q, k, v = qkv()
    torch.testing.assert_close(
        area_attention(q, k, v, np.int64(4), layout="bhdn"), area_attention_reference(q, k, v, 4)
    )


def test_bad_area_in_a_layer_names_the_layer():
    layer = AAttn(64, 2, area=2)
    layer.area = 2.5
    with pytest.raises(TypeError, match=r"AAttn\(heads=2, head_dim=32, area=2\.5\): area must be an int"):
        layer(torch.randn(1, 64, 2, 4))


# --- backend: type and name -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [123, None, b"sdpa", int, 1.5], ids=["int", "None", "bytes", "class", "float"])
def test_op_backend_of_the_wrong_type_names_the_argument(backend):
    """Old: raw AttributeError (``'int' object has no attribute 'forward'``)."""
    with pytest.raises(TypeError, match=rf"backend must be a backend name \(str\) or a backend class, got .*; {VALID}"):
        area_attention(*qkv(), 2, layout="bhdn", backend=backend)
    with pytest.raises(TypeError, match=rf"backend must be a backend name .*; {VALID}"):
        hypergraph_aggregate(*tokens(), 0.1, backend=backend)


def test_op_backend_class_of_the_other_op_is_refused():
    with pytest.raises(TypeError, match="NaiveHypergraph implements op 'hypergraph', not 'area'"):
        area_attention(*qkv(), 2, layout="bhdn", backend=get_backend(HYPERGRAPH, "naive"))
    with pytest.raises(TypeError, match="NaiveAreaAttention implements op 'area', not 'hypergraph'"):
        hypergraph_aggregate(*tokens(), 0.1, backend=get_backend(AREA, "naive"))


def test_op_backend_names_are_validated_and_case_insensitive():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=rf"backend='bogus' is not a backend; {VALID}"):
        area_attention(q, k, v, 2, layout="bhdn", backend="bogus")
    torch.testing.assert_close(
        area_attention(q, k, v, 2, layout="bhdn", backend=" SDPA "), area_attention_reference(q, k, v, 2)
    )


@pytest.mark.parametrize(
    "spec,error,match",
    [
        (123, TypeError, r"backend must be a backend name \(str\) or a dict \{op: name\}.* got int 123"),
        (b"sdpa", TypeError, r"backend must be a backend name \(str\) or a dict .* got bytes b'sdpa'"),
        ({"area": 123}, TypeError, r"backend\['area'\] must be a backend name \(str\), got int 123"),
        ({"area": b"sdpa"}, TypeError, r"backend\['area'\] must be a backend name \(str\), got bytes"),
        ({"area": "bogus"}, ValueError, r"backend\['area'\]='bogus' is not a backend"),
        ({"conv": "sdpa"}, ValueError, r"unknown op\(s\) \['conv'\]"),
        ("bogus", ValueError, "backend='bogus' is not a backend"),
    ],
    ids=["int", "bytes", "dict-int", "dict-bytes", "dict-bogus", "dict-op", "bogus"],
)
def test_backend_spec_errors_name_the_argument(spec, error, match):
    """Old: ``patch(m, 123)`` / ``{"area": 123}`` gave raw TypeError/AttributeError, ``b"sdpa"`` a list of byte
    values."""
    with pytest.raises(error, match=match) as raised:
        validate_spec(spec)
    if error is TypeError or "is not a backend" in match:
        assert VALID in str(raised.value)


def test_backend_spec_accepts_names_and_dicts():
    assert validate_spec(" Flash") == {AREA: "flash", HYPERGRAPH: "flash"}
    assert validate_spec({"area": "SDPA"}) == {AREA: "sdpa"}
    assert validate_name("Auto") == "auto"


@pytest.mark.parametrize("spec", [123, b"sdpa", {"area": 123}], ids=["int", "bytes", "dict-int"])
def test_patch_backend_of_the_wrong_type_names_the_argument(spec):
    layer = torch.nn.Sequential(AAttn(64, 2, area=2))
    with pytest.raises(TypeError, match=rf"backend.* must be a backend name \(str\).*; {VALID}"):
        patch(layer, spec)


def test_environment_variable_is_named_when_invalid(monkeypatch):
    """Old: ``YOLO13_ATTN_BACKEND=bogus`` raised "unknown backend 'bogus'" without naming the variable."""
    monkeypatch.setenv(DEFAULT_BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=rf"\$YOLO13_ATTN_BACKEND='bogus' is not a backend; {VALID}"):
        default_backend()
    with pytest.raises(ValueError, match=r"\$YOLO13_ATTN_BACKEND='bogus'"):
        patch(torch.nn.Sequential(AAttn(64, 2, area=2)))
    monkeypatch.setenv(DEFAULT_BACKEND_ENV, " ")
    assert default_backend() == "auto"


# --- dtypes: one rule on every backend --------------------------------------------------------------------


@pytest.mark.parametrize("backend", HYPERGRAPH_BACKENDS)
def test_mixed_hypergraph_dtypes_raise_on_every_backend(backend):
    """Old: naive and triton cast silently, sdpa raised raw matmul errors."""
    x, xp, p = tokens()
    with pytest.raises(
        ValueError, match="hgnn: inputs must share one dtype .* x float32, xp float64, prototypes float32"
    ):
        hypergraph_aggregate(x, xp.double(), p, 0.1, backend=backend, layer="hgnn")
    he, lse = hypergraph_aggregate_reference(x, xp, p, 0.1)
    with pytest.raises(ValueError, match="inputs must share one dtype .* he float16"):
        hypergraph_scatter(xp, p, lse, he.half(), 0.1, backend=backend)
    with pytest.raises(ValueError, match="lse must be float32 for float32 inputs .* got float64"):
        hypergraph_scatter(xp, p, lse.double(), he, 0.1, backend=backend)
    with pytest.raises(ValueError, match="dropout_mask float16"):
        hypergraph_aggregate(x, xp, p, 0.1, torch.ones(1, 7, 3, dtype=torch.float16), backend=backend)


@pytest.mark.parametrize("backend", AREA_BACKENDS)
def test_mixed_area_dtypes_raise_on_every_backend(backend):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="inputs must share one dtype .* q float32, k float16, v float32"):
        area_attention(q, k.half(), v, 2, layout="bhdn", backend=backend)


def test_mixed_dtypes_in_a_patched_layer_name_the_layer():
    model = torch.nn.Sequential(AdaHGConv(16, 3, 2)).eval()
    model[0].edge_generator.prototype_base.data = model[0].edge_generator.prototype_base.data.double()
    patch(model, "sdpa")
    with pytest.raises(ValueError, match=r"^0: inputs must share one dtype .* prototypes float64"):
        model(torch.randn(1, 7, 16))


def test_integer_inputs_are_refused():
    x, xp, p = (t.long() for t in tokens())
    with pytest.raises(ValueError, match="inputs must be floating point, got x int64"):
        hypergraph_aggregate(x, xp, p, 0.1)


@pytest.mark.parametrize("backend", HYPERGRAPH_BACKENDS)
def test_autocast_casts_the_same_way_on_every_backend(backend):
    """Inside torch.autocast every backend computes in the autocast dtype (the layer's AMP case: fp32
    prototypes next to fp16 tokens), instead of some casting and some raising."""
    x, xp, p = tokens(n=9)
    skip_unless_supported(HYPERGRAPH, backend, OpCall(HYPERGRAPH, x.device, torch.float16, 16))
    with torch.autocast("cpu", dtype=torch.float16):
        he, lse = hypergraph_aggregate(x.half(), xp.half(), p, 0.1, backend=backend)
        xn = hypergraph_scatter(xp, p, lse, he, 0.1, backend=backend)
    assert he.dtype == xn.dtype == torch.float16 and lse.dtype == torch.float32
    he64, _ = hypergraph_aggregate_reference(x.half().double(), xp.half().double(), p.half().double(), 0.1)
    torch.testing.assert_close(he.double(), he64, rtol=2e-2, atol=2e-2)


def test_scale_must_be_a_positive_real_number():
    with pytest.raises(TypeError, match="scale must be a real number, got str"):
        hypergraph_aggregate(*tokens(), "0.1")
    with pytest.raises(ValueError, match="scale must be finite and > 0, got -0.1"):
        area_attention(*qkv(), 2, -0.1, layout="bhdn")
    with pytest.raises(ValueError, match="scale must be finite and > 0, got nan"):
        hypergraph_aggregate(*tokens(), float("nan"))


def test_non_tensor_inputs_are_named():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):
        area_attention(q, k.tolist(), v, 2, layout="bhdn")


# --- empty inputs: the reference's answer on every backend --------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 2, 16, 8, 2), (1, 2, 16, 0, 1), (2, 2, 16, 0, 2)], ids=["B0", "N0", "N0-area2"])
@pytest.mark.parametrize("backend", AREA_BACKENDS)
def test_empty_area_inputs_match_the_reference(backend, shape):
    b, heads, head_dim, n, area = shape
    leaves = [t.requires_grad_() for t in qkv(b, heads, head_dim, n)]
    skip_unless_supported(AREA, backend, OpCall.for_area(*leaves))
    out = area_attention(*leaves, area, layout="bhdn", backend=backend)
    ref = area_attention_reference(*(t.detach() for t in leaves), area)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in leaves)


@pytest.mark.parametrize(
    "shape", [(0, 5, 16, 3), (1, 0, 16, 3), (2, 0, 16, 4), (2, 7, 16, 0)], ids=["B0", "N0", "B2-N0", "M0"]
)
@pytest.mark.parametrize("backend", HYPERGRAPH_BACKENDS)
def test_empty_hypergraph_inputs_match_the_reference(backend, shape):
    """Old: the Triton aggregation returned NaN for N = 0 (the reference: he = 0, lse = -inf), and its
    backward divided by zero for N = 0 or B = 0."""
    b, n, d, m = shape
    x, xp, p = (t.requires_grad_() for t in tokens(b, n, d, m))
    skip_unless_supported(HYPERGRAPH, backend, OpCall(HYPERGRAPH, x.device, x.dtype, d, True))
    he, lse = hypergraph_aggregate(x, xp, p, 0.1, backend=backend)
    xn = hypergraph_scatter(xp, p, lse, he * 2, 0.1, backend=backend)
    he_ref, lse_ref = hypergraph_aggregate_reference(x, xp, p, 0.1)
    xn_ref = hypergraph_scatter_reference(xp, p, lse_ref, he_ref * 2, 0.1)
    for got, ref in ((he, he_ref), (lse, lse_ref), (xn, xn_ref)):
        assert got.shape == ref.shape and got.dtype == ref.dtype and torch.equal(got, ref), (got, ref)
    got_grads = torch.autograd.grad(he.sum() + xn.sum(), (x, xp, p), allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad(he_ref.sum() + xn_ref.sum(), (x, xp, p), allow_unused=True, materialize_grads=True)
    for got, ref in zip(got_grads, ref_grads):
        assert torch.equal(got, ref)


def test_flash_is_not_launched_on_empty_inputs():
    """FA2 on empty sequences is unspecified: the flash backend answers with the reference (checked on CPU
    by calling the backend's entry points directly; they would fail if they reached a kernel here)."""
    q, k, v = qkv(1, 2, 32, 0, torch.float16)
    out = get_backend(AREA, "flash").forward(q, k, v, 1, 0.2)
    assert out.shape == q.shape and out.dtype == torch.float16
    x, xp, p = tokens(2, 0, 32, 4, torch.float16)
    he, lse = get_backend(HYPERGRAPH, "flash").aggregate(x, xp, p, 0.1, None)
    assert torch.equal(he, torch.zeros(2, 4, 32, dtype=torch.float16)) and torch.equal(
        lse, torch.full((2, 4), -torch.inf)
    )


# --- float64 stays float64 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", HYPERGRAPH_BACKENDS)
def test_float64_hypergraph_keeps_float64(backend):
    """Old: the sdpa aggregation returned lse in float32 for float64 inputs (error 1.2e-8)."""
    x, xp, p = tokens(2, 37, 16, 5, torch.float64)
    skip_unless_supported(HYPERGRAPH, backend, OpCall.for_hypergraph(x, xp, p, None))
    he, lse = hypergraph_aggregate(x, xp, p, 0.1, backend=backend)
    he_ref, lse_ref = hypergraph_aggregate_reference(x, xp, p, 0.1)
    assert he.dtype == lse.dtype == torch.float64
    assert (he - he_ref).abs().max() < 1e-12 and (lse - lse_ref).abs().max() < 1e-12
    xn = hypergraph_scatter(xp, p, lse, he, 0.1, backend=backend)
    assert (
        xn.dtype == torch.float64
        and (xn - hypergraph_scatter_reference(xp, p, lse_ref, he_ref, 0.1)).abs().max() < 1e-12
    )


@pytest.mark.parametrize("backend", HYPERGRAPH_BACKENDS)
def test_float64_hypergraph_gradcheck(backend):
    x, xp, p = (t.requires_grad_() for t in tokens(2, 6, 4, 3, torch.float64))
    skip_unless_supported(HYPERGRAPH, backend, OpCall(HYPERGRAPH, x.device, torch.float64, 4, True, True))
    mask = (torch.rand(2, 6, 3) > 0.3).double() / 0.7
    edge = torch.randn(4, 4, dtype=torch.float64)

    def chain(x, xp, p):
        he, lse = hypergraph_aggregate(x, xp, p, 0.3, mask, backend=backend)
        return he, hypergraph_scatter(xp, p, lse, torch.tanh(he @ edge), 0.3, mask, backend=backend)

    assert torch.autograd.gradcheck(chain, (x, xp, p))


@pytest.mark.parametrize("backend", AREA_BACKENDS)
def test_float64_area_attention_gradcheck(backend):
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 4, 6, torch.float64))
    skip_unless_supported(AREA, backend, OpCall.for_area(q, k, v))
    out = area_attention(q, k, v, 2, layout="bhdn", backend=backend)
    assert out.dtype == torch.float64 and (out - area_attention_reference(q, k, v, 2)).abs().max() < 1e-12
    assert torch.autograd.gradcheck(
        lambda q, k, v: area_attention(q, k, v, 2, layout="bhdn", backend=backend), (q, k, v)
    )


# --- layout: explicit, so an SDPA-layout tensor cannot give a silent wrong answer ----------------------------


def test_layout_is_required():
    with pytest.raises(TypeError, match="layout"):
        area_attention(*qkv(), 2)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"layout must be 'bhdn' .* or 'bhnd' .* got 'nchw'"):
        area_attention(*qkv(), 2, layout="nchw")


@pytest.mark.parametrize("backend", AREA_BACKENDS)
def test_sdpa_layout_gives_sdpa_answer(backend):
    """Old: (B, heads, N, head_dim) tensors were read as (B, heads, head_dim, N): with head_dim == N
    no shape check can tell, and the answer was off by ~1.3. With layout="bhnd" it is SDPA's."""
    q, k, v = (torch.randn(2, 3, 16, 16) for _ in range(3))  # square: N == head_dim
    skip_unless_supported(AREA, backend, OpCall.for_area(q, k, v))
    out = area_attention(q, k, v, 1, layout="bhnd", backend=backend)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    assert out.shape == q.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    wrong = area_attention(q, k, v, 1, layout="bhdn", backend=backend)  # the old reading of the same tensors
    assert (wrong - expected).abs().max() > 0.1


def test_sdpa_layout_areas_follow_the_token_axis():
    q, k, v = qkv(1, 2, 16, 12)
    out = area_attention(q.mT, k.mT, v.mT, 3, layout="bhnd")
    torch.testing.assert_close(out, area_attention_reference(q, k, v, 3).mT)
    with pytest.raises(ValueError, match=r"token count N=12 \(shape \(1, 2, 12, 16\)\) is not divisible by area=5"):
        area_attention(q.mT, k.mT, v.mT, 5, layout="bhnd")


# --- checkpoints loaded without ``import yolo13_attn`` ---------------------------------------------------


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("noimport") / "yolov13n.pt"
    YOLO("yolov13n.yaml").save(path)
    return path


@pytest.mark.slow
def test_checkpoint_without_import_says_to_import(saved_checkpoint):
    """Old: ``AttributeError: Can't get attribute 'DSC3k2'``, which never named this library."""
    result = _run("from ultralytics import YOLO\nYOLO('yolov13n.pt')", saved_checkpoint.parent)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("KeyError") and "run `import yolo13_attn`" in last, result.stderr[-2000:]
    assert re.search(r"ultralytics\.nn\.modules\.\w+\.\w+ is a YOLOv13 layer that stock Ultralytics lacks", last)


@pytest.mark.slow
def test_checkpoint_still_loads_where_the_names_exist_without_this_library(saved_checkpoint):
    """The official YOLOv13 code has the classes under Ultralytics' module names and no yolo13_attn: the
    name check passes and the file loads. Stand-in classes play the official ones here."""
    from yolo13_attn.integration.checkpoints import _REGISTERED

    names = {module.__name__: [cls.__name__ for cls in classes] for module, classes in _REGISTERED.items()}
    result = _run(
        f"""
        import importlib, sys
        from torch import nn
        for module, classes in {names!r}.items():
            for name in classes:
                setattr(importlib.import_module(module), name, type(name, (nn.Module,), {{"__module__": module}}))
        from ultralytics.nn.tasks import torch_safe_load
        ckpt, _ = torch_safe_load("yolov13n.pt")
        assert "yolo13_attn" not in sys.modules
        print(type(ckpt["model"].model[2]).__qualname__, type(ckpt["model"].model[2]).__module__)
        """,
        saved_checkpoint.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["DSC3k2", "ultralytics.nn.modules.block"]


def test_copies_of_checked_classes_keep_their_class():
    import copy

    from yolo13_attn.nn import DSC3k2

    block = DSC3k2(16, 16, 1)
    for clone in (copy.copy(block), copy.deepcopy(block)):
        assert type(clone) is DSC3k2 and clone is not block


# --- the command line ----------------------------------------------------------------------------------------


def test_cli_help_is_plain_text(capsys):
    from yolo13_attn.__main__ import main

    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    out = capsys.readouterr().out
    assert raised.value.code == 0 and "``" not in out and "info" in out and "demo" in out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["demo", "--backend", "bogus"], "unknown backend 'bogus'; valid backends: auto, naive"),
        (["demo", "--imgsz", "abc"], "--imgsz must be an integer >= 32"),
        (["bogus"], "invalid choice: 'bogus'"),
        ([], "required"),
    ],
    ids=["backend", "imgsz", "command", "none"],
)
def test_cli_bad_arguments_are_one_line(capsys, argv, match):
    """Old: a bad backend printed a traceback."""
    from yolo13_attn.__main__ import main

    with pytest.raises(SystemExit) as raised:
        main(argv)
    err = capsys.readouterr().err
    assert raised.value.code == 2 and len(err.strip().splitlines()) == 1 and match in err, err


def test_cli_bad_backend_from_the_shell_is_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "yolo13_attn", "demo", "--backend", "bogus"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, (
        result.stderr
    )


def test_cli_unsupported_backend_is_one_line(capsys, monkeypatch):
    from yolo13_attn import __main__ as cli

    def refuse(backend, imgsz):
        raise BackendUnsupportedError("model.6.m.0.0.attn: backend 'flash' cannot serve this area call")

    monkeypatch.setattr(cli, "demo", refuse)
    assert cli.main(["demo", "--backend", "flash"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "python -m yolo13_attn demo: error: model.6.m.0.0.attn: backend 'flash' cannot serve this area call"
    ]


def test_info_and_readme_state_the_registry_priority(capsys):
    """Old: ``info`` listed an ``auto`` order that contradicted the README."""
    from yolo13_attn.__main__ import info

    info()
    out = capsys.readouterr().out
    for op, order in ((op, priority(op)) for op in (AREA, HYPERGRAPH)):
        stated = " > ".join(order)
        assert f"{op} backends, declared priority (auto's order where nothing was measured) {stated}:" in out
        assert f"{op}: {stated}" in README, f"README's auto row disagrees with priority({op!r})"


# --- the README quickstart runs as written, on a CPU, without a network ---------------------------------------


def readme_section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


OFFLINE = """
import socket

def _offline(*args, **kwargs):
    raise OSError("network access in the README quickstart")

socket.socket.connect = socket.create_connection = socket.getaddrinfo = _offline
"""


def test_readme_says_how_to_get_the_code():
    url = re.search(r'^Homepage = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert f"git clone {url} && cd {url.rsplit('/', 1)[1]}" in readme_section("Two commands")


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", readme_section("Quickstart"), re.DOTALL)
    assert len(blocks) >= 2
    assert not re.search(r"YOLO\(\"\w+\.pt\"\)", blocks[0].split(".save(")[0]), (
        "the quickstart loads a .pt before it saves one"
    )
    script = OFFLINE + "\n".join(
        f"exec(compile({block!r}, 'README block {i}', 'exec'))" for i, block in enumerate(blocks)
    )
    result = _run(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "yolov13n.pt").exists()
    assert "model.9.branch1.m.hgnn" in result.stdout  # print(handle)


def test_yolo13_attn_exports_what_the_readme_imports():
    for name in ("area_attention", "hypergraph_aggregate", "hypergraph_scatter", "patch", "unpatch"):
        assert hasattr(yolo13_attn, name)
