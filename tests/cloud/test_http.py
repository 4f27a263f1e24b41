"""The HTTP/REST binding (create_server's `http_address`): stock tritonclient.http and plain
http.client requests against a real HTTPS server on loopback, beside gRPC on the same
repository, with every error status and the auth file applied to client certificates."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import shlex
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edgecut.cloud.batching import SchedulingPolicy
from edgecut.cloud.http_json import OutputChoice, infer_request_message, infer_response_body
from edgecut.cloud.repository import ModelRepository
from edgecut.cloud.server import EndpointServer, create_server
from edgecut.errors import ProtocolError, UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import encode_tensor
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.pki import init_ca, issue_device_certificate

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

TIMEOUT_S = 30.0
Reference = Callable[..., list[np.ndarray]]


@pytest.fixture(scope="module")
def server(model_repo: Path, fleet: Any) -> Iterator[EndpointServer]:
    """HTTPS and gRPC over TLS from one process, a 1 MiB message limit on both."""
    endpoint = create_server(model_repo, tls_dir=fleet.directory, workers=4,
                             max_message_bytes=1 << 20, http_address="127.0.0.1:0")
    with endpoint:
        yield endpoint


def _context(fleet: Any, *, cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(fleet.ca))
    if cert:
        context.load_cert_chain(str(fleet.cert), str(fleet.key))
    return context


def _call(port: int, method: str, path: str, body: bytes | None = None, *,
          context: ssl.SSLContext, headers: dict[str, str] | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    """One request, as curl would send it: (status, headers, body)."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                             timeout=TIMEOUT_S)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _json_infer(x: np.ndarray, **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.tolist()}], **extra}).encode()


def _client(server: EndpointServer, fleet: Any, **ssl_options: str) -> Any:
    return httpclient.InferenceServerClient(
        f"127.0.0.1:{server.http_port}", ssl=True,
        ssl_options={"ca_certs": str(fleet.ca), **ssl_options}, network_timeout=TIMEOUT_S)


def test_stock_http_client_binary_and_json(server: EndpointServer, fleet: Any,
                                           cnn_input: np.ndarray, reference: Reference) -> None:
    expected = reference("tiny_cnn", 2, {"x": cnn_input})
    client = _client(server, fleet)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny_cnn") and client.is_model_ready("tiny_cnn", "1")
        assert not client.is_model_ready("resnet9000")
        metadata = client.get_server_metadata()
        assert metadata["name"] == "edgecut" and "model_repository" in metadata["extensions"]
        model = client.get_model_metadata("tiny_cnn")
        assert model["versions"] == ["1", "2"] and model["platform"] == "onnxruntime_onnx"
        assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32]}]
        config = client.get_model_config("tiny_cnn")
        assert config["name"] == "tiny_cnn" and config["input"][0]["dims"] == [1, 3, 32, 32]
        for binary in (True, False):
            tensor = httpclient.InferInput("x", list(cnn_input.shape), "FP32")
            tensor.set_data_from_numpy(cnn_input, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary),
                       httpclient.InferRequestedOutput("features", binary_data=not binary)]
            result = client.infer("tiny_cnn", [tensor], outputs=outputs, request_id=f"r-{binary}",
                                  request_compression_algorithm="gzip" if binary else None,
                                  response_compression_algorithm="deflate" if binary else None)
            np.testing.assert_allclose(result.as_numpy("logits"), expected[0], rtol=1e-5,
                                       atol=1e-5)
            np.testing.assert_allclose(result.as_numpy("features"), expected[1], rtol=1e-5,
                                       atol=1e-5)
            assert result.get_response()["id"] == f"r-{binary}"
        # No outputs named: tritonclient asks them all in binary.
        result = client.infer("tiny_cnn", [tensor], model_version="1")
        np.testing.assert_allclose(result.as_numpy("logits"),
                                   reference("tiny_cnn", 1, {"x": cnn_input})[0], rtol=1e-5,
                                   atol=1e-5)
        index = client.get_model_repository_index()
        assert {"name": "tiny_cnn", "version": "2", "state": "READY", "reason": ""} in index
        stats = client.get_inference_statistics("tiny_cnn", "2")["model_stats"]
        assert stats[0]["name"] == "tiny_cnn" and stats[0]["inference_stats"]["success"][
            "count"] >= 2
        with pytest.raises(InferenceServerException, match="unknown model 'resnet9000'"):
            client.get_model_metadata("resnet9000")
    finally:
        client.close()


