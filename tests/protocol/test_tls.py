"""TLS and mutual TLS between a real gRPC server and client on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgecut.errors import TLSConfigError
from edgecut.protocol.pki import issue_device_certificate
from edgecut.protocol.tls import (
    channel_credentials,
    device_names,
    peer_identity,
    server_credentials,
)

Loopback = tuple[Callable[[grpc.ServerCredentials], Any], Callable[[grpc.Channel], bytes]]
READY_TIMEOUT_S = 5.0


def call_secure(loopback: Loopback, target: str, credentials: grpc.ChannelCredentials) -> bytes:
    _, call = loopback
    with grpc.secure_channel(target, credentials) as channel:
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)
        return call(channel)


def expect_unavailable(loopback: Loopback, channel: grpc.Channel) -> None:
    _, call = loopback
    with channel, pytest.raises(grpc.RpcError) as info:
        call(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_server_tls(fleet: Path, loopback: Loopback) -> None:
    serve, _ = loopback
    with serve(server_credentials(fleet, mutual=False)) as target:
        # Server-only TLS: the device's certificate is not asked for, so no identity.
        assert call_secure(loopback, target, channel_credentials(fleet)) == b"<anonymous>"


def test_mutual_tls_names_the_device(fleet: Path, device: str, loopback: Loopback) -> None:
    serve, _ = loopback
    with serve(server_credentials(fleet, mutual=True)) as target:
        named = call_secure(loopback, target, channel_credentials(fleet, device=device))
        # The only device pair in the directory is picked without being named.
        picked = call_secure(loopback, target, channel_credentials(fleet))
    assert named == picked == device.encode()


def test_mutual_tls_with_several_devices(fleet: Path, device: str, loopback: Loopback) -> None:
    issue_device_certificate(fleet, "jetson-02")
    assert device_names(fleet) == sorted([device, "jetson-02"])
    serve, _ = loopback
    with serve(server_credentials(fleet, mutual=True)) as target:
        assert call_secure(loopback, target,
                           channel_credentials(fleet, device="jetson-02")) == b"jetson-02"
        # Ambiguous: no certificate is sent, and the server refuses the caller.
        expect_unavailable(loopback,
                           grpc.secure_channel(target, channel_credentials(fleet)))


def test_mutual_tls_refuses_a_client_without_certificate(fleet: Path,
                                                         loopback: Loopback) -> None:
    serve, _ = loopback
    ca = (fleet / "ca.crt").read_bytes()
    with serve(server_credentials(fleet, mutual=True)) as target:
        expect_unavailable(
            loopback,
            grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca)),
        )


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    fleet: Path, other_fleet: Path, device: str, loopback: Loopback
) -> None:
    serve, _ = loopback
    foreign = grpc.ssl_channel_credentials(
        root_certificates=(fleet / "ca.crt").read_bytes(),
        private_key=(other_fleet / f"{device}.key").read_bytes(),
        certificate_chain=(other_fleet / f"{device}.crt").read_bytes(),
    )
    with serve(server_credentials(fleet, mutual=True)) as target:
        expect_unavailable(loopback, grpc.secure_channel(target, foreign))


def test_client_refuses_a_server_from_another_ca(fleet: Path, other_fleet: Path,
                                                 loopback: Loopback) -> None:
    serve, _ = loopback
    with serve(server_credentials(other_fleet, mutual=False)) as target:
        expect_unavailable(loopback,
                           grpc.secure_channel(target, channel_credentials(fleet)))


@pytest.mark.parametrize("mutual", [False, True])
def test_plaintext_client_fails(fleet: Path, loopback: Loopback, mutual: bool) -> None:
    serve, _ = loopback
    with serve(server_credentials(fleet, mutual=mutual)) as target:
        expect_unavailable(loopback, grpc.insecure_channel(target))


def test_peer_identity_is_none_without_tls(loopback: Loopback) -> None:
    _, call = loopback
    seen: list[str | None] = []

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(peer_identity(context))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "edgecut.test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(handler)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call(channel)
    finally:
        server.stop(grace=None).wait(timeout=READY_TIMEOUT_S)
    assert seen == [None]


# -- configuration errors, raised before any handshake ---------------------------------------


@pytest.mark.parametrize("missing", ["server.crt", "server.key", "ca.crt"])
def test_server_credentials_missing_file(fleet: Path, missing: str) -> None:
    (fleet / missing).unlink()
    with pytest.raises(TLSConfigError, match=rf"{missing} not found; create it with `edgecut"):
        server_credentials(fleet, mutual=True)


def test_server_tls_does_not_need_the_ca(fleet: Path) -> None:
    (fleet / "ca.crt").unlink()
    server_credentials(fleet, mutual=False)


def test_channel_credentials_missing_ca(fleet: Path) -> None:
    (fleet / "ca.crt").unlink()
    with pytest.raises(TLSConfigError, match=r"ca\.crt not found"):
        channel_credentials(fleet)


def test_channel_credentials_unknown_device(fleet: Path) -> None:
    with pytest.raises(TLSConfigError, match=r"nope\.crt not found.*certs device"):
        channel_credentials(fleet, device="nope")


def test_channel_credentials_bad_device_name(fleet: Path) -> None:
    with pytest.raises(TLSConfigError, match="not allowed"):
        channel_credentials(fleet, device="../server")


def test_key_that_does_not_belong_to_the_certificate(fleet: Path, device: str) -> None:
    (fleet / f"{device}.key").write_bytes((fleet / "server.key").read_bytes())
    with pytest.raises(TLSConfigError, match="does not belong"):
        channel_credentials(fleet, device=device)


def test_not_a_pem_file(fleet: Path) -> None:
    (fleet / "server.crt").write_bytes(b"\x00\x01binary")
    with pytest.raises(TLSConfigError, match=r"server\.crt is not a PEM file"):
        server_credentials(fleet, mutual=False)


def test_malformed_pem(fleet: Path) -> None:
    (fleet / "server.crt").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(TLSConfigError, match="malformed"):
        server_credentials(fleet, mutual=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(fleet: Path) -> None:
    (fleet / "server.key").chmod(0)
    with pytest.raises(TLSConfigError, match=r"server\.key cannot be read"):
        server_credentials(fleet, mutual=False)


def test_file_that_is_a_directory(fleet: Path) -> None:
    (fleet / "server.key").unlink()
    (fleet / "server.key").mkdir()
    with pytest.raises(TLSConfigError, match=r"server\.key cannot be read"):
        server_credentials(fleet, mutual=False)


def test_device_names(fleet: Path, device: str, tmp_path: Path) -> None:
    (fleet / "orphan.crt").write_text("a certificate without its key")
    assert device_names(fleet) == [device]
    assert device_names(tmp_path / "absent") == []
