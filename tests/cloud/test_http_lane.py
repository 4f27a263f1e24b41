"""The HTTP infer lane (cloud/http_lane.py): plain binary-tensor requests, as tritonclient.http
sends them, queued in groups and answered from the run's outputs.

The lane is compared with the per-call path on the same endpoint: a request id sends the same
request down the per-call path (deduplication keys on it), so the two must give the same
outputs, the same statuses and the same messages; and with the unsplit model in onnxruntime.
"""

from __future__ import annotations

import doctest
import http.client
import json
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from edgecut.cloud import http_lane
from edgecut.cloud.batching import SchedulingPolicy
from edgecut.cloud.http_lane import read_plain_http
from edgecut.cloud.server import EndpointServer, create_server
from edgecut.protocol.timing import COMPUTE_MS_PARAMETER, QUEUE_MS_PARAMETER

WAIT_S = 30.0
BATCHING = SchedulingPolicy(max_batch_size=8, dynamic_batching=True,
                            max_queue_delay_us=20_000)
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(ops_repo: Path) -> Iterator[EndpointServer]:
    """HTTP (plaintext: these tests are about the bodies) beside gRPC, batching on."""
    endpoint = create_server(ops_repo, workers=8, http_address="127.0.0.1:0",
                             scheduling={"wide_mlp": BATCHING, "batch_cnn": BATCHING,
                                         "batch_sum": BATCHING})
    with endpoint:
        yield endpoint


def _body(x: np.ndarray, *, name: str = "x", datatype: str = "FP32",
          outputs: tuple[str, ...] = ("y",), request_id: str = "",
          **extra: Any) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor request as tritonclient.http writes one, and its headers."""
    header: dict[str, Any] = {
        "inputs": [{"name": name, "datatype": datatype, "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
        **extra}
    if request_id:
        header["id"] = request_id
    head = json.dumps(header).encode()
    return head + x.tobytes(), {HEADER: str(len(head))}


def _post(server: EndpointServer, model: str, body: bytes, headers: dict[str, str],
          version: str = "") -> tuple[int, dict[str, Any], bytes]:
    """(status, the JSON header or error, the bytes after it)."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=WAIT_S)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        size = response.getheader(HEADER)
    finally:
        connection.close()
    if size is None:
        return response.status, json.loads(data), b""
    return response.status, json.loads(data[:int(size)]), data[int(size):]


def _untimed(header: dict[str, Any]) -> dict[str, Any]:
    """The answer's header less its id and the server's timing, which it must carry."""
    timing = header.get("parameters", {})
    assert timing[QUEUE_MS_PARAMETER] >= 0 and timing[COMPUTE_MS_PARAMETER] > 0
    return {k: v for k, v in header.items() if k not in ("parameters", "id")}


def test_concurrent_plain_requests_take_the_lane_in_shared_batches(
        server: EndpointServer,
        ops_reference: Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]) -> None:
    """24 tritonclient.http requests at once, of 1 or 2 rows: each through the lane, in
    batches they share, each answered with its own rows of the unbatched model's."""
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(1 + i % 2, 3, 16, 16)).astype(np.float32) for i in range(24)]

    def one(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}",
                                                  network_timeout=WAIT_S)
        try:
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            wanted = [httpclient.InferRequestedOutput("pooled", binary_data=True),
                      httpclient.InferRequestedOutput("y", binary_data=True)]
            result = client.infer("batch_cnn", [tensor], outputs=wanted)
            return result.as_numpy("pooled"), result.as_numpy("y")
        finally:
            client.close()

    def queue() -> tuple[int, int]:  # rows and batches so far (none before the first)
        found = [(q.rows, q.batches) for q in server.statistics().queues
                 if q.model == "batch_cnn"]
        return found[0] if found else (0, 0)

    before, (rows, batches) = server.http_lane_calls, queue()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, xs))
    assert server.http_lane_calls == before + len(xs)
    rows_now, batches_now = queue()
    assert rows_now - rows == sum(len(x) for x in xs) and batches_now - batches < len(xs)
    for x, (pooled, y) in zip(xs, answers, strict=True):
        want_y, want_pooled = ops_reference("batch_cnn", {"x": x})
        np.testing.assert_allclose(pooled, want_pooled, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)


