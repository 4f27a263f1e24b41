"""Connections the endpoint must refuse: plaintext to TLS, and under mutual TLS a client with
no certificate or with one from another fleet's CA. Each leaves the endpoint serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from edgecut.cloud.server import EndpointServer
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub

GoodCheck = Callable[[GRPCInferenceServiceStub], None]


def _refused(channel: grpc.Channel, timeout_s: float) -> grpc.RpcError:
    stub = GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout_s)
    return info.value


def test_plaintext_client_to_tls_server(tls_server: EndpointServer, tls_stub: Any,
                                        serves_good_request: GoodCheck,
                                        call_timeout_s: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.port}") as channel:
        error = _refused(channel, call_timeout_s)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{tls_server.port}" in error.details()
    assert "failed to connect" in error.details()
    serves_good_request(tls_stub)


def test_mutual_tls_client_without_certificate(mtls_server: EndpointServer, fleet: Any,
                                               open_channel: Callable[..., grpc.Channel],
                                               serves_good_request: GoodCheck,
                                               call_timeout_s: float) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=fleet.ca.read_bytes())
    error = _refused(open_channel(mtls_server, credentials), call_timeout_s)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{mtls_server.port}" in error.details()
    assert "failed to connect" in error.details()
    serves_good_request(GRPCInferenceServiceStub(open_channel(mtls_server)))


def test_mutual_tls_client_with_another_fleets_certificate(
    mtls_server: EndpointServer, fleet: Any, other_fleet: Any,
    open_channel: Callable[..., grpc.Channel], serves_good_request: GoodCheck,
    call_timeout_s: float,
) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=fleet.ca.read_bytes(),
        private_key=other_fleet.key.read_bytes(),
        certificate_chain=other_fleet.cert.read_bytes(),
    )
    before = mtls_server.statistics().requests
    error = _refused(open_channel(mtls_server, credentials), call_timeout_s)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{mtls_server.port}" in error.details()
    assert "failed to connect" in error.details()
    assert mtls_server.statistics().requests == before  # never reached a handler
    serves_good_request(GRPCInferenceServiceStub(open_channel(mtls_server)))


def test_client_that_does_not_trust_the_server(tls_server: EndpointServer, other_fleet: Any,
                                               open_channel: Callable[..., grpc.Channel],
                                               call_timeout_s: float) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=other_fleet.ca.read_bytes())
    error = _refused(open_channel(tls_server, credentials), call_timeout_s)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in error.details()
