"""Candidate cuts: invariants, dedup, outer-scope crossing, edge cases, scale."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, parser

from edgecut.errors import UnknownCutError
from edgecut.partitioner import Cut, analyse_graph, get_cut, list_cuts
from edgecut.zoo import ZOO, if_model, loop_model


def _closed_under_predecessors(model: onnx.ModelProto, cut: Cut) -> bool:
    info = analyse_graph(model)
    device = set(cut.device_node_indices)
    for i in device:
        for name in info.node_inputs[i]:
            src = info.producer.get(name)
            if src is not None and src not in info.constant_nodes and src not in device:
                return False
    return True


def _brute_force_crossing(model: onnx.ModelProto, cut: Cut) -> tuple[str, ...]:
    info = analyse_graph(model)
    device = set(cut.device_node_indices)
    have = set(info.inputs) | {o for i in device for o in info.node_outputs[i]}
    needed = {t for i in cut.cloud_node_indices for t in info.node_inputs[i] if not info.is_static(t)}
    return tuple(sorted(have & needed))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_cut_invariants(name: str) -> None:
    model = ZOO[name]()
    cuts = list_cuts(model)
    info = analyse_graph(model)
    n = len(info.order)
    assert [c.id for c in cuts] == list(range(len(cuts)))
    assert cuts[0].device_nodes == 0 and cuts[-1].device_nodes == n
    assert cuts[0].crossing == tuple(sorted(info.inputs))
    assert cuts[-1].crossing == () and cuts[-1].cloud_outputs == () and cuts[-1].down_bytes == 0
    assert cuts[0].device_outputs == ()
    positions = [c.device_nodes for c in cuts]
    assert positions == sorted(set(positions))
    assert len({c.crossing for c in cuts}) == len(cuts)
    for cut in cuts:
        assert cut.device_nodes + cut.cloud_nodes == n
        assert _closed_under_predecessors(model, cut)
        assert cut.crossing == _brute_force_crossing(model, cut)
        assert not set(cut.crossing) & info.initializers
        assert set(cut.device_outputs) | set(cut.cloud_outputs) == set(info.outputs)
        assert not set(cut.device_outputs) & set(cut.cloud_outputs)
        assert cut.bytes == sum(t.nbytes for t in cut.crossing_tensors)


def test_cuts_are_deterministic() -> None:
    model = ZOO["multi_branch"]()
    assert list_cuts(model) == list_cuts(ZOO["multi_branch"]())


def test_duplicate_crossing_sets_keep_the_first_prefix() -> None:
    # After `a`, computing the unused `dead` leaves the crossing set {a} unchanged.
    model = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y, float[4] dead2) {
          a = Relu(x)
          dead = Neg(a)
          dead2 = Abs(dead)
          y = Exp(a)
        }
        """
    )
    cuts = list_cuts(model)
    # prefixes: 0 {x}; 1 {a}; 2 {a, dead}; 3 {a} (dup of 1); 4 {}
    assert [(c.device_nodes, c.crossing) for c in cuts] == [
        (0, ("x",)),
        (1, ("a",)),
        (2, ("a", "dead")),
        (4, ()),
    ]
    assert [c.id for c in cuts] == [0, 1, 2, 3]
    assert cuts[1].device_outputs == () and cuts[1].cloud_outputs == ("y", "dead2")


def test_tensor_read_by_several_cloud_nodes_crosses_once() -> None:
    model = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) {
          a = Relu(x)
          b = Neg(a)
          c = Exp(a)
          y = Add(b, c)
        }
        """
    )
    cut = list_cuts(model)[1]
    assert cut.crossing == ("a",) and cut.bytes == 16


def _crossing_when_in_cloud(model: onnx.ModelProto, op_type: str) -> tuple[str, ...]:
    info = analyse_graph(model)
    index = next(i for i, n in enumerate(model.graph.node) if n.op_type == op_type)
    at = info.order.index(index)
    cut = next(c for c in list_cuts(model) if c.device_nodes == at)
    return cut.crossing


def test_outer_scope_values_of_if_branches_cross_when_the_if_runs_in_the_cloud() -> None:
    model = if_model()
    crossing = _crossing_when_in_cloud(model, "If")
    names = {n.op_type: n.output[0] for n in model.graph.node}
    # `a` (Relu) and `x2` (Mul) are read only inside the branches (and later for `a`).
    assert names["Mul"] in crossing
    assert names["Greater"] in crossing
    assert any(t.startswith("relu") for t in crossing)
    assert not any(t.startswith(("shared", "w")) for t in crossing)


def test_outer_scope_values_of_loop_body_cross_when_the_loop_runs_in_the_cloud() -> None:
    model = loop_model()
    crossing = _crossing_when_in_cloud(model, "Loop")
    w = next(n.output[0] for n in model.graph.node if n.op_type == "Tanh")
    assert w in crossing
    assert not any(t.startswith("w") and t[1:].isdigit() for t in crossing)


def test_unknown_cut_id() -> None:
    cuts = list_cuts(ZOO["chain_cnn"]())
    assert get_cut(cuts, 3).id == 3
    with pytest.raises(UnknownCutError, match=rf"cut 99 does not exist.*0\.\.{len(cuts) - 1}"):
        get_cut(cuts, 99)


def _big_dag(n_blocks: int) -> onnx.ModelProto:
    """A residual chain of tiny tensors: 5 nodes per block, a skip every block."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    t = "x"
    for k in range(n_blocks):
        w = f"w{k}"
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), w))
        nodes += [
            helper.make_node("MatMul", [t, w], [f"m{k}"]),
            helper.make_node("Relu", [f"m{k}"], [f"r{k}"]),
            helper.make_node("Neg", [t], [f"n{k}"]),
            helper.make_node("Add", [f"r{k}", f"n{k}"], [f"a{k}"]),
            helper.make_node("Tanh", [f"a{k}"], [f"t{k}"]),
        ]
        t = f"t{k}"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1, 4])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_five_thousand_node_dag_lists_cuts() -> None:
    model = _big_dag(1000)
    cuts = list_cuts(model)
    assert cuts[-1].device_nodes == 5000
    assert len(cuts) == len({c.crossing for c in cuts})
    assert max(len(c.crossing) for c in cuts) == 2