def test_curl_style_json_and_binary_requests(server: EndpointServer, fleet: Any,
                                             cnn_input: np.ndarray, reference: Reference) -> None:
    expected = reference("tiny_cnn", 2, {"x": cnn_input})
    context = _context(fleet)
    body = _json_infer(cnn_input, id="curl-1", outputs=[{"name": "logits"}])
    status, headers, data = _call(server.http_port, "POST", "/v2/models/tiny_cnn/infer", body,
                                  context=context, headers={"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    answer = json.loads(data)
    assert answer["model_name"] == "tiny_cnn" and answer["model_version"] == "2"
    assert answer["id"] == "curl-1"
    (logits,) = answer["outputs"]
    assert logits["name"] == "logits" and logits["shape"] == [1, 10]
    np.testing.assert_allclose(np.array(logits["data"], np.float32).reshape(1, 10), expected[0],
                               rtol=1e-5, atol=1e-5)
    # Triton's binary extension by hand: the JSON header, then the tensor's bytes.
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32],
                    "parameters": {"binary_data_size": cnn_input.nbytes}}],
        "parameters": {"binary_data_output": True}}).encode()
    status, headers, data = _call(
        server.http_port, "POST", "/v2/models/tiny_cnn/versions/1/infer",
        header + cnn_input.tobytes(), context=context,
        headers={"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"})
    assert status == 200, data
    size = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(data[:size])
    offsets = np.cumsum([0] + [o["parameters"]["binary_data_size"] for o in answer["outputs"]])
    got = np.frombuffer(data[size + offsets[0]:size + offsets[1]], np.float32).reshape(1, 10)
    np.testing.assert_allclose(got, reference("tiny_cnn", 1, {"x": cnn_input})[0], rtol=1e-5,
                               atol=1e-5)
    # Health as a load balancer's probe reads it: the status, an empty body.
    assert _call(server.http_port, "GET", "/v2/health/ready", context=context)[::2] == (200, b"")


def test_a_request_id_sent_again_gets_the_first_answer_not_a_second_run(
        server: EndpointServer, fleet: Any, cnn_input: np.ndarray) -> None:
    """An id'd request reaches the deduplication with its bytes (calls without one skip the
    serializing, see HTTPFrontend._run_infer): the retry is answered from the first call."""
    context = _context(fleet)

    def executions() -> int:
        status, _, data = _call(server.http_port, "GET", "/v2/models/tiny_cnn/versions/1/stats",
                                context=context)
        assert status == 200, data
        (stats,) = json.loads(data)["model_stats"]
        return int(stats["execution_count"])

    header = json.dumps({
        "id": "retry-7", "parameters": {"binary_data_output": True},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32],
                    "parameters": {"binary_data_size": cnn_input.nbytes}}]}).encode()
    before = executions()
    # One connection: without a client certificate the connection is the caller.
    connection = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=context,
                                             timeout=TIMEOUT_S)
    answers = []
    try:
        for _ in range(2):
            connection.request("POST", "/v2/models/tiny_cnn/versions/1/infer",
                               body=header + cnn_input.tobytes(),
                               headers={"Inference-Header-Content-Length": str(len(header))})
            response = connection.getresponse()
            answers.append((response.status, response.read()))
    finally:
        connection.close()
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1] == answers[1][1] and b'"id":"retry-7"' in answers[0][1]
    assert executions() == before + 1


