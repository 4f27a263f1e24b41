"""Shared checks for the partitioner tests: the invariants every head/tail pair must keep."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
import pytest

from edgecut.partitioner import (
    Cut,
    analyse_graph,
    compare_outputs,
    head_outputs,
    run_split_locally,
    split_model,
    tolerance_for,
)


def _used_names(model: onnx.ModelProto) -> set[str]:
    info = analyse_graph(model)
    used = {name for reads in info.node_inputs for name in reads}
    return used | set(info.outputs)


def assert_part_valid(part: onnx.ModelProto, full: onnx.ModelProto) -> None:
    onnx.checker.check_model(part, full_check=True)
    assert list(part.opset_import) == list(full.opset_import)
    assert part.ir_version == full.ir_version
    assert list(part.functions) == list(full.functions)
    used = _used_names(part)
    unused = [t.name for t in part.graph.initializer if t.name not in used]
    assert not unused, f"initializers carried but never read: {unused}"
    full_inits = {t.name: t for t in full.graph.initializer}
    for t in part.graph.initializer:
        assert t == full_inits[t.name]
    constants = [n.output[0] for n in part.graph.node if n.op_type == "Constant"]
    assert not [c for c in constants if c not in used], "Constant nodes nobody reads"


def assert_cut_splits_exactly(
    model: onnx.ModelProto,
    cut: Cut,
    feeds: Mapping[str, np.ndarray],
    full_outputs: Mapping[str, np.ndarray],
) -> float:
    """Head and tail are valid and head-then-tail equals the full model; returns the diff."""
    info = analyse_graph(model)
    head, tail = split_model(model, cut, graph=info)
    assert (head is None) == (cut.device_nodes == 0)
    assert (tail is None) == (cut.cloud_nodes == 0 and not cut.cloud_outputs)
    if head is not None:
        assert_part_valid(head, model)
        assert [o.name for o in head.graph.output] == list(head_outputs(cut, info))
        assert len(head.graph.node) - _count_constants(head) == cut.device_nodes
    if tail is not None:
        assert_part_valid(tail, model)
        real_inputs = {t.name for t in tail.graph.initializer}
        tail_inputs = [i.name for i in tail.graph.input if i.name not in real_inputs]
        assert tail_inputs == list(cut.crossing)
        assert [o.name for o in tail.graph.output] == list(cut.cloud_outputs)
        assert len(tail.graph.node) - _count_constants(tail) == cut.cloud_nodes
    split = run_split_locally(head, tail, feeds)
    assert set(split) >= set(full_outputs)
    diffs = compare_outputs(full_outputs, split)
    worst = max(diffs.values(), default=0.0)
    assert worst <= tolerance_for(full_outputs), f"cut {cut.id}: {diffs}"
    return worst


def _count_constants(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "Constant")


@pytest.fixture(scope="session")
def check_cut() -> Callable[..., float]:
    return assert_cut_splits_exactly


@pytest.fixture(scope="session")
def check_part() -> Callable[[onnx.ModelProto, onnx.ModelProto], None]:
    return assert_part_valid
