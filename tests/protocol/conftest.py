"""Shared fixtures: a fleet's TLS directory made by the real pki code, and a loopback server."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgecut.protocol.pki import init_ca, issue_device_certificate
from edgecut.protocol.tls import peer_identity

DEVICE = "pi4-kitchen"
METHOD = "/edgecut.test.Echo/WhoAmI"
CALL_TIMEOUT_S = 5.0


@pytest.fixture(scope="session")
def _fleet_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    init_ca(directory)
    issue_device_certificate(directory, DEVICE)
    return directory


@pytest.fixture
def fleet(_fleet_template: Path, tmp_path: Path) -> Path:
    """A fresh copy per test, so tests that add or break files do not leak into others."""
    directory = tmp_path / "fleet"
    shutil.copytree(_fleet_template, directory)
    return directory


@pytest.fixture(scope="session")
def other_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA with a device of the same name."""
    directory = tmp_path_factory.mktemp("other-fleet")
    init_ca(directory)
    issue_device_certificate(directory, DEVICE)
    return directory


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    name = peer_identity(context)
    return b"<anonymous>" if name is None else name.encode()


@contextmanager
def serve(credentials: grpc.ServerCredentials) -> Iterator[str]:
    """Run a real gRPC server on 127.0.0.1:0 answering METHOD with the caller's name."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "edgecut.test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(timeout=CALL_TIMEOUT_S)


def call(channel: grpc.Channel) -> bytes:
    """Call METHOD once, bounded by CALL_TIMEOUT_S; returns the name the server saw."""
    stub: Callable[..., bytes] = channel.unary_unary(METHOD)
    return stub(b"", timeout=CALL_TIMEOUT_S)


# Test modules get these through fixtures: tests/ is not a package, so they cannot import
# this file, and a fixture keeps the dependency visible in each test's signature.
@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE


@pytest.fixture(scope="session")
def loopback() -> tuple[Callable[[grpc.ServerCredentials], Any], Callable[[grpc.Channel], bytes]]:
    """(serve, call): serve(credentials) is a context manager yielding the target."""
    return serve, call