def _error(status_headers_body: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    status, headers, body = status_headers_body
    assert headers["Content-Type"].startswith("application/json"), headers
    return status, json.loads(body)["error"]


def test_every_bad_request_gets_its_status_and_a_message(server: EndpointServer, fleet: Any,
                                                         cnn_input: np.ndarray) -> None:
    context = _context(fleet)

    def post(path: str, body: bytes, **headers: str) -> tuple[int, str]:
        return _error(_call(server.http_port, "POST", path, body, context=context,
                            headers=headers))

    def infer(body: bytes, model: str = "tiny_cnn", **headers: str) -> tuple[int, str]:
        return post(f"/v2/models/{model}/infer", body, **headers)

    good = _json_infer(cnn_input)
    wrong = np.zeros((1, 3, 16, 16), np.float32)
    status, message = infer(_json_infer(wrong))
    assert status == 400 and "input 'x': expected FP32 [1,3,32,32] (-1 = any), got FP32 " \
        "[1,3,16,16]" in message
    status, message = infer(good, model="resnet9000")
    assert status == 404 and "unknown model 'resnet9000'" in message
    status, message = post("/v2/models/tiny_cnn/versions/9/infer", good)
    assert status == 404 and "has no version 9; available versions: 1, 2" in message
    status, message = infer(good, model="broken")
    assert status == 404 and "failed to load" in message
    assert infer(b"{not json")[0] == 400
    status, message = infer(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], '
                            b'"data": [1, 2, 3]}]}')
    assert status == 400 and "'data' holds 3 values but shape [2] needs 2" in message
    status, message = infer(b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], '
                            b'"data": [300]}]}')
    assert status == 400 and "outside INT8's range" in message
    status, message = infer(good, **{"Inference-Header-Content-Length": str(len(good) + 1)})
    assert status == 400 and "Inference-Header-Content-Length" in message
    header = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32], ' \
             b'"parameters": {"binary_data_size": 12288}}]}'
    status, message = infer(header + b"\0" * 100,
                            **{"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "runs past the end of the body" in message
    # The bad requests the gRPC tests send, as HTTP carries them.
    status, message = infer(json.dumps({"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [1, 3, 32, 32],
         "data": cnn_input.ravel().tolist()}]}).encode())
    assert status == 400 and "expected FP32 [1,3,32,32] (-1 = any), got FP64" in message
    status, message = infer(json.dumps({"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
         "data": cnn_input.ravel().tolist()}]}).encode())
    assert status == 400 and "unknown input 'image'" in message and "missing input 'x'" in message

    def binary(data: bytes, **parameters: Any) -> tuple[int, str]:
        head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                       "parameters": {"binary_data_size": len(data),
                                                      **parameters}}]}).encode()
        return infer(head + data, **{"Inference-Header-Content-Length": str(len(head))})

    zstd = encode_tensor(cnn_input, "zstd").data
    status, message = binary(zstd[:-10], edgecut_codec="zstd")
    assert status == 400 and "input 'x'" in message and "zstd frame" in message
    status, message = binary(cnn_input.tobytes()[:-100])
    assert status == 400 and "should be 12288 bytes, got 12188" in message
    status, message = binary(cnn_input.tobytes(), edgecut_codec="lz4")
    assert status == 400 and "unknown tensor codec 'lz4'" in message
    status, message = infer(json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1.0] * 8},
        {"name": "k", "datatype": "INT64", "shape": [3, 4], "data": [1] * 12}]}).encode(),
        model="scale_by")
    assert status == 400 and "the model rejected the inputs" in message
    # Over the 1 MiB message limit, and over it once decompressed (no gzip bombs).
    status, message = infer(b" " * (1 << 21))
    assert status == 413 and "over the limit of 1048576 bytes" in message
    status, message = infer(gzip.compress(b" " * (1 << 21)), **{"Content-Encoding": "gzip"})
    assert status == 413
    status, message = _error(_call(server.http_port, "GET", "/v3/nothing", context=context))
    assert status == 404 and "/v2" in message
    assert _error(_call(server.http_port, "GET", "/v2/models/tiny_cnn/infer",
                        context=context))[0] == 405
    status, message = _error(_call(server.http_port, "GET", "/v2/models/resnet9000/ready",
                                   context=context))
    assert status == 404 and "unknown model" in message
    status, message = _error(_call(server.http_port, "GET", "/v2/models/broken/ready",
                                   context=context))
    assert status == 404 and "failed to load" in message
    # Still serving; an edgecut codec rides on HTTP's binary tensors as on gRPC's raw ones.
    assert _call(server.http_port, "POST", "/v2/models/tiny_cnn/infer", good,
                 context=context)[0] == 200
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                   "parameters": {"binary_data_size": len(zstd),
                                                  "edgecut_codec": "zstd"}}],
                       "outputs": [{"name": "logits", "parameters": {"edgecut_codec": "zstd"}}]
                       }).encode()
    status, headers, data = _call(
        server.http_port, "POST", "/v2/models/tiny_cnn/infer", head + zstd, context=context,
        headers={"Inference-Header-Content-Length": str(len(head))})
    assert status == 200, data
    # An encoded output has no JSON form: it comes as bytes, its codec named beside them.
    size = int(headers["Inference-Header-Content-Length"])
    (logits,) = json.loads(data[:size])["outputs"]
    assert logits["parameters"]["edgecut_codec"] == "zstd"
    assert logits["parameters"]["binary_data_size"] == len(data) - size