def test_a_lane_answer_is_the_per_call_answer(server: EndpointServer) -> None:
    x = np.random.default_rng(1).normal(size=(2, 256)).astype(np.float32)
    before = server.http_lane_calls
    lane = _post(server, "wide_mlp", *_body(x))
    assert server.http_lane_calls == before + 1
    per_call = _post(server, "wide_mlp", *_body(x, request_id="req-7"))
    assert server.http_lane_calls == before + 1  # an id: the per-call path
    assert lane[0] == per_call[0] == 200
    assert _untimed(lane[1]) == _untimed(per_call[1])
    assert lane[2] == per_call[2] and len(lane[2]) == lane[1]["outputs"][0]["parameters"][
        "binary_data_size"]
    assert per_call[1]["id"] == "req-7" and "id" not in lane[1]
    # No outputs named, all of them as bytes: the lane's too.
    status, header, data = _post(server, "wide_mlp", *_body(
        x, outputs=(), parameters={"binary_data_output": True}))
    assert status == 200 and server.http_lane_calls == before + 2
    assert [o["name"] for o in header["outputs"]] == ["y"] and data == lane[2]


@pytest.mark.parametrize("case", [
    "unknown model", "unknown input", "wrong datatype", "wrong inner shape", "unknown output",
    "output asked twice", "version not served",
])
def test_lane_errors_are_the_per_call_errors(server: EndpointServer, case: str) -> None:
    x = np.ones((1, 256), np.float32)
    model, version, kwargs = {
        "unknown model": ("no_such_model", "", {}),
        "unknown input": ("wide_mlp", "", {"name": "nope"}),
        "wrong datatype": ("wide_mlp", "", {"x": x.astype(np.float64), "datatype": "FP64"}),
        "wrong inner shape": ("wide_mlp", "", {"x": np.ones((1, 255), np.float32)}),
        "unknown output": ("wide_mlp", "", {"outputs": ("nope",)}),
        "output asked twice": ("wide_mlp", "", {"outputs": ("y", "y")}),
        "version not served": ("wide_mlp", "9", {}),
    }[case]
    kwargs.setdefault("x", x)
    before = server.http_lane_calls
    lane = _post(server, model, *_body(**kwargs), version=version)
    assert server.http_lane_calls == before + 1  # the lane answered it
    per_call = _post(server, model, *_body(**kwargs, request_id="r"), version=version)
    assert lane[0] in (400, 404) and "error" in lane[1]
    assert lane == per_call


def test_outputs_that_do_not_follow_the_batch_are_answered_as_computed(
        server: EndpointServer) -> None:
    """batch_sum sums over the rows: a 2-row request's answer has one row, and 1-row
    requests that arrive together must not share a run."""
    xs = [np.full((2 if i == 0 else 1, 4), i + 1, np.float32) for i in range(6)]
    before = server.http_lane_calls
    with ThreadPoolExecutor(len(xs)) as pool:
        answers = list(pool.map(lambda x: _post(server, "batch_sum", *_body(
            x, outputs=(), parameters={"binary_data_output": True})), xs))
    assert server.http_lane_calls == before + len(xs)
    for x, (status, header, data) in zip(xs, answers, strict=True):
        assert status == 200, header
        assert header["outputs"][0]["shape"] == [1, 4]
        np.testing.assert_array_equal(np.frombuffer(data, np.float32).reshape(1, 4),
                                      x.sum(axis=0, keepdims=True))


def test_requests_that_are_not_plain_take_the_per_call_path(server: EndpointServer) -> None:
    """JSON values either way, a request id, parameters, and bytes the header does not
    account for: answered (or refused) by the per-call path, never by the lane."""
    x = np.arange(256, dtype=np.float32).reshape(1, 256)
    body, headers = _body(x)
    head = int(headers[HEADER])
    json_in = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256],
                                      "data": x.ravel().tolist()}]}).encode()
    cases = [
        (json_in, {}, 200),
        (*_body(x, outputs=()), 200),  # outputs as JSON values
        (*_body(x, parameters={"timeout": 5_000_000}), 200),
        (*_body(x, request_id="id-1"), 200),
        (body + b"\0" * 4, headers, 400),  # 4 bytes no binary_data_size accounts for
        (body[:-4], headers, 400),  # a tensor 4 bytes short
        (body, {HEADER: str(head + 1)}, 400),  # the header's length is wrong
    ]
    before = server.http_lane_calls
    for data, extra, status in cases:
        got = _post(server, "wide_mlp", data, extra)
        assert got[0] == status, (data[:80], got[1])
    assert server.http_lane_calls == before
    assert _post(server, "wide_mlp", body, headers)[0] == 200  # still serving, by the lane
    assert server.http_lane_calls == before + 1


