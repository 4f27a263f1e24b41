"""Models as exporters write them: dynamic dims as `dim_value: -1` (Paddle2ONNX), an `If` that
branches on the value of an input, and the real Paddle2ONNX exports shipped in
rapidocr-onnxruntime. Each is cut, planned, verified at every cut, and (-1 dims) served."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecut.cli import main
from edgecut.errors import BadInputError
from edgecut.partitioner import list_cuts, load_model, run_model, sample_inputs
from edgecut.partitioner.shapes import static_tensors, value_read_inputs

RAPIDOCR = importlib.util.find_spec("rapidocr_onnxruntime")


def _minus_one(vi: onnx.ValueInfoProto, axes: tuple[int, ...]) -> onnx.ValueInfoProto:
    for axis in axes:
        dim = vi.type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_value = -1
    return vi


def paddle_style_cnn() -> onnx.ModelProto:
    """x [-1,3,-1,-1] -> conv -> relu -> pool -> Paddle's flatten (Shape, Cast, Slice, Concat,
    Reshape) -> Gemm -> y [-1,4]; batch and spatial dims written as dim_value -1."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "w")
    fc = numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.2).astype(np.float32), "fc")
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("s0", [0]), ("s1", [1]), ("minus1", [-1]))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Shape", ["p"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape32"], name="cast32", to=TensorProto.INT32),
        helper.make_node("Slice", ["shape32", "s0", "s1"], ["batch32"], name="slice"),
        helper.make_node("Cast", ["batch32"], ["batch"], name="cast64", to=TensorProto.INT64),
        helper.make_node("Concat", ["batch", "minus1"], ["flat_shape"], name="concat", axis=0),
        helper.make_node("Reshape", ["p", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc"], ["y"], name="fc"),
    ]
    x = _minus_one(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, 1]), (0, 2, 3))
    y = _minus_one(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]), (0,))
    r = _minus_one(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 8, 1, 1]), (0, 2, 3))
    graph = helper.make_graph(nodes, "paddle_style", [x], [y], [w, fc, *consts], value_info=[r])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def if_on_sample_rate() -> onnx.ModelProto:
    """audio [1,samples] + sample_rate (int64 scalar): an `If` on sample_rate == 16000 cuts the
    audio into frames 16 wide (then) or 441 wide (else: fails unless samples is a multiple of
    441, and the MatMul after it takes 16), each branch reading the outer `audio`; the frames
    go through a MatMul, a Relu and a ReduceMean -> y [1,frames]."""
    def branch(name: str, shape: list[int]) -> onnx.GraphProto:
        dims = [d if d > 0 else "frames" for d in shape]
        out = helper.make_tensor_value_info(f"{name}_frames", TensorProto.FLOAT, dims)
        const = numpy_helper.from_array(np.array(shape, np.int64), f"{name}_shape")
        return helper.make_graph(
            [helper.make_node("Reshape", ["audio", f"{name}_shape"], [f"{name}_frames"])],
            name, [], [out], [const])

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    target = numpy_helper.from_array(np.array(16000, np.int64), "target")
    nodes = [
        helper.make_node("Equal", ["sample_rate", "target"], ["is_16k"], name="is_16k"),
        helper.make_node("If", ["is_16k"], ["frames"], name="frame",
                         then_branch=branch("then", [1, -1, 16]),
                         else_branch=branch("else", [1, -1, 441])),
        helper.make_node("MatMul", ["frames", "w"], ["features"], name="project"),
        helper.make_node("Relu", ["features"], ["active"], name="relu"),
        helper.make_node("ReduceMean", ["active"], ["y"], name="mean", axes=[2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "if_on_sample_rate",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, "samples"]),
         helper.make_tensor_value_info("sample_rate", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "frames"])], [w, target])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture()
def paddle_path(tmp_path: Path) -> Path:
    path = tmp_path / "paddle_style.onnx"
    onnx.save(paddle_style_cnn(), str(path))
    return path


@pytest.fixture()
def if_path(tmp_path: Path) -> Path:
    path = tmp_path / "if_on_sample_rate.onnx"
    onnx.save(if_on_sample_rate(), str(path))
    return path


def _rate(tmp_path: Path, value: int = 16000) -> Path:
    path = tmp_path / "rate.npy"
    np.save(path, np.array(value, np.int64))
    return path


# -- dim_value -1 ---------------------------------------------------------------------------


