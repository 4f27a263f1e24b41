"""Standard gRPC health checking (`grpc.health.v1.Health`) on the endpoint's own server.

Load balancers and Kubernetes' gRPC probes ask this service, not the Open Inference
Protocol's ServerReady:

    ""                      the whole server: SERVING while ready, NOT_SERVING while draining
    "inference.<model>"     SERVING while the model has a ready version, else NOT_SERVING;
                            a model the repository never had is NOT_FOUND (the standard's
                            answer for an unknown service)

    $ grpc_health_probe -addr=127.0.0.1:8001 -service=inference.chain_cnn

`Watch` streams changes as they happen (grpcio-health-checking's HealthServicer does it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

__all__ = ["SERVICE_PREFIX", "EndpointHealth", "model_service"]

SERVICE_PREFIX = "inference."
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_service(model: str) -> str:
    """The health service name of a model.

    >>> model_service("chain_cnn")
    'inference.chain_cnn'
    """
    return SERVICE_PREFIX + model


class EndpointHealth:
    """The health statuses of one endpoint, registered on its grpc.Server."""

    def __init__(self) -> None:
        self._servicer = health.HealthServicer(experimental_non_blocking=True)
        self._lock = threading.Lock()
        self._models: dict[str, bool] = {}
        self._serving = False
        self._servicer.set("", _NOT_SERVING)

    def register(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def set_serving(self, serving: bool) -> None:
        """The server as a whole; models follow (none is SERVING while the server is not)."""
        with self._lock:
            self._serving = serving
            self._servicer.set("", _SERVING if serving else _NOT_SERVING)
            for model, ready in self._models.items():
                self._servicer.set(model_service(model), _status(serving and ready))

    def update_models(self, readiness: Iterable[tuple[str, bool]]) -> None:
        """Each model's readiness (any ready version); models no longer listed go NOT_SERVING."""
        new = dict(readiness)
        with self._lock:
            for model in self._models.keys() - new.keys():
                new[model] = False
            for model, ready in new.items():
                if self._models.get(model) != ready or model not in self._models:
                    self._servicer.set(model_service(model), _status(self._serving and ready))
            self._models = new

    def shutdown(self) -> None:
        """Every service NOT_SERVING, for good (watchers are told)."""
        self._servicer.enter_graceful_shutdown()


def _status(ready: bool) -> int:
    return _SERVING if ready else _NOT_SERVING
