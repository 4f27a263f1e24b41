"""Prometheus metrics scraped over HTTP from real servers, and the JSON request log."""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecut.cloud.logs import REQUEST_LOGGER, JsonLinesFormatter
from edgecut.cloud.server import create_server
from edgecut.errors import UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import CODEC_PARAMETER
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub

WAIT_S = 10.0


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def _mlp_request(rows: int, codec: str | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="dyn_mlp", id="r1")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 16])
    request.raw_input_contents.append(np.zeros((rows, 16), np.float32).tobytes())
    if codec:
        request.parameters[CODEC_PARAMETER].string_param = codec
    return request


def test_metrics_over_http_from_two_servers(model_repo: Path) -> None:
    first = create_server(model_repo, workers=2, metrics_port=0)
    second = create_server(model_repo, workers=2, metrics_port=0)  # own registry: no clash
    with first, second, grpc.insecure_channel(first.address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        stub.ModelInfer(_mlp_request(2), timeout=WAIT_S)
        stub.ModelInfer(_mlp_request(3, codec="zstd"), timeout=WAIT_S)
        with pytest.raises(grpc.RpcError):
            bad = _mlp_request(1)
            bad.inputs[0].datatype = "INT32"
            stub.ModelInfer(bad, timeout=WAIT_S)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(pb.ModelInferRequest(model_name="invented"), timeout=WAIT_S)
        assert first.metrics_url is not None and second.metrics_url is not None
        assert first.metrics_url != second.metrics_url
        samples = _scrape(first.metrics_url)
        other = _scrape(second.metrics_url)
    m = "model=dyn_mlp,version=1"
    assert samples[f"edgecut_inference_request_success_total{{{m}}}"] == 2
    assert samples[f"edgecut_inference_request_failure_total{{code=INVALID_ARGUMENT,{m}}}"] == 1
    # dyn_mlp has no max_batch_size: like Triton, each request counts one inference.
    assert samples[f"edgecut_inference_count_total{{{m}}}"] == 2
    assert samples[f"edgecut_inference_exec_count_total{{{m}}}"] == 2
    assert samples[f"edgecut_inference_queue_duration_seconds_count{{{m}}}"] == 2
    assert samples[f"edgecut_inference_compute_duration_seconds_count{{{m}}}"] == 2
    assert samples[f"edgecut_inference_raw_bytes_in_total{{{m}}}"] == 5 * 16 * 4
    assert samples[f"edgecut_inference_raw_bytes_out_total{{{m}}}"] == 5 * 4 * 4
    assert samples[f"edgecut_inference_wire_bytes_in_total{{{m}}}"] == 5 * 16 * 4
    # zstd on the second answer's outputs: the ratio out is > 0, in is exactly 1.
    assert samples[f"edgecut_inference_compression_ratio{{direction=in,{m}}}"] == 1.0
    assert samples[f"edgecut_inference_compression_ratio{{direction=out,{m}}}"] > 0
    assert samples[f"edgecut_inference_pending_requests{{{m}}}"] == 0
    assert samples["edgecut_rpc_total{code=NOT_FOUND,rpc=ModelInfer}"] == 1
    assert not any("invented" in key for key in samples)  # unknown names make no series
    assert not any(key.startswith("edgecut_inference_request_success") for key in other)
    # Model states, failures to load included, and the process's own series.
    assert samples["edgecut_model_state{model=dyn_mlp,state=READY,version=1}"] == 1
    assert samples["edgecut_model_state{model=broken,state=UNAVAILABLE,version=1}"] == 1
    assert samples["process_resident_memory_bytes{}"] > 0


def test_metrics_port_in_use(model_repo: Path) -> None:
    with create_server(model_repo, workers=1, metrics_port=0) as server:
        assert server.metrics_url is not None
        port = int(server.metrics_url.rsplit(":", 1)[1].split("/")[0])
        clash = create_server(model_repo, workers=1, metrics_port=port)
        with pytest.raises(UserInputError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            clash.start()
        clash.stop(grace_s=0)


def test_metrics_listen_where_asked(model_repo: Path) -> None:
    # gRPC on every address, the unencrypted metrics on loopback only.
    with create_server(model_repo, workers=1, address="0.0.0.0:0", metrics_port=0,
                       metrics_host="127.0.0.1") as server:
        assert server.metrics_url is not None
        assert server.metrics_url.startswith("http://127.0.0.1:")
        assert "edgecut_rpc_total" in urllib.request.urlopen(
            server.metrics_url, timeout=WAIT_S).read().decode()


def test_request_log_is_one_json_line_per_call(model_repo: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with create_server(model_repo, workers=1, request_log_level="INFO") as server, \
            grpc.insecure_channel(server.address) as channel, \
            caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        stub = GRPCInferenceServiceStub(channel)
        stub.ModelInfer(_mlp_request(2), timeout=WAIT_S)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(pb.ModelInferRequest(model_name="dyn_mlp"), timeout=WAIT_S)
    records = [r for r in caplog.records if r.name == REQUEST_LOGGER]
    assert [r.levelname for r in records] == ["INFO", "WARNING"]
    ok, failed = (json.loads(r.getMessage()) for r in records)
    assert ok["model"] == "dyn_mlp" and ok["version"] == 1 and ok["status"] == "OK"
    assert ok["id"] == "r1" and ok["batch_rows"] == 1
    assert ok["queue_ms"] >= 0 and ok["compute_ms"] > 0
    assert failed["status"] == "INVALID_ARGUMENT" and "missing input 'x'" in failed["message"]
    line = json.loads(JsonLinesFormatter().format(records[0]))
    assert line["level"] == "INFO" and line["logger"] == REQUEST_LOGGER
    assert line["model"] == "dyn_mlp"
