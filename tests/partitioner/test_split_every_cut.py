"""The core acceptance test: for every zoo model and every candidate cut, head and tail are
valid models and head-then-tail equals the full model within tolerance."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest

from edgecut.partitioner import list_cuts, run_model
from edgecut.zoo import ZOO, dynamic_cnn, if_model, sample_inputs


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_cut_of_every_zoo_model_splits_exactly(name: str, check_cut: Callable[..., float]) -> None:
    model = ZOO[name]()
    cuts = list_cuts(model)
    assert len(cuts) >= 9
    feeds = sample_inputs(model, seed=1)
    full = run_model(model, feeds)
    for cut in cuts:
        check_cut(model, cut, feeds, full)


@pytest.mark.parametrize("shapes", [{"x": [2, 3, 16, 24]}, {"x": [1, 3, 8, 8]}])
def test_dynamic_model_splits_exactly_at_other_shapes(
    shapes: dict[str, list[int]], check_cut: Callable[..., float]
) -> None:
    model = dynamic_cnn()
    feeds = sample_inputs(model, shapes, seed=2)
    full = run_model(model, feeds)
    for cut in list_cuts(model, shapes):
        check_cut(model, cut, feeds, full)


def test_parts_of_a_dynamic_model_stay_dynamic() -> None:
    """Cut at the default shapes, the parts still run at another batch and size."""
    from edgecut.partitioner import run_split_locally, split_model, within_tolerance

    model = dynamic_cnn()
    feeds = sample_inputs(model, {"x": [3, 3, 12, 20]})
    full = run_model(model, feeds)
    for cut in list_cuts(model):
        head, tail = split_model(model, cut)
        assert within_tolerance(full, run_split_locally(head, tail, feeds))


def test_if_model_both_branches_split_exactly(check_cut: Callable[..., float]) -> None:
    model = if_model()
    branches = set()
    for seed in range(20):
        feeds = sample_inputs(model, seed=seed)
        full = run_model(model, feeds)
        cond = _if_condition(model, feeds)
        if cond in branches:
            continue
        branches.add(cond)
        for cut in list_cuts(model):
            check_cut(model, cut, feeds, full)
    assert branches == {True, False}


def _if_condition(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> bool:
    cond = next(n.input[0] for n in model.graph.node if n.op_type == "If")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.ValueInfoProto(name=cond))
    return bool(run_model(probe, feeds, output_names=[cond])[cond])
