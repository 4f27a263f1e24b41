"""Head/tail extraction edge cases, each on a tiny model written in ONNX text format."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import parser

from edgecut.errors import UnknownCutError
from edgecut.partitioner import analyse_graph, list_cuts, run_model, sample_inputs, split_model
from edgecut.zoo import chain_cnn, dynamic_cnn, if_model

EDGES = """
<ir_version: 8, opset_import: ["" : 17]>
edges (float[2,3] x, float[2,3] z) => (float[2,3] z, float[2,3] a, float[2,3] y) {
  a = Relu(x)
  b = Add(a, x)
  c = Mul(b, a)
  y = Add(c, x)
}
"""


@pytest.fixture
def edges() -> onnx.ModelProto:
    model = parser.parse_model(EDGES)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_edge_cases_split_exactly_at_every_cut(
    edges: onnx.ModelProto, check_cut: Callable[..., float]
) -> None:
    feeds = sample_inputs(edges)
    full = run_model(edges, feeds)
    for cut in list_cuts(edges):
        check_cut(edges, cut, feeds, full)


def test_graph_output_that_is_a_graph_input(edges: onnx.ModelProto) -> None:
    cuts = list_cuts(edges)
    # At cut 0 the cloud returns `z`, so the device sends it; afterwards the head returns it.
    assert "z" in cuts[0].crossing and "z" in cuts[0].cloud_outputs
    for cut in cuts[1:]:
        assert "z" in cut.device_outputs and "z" not in cut.crossing
        head, _ = split_model(edges, cut)
        assert head is not None
        assert "z" in [i.name for i in head.graph.input]
        assert "z" in [o.name for o in head.graph.output]


def test_graph_input_used_on_device_and_in_cloud_is_forwarded(edges: onnx.ModelProto) -> None:
    cut = list_cuts(edges)[1]  # a = Relu(x) on the device
    assert cut.crossing == ("a", "x")
    head, tail = split_model(edges, cut)
    assert head is not None and tail is not None
    assert [i.name for i in head.graph.input] == ["x", "z"]  # z: returned as is
    assert [o.name for o in head.graph.output] == ["a", "z"]  # x is not a head output
    assert [i.name for i in tail.graph.input] == ["a", "x"]


def test_device_output_also_read_in_the_cloud_is_listed_once(edges: onnx.ModelProto) -> None:
    cut = list_cuts(edges)[1]
    assert "a" in cut.crossing and "a" in cut.device_outputs
    head, _ = split_model(edges, cut)
    assert head is not None
    names = [o.name for o in head.graph.output]
    assert names.count("a") == 1


def test_cut_zero_has_no_head_and_the_tail_is_the_full_model() -> None:
    model = chain_cnn()
    head, tail = split_model(model, list_cuts(model)[0])
    assert head is None and tail is not None
    assert list(tail.graph.node) == list(model.graph.node)
    assert list(tail.graph.initializer) == list(model.graph.initializer)
    assert list(tail.graph.input) == list(model.graph.input)
    assert list(tail.graph.output) == list(model.graph.output)


def test_last_cut_has_no_tail_and_the_head_is_the_full_model() -> None:
    model = chain_cnn()
    head, tail = split_model(model, list_cuts(model)[-1])
    assert tail is None and head is not None
    assert list(head.graph.node) == list(model.graph.node)
    assert list(head.graph.output) == list(model.graph.output)


def test_boundary_tensors_are_declared_with_dtype_and_shape() -> None:
    model = chain_cnn()
    cut = list_cuts(model)[3]
    head, tail = split_model(model, cut)
    assert head is not None and tail is not None
    (crossing,) = cut.crossing_tensors
    vi = head.graph.output[0]
    assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert tuple(d.dim_value for d in vi.type.tensor_type.shape.dim) == crossing.shape
    assert tail.graph.input[0] == vi


def test_boundary_tensors_of_dynamic_models_keep_symbolic_dims() -> None:
    model = dynamic_cnn()
    cut = list_cuts(model)[3]
    _, tail = split_model(model, cut)
    assert tail is not None
    dims = tail.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 8
    assert not dims[2].HasField("dim_value")


def test_initializer_used_on_both_sides_is_copied_to_both() -> None:
    model = if_model()
    info = analyse_graph(model)
    shared = next(t.name for t in model.graph.initializer if t.name.startswith("shared"))
    both_sides = 0
    for cut in list_cuts(model):
        head, tail = split_model(model, cut)
        on_device = any(shared in info.node_inputs[i] for i in cut.device_node_indices)
        in_cloud = any(shared in info.node_inputs[i] for i in cut.cloud_node_indices)
        both_sides += on_device and in_cloud
        head_inits = {t.name for t in head.graph.initializer} if head is not None else set()
        tail_inits = {t.name for t in tail.graph.initializer} if tail is not None else set()
        assert (shared in head_inits) == on_device
        assert (shared in tail_inits) == in_cloud
    assert both_sides >= 3


def test_split_rejects_a_cut_of_another_model() -> None:
    cut = list_cuts(chain_cnn())[2]
    with pytest.raises(UnknownCutError, match="another model"):
        split_model(dynamic_cnn(), cut)


def test_parts_run_with_only_their_own_inputs(edges: onnx.ModelProto) -> None:
    feeds = sample_inputs(edges)
    for cut in list_cuts(edges):
        head, _ = split_model(edges, cut)
        if head is not None:
            names = [i.name for i in head.graph.input]
            out = run_model(head, {n: feeds[n] for n in names})
            assert all(isinstance(v, np.ndarray) for v in out.values())
