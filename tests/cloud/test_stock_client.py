"""A stock tritonclient.grpc client talks to the endpoint unchanged, over TLS and mutual TLS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from edgecut.cloud.server import EndpointServer
from edgecut.cloud.servicer import TRITON_EXTENSIONS
from edgecut.protocol.codecs import SERVER_EXTENSIONS
from edgecut.protocol.probe import PROBE_EXTENSION
from edgecut.protocol.timing import TIMING_EXTENSION

Reference = Callable[..., list[np.ndarray]]


def _client(server: EndpointServer, fleet: Any, *, device: bool) -> triton.InferenceServerClient:
    kwargs = {"root_certificates": str(fleet.ca)}
    if device:
        kwargs |= {"private_key": str(fleet.key), "certificate_chain": str(fleet.cert)}
    return triton.InferenceServerClient(f"localhost:{server.port}", ssl=True, **kwargs)


@pytest.fixture(params=["tls", "mtls"])
def client(request: pytest.FixtureRequest, fleet: Any,
           frontend: str) -> Iterator[triton.InferenceServerClient]:
    """The same tests over server-only TLS (no client certificate) and mutual TLS, on each
    transport (`frontend`: the servers asked for below are made for it)."""
    mutual = request.param == "mtls"
    server = request.getfixturevalue("mtls_server" if mutual else "tls_server")
    client = _client(server, fleet, device=mutual)
    yield client
    client.close()


def _input(name: str, array: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def test_health(client: triton.InferenceServerClient, call_timeout_s: float) -> None:
    assert client.is_server_live(client_timeout=call_timeout_s)
    assert client.is_server_ready(client_timeout=call_timeout_s)
    assert client.is_model_ready("tiny_cnn", client_timeout=call_timeout_s)
    assert client.is_model_ready("tiny_cnn", "1", client_timeout=call_timeout_s)
    assert not client.is_model_ready("tiny_cnn", "9", client_timeout=call_timeout_s)
    assert not client.is_model_ready("broken", client_timeout=call_timeout_s)
    assert not client.is_model_ready("nope", client_timeout=call_timeout_s)


def test_server_metadata_announces_codecs(client: triton.InferenceServerClient,
                                          call_timeout_s: float) -> None:
    metadata = client.get_server_metadata(as_json=True, client_timeout=call_timeout_s)
    assert metadata["name"] == "edgecut"
    assert metadata["version"]
    assert metadata["extensions"] == [*TRITON_EXTENSIONS, *SERVER_EXTENSIONS, PROBE_EXTENSION,
                                      TIMING_EXTENSION]


def test_model_metadata(client: triton.InferenceServerClient, call_timeout_s: float) -> None:
    metadata = client.get_model_metadata("scale_by", as_json=True, client_timeout=call_timeout_s)
    assert metadata["name"] == "scale_by"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": ["-1", "4"]},
        {"name": "k", "datatype": "INT64", "shape": ["-1", "4"]},
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["y", "k2"]
    cnn = client.get_model_metadata("tiny_cnn", as_json=True, client_timeout=call_timeout_s)
    assert cnn["versions"] == ["1", "2"]


def test_infer_matches_onnxruntime(client: triton.InferenceServerClient, cnn_input: np.ndarray,
                                   reference: Reference, call_timeout_s: float) -> None:
    result = client.infer("tiny_cnn", [_input("x", cnn_input)], request_id="r42",
                          client_timeout=call_timeout_s)
    logits, features = reference("tiny_cnn", 2, {"x": cnn_input})
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    np.testing.assert_array_equal(result.as_numpy("features"), features)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r42", "tiny_cnn", "2")


def test_infer_explicit_version(client: triton.InferenceServerClient, cnn_input: np.ndarray,
                                reference: Reference, call_timeout_s: float) -> None:
    result = client.infer("tiny_cnn", [_input("x", cnn_input)], model_version="1",
                          client_timeout=call_timeout_s)
    np.testing.assert_array_equal(result.as_numpy("logits"),
                                  reference("tiny_cnn", 1, {"x": cnn_input})[0])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client: triton.InferenceServerClient, algorithm: str,
                             reference: Reference, call_timeout_s: float) -> None:
    x = np.zeros((512, 16), np.float32)
    x[::7] = 1.5  # compressible, so the call really carries a compressed message
    result = client.infer("dyn_mlp", [_input("x", x)], compression_algorithm=algorithm,
                          client_timeout=call_timeout_s)
    np.testing.assert_array_equal(result.as_numpy("y"), reference("dyn_mlp", 1, {"x": x})[0])


def test_input_over_grpc_default_4_mib(client: triton.InferenceServerClient,
                                       reference: Reference, call_timeout_s: float) -> None:
    x = np.random.default_rng(1).normal(size=(131072, 16)).astype(np.float32)
    assert x.nbytes == 8 * 1024 * 1024
    result = client.infer("dyn_mlp", [_input("x", x)], client_timeout=call_timeout_s)
    np.testing.assert_allclose(result.as_numpy("y"), reference("dyn_mlp", 1, {"x": x})[0],
                               rtol=1e-6, atol=1e-5)


def test_requested_outputs_subset_and_order(client: triton.InferenceServerClient,
                                            call_timeout_s: float) -> None:
    x = np.ones((2, 4), np.float32)
    k = np.arange(8, dtype=np.int64).reshape(2, 4)
    inputs = [_input("x", x), _input("k", k)]
    outputs = [triton.InferRequestedOutput("k2"), triton.InferRequestedOutput("y")]
    result = client.infer("scale_by", inputs, outputs=outputs, client_timeout=call_timeout_s)
    assert [o.name for o in result.get_response().outputs] == ["k2", "y"]
    np.testing.assert_array_equal(result.as_numpy("k2"), k * 2)
    np.testing.assert_array_equal(result.as_numpy("y"), x * k)
    only = client.infer("scale_by", inputs, outputs=[triton.InferRequestedOutput("y")],
                        client_timeout=call_timeout_s)
    assert [o.name for o in only.get_response().outputs] == ["y"]
    assert only.as_numpy("k2") is None


def test_error_reaches_stock_client(client: triton.InferenceServerClient,
                                    call_timeout_s: float) -> None:
    x = np.ones((1, 3, 32, 32), np.float64)
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny_cnn", [_input("x", x)], client_timeout=call_timeout_s)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x': expected FP32 [1,3,32,32] (-1 = any), got FP64" in info.value.message()


def test_triton_extensions_not_served_are_refused_not_ignored(
        client: triton.InferenceServerClient, call_timeout_s: float) -> None:
    """Classification would come back as the raw tensor, and outputs asked for in shared
    memory would never be written there: each is INVALID_ARGUMENT saying what to do."""
    x = np.ones((2, 4), np.float32)
    k = np.arange(8, dtype=np.int64).reshape(2, 4)
    inputs = [_input("x", x), _input("k", k)]
    top = triton.InferRequestedOutput("y", class_count=2)
    shared = triton.InferRequestedOutput("y")
    shared.set_shared_memory("region", 32)
    for output, said in ((top, "classification extension (class_count) is not supported"),
                         (shared, "shared memory regions are not supported")):
        with pytest.raises(InferenceServerException) as info:
            client.infer("scale_by", inputs, outputs=[output], client_timeout=call_timeout_s)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert said in info.value.message()
    assert client.infer("scale_by", inputs, client_timeout=call_timeout_s).as_numpy("y") is not None


def test_server_knows_the_device_under_mutual_tls(mtls_server: EndpointServer,
                                                  tls_server: EndpointServer, fleet: Any,
                                                  call_timeout_s: float) -> None:
    device = fleet.device
    before = mtls_server.statistics().requests_by_device.get(device, 0)
    client = _client(mtls_server, fleet, device=True)
    try:
        for _ in range(3):
            assert client.is_server_live(client_timeout=call_timeout_s)
    finally:
        client.close()
    assert mtls_server.statistics().requests_by_device[device] == before + 3
    # Server-only TLS asks for no certificate, so it has no device names to record.
    assert tls_server.statistics().requests_by_device == {}


def test_statistics_count_model_traffic(tls_server: EndpointServer, fleet: Any,
                                        cnn_input: np.ndarray, call_timeout_s: float) -> None:
    before = tls_server.statistics()
    client = _client(tls_server, fleet, device=False)
    try:
        client.infer("tiny_cnn", [_input("x", cnn_input)], client_timeout=call_timeout_s)
    finally:
        client.close()
    after = tls_server.statistics()
    assert after.infer_requests == before.infer_requests + 1
    model_before = before.models.get("tiny_cnn")
    requests_before = model_before.requests if model_before else 0
    assert after.models["tiny_cnn"].requests == requests_before + 1
    assert after.raw_bytes_in - before.raw_bytes_in == cnn_input.nbytes
    assert after.wire_bytes_out - before.wire_bytes_out == (10 + 8) * 4
