"""Client keepalive: a device channel pinging every 20 s, with or without calls open, is never
sent GOAWAY "too_many_pings" (cloud/server.py, KEEPALIVE_OPTIONS, on both transports)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

import edgecut.cloud.server as server_module
from edgecut.cloud.server import KEEPALIVE_OPTIONS, create_server
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub

# gRPC's client waits at least 1 s between its pings; the server's two strikes then take
# about four pings to cut a channel off.
CLIENT_PING_MS = 1000
IDLE_S = 5.0


def test_pings_every_10_s_are_allowed_also_without_calls() -> None:
    options = dict(KEEPALIVE_OPTIONS)
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_ping_interval_without_data_ms"] <= 10_000
    assert options.get("grpc.http2.max_ping_strikes", 2) != 0  # abusive clients still stop


def test_an_idle_channel_that_pings_as_allowed_keeps_its_connection(
        model_repo: Path, frontend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy scaled down (pings every 0.5 s allowed, the client pinging every 1 s, idle
    for 5 s): the connection stays up, so the options reach the transport. With the real
    10 s minimum the same client is cut off within those 5 s (checked by hand: GOAWAY
    ENHANCE_YOUR_CALM "too_many_pings" on both transports)."""
    monkeypatch.setattr(server_module, "KEEPALIVE_OPTIONS", (
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_PING_MS // 2),
    ))
    states: list[grpc.ChannelConnectivity] = []
    with create_server(model_repo, workers=2, frontend=frontend) as server, \
            grpc.insecure_channel(server.address, options=[
                ("grpc.keepalive_time_ms", CLIENT_PING_MS),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0)]) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        stub = GRPCInferenceServiceStub(channel)
        stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
        time.sleep(IDLE_S)
        stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
        channel.unsubscribe(states.append)
    ready = [i for i, state in enumerate(states) if state is grpc.ChannelConnectivity.READY]
    assert ready and states[ready[0]:].count(grpc.ChannelConnectivity.READY) == 1, states
