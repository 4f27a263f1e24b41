"""Back-pressure: a slow model with a small queue answers RESOURCE_EXHAUSTED with a retry
hint instead of queueing without bound, and keeps serving."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from edgecut.cloud.batching import SchedulingPolicy
from edgecut.cloud.server import create_server
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub

WAIT_S = 60.0
CLIENTS = 12


def slow_request(iterations: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    request.inputs.add(name="iterations", datatype="INT64", shape=[])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    request.raw_input_contents.append(np.array(iterations, np.int64).tobytes())
    return request


def test_full_queue_answers_resource_exhausted_with_retry_hint(
        ops_repo: Path, slow_iterations: Callable[[float], int], frontend: str) -> None:
    """A long request holds the only instance; of the burst that follows, two fit the queue
    and the rest are refused at once, with a retry hint."""
    policy = SchedulingPolicy(instance_count=1, max_queue_size=2)
    server = create_server(ops_repo, workers=CLIENTS + 4, scheduling={"slow": policy},
                           frontend=frontend)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = GRPCInferenceServiceStub(channel)

        def call(request: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str, dict[str, str]]:
            try:
                stub.ModelInfer(request, timeout=WAIT_S)
            except grpc.RpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
                return exc.code(), exc.details(), trailers  # type: ignore[attr-defined]
            return grpc.StatusCode.OK, "", {}

        with ThreadPoolExecutor(CLIENTS) as pool:
            # The burst comes while the long request runs (2 s; it has 0.3 s to start),
            # whatever else the machine is doing: the queue is full for all but two of it.
            long_call = pool.submit(call, slow_request(slow_iterations(2.0)))
            time.sleep(0.3)
            burst = list(pool.map(call, [slow_request(slow_iterations(0.1))] * (CLIENTS - 1)))
            outcomes = [long_call.result(), *burst]
        codes = [code for code, _, _ in outcomes]
        rejected = [o for o in outcomes if o[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert codes.count(grpc.StatusCode.OK) + len(rejected) == CLIENTS, codes
        # The long one and two queued: three. Two when the long one had not left the queue
        # for its run yet as the burst came in (a machine too busy to start it in 0.3 s).
        assert codes.count(grpc.StatusCode.OK) >= 2, codes
        assert len(rejected) >= CLIENTS - 3, codes
        for _, details, trailers in rejected:
            assert "model 'slow' version 1: queue is full" in details
            assert "limit 2 requests" in details
            retry_ms = int(trailers["retry-after-ms"])
            assert 1 <= retry_ms <= 60_000
            assert f"retry after {retry_ms} ms" in details
        stats = server.statistics()
        (queue,) = [q for q in stats.queues if q.model == "slow"]
        assert queue.rejected == len(rejected) and queue.pending == 0
        # Still serving once the burst is over.
        stub.ModelInfer(slow_request(1), timeout=WAIT_S)


def test_rpcs_beyond_the_concurrency_bound_are_refused(
        ops_repo: Path, slow_iterations: Callable[[float], int], frontend: str) -> None:
    """Calls open at once are bounded too (gRPC's maximum_concurrent_rpcs; the native
    transport's max_open_calls). The native transport also hints a retry and counts its
    refusals in the metrics, as no handler sees those calls."""
    server = create_server(ops_repo, workers=2, max_concurrent_rpcs=3,
                           scheduling={"slow": SchedulingPolicy(instance_count=1)},
                           frontend=frontend, metrics_port=0)
    request = slow_request(slow_iterations(0.5))
    with server, grpc.insecure_channel(server.address) as channel:
        stub = GRPCInferenceServiceStub(channel)

        def call(_: int) -> tuple[grpc.StatusCode, str | None]:
            try:
                stub.ModelInfer(request, timeout=WAIT_S)
            except grpc.RpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
                return exc.code(), trailers.get("retry-after-ms")  # type: ignore[attr-defined]
            return grpc.StatusCode.OK, None

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(8)))
        assert server.metrics_url is not None
        with urllib.request.urlopen(server.metrics_url, timeout=WAIT_S) as response:
            exposition = response.read().decode()
    codes = [code for code, _ in answers]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert codes.count(grpc.StatusCode.OK) >= 1
    if frontend == "native":
        refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert f"edgecut_rpc_refused_total {float(refused)}" in exposition
        assert all(int(hint) >= 1 for code, hint in answers  # type: ignore[arg-type]
                   if code == grpc.StatusCode.RESOURCE_EXHAUSTED)
