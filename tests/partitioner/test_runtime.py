"""Local runs and the tolerance rule: max|a-b| <= 1e-5 * max(1, max|full|)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecut.errors import BadInputError, BadModelError
from edgecut.partitioner import (
    compare_outputs,
    run_model,
    run_split_locally,
    tolerance_for,
    within_tolerance,
)
from edgecut.zoo import chain_cnn, sample_inputs


def test_tolerance_scales_with_the_largest_output() -> None:
    assert tolerance_for({"y": np.array([0.5, -0.2], np.float32)}) == pytest.approx(1e-5)
    assert tolerance_for({"y": np.array([1000.0, -3000.0])}) == pytest.approx(3e-2)
    big = {"y": np.array([1000.0])}
    assert within_tolerance(big, {"y": np.array([1000.009])})
    assert not within_tolerance(big, {"y": np.array([1000.011])})


def test_compare_outputs() -> None:
    full = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([True, False])}
    assert compare_outputs(full, {"a": np.array([1.0, 2.5], np.float32), "b": full["b"]}) == {
        "a": 0.5,
        "b": 0.0,
    }
    assert compare_outputs(full, {"a": full["a"]})["b"] == float("inf")
    assert compare_outputs(full, {"a": full["a"][:1], "b": ~full["b"]}) == {
        "a": float("inf"),
        "b": float("inf"),
    }
    nan = {"a": np.array([np.nan, 1.0])}
    assert compare_outputs(nan, {"a": np.array([np.nan, 1.0])}) == {"a": 0.0}


def test_run_split_locally_needs_a_part() -> None:
    with pytest.raises(BadInputError, match="neither"):
        run_split_locally(None, None, {})


def test_run_model_reports_missing_inputs() -> None:
    with pytest.raises(BadInputError, match="missing input"):
        run_model(chain_cnn(), {})


def test_run_model_reports_wrong_dtype() -> None:
    feeds = {"x": sample_inputs(chain_cnn())["x"].astype(np.float64)}
    with pytest.raises(BadInputError, match="onnxruntime failed"):
        run_model(chain_cnn(), feeds)


def test_onnxruntime_refusing_a_model_is_a_bad_model(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"junk")
    with pytest.raises(BadModelError, match="onnxruntime cannot load"):
        run_model(path, {})
