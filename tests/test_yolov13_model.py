"""YOLOv13 on stock Ultralytics: building, naming, forward, and the official model's math (issue 2)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from yolo13_attn.nn import AAttn, AdaHGConv, AdaHyperedgeGen
from yolo13_attn.testing import randomize_weights

# the official YOLOv13 models: parameter counts of each scale, attention heads, hypergraph sizes
SPEC_PARAMS = {"n": 2_494_151, "s": 9_055_527, "l": 27_627_783, "x": 64_057_511}
SPEC_HEADS = {"n": (2, 4), "s": (4, 8), "l": (8, 8), "x": (12, 12)}  # AAttn heads at P4, P5
SPEC_HYPERGRAPH = {"n": (64, 4), "s": (128, 8), "l": (256, 8), "x": (384, 12)}  # D, M


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scale", list(SPEC_PARAMS))
def test_each_scale_builds_with_spec_parameter_count(scale):
    model = YOLO(f"yolov13{scale}.yaml").model
    assert n_params(model) == SPEC_PARAMS[scale]
    p4_heads, p5_heads = SPEC_HEADS[scale]
    assert {m.num_heads for m in model.model[6].modules() if isinstance(m, AAttn)} == {p4_heads}
    assert {m.num_heads for m in model.model[8].modules() if isinstance(m, AAttn)} == {p5_heads}
    assert {m.area for m in model.model[6].modules() if isinstance(m, AAttn)} == {4}
    d, m = SPEC_HYPERGRAPH[scale]
    gens = [g for g in model.model[9].modules() if isinstance(g, AdaHyperedgeGen)]
    assert len(gens) == 2 and all(tuple(g.prototype_base.shape) == (m, d) and g.num_heads == d // 16 for g in gens)
    n_attn = sum(isinstance(x, AAttn) for x in model.modules())
    assert n_attn == (8 if scale in "ns" else 16)


def test_rebuild_from_model_yaml_matches():
    """Trainers rebuild the model from ``model.yaml``: the same architecture must come back."""
    model = YOLO("yolov13s.yaml").model
    rebuilt = DetectionModel(cfg=model.yaml, verbose=False)
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    assert n_params(rebuilt) == n_params(model)


def test_state_dict_keys_follow_spec_naming():
    keys = set(YOLO("yolov13n.yaml").model.state_dict())
    for key in (
        "model.9.branch1.m.hgnn.edge_generator.prototype_base",
        "model.9.branch1.m.hgnn.edge_generator.context_net.weight",
        "model.9.branch2.m.hgnn.edge_generator.pre_head_proj.weight",
        "model.9.branch1.m.hgnn.edge_proj.0.weight",
        "model.9.branch1.m.hgnn.node_proj.0.bias",
        "model.9.fuse.conv_out.conv.weight",
        "model.6.m.0.0.attn.qk.conv.weight",
        "model.6.m.0.0.attn.v.conv.weight",
        "model.6.m.0.0.attn.pe.conv.weight",
        "model.6.m.0.0.attn.proj.bn.running_mean",
        "model.6.m.0.1.mlp.0.conv.weight",
        "model.5.dw.weight",
        "model.5.pw.weight",
        "model.5.bn.weight",
        "model.2.m.0.cv1.dw.weight",
        "model.11.channel_adjust.conv.weight",
        "model.12.gate",
    ):
        assert key in keys, key
    assert not any(".qkv." in k for k in keys)


def test_forward_non_square_batch_is_finite():
    model = randomize_weights(YOLO("yolov13n.yaml").model, seed=1).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 320, 256))[0]
    anchors = sum((320 // s) * (256 // s) for s in (8, 16, 32))
    assert out.shape == (2, 84, anchors)
    assert torch.isfinite(out).all()


def test_stock_models_unchanged_by_import():
    """YOLO11n / YOLO12n build exactly as without yolo13_attn (counted in a clean interpreter)."""
    code = (
        "from ultralytics import YOLO; import json; print(json.dumps({n: [sum(p.numel() for p in "
        "YOLO(n + '.yaml').model.parameters()), list(YOLO(n + '.yaml').model.state_dict())] "
        "for n in ('yolo11n', 'yolo12n')}))"
    )
    clean = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    for name, (count, keys) in clean.items():
        model = YOLO(f"{name}.yaml").model
        assert n_params(model) == count
        assert list(model.state_dict()) == keys
    assert clean["yolo11n"][0] == 2_624_080 and clean["yolo12n"][0] == 2_602_288


def test_area_not_dividing_tokens_raises_naming_layer_shape_area():
    layer = AAttn(64, num_heads=2, area=4)
    with pytest.raises(ValueError, match=r"AAttn.*area=4.*N=25.*\(1, 2, 32, 25\).*area=4|AAttn.*N=25.*area=4"):
        layer(torch.randn(1, 64, 5, 5))


def test_hypergraph_wrong_channels_raises():
    from yolo13_attn.nn import AdaHGComputation

    with pytest.raises(ValueError, match="AdaHGComputation: expected 64 channels"):
        AdaHGComputation(64, 4, 4)(torch.randn(1, 32, 4, 4))


# --- the unpatched layers compute the official model's math (an independent float64 re-derivation) ---


def spec_area_attention(layer: AAttn, x: torch.Tensor) -> torch.Tensor:
    """Spec steps 1-5 literally, one (image, chunk, head) at a time."""
    b, c, h, w = x.shape
    n, heads, hd = h * w, layer.num_heads, layer.head_dim
    qk, v = layer.qk(x), layer.v(x)
    q, k, vv = qk[:, :c].reshape(b, c, n), qk[:, c:].reshape(b, c, n), v.reshape(b, c, n)
    out = torch.empty_like(vv)
    chunk = n // layer.area
    for i in range(b):
        for a in range(layer.area):
            tokens = slice(a * chunk, (a + 1) * chunk)
            for j in range(heads):
                ch = slice(j * hd, (j + 1) * hd)
                qj, kj, vj = q[i, ch, tokens].T, k[i, ch, tokens].T, vv[i, ch, tokens].T
                out[i, ch, tokens] = (torch.softmax(qj @ kj.T / math.sqrt(hd), dim=-1) @ vj).T
    return layer.proj(out.reshape(b, c, h, w) + layer.pe(v))


@pytest.mark.parametrize("area,hw", [(1, (5, 7)), (4, (8, 6)), (2, (3, 4))])
def test_unpatched_aattn_equals_spec_math(area, hw):
    layer = randomize_weights(AAttn(64, num_heads=2, area=area)).double().eval()
    x = torch.randn(2, 64, *hw, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), spec_area_attention(layer, x), rtol=1e-10, atol=1e-10)


def spec_hypergraph(conv: AdaHGConv, x: torch.Tensor, dropout: torch.nn.Module) -> torch.Tensor:
    """AdaHyperedgeGen steps 1-6 with per-head means, then AdaHGConv, literally."""
    gen = conv.edge_generator
    b, n, d = x.shape
    m = gen.prototype_base.shape[0]
    context = torch.cat([x.mean(1), x.max(1).values], -1)
    protos = gen.prototype_base + gen.context_net(context).view(b, m, d)
    xp = gen.pre_head_proj(x)
    heads, hd = gen.num_heads, d // gen.num_heads
    per_head = torch.stack(
        [
            (xp[..., i * hd : (i + 1) * hd] @ protos[..., i * hd : (i + 1) * hd].transpose(1, 2)) / math.sqrt(hd)
            for i in range(heads)
        ]
    )
    a = torch.softmax(dropout(per_head.mean(0)), dim=1)
    he = conv.edge_proj(a.transpose(1, 2) @ x)
    return conv.node_proj(a @ he) + x


@pytest.mark.parametrize("train", [False, True])
def test_unpatched_hypergraph_equals_spec_math(train):
    conv = randomize_weights(AdaHGConv(64, num_hyperedges=5, num_heads=4, dropout=0.3)).double().train(train)
    x = torch.randn(2, 37, 64, dtype=torch.float64)
    torch.manual_seed(7)
    out = conv(x)
    torch.manual_seed(7)
    expected = spec_hypergraph(conv, x, conv.edge_generator.dropout)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_hyperedge_generator_dropout_matches_dropout_on_logits():
    gen = AdaHyperedgeGen(32, 6, num_heads=2, dropout=0.5).double().train()
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    torch.manual_seed(3)
    weights = gen(x)
    torch.manual_seed(3)
    logits = (gen.pre_head_proj(x) @ gen.prototypes(x).transpose(1, 2)) * gen.scale
    expected = F.dropout(logits, 0.5, training=True).softmax(dim=1)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=1e-12)
    assert (weights.sum(dim=1) - 1).abs().max() < 1e-12


@pytest.mark.parametrize("context", ["mean", "max", "both"])
def test_hyperedge_contexts(context):
    gen = AdaHyperedgeGen(16, 3, num_heads=2, context=context).eval()
    assert gen.context_net.in_features == (32 if context == "both" else 16)
    assert gen(torch.randn(2, 9, 16)).shape == (2, 9, 3)


def test_bad_context_raises():
    with pytest.raises(ValueError, match="context"):
        AdaHyperedgeGen(16, 3, context="median")