def test_plaintext_to_the_https_listener_is_refused(server: EndpointServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
    try:
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            connection.request("GET", "/v2/health/live")
            connection.getresponse().read()
    finally:
        connection.close()


def test_grpc_keeps_serving_beside_http(server: EndpointServer, fleet: Any,
                                        open_channel: Callable[..., grpc.Channel],
                                        cnn_input: np.ndarray, reference: Reference) -> None:
    """Both bindings at once on one repository and scheduler: every answer right, every
    call counted in the same statistics."""
    expected = reference("tiny_cnn", 2, {"x": cnn_input})[0]
    stub = GRPCInferenceServiceStub(open_channel(server))
    context = _context(fleet)
    before = server.statistics().infer_requests
    calls = 8

    def over_grpc(_: int) -> np.ndarray:
        request = pb.ModelInferRequest(model_name="tiny_cnn")
        request.inputs.add(name="x", datatype="FP32", shape=cnn_input.shape)
        request.raw_input_contents.append(cnn_input.tobytes())
        response = stub.ModelInfer(request, timeout=TIMEOUT_S)
        return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 10)

    def over_http(_: int) -> np.ndarray:
        status, _, data = _call(server.http_port, "POST", "/v2/models/tiny_cnn/infer",
                                _json_infer(cnn_input, outputs=[{"name": "logits"}]),
                                context=context)
        assert status == 200, data
        return np.array(json.loads(data)["outputs"][0]["data"], np.float32).reshape(1, 10)

    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(f, i) for i in range(calls) for f in (over_grpc, over_http)]
        for answer in answers:
            np.testing.assert_allclose(answer.result(), expected, rtol=1e-5, atol=1e-5)
    assert server.statistics().infer_requests - before == 2 * calls


def test_mutual_tls_names_the_device_for_the_auth_file(model_repo: Path, two_devices: Any,
                                                       fleet: Any, tmp_path: Path) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text('[default]\nmodels = []\n[devices.pi-a]\nmodels = ["dyn_*"]\n')
    endpoint = create_server(model_repo, tls_dir=two_devices.directory, mutual_tls=True,
                             auth_file=auth, workers=2, http_address="127.0.0.1:0")
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                   "data": [0.5] * 32}]}).encode()

    def as_device(name: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(two_devices.ca))
        if name is not None:
            context.load_cert_chain(str(two_devices.directory / f"{name}.crt"),
                                    str(two_devices.directory / f"{name}.key"))
        return context

    with endpoint:
        port = endpoint.http_port
        client = _client(endpoint, two_devices, certfile=str(two_devices.cert),
                         keyfile=str(two_devices.key))
        try:
            tensor = httpclient.InferInput("x", [2, 16], "FP32")
            tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
            assert client.infer("dyn_mlp", [tensor]).as_numpy("y").shape == (2, 4)
            with pytest.raises(InferenceServerException, match="may not use model 'scale_by'"):
                client.get_model_metadata("scale_by")
        finally:
            client.close()
        status, message = _error(_call(port, "POST", "/v2/models/dyn_mlp/infer", body,
                                       context=as_device("pi-b")))
        assert status == 403 and "device 'pi-b' may not use model 'dyn_mlp'" in message
        # Only operators control the repository, and this file names none.
        status, message = _error(_call(port, "POST", "/v2/repository/models/dyn_mlp/unload",
                                       b"", context=as_device("pi-a")))
        assert status == 403 and "only operators control the repository" in message
        # Without a certificate: the probes answer, nothing else does.
        assert _call(port, "GET", "/v2/health/live", context=as_device(None))[0] == 200
        assert _call(port, "GET", "/v2/health/ready", context=as_device(None))[0] == 200
        status, message = _error(_call(port, "GET", "/v2/models/dyn_mlp",
                                       context=as_device(None)))
        assert status == 401 and "client certificate" in message
        # A certificate from another CA does not get through the handshake.
        stranger = ssl.create_default_context(cafile=str(two_devices.ca))
        stranger.load_cert_chain(str(fleet.cert), str(fleet.key))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _call(port, "GET", "/v2/health/live", context=stranger)


