"""Every kind of bad request gets its own status code and a message that names the problem,
and the endpoint keeps serving good requests afterwards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecut.cloud.server import EndpointServer, create_server
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import CODEC_PARAMETER, encode_tensor
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub

Stub = GRPCInferenceServiceStub
GoodCheck = Callable[[Stub], None]
CODE = grpc.StatusCode


def _request(model: str, *, version: str = "", data: bytes, datatype: str = "FP32",
             shape: tuple[int, ...] = (1, 3, 32, 32), codec: str | None = None,
             name: str = "x") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if codec is not None:
        tensor.parameters[CODEC_PARAMETER].string_param = codec
    request.raw_input_contents.append(data)
    return request


def _refused(stub: Stub, request: pb.ModelInferRequest, timeout_s: float) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=timeout_s)
    return info.value


@pytest.fixture(scope="module")
def cnn_zstd(cnn_input: np.ndarray) -> bytes:
    return encode_tensor(cnn_input, "zstd").data


def test_wrong_shape(tls_stub: Stub, serves_good_request: GoodCheck,
                     call_timeout_s: float) -> None:
    x = np.zeros((1, 3, 16, 16), np.float32)
    error = _refused(tls_stub, _request("tiny_cnn", data=x.tobytes(), shape=x.shape),
                     call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "input 'x': expected FP32 [1,3,32,32] (-1 = any), got FP32 [1,3,16,16]" in (
        error.details())
    serves_good_request(tls_stub)


def test_wrong_dtype(tls_stub: Stub, serves_good_request: GoodCheck,
                     call_timeout_s: float) -> None:
    x = np.zeros((1, 3, 32, 32), np.float64)
    error = _refused(tls_stub, _request("tiny_cnn", data=x.tobytes(), datatype="FP64"),
                     call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "input 'x': expected FP32 [1,3,32,32] (-1 = any), got FP64 [1,3,32,32]" in (
        error.details())
    serves_good_request(tls_stub)


def test_unknown_input_and_missing_input(tls_stub: Stub, serves_good_request: GoodCheck,
                                         cnn_input: np.ndarray, call_timeout_s: float) -> None:
    request = _request("tiny_cnn", data=cnn_input.tobytes(), name="image")
    error = _refused(tls_stub, request, call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "unknown input 'image'" in error.details()
    assert "missing input 'x' FP32 [1,3,32,32]" in error.details()
    serves_good_request(tls_stub)


def test_unknown_model(tls_stub: Stub, serves_good_request: GoodCheck, cnn_input: np.ndarray,
                       call_timeout_s: float) -> None:
    error = _refused(tls_stub, _request("resnet9000", data=cnn_input.tobytes()), call_timeout_s)
    assert error.code() == CODE.NOT_FOUND
    assert "unknown model 'resnet9000'" in error.details() and "tiny_cnn" in error.details()
    serves_good_request(tls_stub)


def test_unknown_version(tls_stub: Stub, serves_good_request: GoodCheck, cnn_input: np.ndarray,
                         call_timeout_s: float) -> None:
    error = _refused(tls_stub, _request("tiny_cnn", version="9", data=cnn_input.tobytes()),
                     call_timeout_s)
    assert error.code() == CODE.NOT_FOUND
    assert "model 'tiny_cnn' has no version 9; available versions: 1, 2" in error.details()
    serves_good_request(tls_stub)


def test_model_that_failed_to_load(tls_stub: Stub, serves_good_request: GoodCheck,
                                   cnn_input: np.ndarray, call_timeout_s: float) -> None:
    error = _refused(tls_stub, _request("broken", data=cnn_input.tobytes()), call_timeout_s)
    assert error.code() == CODE.NOT_FOUND
    assert "'broken'" in error.details() and "failed to load" in error.details()
    serves_good_request(tls_stub)


def test_truncated_zstd_frame(tls_stub: Stub, serves_good_request: GoodCheck, cnn_zstd: bytes,
                              call_timeout_s: float) -> None:
    request = _request("tiny_cnn", data=cnn_zstd[: len(cnn_zstd) // 2], codec="zstd")
    error = _refused(tls_stub, request, call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "input 'x'" in error.details() and "zstd frame" in error.details()
    serves_good_request(tls_stub)


def test_corrupted_zstd_frame(tls_stub: Stub, serves_good_request: GoodCheck, cnn_zstd: bytes,
                              call_timeout_s: float) -> None:
    corrupted = b"\x00\x01\x02\x03" + cnn_zstd[4:]  # the frame's magic number destroyed
    error = _refused(tls_stub, _request("tiny_cnn", data=corrupted, codec="zstd"),
                     call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "input 'x'" in error.details() and "corrupted zstd frame" in error.details()
    serves_good_request(tls_stub)


def test_zstd_frame_declaring_more_than_the_shape(tls_stub: Stub,
                                                  serves_good_request: GoodCheck,
                                                  call_timeout_s: float) -> None:
    bigger = encode_tensor(np.zeros((4, 3, 32, 32), np.float32), "zstd").data
    error = _refused(tls_stub, _request("tiny_cnn", data=bigger, codec="zstd"), call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "zstd frame declares 49152 bytes but shape [1, 3, 32, 32] FP32 needs 12288" in (
        error.details())
    serves_good_request(tls_stub)


def test_raw_size_mismatch(tls_stub: Stub, serves_good_request: GoodCheck,
                           cnn_input: np.ndarray, call_timeout_s: float) -> None:
    error = _refused(tls_stub, _request("tiny_cnn", data=cnn_input.tobytes()[:-100]),
                     call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "input 'x'" in error.details() and "should be 12288 bytes, got 12188" in (
        error.details())
    serves_good_request(tls_stub)


def test_unknown_codec(tls_stub: Stub, serves_good_request: GoodCheck, cnn_input: np.ndarray,
                       call_timeout_s: float) -> None:
    error = _refused(tls_stub, _request("tiny_cnn", data=cnn_input.tobytes(), codec="lz4"),
                     call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "unknown tensor codec 'lz4'" in error.details()
    serves_good_request(tls_stub)


def test_shapes_the_graph_rejects(tls_stub: Stub, serves_good_request: GoodCheck,
                                  call_timeout_s: float) -> None:
    x, k = np.ones((2, 4), np.float32), np.ones((3, 4), np.int64)
    request = _request("scale_by", data=x.tobytes(), shape=x.shape)
    request.inputs.add(name="k", datatype="INT64", shape=k.shape)
    request.raw_input_contents.append(k.tobytes())
    error = _refused(tls_stub, request, call_timeout_s)
    assert error.code() == CODE.INVALID_ARGUMENT
    assert "model 'scale_by' version 1: the model rejected the inputs" in error.details()
    assert "Mul" in error.details()
    serves_good_request(tls_stub)


def test_message_over_the_limit(small_limit_server: EndpointServer,
                                open_channel: Callable[..., grpc.Channel],
                                serves_good_request: GoodCheck, call_timeout_s: float) -> None:
    stub = GRPCInferenceServiceStub(open_channel(small_limit_server))
    x = np.zeros((2 * 16384, 16), np.float32)  # 2 MiB against a 1 MiB limit
    error = _refused(stub, _request("dyn_mlp", data=x.tobytes(), shape=x.shape),
                     call_timeout_s)
    assert error.code() == CODE.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()
    serves_good_request(stub)


def test_internal_errors_hide_details(tls_server: EndpointServer, tls_stub: Stub,
                                      serves_good_request: GoodCheck,
                                      monkeypatch: pytest.MonkeyPatch,
                                      call_timeout_s: float) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise KeyError("secret internals")

    # Routing: every ModelInfer path goes through it (the native transport's infer lane may
    # skip prepare for a layout it has checked before).
    monkeypatch.setattr(tls_server.repository, "route", explode)
    monkeypatch.setattr(tls_server.repository, "route_many", explode)
    x = np.zeros((1, 3, 32, 32), np.float32)
    error = _refused(tls_stub, _request("tiny_cnn", data=x.tobytes()), call_timeout_s)
    assert error.code() == CODE.INTERNAL
    assert "secret" not in error.details() and "ModelInfer" in error.details()
    monkeypatch.undo()
    serves_good_request(tls_stub)
    assert tls_server.statistics().failures["INTERNAL"] >= 1


@pytest.mark.parametrize("payload", [
    b"\xff\xff",  # a cut-off varint: protobuf's own parser refuses it
    b"\x3a\xff\xff\x03" + b"\x00" * (64 << 10),  # a 64 KiB message whose tensor claims 64 KiB + 1
])
def test_bytes_that_are_no_request(tls_server: EndpointServer, tls_stub: Stub,
                                   open_channel: Callable[..., grpc.Channel],
                                   serves_good_request: GoodCheck, call_timeout_s: float,
                                   payload: bytes) -> None:
    # Sent as is, past any serializer: what a broken or hostile client could send.
    infer = open_channel(tls_server).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
        response_deserializer=pb.ModelInferResponse.FromString)
    with pytest.raises(grpc.RpcError) as info:
        infer(payload, timeout=call_timeout_s)
    assert info.value.code() == CODE.INVALID_ARGUMENT
    assert "ModelInferRequest" in info.value.details() or "malformed" in info.value.details()
    serves_good_request(tls_stub)


def _pair_add_repo(root: Path) -> Path:
    """`pair_add`: y = x + z, both FP32 [batch, 4], served with max_batch_size 8."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "z"], ["y"])], "pair_add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in "xz"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (root / "pair_add" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "pair_add" / "1" / "model.onnx"))
    (root / "pair_add" / "config.pbtxt").write_text("max_batch_size: 8\n")
    return root


