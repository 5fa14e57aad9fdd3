"""``auto`` from measured data: the shipped table, the ranking, and that dispatch follows it."""

from __future__ import annotations

import math

import pytest
import torch

from yolo13_attn.backends import measured, registry
from yolo13_attn.backends.base import AREA, HYPERGRAPH, OpCall

GPU = {"name": "Test GPU 80GB", "capability": "9.0", "torch": "2.11.0", "date": "2026-11-25"}


def entry(op: str, mode: str, ms: dict[str, float], head_dim: int = 32, dtype: str = "fp16") -> dict:
    return {"op": op, "mode": mode, "dtype": dtype, "head_dim": head_dim, "shape": "s", "batch": 1, "ms": ms}


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device named like ``GPU`` and a table measured on it: the reference fastest in training, SDPA in
    inference; the hypergraph at head dim 64 ranked apart from other widths."""
    table = {
        "gpus": [
            {
                **GPU,
                "entries": [
                    entry(AREA, "inference", {"sdpa": 1.0, "naive": 3.0, "triton": 2.0}),
                    entry(AREA, "inference", {"sdpa": 2.0, "naive": 5.0, "triton": 3.0}),
                    entry(AREA, "training", {"sdpa": 4.0, "naive": 1.0, "flash": 2.0}),
                    entry(HYPERGRAPH, "inference", {"sdpa": 1.0, "naive": 2.0}, head_dim=64),
                    entry(HYPERGRAPH, "inference", {"sdpa": 2.0, "naive": 1.0}, head_dim=384),
                ],
            }
        ]
    }
    monkeypatch.setattr(measured, "table", lambda path=measured.DATA: table)
    monkeypatch.setattr(measured, "_gpu_identity", lambda index: (GPU["name"], "9.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return table


def call(op: str = AREA, grad: bool = False, head_dim: int = 32, compiling: bool = False) -> OpCall:
    return OpCall(op, torch.device("cuda", 0), torch.float16, head_dim, grad, False, compiling)


def test_rank_is_the_geometric_mean_of_slowdowns():
    entries = [{"ms": {"a": 1.0, "b": 2.0, "c": 0.5}}, {"ms": {"a": 4.0, "b": 2.0}}, {"ms": {"a": 1.0, "b": 3.0}}]
    ranked = measured.rank(entries)
    assert [name for name, _ in ranked] == ["a", "b"]  # c was timed on one shape of three: left out
    scores = dict(ranked)
    assert math.isclose(scores["a"], (2.0 * 2.0 * 1.0) ** (1 / 3))  # 1/0.5, 4/2, 1/1
    assert math.isclose(scores["b"], (4.0 * 1.0 * 3.0) ** (1 / 3))  # 2/0.5, 2/2, 3/1
    assert measured.rank([]) == []


def test_order_differs_by_mode_and_head_dim(fake_gpu):
    assert measured.measured_order(call()).names[0] == "sdpa"
    assert measured.measured_order(call(grad=True)).names[0] == "naive"
    assert measured.measured_order(call(HYPERGRAPH, head_dim=64)).names[0] == "sdpa"
    assert measured.measured_order(call(HYPERGRAPH, head_dim=384)).names[0] == "naive"
    basis = measured.measured_order(call(grad=True)).basis
    assert "Test GPU 80GB" in basis and "training fp16" in basis and "1 shapes" in basis


def test_unmeasured_calls_keep_the_declared_priority(fake_gpu):
    cpu = OpCall(AREA, torch.device("cpu"), torch.float16, 32)
    assert measured.measured_order(cpu) is None
    assert measured.measured_order(OpCall(AREA, torch.device("cuda", 0), torch.float64, 32)) is None
    order, basis = registry.auto_order(cpu)
    assert order == registry.priority(AREA) and basis.startswith("declared priority")


def test_dispatch_follows_the_measurements(fake_gpu):
    """select() takes the measured order: SDPA for inference, the reference for training on this table."""
    assert registry.select(call(), "auto")[0].name == "sdpa"
    assert registry.select(call(grad=True), "auto")[0].name == "naive"


def test_measured_order_keeps_compile_exclusions(fake_gpu):
    """A backend declared unfit under torch.compile (compiled_priority None) stays out even if measured."""
    excluded = [n for n in registry.backend_names() if n not in registry.priority(AREA, compiling=True)]
    order, _ = registry.auto_order(call(grad=True, compiling=True))
    assert not set(excluded) & set(order)
    assert order[0] == "naive"


def test_a_gpu_of_the_same_capability_uses_the_table(fake_gpu, monkeypatch):
    monkeypatch.setattr(measured, "_gpu_identity", lambda index: ("Other GPU", "9.0"))
    assert measured.measured_order(call()).names[0] == "sdpa"
    monkeypatch.setattr(measured, "_gpu_identity", lambda index: ("Other GPU", "8.0"))
    assert measured.measured_order(call()) is None


def test_shipped_table_is_well_formed():
    data = measured.table()
    assert data["gpus"], "the package ships measurements"
    names = set(registry.backend_names())
    for gpu in data["gpus"]:
        assert {"name", "capability", "torch", "date", "entries"} <= set(gpu)
        for e in gpu["entries"]:
            assert e["op"] in (AREA, HYPERGRAPH) and e["mode"] in ("inference", "training")
            assert e["dtype"] in measured.DTYPE_NAMES.values()
            assert set(e["ms"]) <= names and len(e["ms"]) > 1
            assert all(ms > 0 for ms in e["ms"].values())
