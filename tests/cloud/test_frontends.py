"""What the endpoint's two transports (create_server's `frontend`) must both do beyond the
shared fixtures' tests: unknown methods, requests whose caller gave up while they were queued,
streams that end with the server, and the choice of transport itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecut.cloud.batching import SchedulingPolicy
from edgecut.cloud.native_server import available as native_available
from edgecut.cloud.scheduler import SchedulerStatistics
from edgecut.cloud.server import EndpointServer, create_server
from edgecut.errors import UserInputError
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub

from .test_backpressure import slow_request

WAIT_S = 30.0


def _wait_until(condition: Callable[[], bool], within_s: float) -> bool:
    give_up = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


def test_unknown_method_is_unimplemented(model_repo: Path, frontend: str) -> None:
    with create_server(model_repo, workers=2, frontend=frontend) as server, \
            grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=WAIT_S)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        assert server.frontend == frontend


def test_queued_requests_whose_caller_gave_up_never_run(
        ops_repo: Path, slow_iterations: Callable[[float], int], frontend: str) -> None:
    """Two long requests hold the only instance and the head of the queue; of those queued
    behind them, one runs out of deadline and one is cancelled by its client: neither runs,
    and the server serves on."""
    scheduling = {"slow": SchedulingPolicy(instance_count=1, max_queue_size=8)}
    server = create_server(ops_repo, workers=8, scheduling=scheduling, frontend=frontend)
    long_request, short_request = slow_request(slow_iterations(1.0)), slow_request(1)
    with server, grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(2) as pool:
        stub = GRPCInferenceServiceStub(channel)
        holding = [pool.submit(stub.ModelInfer, long_request, timeout=WAIT_S) for _ in range(2)]
        # Once one is queued, whatever comes next waits behind a long request.
        assert _wait_until(lambda: _slow_pending(server) >= 1, WAIT_S)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(short_request, timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        cancelled = stub.ModelInfer.future(short_request, timeout=WAIT_S)
        time.sleep(0.2)
        assert cancelled.cancel()
        for call in holding:
            call.result(timeout=WAIT_S)
        stub.ModelInfer(short_request, timeout=WAIT_S)  # still serving
        # The long requests and the last one ran, each alone; the two in between did not.
        queue = _slow_queue(server)
        assert (queue.batches, queue.rows, queue.pending) == (3, 3, 0)


def _slow_queue(server: EndpointServer) -> SchedulerStatistics:
    (queue,) = [q for q in server.statistics().queues if q.model == "slow"]
    return queue


def _slow_pending(server: EndpointServer) -> int:
    """Requests of `slow` queued (its queue exists from its first request on)."""
    return sum(q.pending for q in server.statistics().queues if q.model == "slow")


def test_an_open_health_watch_ends_with_the_server(model_repo: Path, frontend: str) -> None:
    """A Watch stream holds a worker until its call ends: stopping the server ends it, and
    every worker thread of this server exits (none is left blocked)."""
    before = set(threading.enumerate())
    server = create_server(model_repo, workers=2, frontend=frontend)
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.stop(grace_s=0.5)
        with pytest.raises(grpc.RpcError):
            for _ in watch:  # NOT_SERVING may come first; then the stream ends
                pass
    finally:
        channel.close()
        server.stop(grace_s=0)
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("edgecut-rpc")]
    assert _wait_until(lambda: not any(t.is_alive() for t in workers), WAIT_S), workers


def test_an_unknown_frontend_is_a_user_error(model_repo: Path) -> None:
    with pytest.raises(UserInputError, match="frontend must be one of auto, native, core, grpcio"):
        create_server(model_repo, frontend="rust")


def test_the_native_transport_by_default_where_built_grpcio_core_elsewhere(
        model_repo: Path) -> None:
    with create_server(model_repo, workers=2) as server:
        assert server.frontend == ("native" if native_available() else "core")
    with create_server(model_repo, workers=2, frontend="core") as server:
        assert server.frontend == "core"
    with create_server(model_repo, workers=2, frontend="grpcio") as server:
        assert server.frontend == "grpcio"


def test_the_core_transport_thread_yields_to_model_runs(model_repo: Path) -> None:
    """Over "core", the completion-queue thread runs under SCHED_BATCH, as the native
    transport's do; the model worker it starts keeps the default policy."""
    import os

    import numpy as np

    from edgecut.edge.client import CloudClient

    with create_server(model_repo, workers=2, frontend="core") as server:
        with CloudClient(server.address, timeout_s=10.0) as client:
            client.infer("dyn_mlp", {"x": np.ones((1, 16), np.float32)})
        policies: dict[str, set[int]] = {}
        for task in Path("/proc/self/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                policy = os.sched_getscheduler(int(task.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
            if name in ("edgecut-grpc-cq", "run-dyn_mlp"):
                policies.setdefault(name, set()).add(policy)
    assert os.SCHED_BATCH in policies["edgecut-grpc-cq"]
    assert policies["run-dyn_mlp"] == {os.SCHED_OTHER}