def test_repository_load_and_unload_over_http(model_repo: Path, fleet: Any,
                                              tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "dyn_mlp", repo / "dyn_mlp")
    repository = ModelRepository(repo, control_mode="explicit")
    endpoint = create_server(repository, tls_dir=fleet.directory, workers=2,
                             http_address="127.0.0.1:0")
    context = _context(fleet)
    with endpoint:
        port = endpoint.http_port
        assert _call(port, "GET", "/v2/models/dyn_mlp/ready", context=context)[0] == 200
        status, _, body = _call(port, "POST", "/v2/repository/models/dyn_mlp/unload",
                                b'{"parameters": {"unload_dependents": false}}', context=context)
        assert status == 200, body
        assert _call(port, "GET", "/v2/models/dyn_mlp/ready", context=context)[0] == 404
        status, _, body = _call(port, "POST", "/v2/repository/index", b'{"ready": true}',
                                context=context)
        assert status == 200 and json.loads(body) == []
        assert _call(port, "POST", "/v2/repository/models/dyn_mlp/load", b"",
                     context=context)[0] == 200
        assert _call(port, "GET", "/v2/models/dyn_mlp/ready", context=context)[0] == 200
        status, message = _error(_call(port, "POST", "/v2/repository/models/nothing/load", b"",
                                       context=context))
        assert status in (400, 404) and "nothing" in message


def test_full_queue_is_503_with_retry_after(ops_repo: Path,
                                            slow_iterations: Callable[[float], int]) -> None:
    policy = SchedulingPolicy(instance_count=1, max_queue_size=1)
    endpoint = create_server(ops_repo, workers=4, scheduling={"slow": policy},
                             http_address="127.0.0.1:0")

    def slow(seconds: float) -> bytes:
        return json.dumps({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64},
            {"name": "iterations", "datatype": "INT64", "shape": [],
             "data": [slow_iterations(seconds)]}]}).encode()

    def call(body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", endpoint.http_port,
                                                timeout=TIMEOUT_S)
        try:
            connection.request("POST", "/v2/models/slow/infer", body=body)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    with endpoint, ThreadPoolExecutor(6) as pool:
        long_call = pool.submit(call, slow(1.5))
        time.sleep(0.3)
        burst = list(pool.map(call, [slow(0.05)] * 5))
        assert long_call.result()[0] == 200
        refused = [r for r in burst if r[0] == 503]
        assert len(refused) >= 3, [r[0] for r in burst]
        for _, headers, body in refused:
            assert int(headers["Retry-After"]) >= 1
            assert "queue is full" in json.loads(body)["error"]
        assert call(slow(0.01))[0] == 200  # still serving


def test_calls_beyond_the_open_call_bound_are_503(
        ops_repo: Path, slow_iterations: Callable[[float], int]) -> None:
    """As gRPC's max_concurrent_rpcs: bodies waiting for their turn cannot fill the memory."""
    endpoint = create_server(ops_repo, workers=2, max_concurrent_rpcs=1,
                             http_address="127.0.0.1:0")
    body = json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64},
        {"name": "iterations", "datatype": "INT64", "shape": [],
         "data": [slow_iterations(1.5)]}]}).encode()

    def call() -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", endpoint.http_port,
                                                timeout=TIMEOUT_S)
        try:
            connection.request("POST", "/v2/models/slow/infer", body=body)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    with endpoint, ThreadPoolExecutor(1) as pool:
        first = pool.submit(call)
        time.sleep(0.3)
        status, headers, answer = call()
        assert status == 503 and headers["Retry-After"] == "1"
        assert "1 calls open already (its limit)" in json.loads(answer)["error"]
        assert first.result()[0] == 200


