"""CloudClient against real servers on loopback: the endpoint with mTLS, a stock-like server
without edgecut's codecs, and no server at all. Every gRPC failure arrives as an edgecut error."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgecut.edge import CloudClient, load_plan
from edgecut.edge.wire import request_with_raw_inputs
from edgecut.errors import (
    CloudUnavailableError,
    DeadlineExceededError,
    EdgecutError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RemoteError,
    TLSConfigError,
)
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import CODEC_PARAMETER, CODECS, SERVER_EXTENSIONS
from edgecut.protocol.grpc_service_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)


@pytest.fixture
def client(endpoint: str, fleet: Path) -> Iterator[CloudClient]:
    with CloudClient(endpoint, tls_dir=fleet, timeout_s=10.0) as c:
        yield c


def _first_tail(plan_dir: Path) -> tuple[str, list[str]]:
    plan = load_plan(plan_dir)
    cut = plan.cut(plan.chosen)
    assert cut.endpoint_model is not None
    return cut.endpoint_model, list(cut.crossing)


def test_health_and_metadata(client: CloudClient, plan_dir: Path) -> None:
    assert client.server_live()
    assert client.server_ready()
    assert set(SERVER_EXTENSIONS) <= set(client.server_metadata().extensions)
    assert client.model_ready(load_plan(plan_dir).model.name)
    assert client.server_codecs() == frozenset(CODECS)


# int8 over the wire, within its tolerance: tests/protocol/test_int8_over_the_wire.py.
@pytest.mark.parametrize("codec", [c for c in CODECS if c != "int8"])
def test_infer_round_trip(client: CloudClient, plan_dir: Path, feed: dict, codec: str) -> None:
    model = load_plan(plan_dir).model.name
    full = client.infer(model, feed, outputs=["p3", "p1"])
    result = client.infer(model, feed, outputs=["p3", "p1"], codec=codec, response_codec=codec)
    assert list(result.outputs) == ["p3", "p1"]
    assert result.codecs == {"x": codec}
    tolerance = 1e-2 if codec == "fp16" else 0.0
    for name in ("p3", "p1"):
        np.testing.assert_allclose(result.outputs[name], full.outputs[name], atol=tolerance)
    assert result.raw_bytes_up == feed["x"].nbytes
    assert result.raw_bytes_down == sum(a.nbytes for a in full.outputs.values())
    if codec == "fp16":
        assert result.wire_bytes_up == feed["x"].nbytes // 2
        assert result.wire_bytes_down == result.raw_bytes_down // 2
    assert min(result.encode_ms, result.rpc_ms, result.decode_ms) >= 0


def test_all_outputs_in_server_order_when_none_named(client: CloudClient, plan_dir: Path,
                                                     feed: dict) -> None:
    result = client.infer(load_plan(plan_dir).model.name, feed)
    assert list(result.outputs) == ["p1", "p2", "p3"]


def test_unknown_model_is_model_not_found(client: CloudClient, feed: dict) -> None:
    with pytest.raises(ModelNotFoundError, match="'no_such_model'") as info:
        client.infer("no_such_model", feed)
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_bad_request_is_remote_error_with_the_servers_message(client: CloudClient,
                                                              plan_dir: Path) -> None:
    model = load_plan(plan_dir).model.name
    with pytest.raises(RemoteError, match=r"INVALID_ARGUMENT: .*'x'") as info:
        client.infer(model, {"x": np.zeros((1, 3, 32, 32), np.float64)})
    assert info.value.code == "INVALID_ARGUMENT"
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_server_down_is_cloud_unavailable(fleet: Path, feed: dict, free_port) -> None:
    start = time.perf_counter()
    with CloudClient(f"localhost:{free_port()}", tls_dir=fleet, timeout_s=2.0) as c, \
            pytest.raises(CloudUnavailableError, match="endpoint unavailable") as info:
        c.infer("anything", feed)
    assert time.perf_counter() - start < 2.0
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_no_time_left_is_deadline_exceeded(client: CloudClient, plan_dir: Path,
                                           feed: dict) -> None:
    with pytest.raises(DeadlineExceededError, match="no time left before the deadline"):
        client.infer(load_plan(plan_dir).model.name, feed, timeout_s=1e-9)


def test_wrong_ca_is_cloud_unavailable(endpoint: str, tmp_path: Path) -> None:
    from edgecut.protocol.pki import init_ca, issue_device_certificate

    init_ca(tmp_path)
    issue_device_certificate(tmp_path, "stranger")
    with CloudClient(endpoint, tls_dir=tmp_path, timeout_s=5.0) as c, \
            pytest.raises(CloudUnavailableError):
        c.server_live()


def test_mutual_tls_without_a_device_certificate(endpoint: str, fleet: Path,
                                                 tmp_path: Path) -> None:
    shutil.copy(fleet / "ca.crt", tmp_path / "ca.crt")
    with CloudClient(endpoint, tls_dir=tmp_path, timeout_s=5.0) as c, \
            pytest.raises(CloudUnavailableError):
        c.server_live()


def test_device_without_tls_dir() -> None:
    with pytest.raises(TLSConfigError, match="named without tls_dir"):
        CloudClient("localhost:1", device="pi4")


def test_request_over_the_message_limit(endpoint: str, fleet: Path) -> None:
    with CloudClient(endpoint, tls_dir=fleet, max_message_bytes=1024) as c, \
            pytest.raises(PayloadTooLargeError, match="over the 1024-byte message limit"):
        c.infer("m", {"x": np.zeros(1024, np.float32)})


def test_statistics_snapshot(client: CloudClient, plan_dir: Path, feed: dict) -> None:
    model = load_plan(plan_dir).model.name
    client.infer(model, feed, codec="zstd")
    with pytest.raises(ModelNotFoundError):
        client.infer("no_such_model", feed)
    stats = client.statistics()
    # ServerMetadata (asked once for the codecs), two ModelInfer calls, one of them failed.
    assert (stats.calls, stats.failures) == (3, 1)
    assert stats.raw_bytes_up == feed["x"].nbytes and stats.wire_bytes_up > 0
    assert stats.server_codecs == CODECS


def test_closed_client(endpoint: str, fleet: Path) -> None:
    c = CloudClient(endpoint, tls_dir=fleet)
    c.close()
    c.close()
    with pytest.raises(EdgecutError, match="closed"):
        c.server_live()


def test_hand_built_request_is_valid_protobuf() -> None:
    a = np.arange(300, dtype=np.float32).reshape(3, 100)
    b = np.array([True, False])
    header = pb.ModelInferRequest(model_name="m")
    header.inputs.add(name="a", datatype="FP32", shape=[3, 100])
    header.inputs.add(name="b", datatype="BOOL", shape=[2])
    payload = request_with_raw_inputs(header.SerializeToString(),
                                 [memoryview(a.reshape(-1).view(np.uint8)), b.tobytes()])
    expected = pb.ModelInferRequest()
    expected.CopyFrom(header)
    expected.raw_input_contents.extend([a.tobytes(), b.tobytes()])
    assert pb.ModelInferRequest.FromString(payload) == expected


class _StockServicer(GRPCInferenceServiceServicer):
    """An OIP server that knows no edgecut codec: it echoes each input back as an output."""

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="stock", version="1", extensions=["binary"])

    def ModelInfer(self, request, context):
        if request.model_name == "slow":
            time.sleep(1.0)
        if CODEC_PARAMETER in request.parameters or any(
                CODEC_PARAMETER in t.parameters for t in (*request.inputs, *request.outputs)):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown parameter edgecut_codec")
        response = pb.ModelInferResponse(model_name=request.model_name)
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(raw)
        return response


@pytest.fixture
def stock_endpoint() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_GRPCInferenceServiceServicer_to_server(_StockServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None).wait(5.0)


def test_stock_server_gets_raw_tensors(stock_endpoint: str) -> None:
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    with CloudClient(stock_endpoint, timeout_s=5.0) as c:
        result = c.infer("echo", {"x": x}, codec="shuffle_zstd", response_codec="zstd")
        assert c.server_codecs() == frozenset({"raw"})
    assert result.codecs == {"x": "raw"}
    np.testing.assert_array_equal(result.outputs["x"], x)
    assert result.wire_bytes_up == x.nbytes


def test_stock_server_typed_contents(stock_endpoint: str) -> None:
    # A big-endian, non-contiguous array must still arrive as the protocol's little-endian.
    x = np.arange(12, dtype=">i4").reshape(3, 4).T
    with CloudClient(stock_endpoint, timeout_s=5.0) as c:
        result = c.infer("echo", {"x": x})
    np.testing.assert_array_equal(result.outputs["x"], x)
    assert result.outputs["x"].dtype == np.dtype("<i4")


def test_slow_answer_is_deadline_exceeded(stock_endpoint: str) -> None:
    with CloudClient(stock_endpoint, timeout_s=5.0) as c:
        c.server_live()
        with pytest.raises(DeadlineExceededError, match=r"no answer within 0\.2 s") as info:
            c.infer("slow", {"x": np.zeros(3, np.float32)}, timeout_s=0.2)
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_a_call_says_whether_it_had_to_connect(client: CloudClient, plan_dir: Path,
                                               feed: dict) -> None:
    model = load_plan(plan_dir).model.name
    assert not client.connected()
    first = client.infer(model, feed)
    second = client.infer(model, feed)
    assert (first.connected, second.connected, client.connected()) == (False, True, True)
