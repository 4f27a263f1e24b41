"""Shape strings, concrete shapes and byte sizes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import parser

from edgecut.errors import BadShapeError
from edgecut.partitioner import (
    TensorInfo,
    concrete_input_shapes,
    list_cuts,
    parse_input_shape,
    resolve_tensors,
    run_model,
)
from edgecut.zoo import dynamic_cnn, sample_inputs, transformer_block


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x=1x3x224x224", ("x", (1, 3, 224, 224))),
        ("input.1=8", ("input.1", (8,))),
        (" tokens=1x16x32 ", ("tokens", (1, 16, 32))),
        ("scalar=", ("scalar", ())),
        ("a:b=2x0", ("a:b", (2, 0))),
    ],
)
def test_parse_input_shape(text: str, expected: tuple[str, tuple[int, ...]]) -> None:
    assert parse_input_shape(text) == expected


def test_shape_without_equals_sign() -> None:
    with pytest.raises(BadShapeError, match="missing '='"):
        parse_input_shape("1x3x224x224")


def test_shape_without_name() -> None:
    with pytest.raises(BadShapeError, match="non-empty input name"):
        parse_input_shape("=1x3")


@pytest.mark.parametrize("text", ["x=1x3xHx4", "x=1,3,4", "x=1x-3", "x=1xx3", "x=1.5"])
def test_shape_with_bad_dimension(text: str) -> None:
    with pytest.raises(BadShapeError, match="not a non-negative integer"):
        parse_input_shape(text)


def test_bad_shape_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        parse_input_shape("nonsense")


def test_given_shape_must_fit_the_model() -> None:
    model = transformer_block()
    with pytest.raises(BadShapeError, match="axis 1 is fixed to 16"):
        concrete_input_shapes(model, {"tokens": (1, 8, 32)})
    with pytest.raises(BadShapeError, match="rank 3"):
        concrete_input_shapes(model, {"tokens": (1, 16)})
    with pytest.raises(BadShapeError, match="'nope'"):
        concrete_input_shapes(model, {"nope": (1,)})


def test_symbolic_dims_default_to_batch_1_and_32() -> None:
    assert concrete_input_shapes(dynamic_cnn()) == {"x": (1, 3, 32, 32)}
    assert concrete_input_shapes(dynamic_cnn(), {"x": [4, 3, 8, 16]}) == {"x": (4, 3, 8, 16)}


def test_tensor_info_bytes() -> None:
    assert TensorInfo(name="t", dtype="float32", shape=(1, 3, 4)).nbytes == 48
    assert TensorInfo(name="t", dtype="bool", shape=(5,)).nbytes == 5
    assert TensorInfo(name="t", dtype="int64", shape=()).nbytes == 8


def _all_intermediates(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [o for n in model.graph.node for o in n.output if o]
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    values = run_model(probe, feeds, output_names=names)
    return {**feeds, **values}


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 16, 24)])
def test_cut_bytes_match_real_tensor_sizes(shape: tuple[int, ...]) -> None:
    model = dynamic_cnn()
    feeds = sample_inputs(model, {"x": shape})
    real = _all_intermediates(model, feeds)
    cuts = list_cuts(model, {"x": shape})
    assert cuts[0].bytes == real["x"].nbytes
    for cut in cuts:
        assert cut.bytes == sum(real[t].nbytes for t in cut.crossing)
        assert cut.down_bytes == sum(real[t].nbytes for t in cut.cloud_outputs)
        for info in cut.crossing_tensors:
            assert info.shape == real[info.name].shape
            assert info.dtype == str(real[info.name].dtype)


def test_shapes_unknown_to_inference_are_measured() -> None:
    # NonZero's output length depends on the data: inference cannot know it.
    model = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[6] x) => (float[N] y) {
          z = Relu(x)
          nz = NonZero(z)
          f = Flatten<axis = 0>(nz)
          s = Shape(f)
          y = Cast<to = 1>(s)
        }
        """
    )
    tensors = resolve_tensors(model)
    feeds = sample_inputs(model)
    count = int(np.count_nonzero(np.maximum(feeds["x"], 0)))
    assert tensors["nz"].shape == (1, count)
    assert tensors["nz"].dtype == "int64"