def test_draining_endpoint_answers_503(model_repo: Path, cnn_input: np.ndarray) -> None:
    endpoint = create_server(model_repo, workers=2, http_address="127.0.0.1:0")
    endpoint.start()
    port = endpoint.http_port
    assert port is not None
    try:
        endpoint._servicer.begin_drain()  # what stop() does first
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        connection.request("GET", "/v2/health/ready")
        response = connection.getresponse()
        assert response.status == 503 and response.getheader("Retry-After") == "1"
        response.read()
        connection.request("POST", "/v2/models/tiny_cnn/infer", body=_json_infer(cnn_input))
        response = connection.getresponse()
        assert response.status == 503 and "shutting down" in json.loads(response.read())["error"]
        connection.close()
    finally:
        endpoint.stop(grace_s=1.0)
    with pytest.raises(ConnectionRefusedError):  # stopped with the rest of the endpoint
        http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S).connect()


def test_bad_http_address_is_refused_before_anything_listens(model_repo: Path) -> None:
    with pytest.raises(UserInputError, match="http_address: address must be HOST:PORT"):
        create_server(model_repo, http_address="8000")
    endpoint = create_server(model_repo, workers=1, http_address="127.0.0.1:0")
    try:
        with pytest.raises(UserInputError, match=r"cannot listen for HTTP on 127\.0\.0\.1"):
            create_server(model_repo, workers=1, http_address=f"127.0.0.1:{endpoint.http_port}")
    finally:
        endpoint.stop(grace_s=0.1)


