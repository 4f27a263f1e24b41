"""The device profiler on this machine and the model profiler on a small CNN, for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecut.errors import BadModelError, BadShapeError
from edgecut.profiles import (
    attach_model_profile,
    load_device,
    predict_for_device,
    profile_device,
    profile_model,
    save_device,
)
from edgecut.profiles.model_profiler import model_sha256


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "s", "bb", "m", "v"], ["n2"], name="bn2"),
        helper.make_node("Relu", ["n2"], ["r2"]),                      # unnamed on purpose
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [init("w1", 16, 3, 3, 3), init("b1", 16), init("w2", 32, 16, 3, 3),
         numpy_helper.from_array(np.ones(32, np.float32), "s"), init("bb", 32), init("m", 32),
         numpy_helper.from_array(np.ones(32, np.float32), "v"), init("wf", 10, 32), init("bf", 10)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    onnx.save(model, path)
    return path


NODES = {"conv1", "relu1", "pool1", "conv2", "bn2", "Relu_5", "gap", "flatten", "fc", "softmax"}


@pytest.mark.parametrize("optimization", ["all", "disable"])
def test_model_profiler_times_every_node(cnn_path: Path, optimization: str) -> None:
    profile = profile_model(cnn_path, input_shapes={"x": (2, 3, 32, 32)}, runs=5,
                            optimization=optimization)
    assert set(profile.node_ms) == NODES
    assert all(ms > 0 for ms in profile.node_ms.values()), profile.node_ms
    assert profile.runs == 5 and profile.total_ms > 0
    assert sum(profile.node_ms.values()) <= profile.total_ms * 1.05
    assert profile.model_sha256 == model_sha256(cnn_path)
    assert profile.peak_memory_mib >= 0


def test_model_profiler_input_errors(cnn_path: Path, tmp_path: Path) -> None:
    with pytest.raises(BadShapeError, match="symbolic dimensions"):
        profile_model(cnn_path, input_shapes={}, runs=1)
    with pytest.raises(BadShapeError, match="not a model input"):
        profile_model(cnn_path, input_shapes={"x": (1, 3, 32, 32), "z": (1,)}, runs=1)
    with pytest.raises(BadModelError, match="no such model file"):
        profile_model(tmp_path / "missing.onnx", input_shapes={}, runs=1)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BadModelError, match="not an ONNX model"):
        profile_model(tmp_path / "junk.onnx", input_shapes={}, runs=1)


def test_predictions_cover_every_node_and_use_a_matching_table(cnn_path: Path) -> None:
    shapes = {"x": (1, 3, 32, 32)}
    pi = load_device("raspberry-pi-4")
    predicted = predict_for_device(cnn_path, shapes, pi)
    assert set(predicted) == NODES
    assert predicted["conv2"] > predicted["relu1"] > 0
    assert predicted["flatten"] == 0.0
    on_gpu = predict_for_device(cnn_path, shapes, load_device("gpu-server"))
    assert sum(predicted.values()) > sum(on_gpu.values())
    measured = profile_model(cnn_path, input_shapes=shapes, runs=3)
    calibrated = attach_model_profile(pi, measured)
    assert predict_for_device(cnn_path, shapes, calibrated) == measured.node_ms


def test_profile_device_round_trips_through_toml(tmp_path: Path) -> None:
    steps = []
    device = profile_device(name="this-machine", quick=True, progress=lambda s, d, t: steps.append((d, t)))
    assert steps[0] == (0, 9) and steps[-1] == (9, 9)
    assert device.cores >= 1 and device.memory_mib > 0 and device.memory_gbps > 0
    assert set(device.gflops_by_class) == {"conv", "gemm", "elementwise", "pool", "norm", "softmax"}
    assert all(g > 0 for g in device.gflops_by_class.values())
    assert load_device(save_device(device, tmp_path / "me.toml")) == device


def test_profile_device_takes_power_arguments() -> None:
    device = profile_device(name="given", quick=True, idle_w=3.0, compute_w=9.0, transmit_w=4.0,
                            receive_w=3.5, battery_wh=20.0)
    assert (device.power.idle_w, device.power.compute_w, device.battery_wh) == (3.0, 9.0, 20.0)