def test_minus_one_dims_take_the_given_shape(paddle_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    assert main(["cuts", str(paddle_path), "--input-shape", "x=1x3x12x20", "--json"]) == 0
    assert '"x"' in capsys.readouterr().out
    cuts = list_cuts(load_model(paddle_path), {"x": [2, 3, 12, 20]})
    assert cuts[0].crossing_tensors[0].shape == (2, 3, 12, 20)
    # shape inference with data propagation settles Paddle's flatten without running the model
    settled = static_tensors(load_model(paddle_path), {"x": (2, 3, 12, 20)})
    assert settled["flat"].shape == (2, 8) and settled["y"].shape == (2, 4)


def test_minus_one_model_plans_verifies_and_serves_at_every_cut(
        paddle_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgecut.cloud.server import create_server
    from edgecut.protocol.pki import init_ca

    plan_dir, repo, tls = tmp_path / "plan", tmp_path / "repo", tmp_path / "tls"
    assert main(["plan", str(paddle_path), "--input-shape", "x=1x3x12x20", "--cut", "all",
                 "--out", str(plan_dir)]) == 0
    assert main(["verify", str(plan_dir)]) == 0
    assert main(["deploy", str(plan_dir), "--repository", str(repo)]) == 0
    doc = json.loads((plan_dir / "plan.json").read_text())
    assert doc["model"]["inputs"][0]["shape"] == [None, 3, None, None]
    init_ca(tls)
    server = create_server(repo, tls_dir=tls, workers=2, intra_op_threads=1)
    server.start()
    try:
        capsys.readouterr()
        assert main(["verify", str(plan_dir), "--endpoint", f"localhost:{server.port}",
                     "--tls", str(tls), "--json"]) == 0
        checks = json.loads(capsys.readouterr().out)
        assert len(checks) == len(doc["cuts"]) >= 5 and all(c["ok"] for c in checks)
    finally:
        server.stop(grace_s=1.0)


@pytest.mark.skipif(RAPIDOCR is None, reason="rapidocr-onnxruntime is not installed")
def test_paddle2onnx_classifier_with_minus_one_dims_splits_at_every_cut(
        check_cut: Callable[..., float]) -> None:
    from edgecut.zoo import find_packaged_model

    path = find_packaged_model(relative_path="models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
    assert path is not None
    model = load_model(path)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.HasField("dim_value") and batch.dim_value == -1  # the export's own -1
    shapes = {"x": [1, 3, 48, 96]}
    feeds = sample_inputs(model, shapes)
    full = run_model(model, feeds)
    cuts = list_cuts(model, shapes)
    assert len(cuts) > 200
    for cut in cuts:
        check_cut(model, cut, feeds, full)


@pytest.mark.skipif(RAPIDOCR is None, reason="rapidocr-onnxruntime is not installed")
def test_paddle2onnx_detector_shapes_are_settled_statically() -> None:
    from edgecut.zoo import find_packaged_model

    model = load_model(find_packaged_model())  # type: ignore[arg-type]
    settled = static_tensors(model, {"x": (1, 3, 64, 64)})
    assert all(o in settled for n in model.graph.node for o in n.output if o)


# -- an If on an input's value --------------------------------------------------------------


def test_if_on_an_input_value_names_the_input_to_give(
        if_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert value_read_inputs(load_model(if_path)) == ["sample_rate"]
    assert main(["cuts", str(if_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "--input sample_rate=FILE.npy (int64 scalar)" in err
    assert "audio=" not in err and "ONNXRuntimeError" not in err and "Reshape" not in err
    with pytest.raises(BadInputError, match="sample_rate"):
        list_cuts(load_model(if_path))


def test_if_on_an_input_value_cuts_plans_and_verifies_with_a_sample(
        if_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rate = _rate(tmp_path)
    assert main(["cuts", str(if_path), "--input", f"sample_rate={rate}", "--json"]) == 0
    assert "frames" in capsys.readouterr().out
    plan_dir = tmp_path / "plan"
    assert main(["plan", str(if_path), "--input", f"sample_rate={rate}", "--cut", "all",
                 "--out", str(plan_dir)]) == 0
    assert (plan_dir / "samples").is_dir()
    assert main(["verify", str(plan_dir)]) == 0  # the plan's own sample, not random values
    assert "within tolerance" in capsys.readouterr().out
    chosen = tmp_path / "chosen"
    assert main(["plan", str(if_path), "--input", f"sample_rate={rate}", "--device", "phone",
                 "--network", "lte", "--no-measure", "--out", str(chosen)]) == 0
    assert main(["verify", str(chosen)]) == 0


def test_a_sample_value_must_fit_the_shape_given(if_path: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    audio = tmp_path / "audio.npy"
    np.save(audio, np.zeros((1, 320), np.float32))
    assert main(["cuts", str(if_path), "--input", f"audio={audio}", "--input",
                 f"sample_rate={_rate(tmp_path)}"]) == 0
    assert main(["cuts", str(if_path), "--input", f"audio={audio}", "--input-shape",
                 "audio=1x640"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(["cuts", str(if_path), "--input", f"nope={audio}"]) == 2
    assert "names no model input" in capsys.readouterr().err
