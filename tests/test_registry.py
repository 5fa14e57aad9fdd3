"""The registry is open: a backend is one class that declares what it serves and registers itself."""

from __future__ import annotations

import pytest
import torch

from yolo13_attn import patch
from yolo13_attn.backends import AREA, HYPERGRAPH, backend_names, get_backend, priority, validate_name
from yolo13_attn.backends.naive import NaiveAreaAttention
from yolo13_attn.backends.registry import _BACKENDS, register
from yolo13_attn.nn import AAttn


@pytest.fixture
def echo_backend():
    """A backend defined outside the package: the reference math under another name, ranked first."""

    calls = []

    @register
    class EchoAreaAttention(NaiveAreaAttention):
        name = "echo"
        priority = compiled_priority = 1

        @classmethod
        def forward(cls, q, k, v, area, scale):
            calls.append(tuple(q.shape))
            return super().forward(q, k, v, area, scale)

    yield calls
    del _BACKENDS[(AREA, "echo")]


def test_a_registered_class_is_a_backend_everywhere(echo_backend):
    assert "echo" in backend_names() and validate_name("ECHO") == "echo"
    assert priority(AREA)[0] == "echo" and "echo" not in priority(HYPERGRAPH)
    layer = AAttn(64, 2, area=2).eval()
    handle = patch(layer, "auto")
    with torch.no_grad():
        layer(torch.rand(1, 64, 4, 6))
    assert echo_backend == [(1, 2, 32, 24)] and handle.report()[0].backend == "echo"


def test_a_backend_without_an_op_is_refused_for_that_op(echo_backend):
    with pytest.raises(Exception, match="backend 'echo' has no hypergraph implementation"):
        get_backend(HYPERGRAPH, "echo")


@pytest.mark.parametrize("name", ["auto", "not a name"])
def test_register_refuses_names_that_cannot_be_backends(name):
    with pytest.raises(ValueError, match="cannot name a backend"):
        register(type("Bad", (NaiveAreaAttention,), {"name": name}))
