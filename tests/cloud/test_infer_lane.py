"""The infer lane (cloud/infer_lane.py): plain ModelInfer calls read by the transport (in C++
by the native one, cloud/native/infer_wire.h; in Python by the core one,
cloud/plain_infer.py), checked once per group and answered once per batch.

Each test runs over both transports that have the lane, and compares the lane with the
per-call path: the same requests to a grpcio endpoint (which has no lane) or to the unsplit
model in onnxruntime must give the same answers, the same errors and the same statuses.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper

from edgecut.cloud.batching import SchedulingPolicy
from edgecut.cloud.core_frontend import GRPC_IO_THREAD
from edgecut.cloud.native_server import available as native_available
from edgecut.cloud.native_server import unavailable_reason
from edgecut.cloud.server import EndpointServer, create_server
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.timing import server_timing

from .conftest import wide_mlp

NATIVE_ONLY = pytest.mark.skipif(not native_available(),
                                 reason=f"the native transport is not built: "
                                        f"{unavailable_reason()}")
# The transports with an infer lane.
LANES = [pytest.param("native", marks=NATIVE_ONLY), "core"]

WAIT_S = 30.0
INFER = "/inference.GRPCInferenceService/ModelInfer"
# Long enough that concurrent requests meet in batches, short enough for a test.
BATCHING = SchedulingPolicy(max_batch_size=8, dynamic_batching=True,
                            max_queue_delay_us=20_000)


def _scheduling() -> dict[str, SchedulingPolicy]:
    return {"wide_mlp": BATCHING, "batch_cnn": BATCHING, "batch_sum": BATCHING}


@pytest.fixture(params=LANES)
def lane(request: pytest.FixtureRequest) -> str:
    """A transport with an infer lane."""
    return str(request.param)


@pytest.fixture(scope="module", params=LANES)
def servers(request: pytest.FixtureRequest, ops_repo: Path
            ) -> Iterator[dict[str, EndpointServer]]:
    """The same repository behind a transport with the lane ("lane") and behind grpcio,
    plaintext: these tests are about the messages (TLS under the lane is the tritonclient
    test's)."""
    running = {name: create_server(ops_repo, workers=8, frontend=frontend,
                                   scheduling=_scheduling())
               for name, frontend in (("lane", request.param), ("grpcio", "grpcio"))}
    for server in running.values():
        server.start()
    yield running
    for server in running.values():
        server.stop(grace_s=1.0)


def _call(server: EndpointServer, message: bytes) -> tuple[grpc.StatusCode, Any]:
    """(status, parsed response or details) of one ModelInfer carrying `message` as is."""
    with grpc.insecure_channel(server.address) as channel:
        infer = channel.unary_unary(INFER)
        try:
            return grpc.StatusCode.OK, pb.ModelInferResponse.FromString(
                infer(message, timeout=WAIT_S))
        except grpc.RpcError as error:
            return error.code(), error.details()  # type: ignore[attr-defined]


def _untimed(response: pb.ModelInferResponse) -> pb.ModelInferResponse:
    """`response` less the server's timing (edgecut.protocol.timing), which it must carry:
    the rest of two answers to one request is equal, on any transport."""
    timing = server_timing(response)
    assert timing is not None and timing.queue_ms >= 0 and timing.compute_ms > 0
    untimed = pb.ModelInferResponse()
    untimed.CopyFrom(response)
    untimed.ClearField("parameters")
    return untimed


def _request(model: str, x: np.ndarray, *, name: str = "x", datatype: str = "FP32",
             outputs: tuple[str, ...] = (), request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name=name, datatype=datatype, shape=list(x.shape))
    for output in outputs:
        request.outputs.add(name=output)
    request.raw_input_contents.append(x.tobytes())
    return request


def test_concurrent_plain_calls_take_the_lane_and_each_gets_its_own_rows(
        ops_repo: Path, fleet: Any, lane: str,
        ops_reference: Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]) -> None:
    """tritonclient over TLS, 24 calls at once of 1 or 2 rows each: every call goes through
    the lane, they run in shared batches, and each answer is its own rows of the unbatched
    model's, outputs in the order asked for."""
    server = create_server(ops_repo, tls_dir=fleet.directory, workers=8, frontend=lane,
                           scheduling=_scheduling())
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(1 + i % 2, 3, 16, 16)).astype(np.float32) for i in range(24)]

    def one(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        client = triton.InferenceServerClient(server.address, ssl=True,
                                              root_certificates=str(fleet.ca))
        try:
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            wanted = [triton.InferRequestedOutput("pooled"), triton.InferRequestedOutput("y")]
            result = client.infer("batch_cnn", [tensor], outputs=wanted,
                                  client_timeout=WAIT_S)
            return result.as_numpy("pooled"), result.as_numpy("y")
        finally:
            client.close()

    with server, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, xs))
        lane_calls = server.lane_calls
        (queue,) = [q for q in server.statistics().queues if q.model == "batch_cnn"]
    assert lane_calls == len(xs)
    assert queue.rows == sum(len(x) for x in xs) and queue.batches < len(xs)
    for x, (pooled, y) in zip(xs, answers, strict=True):
        want_y, want_pooled = ops_reference("batch_cnn", {"x": x})
        np.testing.assert_allclose(pooled, want_pooled, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)