def test_json_conversion_round_trip() -> None:
    """The pure core: a request with one JSON and one binary input, and a response."""
    header = json.dumps({"id": "7", "parameters": {"timeout": 5000, "binary_data_output": True},
                         "inputs": [{"name": "a", "datatype": "INT64", "shape": [2, 2],
                                     "data": [[1, 2], [3, 4]]},
                                    {"name": "b", "datatype": "FP16", "shape": [2],
                                     "parameters": {"binary_data_size": 4}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": False}}]})
    blob = np.array([1.5, -2], np.float16).tobytes()
    message, choice = infer_request_message(header.encode() + blob, len(header),
                                            model_name="m", model_version="3")
    request = pb.ModelInferRequest.FromString(message)
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "7")
    assert request.parameters["timeout"].int64_param == 5000
    assert "binary_data_output" not in request.parameters
    assert np.frombuffer(request.raw_input_contents[0], np.int64).tolist() == [1, 2, 3, 4]
    assert request.raw_input_contents[1] == blob
    assert [o.name for o in request.outputs] == ["y"] and not request.outputs[0].parameters
    assert not choice.binary_for("y") and choice.binary_for("z")
    response = pb.ModelInferResponse(model_name="m", model_version="3", id="7")
    response.outputs.add(name="y", datatype="FP32", shape=[2])
    response.outputs.add(name="z", datatype="UINT8", shape=[3])
    response.raw_output_contents.extend([np.array([0.5, 1], np.float32).tobytes(), b"abc"])
    parts, size = infer_response_body(response.SerializeToString(), choice)
    assert size == len(parts[0]) and parts[1:] == [b"abc"]
    answer = json.loads(parts[0])
    assert answer["outputs"][0]["data"] == [0.5, 1.0]
    assert answer["outputs"][1]["parameters"] == {"binary_data_size": 3}
    # Every output as bytes: the header carries no values (orjson writes it) and reads the same.
    parts, size = infer_response_body(response.SerializeToString(),
                                      OutputChoice(default_binary=True, binary={}))
    assert size == len(parts[0]) and len(parts) == 3
    assert json.loads(parts[0]) == {
        "model_name": "m", "model_version": "3", "id": "7",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2],
                     "parameters": {"binary_data_size": 8}},
                    {"name": "z", "datatype": "UINT8", "shape": [3],
                     "parameters": {"binary_data_size": 3}}]}
    # Values in the JSON keep NaN and Infinity as the literals the clients' parsers read.
    response.raw_output_contents[0] = np.array([np.nan, np.inf], np.float32).tobytes()
    parts, _ = infer_response_body(response.SerializeToString(), choice)
    assert b'"data":[NaN,Infinity]' in parts[0]
    with pytest.raises(ProtocolError, match="input 'a' has both 'data' and binary_data_size"):
        infer_request_message(b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], '
                              b'"data": [1], "parameters": {"binary_data_size": 4}}]}', None,
                              model_name="m", model_version="")
    # What the fast parser refuses but the standard library reads is read as before (NaN
    # literals into FP32); an integer past 64 bits is refused for INT64 with the input named.
    message, _ = infer_request_message(b'{"inputs": [{"name": "a", "datatype": "FP32", '
                                       b'"shape": [2], "data": [NaN, 1]}]}', None,
                                       model_name="m", model_version="")
    values = np.frombuffer(pb.ModelInferRequest.FromString(message).raw_input_contents[0],
                           np.float32)
    assert np.isnan(values[0]) and values[1] == 1
    with pytest.raises(ProtocolError, match="input 'a': INT64 'data'"):
        infer_request_message(b'{"inputs": [{"name": "a", "datatype": "INT64", "shape": [1], '
                              b'"data": [18446744073709551616]}]}', None,
                              model_name="m", model_version="")
    with pytest.raises(ProtocolError, match="is not valid JSON"):
        infer_request_message(b'{"inputs": [', None, model_name="m", model_version="")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_commands_run_as_written(model_repo: Path, fleet: Any) -> None:
    """README's HTTP/REST example, with its folder, device and host put in."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
                if "--http-address" in b]
    commands = [line for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("curl ")]
    assert len(commands) == 2
    endpoint = create_server(model_repo, tls_dir=fleet.directory, mutual_tls=True, workers=2,
                             http_address="127.0.0.1:0")
    with endpoint:
        outputs = []
        for command in commands:
            command = command.split("  #")[0].replace("tls/", f"{fleet.directory}/").replace(
                "pi-kitchen", fleet.device).replace("HOST:8000", f"127.0.0.1:{endpoint.http_port}")
            done = subprocess.run(shlex.split(command), capture_output=True, text=True,
                                  timeout=TIMEOUT_S, check=True)
            outputs.append(done.stdout)
    answer = json.loads(outputs[0])
    assert answer["model_name"] == "dyn_mlp" and answer["outputs"][0]["shape"] == [1, 4]
    assert outputs[1].strip() == "200"


def test_rotated_certificates_apply_to_https_without_a_restart(model_repo: Path,
                                                                tmp_path: Path) -> None:
    live, old, new = tmp_path / "live", tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        init_ca(folder)
        issue_device_certificate(folder, "pi-a")
    shutil.copytree(old, live)
    endpoint = create_server(model_repo, tls_dir=live, mutual_tls=True, workers=2,
                             http_address="127.0.0.1:0")

    def as_device_of(folder: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
        context.load_cert_chain(str(folder / "pi-a.crt"), str(folder / "pi-a.key"))
        return context

    with endpoint:
        port = endpoint.http_port
        assert _call(port, "GET", "/v2/models/dyn_mlp", context=as_device_of(old))[0] == 200
        for name in ("ca.crt", "server.key", "server.crt"):
            shutil.copy2(new / name, live / name)
        # Read at the next handshake: the new fleet gets in, the old one no longer does.
        assert _call(port, "GET", "/v2/models/dyn_mlp", context=as_device_of(new))[0] == 200
        stale = as_device_of(old)
        stale.load_verify_locations(str(new / "ca.crt"))  # it trusts the server: refused by it
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _call(port, "GET", "/v2/models/dyn_mlp", context=stale)


def test_http_calls_show_in_the_metrics_and_the_request_log(
        model_repo: Path, cnn_input: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    endpoint = create_server(model_repo, workers=2, http_address="127.0.0.1:0", metrics_port=0,
                             request_log_level="INFO")
    with endpoint, caplog.at_level("INFO", logger="edgecut.cloud.requests"):
        connection = http.client.HTTPConnection("127.0.0.1", endpoint.http_port,
                                                timeout=TIMEOUT_S)
        for model in ("tiny_cnn", "resnet9000"):
            connection.request("POST", f"/v2/models/{model}/infer",
                               body=_json_infer(cnn_input, id=f"log-{model}"))
            connection.getresponse().read()
        connection.close()
        assert endpoint.metrics_url is not None
        with urllib.request.urlopen(endpoint.metrics_url, timeout=TIMEOUT_S) as response:
            text = response.read().decode()
    assert re.search(r'edgecut_inference_request_success_total\{model="tiny_cnn",'
                     r'version="2"\} 1\.0', text), text
    assert 'edgecut_rpc_total{code="NOT_FOUND",rpc="ModelInfer"} 1.0' in text
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "edgecut.cloud.requests"]
    assert {(line["id"], line["status"]) for line in lines} == {("log-tiny_cnn", "OK"),
                                                                ("log-resnet9000", "NOT_FOUND")}
