"""The zoo: every model is valid, small, runs, and is deterministic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgecut.partitioner import analyse_graph, run_model
from edgecut.zoo import ZOO, find_packaged_model, sample_inputs


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_is_valid_small_and_runs(name: str) -> None:
    model = ZOO[name]()
    onnx.checker.check_model(model, full_check=True)
    assert 10 <= len(analyse_graph(model).order) <= 60
    outputs = run_model(model, sample_inputs(model))
    assert [o.name for o in model.graph.output] == list(outputs)
    for value in outputs.values():
        assert np.all(np.isfinite(value))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_are_deterministic(name: str) -> None:
    assert ZOO[name]().SerializeToString() == ZOO[name]().SerializeToString()


def test_zoo_opsets() -> None:
    opsets = {name: {o.domain: o.version for o in f().opset_import} for name, f in ZOO.items()}
    assert opsets.pop("chain_cnn_opset11") == {"": 11}
    assert all(o == {"": 17} for o in opsets.values())


def test_sample_inputs_follow_declared_dtypes_and_given_shapes() -> None:
    feeds = sample_inputs(ZOO["transformer_block"]())
    assert feeds["tokens"].dtype == np.float32 and feeds["tokens"].shape == (1, 16, 32)
    assert feeds["mask"].dtype == np.bool_
    dynamic = ZOO["dynamic_cnn"]()
    assert sample_inputs(dynamic)["x"].shape == (1, 3, 32, 32)
    assert sample_inputs(dynamic, {"x": [2, 3, 8, 12]})["x"].shape == (2, 3, 8, 12)
    again = sample_inputs(dynamic, seed=0)["x"]
    assert np.array_equal(sample_inputs(dynamic, seed=0)["x"], again)
    assert not np.array_equal(sample_inputs(dynamic, seed=1)["x"], again)


def test_find_packaged_model_returns_none_for_absent_package() -> None:
    assert find_packaged_model("edgecut_no_such_package_xyz") is None
    assert find_packaged_model("edgecut", "models/none.onnx") is None
