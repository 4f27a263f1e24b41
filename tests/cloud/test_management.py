"""Repository, config and statistics RPCs: stock tritonclient calls, canary parameters, CLI."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from edgecut.cli_models import register
from edgecut.cloud.management import ModelControl, model_statistics
from edgecut.cloud.repository import ModelRepository
from edgecut.cloud.server import EndpointServer, create_server
from edgecut.errors import RemoteError

_spec = importlib.util.spec_from_file_location(
    "lifecycle_helpers", Path(__file__).with_name("test_repository_lifecycle.py"))
helpers = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("lifecycle_helpers", helpers)
_spec.loader.exec_module(helpers)
put, scaled = helpers.put, helpers.scaled
TIMEOUT_S = 10.0


@pytest.fixture
def server(tmp_path: Path, fleet: Any) -> Iterator[EndpointServer]:
    put(tmp_path, "m", 1, scaled(1.0))
    put(tmp_path, "m", 2, scaled(2.0))
    (tmp_path / "m" / "config.pbtxt").write_text(
        'max_batch_size: 8\nversion_policy: { specific: { versions: [1] } }\n'
        "dynamic_batching { max_queue_delay_microseconds: 100 }\n")
    repo = ModelRepository(tmp_path, intra_op_threads=1)
    server = create_server(repo, tls_dir=fleet.directory, workers=4)
    server.start()
    yield server
    server.stop(grace_s=1.0)


@pytest.fixture
def client(server: EndpointServer, fleet: Any) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"localhost:{server.port}", ssl=True,
                                          root_certificates=str(fleet.ca))
    yield client
    client.close()


def _infer(client: triton.InferenceServerClient) -> tuple[str, float]:
    x = triton.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    result = client.infer("m", [x], client_timeout=TIMEOUT_S)
    return result.get_response().model_version, float(result.as_numpy("y")[0, 0])


def test_stock_client_repository_calls(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
    assert index["models"] == [{"name": "m", "version": "1", "state": "READY"}]
    client.unload_model("m", client_timeout=TIMEOUT_S)
    assert not client.is_model_ready("m", client_timeout=TIMEOUT_S)
    index = client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
    assert index["models"][0]["state"] == "UNAVAILABLE"
    client.load_model("m", client_timeout=TIMEOUT_S)
    assert _infer(client) == ("1", 1.0)
    with pytest.raises(InferenceServerException, match="no model folder"):
        client.load_model("nope", client_timeout=TIMEOUT_S)


def test_stock_client_config_and_statistics(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("m", as_json=True, client_timeout=TIMEOUT_S)["config"]
    assert config["name"] == "m" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "100"}
    for _ in range(3):
        _infer(client)
    stats = client.get_inference_statistics("m", as_json=True, client_timeout=TIMEOUT_S)
    (entry,) = stats["model_stats"]
    # Three 1-row requests one after another: three runs of batch size 1.
    assert entry["version"] == "1" and entry["inference_count"] == "3"
    assert entry["execution_count"] == "3"
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in entry["batch_stats"]] == [
        ("1", "3")]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_config("nope", client_timeout=TIMEOUT_S)


def test_canary_over_the_protocol(server: EndpointServer, fleet: Any,
                                  client: triton.InferenceServerClient) -> None:
    with ModelControl(f"localhost:{server.port}", tls_dir=fleet.directory) as control:
        control.canary("m", version=2, percent=50)
        assert sorted(_infer(client)[0] for _ in range(4)) == ["1", "1", "2", "2"]
        rows = {r.version: r for r in control.index()}
        assert "canary: 50%" in rows["2"].reason
        by_version = {s.version: s.inference_count for s in control.statistics("m")}
        assert by_version == {"1": 2, "2": 2}
        control.rollback("m")
        assert {_infer(client)[0] for _ in range(4)} == {"1"}
        control.canary("m", version=2, percent=10)
        control.promote("m")
        assert {_infer(client)[0] for _ in range(4)} == {"2"}
        with pytest.raises(RemoteError, match="has no canary") as info:
            control.rollback("m")
        assert info.value.code == "INVALID_ARGUMENT"


def test_bad_load_parameters(server: EndpointServer, fleet: Any) -> None:
    from edgecut.protocol import grpc_service_pb2 as pb

    with ModelControl(f"localhost:{server.port}", tls_dir=fleet.directory) as control:
        request = pb.RepositoryModelLoadRequest(model_name="m")
        request.parameters["config"].string_param = "{}"
        request.parameters["file:1/model.onnx"].bytes_param = b"onnx"
        request.parameters["colour"].string_param = "red"
        request.parameters["edgecut_promote"].bool_param = True
        request.parameters["edgecut_canary_percent"].int64_param = 300
        with pytest.raises(RemoteError) as info:
            control._call("RepositoryModelLoad", request)
    message = str(info.value)
    assert ("Triton's config and file overrides (config, file:1/model.onnx) are not supported; "
            "edit the model's config.pbtxt") in message
    assert "parameter(s) 'colour' not supported" in message
    assert "needs edgecut_canary_version" in message
    assert "0..100, got 300" in message


def test_cli(server: EndpointServer, fleet: Any, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="edgecut")
    register(parser.add_subparsers(dest="command"))
    common = ["--endpoint", f"localhost:{server.port}", "--tls", str(fleet.directory)]
    for argv in (["canary", "m", "--version", "2", "--percent", "25"], ["promote", "m"],
                 ["index"], ["unload", "m"], ["load", "m"]):
        args = parser.parse_args(["models", *argv, *common])
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "version 2 gets 25%" in out and "m" in out and "READY" in out
    # Each control command says what the model serves after it.
    assert "m: version 2 gets 25% of unversioned requests; serving versions 1, 2" in out
    assert "m: canary version promoted; serving version 2" in out
    args = parser.parse_args(["models", "rollback", "m", *common])
    with pytest.raises(RemoteError, match="has no canary"):
        args.func(args)


# -- statistics count as Triton's do: requests once each, executions once each ----------

BATCH_ROWS = 4  # max_batch_size of the batched model
REQUEST_ROWS = 2  # rows per request: two requests fill a run
REQUESTS = 6


@pytest.fixture
def batched_server(tmp_path: Path, fleet: Any) -> Iterator[EndpointServer]:
    """Model `b`: max batch 4 rows and a queue delay far longer than the test, so 2-row
    requests run in pairs, whatever order they arrive in: each pair fills a run."""
    put(tmp_path, "b", 1, scaled(1.0))
    (tmp_path / "b" / "config.pbtxt").write_text(
        f"max_batch_size: {BATCH_ROWS}\n"
        "dynamic_batching { max_queue_delay_microseconds: 5000000 }\n")
    repo = ModelRepository(tmp_path, intra_op_threads=1)
    server = create_server(repo, tls_dir=fleet.directory, workers=REQUESTS + 2)
    server.start()
    yield server
    server.stop(grace_s=1.0)


def _send_concurrently(server: EndpointServer, fleet: Any) -> triton.InferenceServerClient:
    """REQUESTS requests of REQUEST_ROWS rows at once, each from its own client; then one
    request that fails (an unknown input). Returns a client for the statistics."""

    def connect() -> triton.InferenceServerClient:
        return triton.InferenceServerClient(f"localhost:{server.port}", ssl=True,
                                            root_certificates=str(fleet.ca))

    def one(i: int) -> np.ndarray:
        x = triton.InferInput("x", [REQUEST_ROWS, 4], "FP32")
        x.set_data_from_numpy(np.full((REQUEST_ROWS, 4), i, np.float32))
        client = connect()
        try:
            return client.infer("b", [x], client_timeout=TIMEOUT_S).as_numpy("y")
        finally:
            client.close()

    with ThreadPoolExecutor(REQUESTS) as pool:
        answers = list(pool.map(one, range(REQUESTS)))
    for i, y in enumerate(answers):  # each request got its own rows back
        assert np.array_equal(y, np.full((REQUEST_ROWS, 4), i, np.float32))
    client = connect()
    bad = triton.InferInput("nope", [REQUEST_ROWS, 4], "FP32")
    bad.set_data_from_numpy(np.ones((REQUEST_ROWS, 4), np.float32))
    with pytest.raises(InferenceServerException, match="unknown input 'nope'"):
        client.infer("b", [bad], client_timeout=TIMEOUT_S)
    return client


def _statistics_after_concurrent_requests(server: EndpointServer, fleet: Any) -> Any:
    """Model b's ModelStatistics entry once _send_concurrently's requests are answered."""
    client = _send_concurrently(server, fleet)
    try:
        (entry,) = client.get_inference_statistics("b", client_timeout=TIMEOUT_S).model_stats
    finally:
        client.close()
    return entry


def test_statistics_count_executions_and_rows_of_batched_requests(
        batched_server: EndpointServer, fleet: Any) -> None:
    entry = _statistics_after_concurrent_requests(batched_server, fleet)
    runs = REQUESTS * REQUEST_ROWS // BATCH_ROWS
    assert entry.execution_count == runs == 3
    assert entry.inference_count == REQUESTS * REQUEST_ROWS == 12
    # benchmarks/serving/suite.py reads executions per batch size from compute_infer.count.
    assert [(b.batch_size, b.compute_infer.count) for b in entry.batch_stats] == [(BATCH_ROWS, runs)]
    assert entry.batch_stats[0].compute_infer.ns > 0
    # Joining inputs and splitting outputs are not timed apart.
    assert not entry.inference_stats.HasField("compute_input")
    assert not entry.inference_stats.HasField("compute_output")


def test_statistics_count_each_request_once_however_batched(
        batched_server: EndpointServer, fleet: Any) -> None:
    entry = _statistics_after_concurrent_requests(batched_server, fleet)
    requests = entry.inference_stats
    assert requests.success.count == REQUESTS  # not the 3 runs that served them
    assert requests.fail.count == 1
    assert requests.queue.count == requests.compute_infer.count == REQUESTS
    assert requests.success.ns > 0 and requests.fail.ns > 0 and requests.compute_infer.ns > 0
    assert entry.execution_count == 3 and entry.inference_count == 12
    # The canary's comparison reads the same counters.
    (version,) = batched_server.repository.version_statistics("b")
    assert (version.successes, version.failures) == (REQUESTS, 1)
    assert version.success_ns == requests.success.ns
    assert version.error_rate == pytest.approx(1 / (REQUESTS + 1))


def test_statistics_map_request_and_run_counters(tmp_path: Path) -> None:
    """model_statistics against counters with known values: two 4-row runs that served five
    requests (their times given), and one failed request."""
    put(tmp_path, "b", 1, scaled(1.0))
    (tmp_path / "b" / "config.pbtxt").write_text(f"max_batch_size: {BATCH_ROWS}\n")
    repo = ModelRepository(tmp_path, intra_op_threads=1)
    model = repo.route("b", "")
    for _ in range(2):
        model.session.run(["y"], {"x": np.ones((BATCH_ROWS, 4), np.float32)})
    model.session.run(["y"], {"x": np.ones((1, 4), np.float32)})
    for _ in range(5):
        model.request_succeeded(request_s=0.003, queue_s=0.001, compute_s=0.002)
    model.request_failed(request_s=0.007)

    (entry,) = model_statistics(repo, "b").model_stats
    requests = entry.inference_stats
    assert (requests.success.count, requests.success.ns) == (5, 15_000_000)
    assert (requests.fail.count, requests.fail.ns) == (1, 7_000_000)
    assert (requests.queue.count, requests.queue.ns) == (5, 5_000_000)
    assert (requests.compute_infer.count, requests.compute_infer.ns) == (5, 10_000_000)
    assert (entry.execution_count, entry.inference_count) == (3, 2 * BATCH_ROWS + 1)
    assert [(b.batch_size, b.compute_infer.count) for b in entry.batch_stats] == [
        (1, 1), (BATCH_ROWS, 2)]
    assert entry.last_inference > 0
    version = model.statistics()
    assert version.mean_latency_ms == pytest.approx(3.0)
    assert version.error_rate == pytest.approx(1 / 6)
