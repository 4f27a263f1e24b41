"""Random DAGs (several inputs and outputs, skips, shared readers): every cut's crossing set
equals brute force, and every cut splits exactly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgecut.partitioner import GraphInfo, analyse_graph, list_cuts, run_model, sample_inputs

UNARY = ["Relu", "Neg", "Tanh", "Abs", "Sigmoid"]
BINARY = ["Add", "Mul", "Sub", "Max"]


@st.composite
def random_dags(draw: st.DrawFn) -> onnx.ModelProto:
    n_inputs = draw(st.integers(1, 3))
    tensors = [f"in{i}" for i in range(n_inputs)]
    nodes = []
    init = numpy_helper.from_array(np.full((2, 3), 0.5, np.float32), "w")
    for k in range(draw(st.integers(1, 14))):
        out = f"t{k}"
        if draw(st.booleans()):
            a = draw(st.sampled_from([*tensors, "w"]))
            b = draw(st.sampled_from(tensors))
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), [a, b], [out]))
        else:
            a = draw(st.sampled_from(tensors))
            nodes.append(helper.make_node(draw(st.sampled_from(UNARY)), [a], [out]))
        tensors.append(out)
    produced = tensors[n_inputs:]
    outs = draw(st.lists(st.sampled_from(produced), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        outs.append("in0")  # an input returned as is
    vi = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [2, 3]) for t in tensors]
    graph = helper.make_graph(
        nodes,
        "random",
        vi[:n_inputs],
        [vi[tensors.index(o)] for o in outs],
        initializer=[init],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@settings(max_examples=40, deadline=None)
@given(model=random_dags())
def test_random_dags_split_exactly_at_every_cut(
    model: onnx.ModelProto, check_cut: Callable[..., float]
) -> None:
    info = analyse_graph(model)
    feeds = sample_inputs(model)
    full = run_model(model, feeds)
    cuts = list_cuts(model)
    assert [(c.device_nodes, c.crossing) for c in cuts] == _brute_force_cuts(info)
    for cut in cuts:
        check_cut(model, cut, feeds, full)


def _brute_force_cuts(info: GraphInfo) -> list[tuple[int, tuple[str, ...]]]:
    """The documented rule, by full recomputation at every prefix."""
    order, n = info.order, len(info.order)
    kept: list[tuple[int, tuple[str, ...]]] = []
    for k in range(n + 1):
        device = set(order[:k])
        made = {o for i in device for o in info.node_outputs[i]}
        needed = {t for i in order[k:] for t in info.node_inputs[i] if not info.is_static(t)}
        crossing = tuple(sorted((set(info.inputs) | made) & needed))
        if k == 0:
            crossing = tuple(sorted(set(crossing) | (set(info.inputs) & set(info.outputs))))
        on_device = [o for o in info.outputs if o in made or (k > 0 and o in info.inputs)]
        sends = bool(made & set(crossing)) or bool(on_device)
        returns = len(on_device) < len(info.outputs)
        if k in (0, n) or (sends and returns and crossing not in {c for _, c in kept}):
            kept.append((k, crossing))
    return kept
