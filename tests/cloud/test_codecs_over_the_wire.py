"""edgecut's codecs on a real endpoint, with the generated stubs and encode_tensor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgecut.cloud.server import EndpointServer
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import CODEC_PARAMETER, decode_tensor, encode_tensor
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub

Stub = GRPCInferenceServiceStub
Reference = Callable[..., list[np.ndarray]]


def _sparse_input() -> np.ndarray:
    """Like a ReLU activation: mostly zeros, so zstd has something to gain."""
    x = np.random.default_rng(3).normal(size=(256, 16)).astype(np.float32)
    return np.maximum(x, 1.0) - 1.0


def _request(x: np.ndarray, codec: str) -> pb.ModelInferRequest:
    encoded = encode_tensor(x, codec)
    request = pb.ModelInferRequest(model_name="dyn_mlp")
    tensor = request.inputs.add(name="x", datatype=encoded.datatype, shape=encoded.shape)
    for key, value in encoded.parameters.items():
        tensor.parameters[key].string_param = str(value)
    request.raw_input_contents.append(encoded.data)
    return request


def _output(response: pb.ModelInferResponse, i: int = 0) -> np.ndarray:
    tensor = response.outputs[i]
    return decode_tensor(response.raw_output_contents[i], datatype=tensor.datatype,
                         shape=tensor.shape, parameters=tensor.parameters, max_nbytes=1 << 30)


@pytest.mark.parametrize("codec", ["raw", "zstd", "shuffle_zstd"])
def test_lossless_input_codecs(tls_stub: Stub, codec: str, reference: Reference,
                               call_timeout_s: float) -> None:
    x = _sparse_input()
    response = tls_stub.ModelInfer(_request(x, codec), timeout=call_timeout_s)
    assert CODEC_PARAMETER not in response.outputs[0].parameters  # raw unless asked
    np.testing.assert_array_equal(_output(response), reference("dyn_mlp", 1, {"x": x})[0])


def test_fp16_input_codec(tls_stub: Stub, reference: Reference, call_timeout_s: float) -> None:
    x = _sparse_input()
    response = tls_stub.ModelInfer(_request(x, "fp16"), timeout=call_timeout_s)
    x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(_output(response), reference("dyn_mlp", 1, {"x": x16})[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("codec", ["zstd", "shuffle_zstd", "fp16"])
def test_output_codec_requested_for_the_whole_request(tls_stub: Stub, codec: str,
                                                      reference: Reference,
                                                      call_timeout_s: float) -> None:
    x = _sparse_input()
    request = _request(x, "raw")
    request.parameters[CODEC_PARAMETER].string_param = codec
    response = tls_stub.ModelInfer(request, timeout=call_timeout_s)
    assert response.outputs[0].parameters[CODEC_PARAMETER].string_param == codec
    expected = reference("dyn_mlp", 1, {"x": x})[0]
    if codec == "fp16":
        np.testing.assert_allclose(_output(response), expected, rtol=1e-3, atol=1e-2)
    else:
        np.testing.assert_array_equal(_output(response), expected)


def test_output_codec_on_one_output_wins(tls_stub: Stub, call_timeout_s: float) -> None:
    x, k = np.ones((64, 4), np.float32), np.zeros((64, 4), np.int64)
    request = pb.ModelInferRequest(model_name="scale_by")
    for name, array in (("x", x), ("k", k)):
        request.inputs.add(name=name, datatype=encode_tensor(array).datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    request.parameters[CODEC_PARAMETER].string_param = "shuffle_zstd"
    request.outputs.add(name="y")
    request.outputs.add(name="k2").parameters[CODEC_PARAMETER].string_param = "raw"
    response = tls_stub.ModelInfer(request, timeout=call_timeout_s)
    assert response.outputs[0].parameters[CODEC_PARAMETER].string_param == "shuffle_zstd"
    assert CODEC_PARAMETER not in response.outputs[1].parameters
    assert len(response.raw_output_contents[1]) == k.nbytes
    np.testing.assert_array_equal(_output(response, 0), x * k)
    np.testing.assert_array_equal(_output(response, 1), k * 2)


def test_statistics_show_the_compression(tls_server: EndpointServer, tls_stub: Stub,
                                         call_timeout_s: float) -> None:
    x = np.zeros((1024, 16), np.float32)
    before = tls_server.statistics()
    tls_stub.ModelInfer(_request(x, "zstd"), timeout=call_timeout_s)
    after = tls_server.statistics()
    raw_in = after.raw_bytes_in - before.raw_bytes_in
    wire_in = after.wire_bytes_in - before.wire_bytes_in
    assert raw_in == x.nbytes
    assert wire_in < raw_in / 50
