"""Server-reported timing (edgecut.protocol.timing): every successful ModelInfer answer says how
long its request queued and how long its batch ran, on each transport and each path through
it (the infer lane for plain calls, the per-call path for the others)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgecut.cloud.batching import SchedulingPolicy
from edgecut.cloud.server import EndpointServer, create_server
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.probe import PROBE_MODEL
from edgecut.protocol.timing import TIMING_EXTENSION, server_timing

WAIT_S = 30.0
# A lone request waits this long in a batching queue for company before its batch runs.
DELAY_US = 100_000


@pytest.fixture(scope="module")
def server(ops_repo: Path, frontend: str) -> Iterator[EndpointServer]:
    scheduling = {"batch_cnn": SchedulingPolicy(max_batch_size=8, dynamic_batching=True,
                                                max_queue_delay_us=DELAY_US)}
    with create_server(ops_repo, workers=4, frontend=frontend, scheduling=scheduling) as running:
        yield running


@pytest.fixture
def stub(server: EndpointServer) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield GRPCInferenceServiceStub(channel)


def _request(model: str, x: np.ndarray, *, codec: str | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    if codec is not None:  # a parameter: not a plain call, so not the lane's
        request.parameters["edgecut_codec"].string_param = codec
    return request


def test_server_metadata_announces_timing(stub: GRPCInferenceServiceStub) -> None:
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=WAIT_S)
    assert TIMING_EXTENSION in metadata.extensions


@pytest.mark.parametrize("codec", [None, "zstd"], ids=["plain", "with-parameters"])
def test_every_answer_reports_queue_and_compute_time(server: EndpointServer,
                                                     stub: GRPCInferenceServiceStub,
                                                     codec: str | None) -> None:
    x = np.ones((2, 256), np.float32)
    before = server.lane_calls
    response = stub.ModelInfer(_request("wide_mlp", x, codec=codec), timeout=WAIT_S)
    timing = server_timing(response)
    assert timing is not None
    assert timing.queue_ms >= 0 and timing.compute_ms > 0
    took_lane = server.lane_calls == before + 1
    assert took_lane == (server.frontend in ("native", "core") and codec is None)


@pytest.mark.parametrize("codec", [None, "zstd"], ids=["plain", "with-parameters"])
def test_queue_time_counts_the_wait_for_a_batch(stub: GRPCInferenceServiceStub,
                                                codec: str | None) -> None:
    """A lone request in a batching queue waits max_queue_delay for others to join it: its
    reported queue time holds that wait (the scheduler's own rule, not a speed)."""
    x = np.ones((1, 3, 16, 16), np.float32)
    timing = server_timing(stub.ModelInfer(_request("batch_cnn", x, codec=codec),
                                           timeout=WAIT_S))
    assert timing is not None
    assert timing.queue_ms >= 0.9 * DELAY_US / 1e3


def test_the_link_probe_reports_no_timing(stub: GRPCInferenceServiceStub) -> None:
    """The probe runs no model: nothing to report, and server_timing says so."""
    response = stub.ModelInfer(pb.ModelInferRequest(model_name=PROBE_MODEL), timeout=WAIT_S)
    assert server_timing(response) is None