def test_a_lane_answer_is_the_per_call_answer(servers: dict[str, EndpointServer]) -> None:
    x = np.random.default_rng(1).normal(size=(2, 256)).astype(np.float32)
    message = _request("wide_mlp", x, request_id="req-7").SerializeToString()
    before = servers["lane"].lane_calls
    answers = {name: _call(server, message) for name, server in servers.items()}
    assert servers["lane"].lane_calls == before + 1
    assert answers["lane"][0] == answers["grpcio"][0] == grpc.StatusCode.OK
    assert _untimed(answers["lane"][1]) == _untimed(answers["grpcio"][1])
    assert answers["lane"][1].id == "req-7"


@pytest.mark.parametrize("case", [
    "unknown model", "unknown input", "wrong datatype", "wrong inner shape", "unknown output",
    "output asked twice", "version not served",
])
def test_lane_errors_are_the_per_call_errors(servers: dict[str, EndpointServer],
                                             case: str) -> None:
    x = np.ones((1, 256), np.float32)
    request = {
        "unknown model": _request("no_such_model", x),
        "unknown input": _request("wide_mlp", x, name="nope"),
        "wrong datatype": _request("wide_mlp", x.astype(np.float64), datatype="FP64"),
        "wrong inner shape": _request("wide_mlp", np.ones((1, 255), np.float32)),
        "unknown output": _request("wide_mlp", x, outputs=("nope",)),
        "output asked twice": _request("wide_mlp", x, outputs=("y", "y")),
        "version not served": _request("wide_mlp", x),
    }[case]
    if case == "version not served":
        request.model_version = "9"
    message = request.SerializeToString()
    before = servers["lane"].lane_calls
    native, per_call = (_call(servers[f], message) for f in ("lane", "grpcio"))
    assert servers["lane"].lane_calls == before + 1  # the lane answered it
    assert native[0] != grpc.StatusCode.OK
    assert native == per_call