def test_the_lane_names_the_device_for_the_auth_file(model_repo: Path, two_devices: Any,
                                                      tmp_path: Path) -> None:
    """HTTPS with client certificates: a device the auth file allows gets its answer through
    the lane, one it does not gets 403 with the per-call path's message."""
    auth = tmp_path / "auth.toml"
    auth.write_text('[default]\nmodels = []\n[devices.pi-a]\nmodels = ["dyn_*"]\n')
    endpoint = create_server(model_repo, tls_dir=two_devices.directory, mutual_tls=True,
                             auth_file=auth, workers=2, http_address="127.0.0.1:0")
    x = np.ones((2, 16), np.float32)

    def post(device: str, request_id: str = "") -> tuple[int, dict[str, Any]]:
        context = ssl.create_default_context(cafile=str(two_devices.ca))
        context.load_cert_chain(str(two_devices.directory / f"{device}.crt"),
                                str(two_devices.directory / f"{device}.key"))
        body, headers = _body(x, request_id=request_id)
        connection = http.client.HTTPSConnection("127.0.0.1", endpoint.http_port,
                                                 context=context, timeout=WAIT_S)
        try:
            connection.request("POST", "/v2/models/dyn_mlp/infer", body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        size = response.getheader(HEADER)
        return response.status, json.loads(data[:int(size)] if size else data)

    with endpoint:
        status, header = post("pi-a")
        assert status == 200 and header["outputs"][0]["shape"] == [2, 4]
        assert endpoint.http_lane_calls == 1
        refused = post("pi-b")
        assert endpoint.http_lane_calls == 2
        assert refused[0] == 403 and "device 'pi-b' may not use model 'dyn_mlp'" in \
            refused[1]["error"]
        assert post("pi-b", request_id="r") == refused  # the per-call path says the same


def test_a_draining_endpoint_refuses_lane_requests_with_503(ops_repo: Path) -> None:
    endpoint = create_server(ops_repo, workers=2, http_address="127.0.0.1:0")
    x = np.ones((1, 256), np.float32)
    with endpoint:
        assert _post(endpoint, "wide_mlp", *_body(x))[0] == 200
        endpoint._servicer.begin_drain()  # what stop() does first
        status, header, _ = _post(endpoint, "wide_mlp", *_body(x))
        assert endpoint.http_lane_calls == 2
        assert status == 503 and "shutting down" in header["error"]


def test_plain_means_binary_in_and_out_and_nothing_else() -> None:
    def header(**changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                        "parameters": {"binary_data_size": 24}},
                       {"name": "k", "datatype": "INT64", "shape": [2],
                        "parameters": {"binary_data_size": 16}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
        base.update(changes)
        return base

    plain = read_plain_http(header(), header_bytes=100, body_bytes=140)
    assert plain is not None
    assert plain.inputs == ((b"x", b"FP32", (2, 3)), (b"k", b"INT64", (2,)))
    assert plain.outputs == (b"y",) and plain.offsets == (100, 124)
    assert read_plain_http(header(outputs=[], parameters={"binary_data_output": True}),
                           header_bytes=100, body_bytes=140).outputs == ()
    x = header()["inputs"][0]
    not_plain = [
        header(id="7"), header(parameters={"timeout": 1}), header(outputs=[]),
        header(outputs=[{"name": "y"}]),
        header(outputs=[{"name": "y", "parameters": {"binary_data": False}}]),
        header(outputs=[{"name": "y", "parameters": {"binary_data": True, "edgecut_codec":
                                                     "zstd"}}]),
        header(inputs=[{**x, "parameters": {"binary_data_size": 24, "edgecut_codec": "zstd"}}]),
        header(inputs=[{**x, "data": [1, 2, 3, 4, 5, 6]}]),
        header(inputs=[{**x, "datatype": "BYTES"}]), header(inputs=[{**x, "shape": []}]),
        header(inputs=[{**x, "shape": [2, -3]}]), header(inputs=[{**x, "shape": [2, 3.0]}]),
        header(inputs=[x, {**x, "name": "z", "shape": [3, 2]}]),  # rows differ
        header(inputs=[]), header(extra=1), [1, 2],
    ]
    for case in not_plain:
        assert read_plain_http(case, header_bytes=100, body_bytes=140) is None, case
    assert read_plain_http(header(), header_bytes=100, body_bytes=141) is None


def test_the_module_docstring_example_runs() -> None:
    result = doctest.testmod(http_lane)
    assert result.attempted > 0 and result.failed == 0
