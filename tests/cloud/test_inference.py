"""The request -> response core, against a real loaded model, without a server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgecut.cloud.inference import infer, requested_outputs, run_model
from edgecut.cloud.repository import LoadedModel, ModelRepository
from edgecut.errors import BadInputError, PayloadTooLargeError, ProtocolError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import CODEC_PARAMETER, decode_tensor, encode_tensor

LIMIT = 1 << 30


@pytest.fixture(scope="module")
def repo(model_repo: Path) -> ModelRepository:
    return ModelRepository(model_repo, intra_op_threads=1)


@pytest.fixture(scope="module")
def scale(repo: ModelRepository) -> LoadedModel:
    return repo.get("scale_by", "")


def _raw_request(**arrays: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="scale_by", id="req-1")
    for name, array in arrays.items():
        enc = encode_tensor(array)
        request.inputs.add(name=name, datatype=enc.datatype, shape=enc.shape)
        request.raw_input_contents.append(enc.data)
    return request


def _outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        t.name: decode_tensor(data, datatype=t.datatype, shape=t.shape,
                              parameters=t.parameters, max_nbytes=LIMIT)
        for t, data in zip(response.outputs, response.raw_output_contents, strict=True)
    }


X = np.arange(8, dtype=np.float32).reshape(2, 4)
K = np.full((2, 4), 3, dtype=np.int64)


def test_raw_request_runs_and_echoes_id(scale: LoadedModel) -> None:
    outcome = infer(_raw_request(x=X, k=K), scale, max_decoded_bytes=LIMIT)
    response = outcome.response
    assert (response.id, response.model_name, response.model_version) == ("req-1", "scale_by", "1")
    out = _outputs(response)
    np.testing.assert_array_equal(out["y"], X * 3)
    np.testing.assert_array_equal(out["k2"], K * 2)
    assert outcome.raw_bytes_in == outcome.wire_bytes_in == X.nbytes + K.nbytes
    assert outcome.raw_bytes_out == outcome.wire_bytes_out == X.nbytes + K.nbytes


def test_typed_contents_from_stock_clients(scale: LoadedModel) -> None:
    request = pb.ModelInferRequest(model_name="scale_by")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(
        X.ravel().tolist())
    request.inputs.add(name="k", datatype="INT64", shape=[2, 4]).contents.int64_contents.extend(
        K.ravel().tolist())
    np.testing.assert_array_equal(
        _outputs(infer(request, scale, max_decoded_bytes=LIMIT).response)["y"], X * 3)


def test_typed_contents_count_must_match_shape(scale: LoadedModel) -> None:
    request = pb.ModelInferRequest(model_name="scale_by")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(
        [1.0] * 7)
    request.inputs.add(name="k", datatype="INT64", shape=[2, 4]).contents.int64_contents.extend(
        [1] * 8)
    with pytest.raises(ProtocolError, match=r"input 'x'.*holds 7 values but shape \[2,4\] needs 8"):
        infer(request, scale, max_decoded_bytes=LIMIT)


def test_typed_contents_in_the_wrong_field(scale: LoadedModel) -> None:
    request = pb.ModelInferRequest(model_name="scale_by")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.int_contents.extend(
        [1] * 4)
    request.inputs.add(name="k", datatype="INT64", shape=[1, 4]).contents.int64_contents.extend(
        [1] * 4)
    with pytest.raises(ProtocolError, match="int_contents; expected fp32_contents"):
        infer(request, scale, max_decoded_bytes=LIMIT)


def test_mixing_raw_and_typed_is_refused(scale: LoadedModel) -> None:
    request = _raw_request(x=X)
    request.inputs.add(name="k", datatype="INT64", shape=[2, 4]).contents.int64_contents.extend(
        K.ravel().tolist())
    with pytest.raises(ProtocolError, match="mixes raw_input_contents with typed contents"):
        infer(request, scale, max_decoded_bytes=LIMIT)


def test_raw_entry_count_must_match_inputs(scale: LoadedModel) -> None:
    request = _raw_request(x=X, k=K)
    request.raw_input_contents.append(b"extra")
    with pytest.raises(ProtocolError, match="2 inputs but 3 raw_input_contents entries"):
        infer(request, scale, max_decoded_bytes=LIMIT)


def test_name_problems_are_reported_together(scale: LoadedModel) -> None:
    request = _raw_request(x=X, z=K)
    with pytest.raises(BadInputError) as info:
        infer(request, scale, max_decoded_bytes=LIMIT)
    message = str(info.value)
    assert "unknown input 'z'" in message and "missing input 'k' INT64 [-1,4]" in message


def test_decoded_size_limit_counts_all_inputs(scale: LoadedModel) -> None:
    with pytest.raises(PayloadTooLargeError, match="input 'k'"):
        infer(_raw_request(x=X, k=K), scale, max_decoded_bytes=X.nbytes + 8)


def test_requested_outputs_keep_request_order_and_codecs(scale: LoadedModel) -> None:
    request = _raw_request(x=X, k=K)
    request.parameters[CODEC_PARAMETER].string_param = "zstd"
    request.outputs.add(name="k2")
    request.outputs.add(name="y").parameters[CODEC_PARAMETER].string_param = "fp16"
    outputs = requested_outputs(request, scale)
    assert [(o.name, o.codec) for o in outputs] == [("k2", "zstd"), ("y", "fp16")]
    response = infer(request, scale, max_decoded_bytes=LIMIT).response
    assert [t.name for t in response.outputs] == ["k2", "y"]
    assert response.outputs[1].parameters[CODEC_PARAMETER].string_param == "fp16"
    out = _outputs(response)
    np.testing.assert_array_equal(out["k2"], K * 2)
    np.testing.assert_array_equal(out["y"], X * 3)


def test_unknown_codec_and_fp16_on_integers_are_refused(scale: LoadedModel) -> None:
    request = _raw_request(x=X, k=K)
    request.parameters[CODEC_PARAMETER].string_param = "lz4"
    with pytest.raises(ProtocolError, match=r"'edgecut_codec' must be one of .* got 'lz4'"):
        infer(request, scale, max_decoded_bytes=LIMIT)
    request = _raw_request(x=X, k=K)
    request.outputs.add(name="k2").parameters[CODEC_PARAMETER].string_param = "fp16"
    with pytest.raises(BadInputError, match="output 'k2': codec 'fp16' only applies to FP32"):
        infer(request, scale, max_decoded_bytes=LIMIT)


def test_unknown_and_repeated_outputs(scale: LoadedModel) -> None:
    request = _raw_request(x=X, k=K)
    request.outputs.add(name="nope")
    request.outputs.add(name="y")
    request.outputs.add(name="y")
    with pytest.raises(BadInputError) as info:
        infer(request, scale, max_decoded_bytes=LIMIT)
    assert "unknown output 'nope'" in str(info.value)
    assert "output 'y' is requested twice" in str(info.value)


def test_graph_rejection_becomes_bad_input(scale: LoadedModel) -> None:
    request = _raw_request(x=X, k=np.ones((3, 4), np.int64))
    with pytest.raises(BadInputError, match=r"the model rejected the inputs: .*Mul") as info:
        infer(request, scale, max_decoded_bytes=LIMIT)
    assert "onnxruntime_src" not in str(info.value)


def test_outputs_match_onnxruntime(repo: ModelRepository, cnn_input: np.ndarray,
                                   reference: Callable[..., list[np.ndarray]]) -> None:
    request = pb.ModelInferRequest(model_name="tiny_cnn", model_version="1")
    request.inputs.add(name="x", datatype="FP32", shape=cnn_input.shape)
    request.raw_input_contents.append(cnn_input.tobytes())
    out = _outputs(infer(request, repo.get("tiny_cnn", "1"), max_decoded_bytes=LIMIT).response)
    logits, features = reference("tiny_cnn", 1, {"x": cnn_input})
    np.testing.assert_array_equal(out["logits"], logits)
    np.testing.assert_array_equal(out["features"], features)


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_inputs_at_any_byte_offset_run_as_aligned_ones(scale: LoadedModel, offset: int) -> None:
    """A raw input is read in place from the request's bytes, wherever they put it: at odd
    offsets too (onnxruntime is handed an aligned copy of those)."""
    def at(array: np.ndarray) -> np.ndarray:
        bytes_ = b"\0" * offset + array.tobytes()
        view = np.frombuffer(memoryview(bytes_)[offset:], dtype=array.dtype).reshape(array.shape)
        assert view.flags.aligned == (offset == 0)
        return view

    y, k2 = run_model(scale, {"x": at(X), "k": at(K)}, ["y", "k2"])
    np.testing.assert_array_equal(y, X * 3)
    np.testing.assert_array_equal(k2, K * 2)