def test_outputs_that_do_not_follow_the_batch_are_answered_as_computed(
        servers: dict[str, EndpointServer]) -> None:
    """batch_sum sums over the rows: a 2-row call's answer has one row, and 1-row calls that
    arrive together must not share a run."""
    xs = [np.full((2 if i == 0 else 1, 4), i + 1, np.float32) for i in range(6)]
    messages = [_request("batch_sum", x).SerializeToString() for x in xs]
    with ThreadPoolExecutor(len(xs)) as pool:
        answers = list(pool.map(lambda m: _call(servers["lane"], m), messages))
    for x, (code, response) in zip(xs, answers, strict=True):
        assert code == grpc.StatusCode.OK, response
        total = np.frombuffer(response.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(total.reshape(1, 4), x.sum(axis=0, keepdims=True))
        assert list(response.outputs[0].shape) == [1, 4]


def test_malformed_and_unusual_messages_get_the_per_call_answer(
        servers: dict[str, EndpointServer]) -> None:
    """Truncations of a valid message, junk, a name that is not UTF-8, tensors whose size
    does not match their shape: the lane must neither crash nor answer them differently."""
    x = np.arange(256, dtype=np.float32).reshape(1, 256)
    good = _request("wide_mlp", x).SerializeToString()
    mismatched = _request("wide_mlp", x)
    mismatched.inputs[0].shape[:] = [2, 256]
    bad_name = good.replace(b"wide_mlp", b"wide\xffmlp")
    rng = np.random.default_rng(3)
    messages = [good[:n] for n in (1, 5, 12, 40, len(good) - 1)]
    messages += [bytes(rng.integers(0, 256, size=n, dtype=np.uint8)) for n in (3, 64, 4096)]
    messages += [bad_name, mismatched.SerializeToString(), b""]
    for message in messages:
        native, per_call = (_call(servers[f], message) for f in ("lane", "grpcio"))
        assert native[0] == per_call[0], message[:64]
    # Still serving, through the lane.
    before = servers["lane"].lane_calls
    assert _call(servers["lane"], good)[0] == grpc.StatusCode.OK
    assert servers["lane"].lane_calls == before + 1


@pytest.mark.parametrize("rows", [1, 64])  # 1 KiB parsed whole; 64 KiB read in place
def test_calls_with_parameters_take_the_per_call_path(
        servers: dict[str, EndpointServer], rows: int) -> None:
    """A codec parameter (edgecut's device client sends them) is no plain call: it reaches
    the per-call path, from the copy the lane made, with the per-call answer."""
    x = np.random.default_rng(rows).normal(size=(rows, 256)).astype(np.float32)
    request = _request("wide_mlp", x)
    request.outputs.add(name="y").parameters["edgecut_codec"].string_param = "zstd"
    before = servers["lane"].lane_calls
    native, per_call = (_call(servers[f], request.SerializeToString())
                        for f in ("lane", "grpcio"))
    assert servers["lane"].lane_calls == before
    assert native[0] == per_call[0] == grpc.StatusCode.OK
    assert native[1].outputs[0].parameters["edgecut_codec"].string_param == "zstd"
    assert _untimed(native[1]) == _untimed(per_call[1])


def _flip_model(repo: Path) -> None:
    """`flip`: y = not x, BOOL [batch, 4]: a datatype whose values are checked (0 or 1)."""
    graph = helper.make_graph(
        [helper.make_node("Not", ["x"], ["y"])], "flip",
        [helper.make_tensor_value_info("x", TensorProto.BOOL, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (repo / "flip" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "flip" / "1" / "model.onnx"))
    (repo / "flip" / "config.pbtxt").write_text(
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n")


def _each_transport(repo: Path, messages: list[bytes], lane: str, **options: Any
                    ) -> dict[str, list[tuple[grpc.StatusCode, Any]]]:
    """Each message in turn to an endpoint over `lane` ("lane") and to a grpcio one."""
    answers = {}
    for name, frontend in (("lane", lane), ("grpcio", "grpcio")):
        with create_server(repo, workers=4, frontend=frontend, **options) as server:
            answers[name] = [(code, _untimed(answer) if code == grpc.StatusCode.OK
                              else answer)
                             for code, answer in (_call(server, m) for m in messages)]
            if name == "lane":
                assert server.lane_calls == len(messages)
    return answers


def test_a_layout_once_accepted_still_gets_each_calls_value_checks(tmp_path: Path,
                                                                   lane: str) -> None:
    """The lane checks a layout once per model version; BOOL bytes other than 0 and 1
    depend on the values, and are refused every time."""
    _flip_model(tmp_path)
    good = np.array([[1, 0, 1, 1]], np.uint8)
    bad = np.array([[1, 2, 0, 0]], np.uint8)
    messages = [_request("flip", x, datatype="BOOL").SerializeToString()
                for x in (good, bad, good, bad)]
    answers = _each_transport(tmp_path, messages, lane)
    assert answers["lane"] == answers["grpcio"]
    codes = [code for code, _ in answers["lane"]]
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT] * 2
    flipped = np.frombuffer(answers["lane"][2][1].raw_output_contents[0], np.uint8)
    np.testing.assert_array_equal(flipped, [0, 1, 0, 0])


def test_a_layout_once_accepted_still_gets_each_calls_size_check(tmp_path: Path,
                                                                  lane: str) -> None:
    """4 rows of wide_mlp decode to 4 KiB, within the limit; 5 rows are over it, each time,
    with the layout of 4 rows accepted meanwhile."""
    (tmp_path / "wide_mlp" / "1").mkdir(parents=True)
    onnx.save(wide_mlp(), str(tmp_path / "wide_mlp" / "1" / "model.onnx"))
    (tmp_path / "wide_mlp" / "config.pbtxt").write_text("max_batch_size: 8\n")
    messages = [_request("wide_mlp", np.ones((rows, 256), np.float32)).SerializeToString()
                for rows in (4, 5, 4, 5)]
    answers = _each_transport(tmp_path, messages, lane, max_decoded_bytes=4096)
    assert answers["lane"] == answers["grpcio"]
    codes = [code for code, _ in answers["lane"]]
    assert codes[0] == codes[2] == grpc.StatusCode.OK
    assert codes[1] == codes[3] != grpc.StatusCode.OK
    assert "4096" in answers["lane"][1][1]


@NATIVE_ONLY
def test_the_transport_threads_yield_to_model_runs(ops_repo: Path) -> None:
    """The native transport's two threads run under SCHED_BATCH (frontend.cc,
    yield_to_models): their wake-ups must not preempt a model run. The model's worker,
    started from the transport's thread, keeps the default policy and has a name of its own."""
    with create_server(ops_repo, workers=4, frontend="native",
                       scheduling=_scheduling()) as server:
        _threads_yield(server, {"edgecut-grpc-cq", "edgecut-handoff"})


def test_the_core_transport_thread_yields_to_model_runs(ops_repo: Path) -> None:
    """The core transport's one thread, which reads the lane's calls too, likewise; and so
    do gRPC's own I/O threads (its EventEngine pool), which it puts under SCHED_BATCH."""
    with create_server(ops_repo, workers=4, frontend="core",
                       scheduling=_scheduling()) as server:
        _threads_yield(server, {"edgecut-grpc-cq"})
        deadline = time.monotonic() + WAIT_S
        while True:  # the completion-queue thread looks for new ones every second
            policies = _policies(GRPC_IO_THREAD)
            if policies == {os.SCHED_BATCH} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert policies == {os.SCHED_BATCH}


def _policies(name: str) -> set[int]:
    """The scheduling policies of this process's threads called `name`."""
    found = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                found.add(os.sched_getscheduler(int(task.name)))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return found


def _threads_yield(server: EndpointServer, transport_threads: set[str]) -> None:
    x = np.ones((1, 256), np.float32)
    assert _call(server, _request("wide_mlp", x).SerializeToString())[0] == grpc.StatusCode.OK
    policies: dict[str, set[int]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            policy = os.sched_getscheduler(int(task.name))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        if name in ("edgecut-grpc-cq", "edgecut-handoff", "run-wide_mlp"):
            policies.setdefault(name, set()).add(policy)
    assert policies == {**{name: {os.SCHED_BATCH} for name in transport_threads},
                        "run-wide_mlp": {os.SCHED_OTHER}}


@NATIVE_ONLY
def test_the_frontend_hands_over_tensors_in_place_and_aligned() -> None:
    """What frontend.cc passes for lane calls, read directly: each tensor is where its offset
    says in its message, equal to what was sent, and starts on a 64-byte boundary (numpy and
    onnxruntime read it there without a copy), whatever the header's length."""
    from edgecut.cloud import _frontend

    frontend = _frontend.Frontend("127.0.0.1:0", None, False, False, 64 << 20, 64)
    frontend.enable_infer_lane(INFER, [])
    received: list[Any] = []

    def dispatch(calls: list, ended: list, infers: list) -> None:
        received.extend(infers)
        for group in infers:
            for call_id, *_ in group[5]:
                frontend.finish(call_id, 0, "", b"")

    frontend.start(dispatch)
    try:
        rng = np.random.default_rng(2)
        sent = {}
        with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
            infer = channel.unary_unary(INFER)
            for n in range(1, 9):  # model names of 1..8 bytes move the tensor's offset
                x = rng.normal(size=(1, 1000 + n)).astype(np.float32)
                sent["m" * n] = x
                infer(_request("m" * n, x, request_id=f"r{n}").SerializeToString(),
                      timeout=WAIT_S)
    finally:
        frontend.stop(1.0)
    assert frontend.lane_calls == len(sent)
    for name, _version, _peer, inputs, _outputs, calls in received:
        x = sent[name.decode()]
        assert inputs == [(b"x", b"FP32", x.shape)]
        for _call_id, request_id, _left, message, (offset,), address in calls:
            assert request_id == f"r{len(name)}".encode()
            assert address.startswith("ipv4:127.0.0.1:")  # given with a request id
            tensor = np.frombuffer(message, np.float32, count=x.size, offset=offset)
            np.testing.assert_array_equal(tensor, x.ravel())
            assert tensor.ctypes.data % 64 == 0


def test_calls_answered_together_are_each_counted(ops_repo: Path, lane: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Lane calls that one run answers are counted at once (count=): the statistics, the
    canary's counters, the metrics and the request log must still see every call."""
    from prometheus_client.parser import text_string_to_metric_families

    from edgecut.cloud.logs import REQUEST_LOGGER

    calls = 12
    x = np.ones((1, 256), np.float32)
    messages = [_request("wide_mlp", x, request_id=f"id-{i}").SerializeToString()
                for i in range(calls)]
    server = create_server(ops_repo, workers=8, frontend=lane, scheduling=_scheduling(),
                           metrics_port=0, request_log_level="INFO")
    with server, caplog.at_level(logging.INFO, logger=REQUEST_LOGGER), \
            ThreadPoolExecutor(calls) as pool:
        codes = [code for code, _ in pool.map(lambda m: _call(server, m), messages)]
        assert server.metrics_url is not None
        with urllib.request.urlopen(server.metrics_url, timeout=WAIT_S) as response:
            text = response.read().decode()
        statistics = server.statistics()
        (version,) = server.repository.version_statistics("wide_mlp")
        (queue,) = [q for q in statistics.queues if q.model == "wide_mlp"]
        lane_calls = server.lane_calls
    assert codes == [grpc.StatusCode.OK] * calls and lane_calls == calls
    assert queue.batches < calls  # some were answered together
    assert statistics.infer_requests == calls
    assert version.successes == calls
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    series = (("model", "wide_mlp"), ("version", "1"))
    assert samples[("edgecut_inference_request_success_total", series)] == calls
    assert samples[("edgecut_inference_request_duration_seconds_count", series)] == calls
    assert samples[("edgecut_inference_raw_bytes_in_total", series)] == calls * x.nbytes
    assert samples[("edgecut_inference_raw_bytes_out_total", series)] == calls * 512 * 4
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == REQUEST_LOGGER]
    assert sorted(line["id"] for line in logged) == sorted(f"id-{i}" for i in range(calls))


def test_mutated_messages_get_the_per_call_status(servers: dict[str, EndpointServer]) -> None:
    """150 random byte changes of valid messages (the C++ reader's bounds): whatever the
    lane takes or leaves, each gets the status the per-call path gives, and the endpoint
    stays up."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 256)).astype(np.float32)
    valid = [_request("wide_mlp", x, outputs=("y",), request_id="m").SerializeToString(),
             _request("batch_cnn", rng.normal(size=(1, 3, 16, 16)).astype(np.float32))
             .SerializeToString()]
    # One channel each; most mutated calls still wait out the 20 ms batching delay.
    with grpc.insecure_channel(servers["lane"].address) as native_channel, \
            grpc.insecure_channel(servers["grpcio"].address) as grpcio_channel:
        calls = {"lane": native_channel.unary_unary(INFER),
                 "grpcio": grpcio_channel.unary_unary(INFER)}

        def status(frontend: str, message: bytes) -> grpc.StatusCode:
            try:
                calls[frontend](message, timeout=WAIT_S)
            except grpc.RpcError as error:
                return error.code()  # type: ignore[attr-defined,no-any-return]
            return grpc.StatusCode.OK

        for i in range(150):
            message = bytearray(valid[i % 2])
            # Mostly the header (the first 80 bytes): that is where the structure is.
            at = int(rng.integers(0, 80 if i % 3 else len(message)))
            message[at] = int(rng.integers(0, 256))
            if i % 5 == 0:
                del message[int(rng.integers(at, len(message))):]
            assert status("lane", bytes(message)) == status("grpcio", bytes(message)), i
        assert status("lane", valid[0]) == grpc.StatusCode.OK
