"""Graph analysis: topological order, outer-scope reads, inputs that are initializers."""

from __future__ import annotations

import onnx
import pytest
from onnx import parser

from edgecut.errors import BadModelError
from edgecut.partitioner import analyse_graph, outer_scope_names
from edgecut.zoo import chain_cnn_opset11, if_model, loop_model


def test_order_is_topological_with_original_position_as_tiebreak() -> None:
    model = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          b = Relu(a)
          a = Neg(x)
          c = Abs(x)
          y = Add(b, c)
        }
        """
    )
    info = analyse_graph(model)
    assert info.order == (1, 0, 2, 3)
    assert info.consumers["x"] == (1, 2)
    assert info.producer["y"] == 3


def test_if_node_reads_outer_scope_names_of_its_branches() -> None:
    model = if_model()
    info = analyse_graph(model)
    (i,) = [k for k, n in enumerate(model.graph.node) if n.op_type == "If"]
    reads = info.node_inputs[i]
    shared = next(t.name for t in model.graph.initializer if t.name.startswith("shared"))
    assert shared in reads
    assert len(reads) == 6  # cond, a, x2, the shared initializer and both branch weights
    assert "t0" not in reads and "branch_out" not in reads  # defined inside the branch


def test_loop_body_outer_scope_names_exclude_body_inputs() -> None:
    model = loop_model()
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    outer = outer_scope_names(loop.attribute[0].g)
    assert len(outer) == 2  # the weight initializer and the outer tensor `w`
    assert not {"i", "cond_in", "s_in", "m", "a"} & set(outer)


def test_nested_subgraph_reads_propagate_outwards() -> None:
    inner = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["deep", "mid"], ["o"])],
        "inner",
        [],
        [onnx.helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [1])],
    )
    middle = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Identity", ["top"], ["mid"]),
            onnx.helper.make_node("If", ["c"], ["r"], then_branch=inner, else_branch=inner),
        ],
        "middle",
        [],
        [onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [1])],
    )
    assert outer_scope_names(middle) == ("top", "c", "deep")


def test_initializers_listed_as_inputs_are_not_graph_inputs() -> None:
    model = chain_cnn_opset11()
    assert len(model.graph.input) > 1
    info = analyse_graph(model)
    assert info.inputs == ("x",)
    assert info.constants  # weights held in Constant nodes
    assert len(info.order) + len(info.constant_nodes) == len(model.graph.node)


def test_undefined_name_is_a_bad_model() -> None:
    model = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          y = Add(x, ghost)
        }
        """
    )
    with pytest.raises(BadModelError, match="'ghost'"):
        analyse_graph(model)


def test_cycle_is_a_bad_model() -> None:
    model = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
          a = Add(x, b)
          b = Relu(a)
          y = Identity(b)
        }
        """
    )
    with pytest.raises(BadModelError, match="cycle"):
        analyse_graph(model)