def _pair(x_rows: int, z_rows: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="pair_add")
    for name, rows in (("x", x_rows), ("z", z_rows)):
        request.inputs.add(name=name, datatype="FP32", shape=[rows, 4])
        request.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return request


def test_batch_size_is_checked_as_triton_checks_it(tmp_path: Path, frontend: str,
                                                   call_timeout_s: float) -> None:
    """A batched model (max_batch_size 8) takes up to 8 rows, the same number in every
    input; more, or inputs that disagree, are INVALID_ARGUMENT with the reason, before the
    model runs."""
    with create_server(_pair_add_repo(tmp_path), workers=4, frontend=frontend) as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        answer = stub.ModelInfer(_pair(8, 8), timeout=call_timeout_s)
        np.testing.assert_array_equal(
            np.frombuffer(answer.raw_output_contents[0], np.float32), np.full(32, 2.0))
        error = _refused(stub, _pair(9, 9), call_timeout_s)
        assert error.code() == CODE.INVALID_ARGUMENT
        assert "batch size 9 is more than the model's max_batch_size 8" in error.details()
        error = _refused(stub, _pair(2, 3), call_timeout_s)
        assert error.code() == CODE.INVALID_ARGUMENT
        assert "the inputs' batch sizes differ ('x' 2, 'z' 3)" in error.details()
        assert stub.ModelInfer(_pair(1, 1), timeout=call_timeout_s).raw_output_contents
