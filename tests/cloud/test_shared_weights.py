"""Tails of one model share their weights: one copy in memory, same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgecut.cloud.repository import ModelRepository

LAYERS, WIDTH = 4, 256


def mlp(start: int) -> onnx.ModelProto:
    """Layers start..LAYERS-1 of one MLP: the full model (0) or a tail, same initializer names."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(WIDTH, WIDTH)).astype(np.float32) * 0.05 for _ in range(LAYERS)]
    nodes, inits, cur = [], [], "x" if start == 0 else f"h{start}"
    first = cur
    for i in range(start, LAYERS):
        out = "y" if i == LAYERS - 1 else f"h{i + 1}"
        nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [out])]
        inits.append(numpy_helper.from_array(weights[i], f"w{i}"))
        cur = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(first, TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_tails_share_weights_and_answer_the_same(tmp_path: Path) -> None:
    for start in range(LAYERS):
        name = "mlp" if start == 0 else f"mlp.cut{start}"
        (tmp_path / name / "1").mkdir(parents=True)
        onnx.save(mlp(start), tmp_path / name / "1" / "model.onnx")
    shared = ModelRepository(tmp_path, intra_op_threads=1)
    plain = ModelRepository(tmp_path, intra_op_threads=1, share_weights=False)
    stats = shared.statistics().shared_weights
    assert stats is not None and stats.distinct_weights == LAYERS
    assert stats.shared_bytes == LAYERS * WIDTH * WIDTH * 4
    x = np.random.default_rng(1).normal(size=(3, WIDTH)).astype(np.float32)
    for start in range(LAYERS):
        name = "mlp" if start == 0 else f"mlp.cut{start}"
        first = shared.get(name).inputs[0].name
        reference = ort.InferenceSession(str(tmp_path / name / "1" / "model.onnx"),
                                         providers=["CPUExecutionProvider"])
        want = reference.run(None, {first: x})[0]
        np.testing.assert_allclose(shared.get(name).session.run(None, {first: x})[0], want,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(plain.get(name).session.run(None, {first: x})[0], want,
                                   rtol=1e-5, atol=1e-6)


def test_different_bytes_under_one_name_are_not_shared(tmp_path: Path) -> None:
    for name, model in (("a", mlp(0)), ("a.cut1", mlp(0))):
        (tmp_path / name / "1").mkdir(parents=True)
        if name == "a.cut1":
            w0 = model.graph.initializer[0]
            w0.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w0) * 2, "w0"))
        onnx.save(model, tmp_path / name / "1" / "model.onnx")
    repo = ModelRepository(tmp_path, intra_op_threads=1)
    assert repo.statistics().shared_weights.distinct_weights == LAYERS + 1
    x = np.ones((1, WIDTH), np.float32)
    a, b = (repo.get(n).session.run(None, {"x": x})[0] for n in ("a", "a.cut1"))
    assert not np.allclose(a, b)


def test_a_model_without_plan_siblings_keeps_its_weights(tmp_path: Path) -> None:
    """Pooling turns pre-packing off; a model no other model shares weights with keeps it."""
    for name in ("solo", "other"):
        (tmp_path / name / "1").mkdir(parents=True)
        onnx.save(mlp(0), tmp_path / name / "1" / "model.onnx")
    repo = ModelRepository(tmp_path, intra_op_threads=1)
    assert repo.statistics().shared_weights.distinct_weights == 0
    x = np.ones((1, WIDTH), np.float32)
    np.testing.assert_allclose(repo.get("solo").session.run(None, {"x": x})[0],
                               repo.get("other").session.run(None, {"x": x})[0])
