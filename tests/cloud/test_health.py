"""grpc.health.v1 on the endpoint's port: the server and each model, by service name."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecut.cloud.health import model_service
from edgecut.cloud.server import create_server

WAIT_S = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S)
    return int(response.status)


def test_health_of_server_and_models(model_repo: Path, frontend: str) -> None:
    server = create_server(model_repo, workers=2, frontend=frontend)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert _status(stub, "") == SERVING
        assert _status(stub, model_service("dyn_mlp")) == SERVING
        assert _status(stub, model_service("tiny_cnn")) == SERVING
        assert _status(stub, model_service("broken")) == NOT_SERVING
        assert _status(stub, model_service("empty")) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            _status(stub, model_service("no_such_model"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S)
        assert next(watch).status == SERVING
        server.stop(grace_s=1.0)
        # The watcher hears NOT_SERVING before the server goes away.
        assert next(watch).status == NOT_SERVING


def test_health_before_start_is_not_serving(model_repo: Path) -> None:
    from edgecut.cloud.health import EndpointHealth

    health = EndpointHealth()
    health.update_models([("m", True)])
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(1))
    health.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert _status(stub, "") == NOT_SERVING
            assert _status(stub, "inference.m") == NOT_SERVING
            health.set_serving(True)
            assert _status(stub, "inference.m") == SERVING
            health.update_models([])
            assert _status(stub, "inference.m") == NOT_SERVING
    finally:
        server.stop(0)
