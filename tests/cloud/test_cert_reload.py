"""Certificates rotated on disk while the server runs: new clients of the new CA connect,
without a restart."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import grpc
import pytest

from edgecut.cloud.native_server import RELOAD_CHECK_S
from edgecut.cloud.server import create_server
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.pki import init_ca, issue_device_certificate
from edgecut.protocol.tls import channel_credentials

WAIT_S = 10.0
# grpcio reads the files at each handshake; the native transport checks them twice, each
# every RELOAD_CHECK_S. Both must have seen a change after this long.
SEEN_S = 2 * RELOAD_CHECK_S + 1.0


def _live(address: str, credentials: grpc.ChannelCredentials) -> bool:
    with grpc.secure_channel(address, credentials) as channel:
        return bool(GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(),
                                                                 timeout=WAIT_S).live)


def _live_within(address: str, credentials: grpc.ChannelCredentials, within_s: float) -> bool:
    give_up = time.monotonic() + within_s
    while True:
        try:
            return _live(address, credentials)
        except grpc.RpcError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def test_rotating_ca_server_and_device_certificates(model_repo: Path, tmp_path: Path,
                                                    frontend: str) -> None:
    live_dir, old_dir, new_dir = tmp_path / "live", tmp_path / "old", tmp_path / "new"
    init_ca(old_dir)
    issue_device_certificate(old_dir, "pi-a")
    init_ca(new_dir)
    issue_device_certificate(new_dir, "pi-a")
    shutil.copytree(old_dir, live_dir)
    server = create_server(model_repo, tls_dir=live_dir, mutual_tls=True, workers=2,
                           frontend=frontend)
    with server:
        assert _live(server.address, channel_credentials(old_dir, device="pi-a"))
        for name in ("ca.crt", "server.key", "server.crt"):
            shutil.copy2(new_dir / name, live_dir / name)
        assert _live_within(server.address, channel_credentials(new_dir, device="pi-a"), SEEN_S)
        with pytest.raises(grpc.RpcError) as info:
            _live(server.address, channel_credentials(old_dir, device="pi-a"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_a_half_written_rotation_keeps_the_old_certificates(
        model_repo: Path, tmp_path: Path, frontend: str,
        caplog: pytest.LogCaptureFixture) -> None:
    live_dir, new_dir = tmp_path / "live", tmp_path / "new"
    init_ca(live_dir)
    issue_device_certificate(live_dir, "pi-a")
    init_ca(new_dir)
    server = create_server(model_repo, tls_dir=live_dir, mutual_tls=True, workers=2,
                           frontend=frontend)
    with server, caplog.at_level(logging.ERROR, logger="edgecut.protocol.tls"):
        shutil.copy2(new_dir / "server.crt", live_dir / "server.crt.new")
        (live_dir / "server.crt.new").replace(live_dir / "server.crt")  # key not yet replaced
        time.sleep(SEEN_S)
        # The new certificate with the old key is refused; the old pair stays in force.
        assert _live(server.address, channel_credentials(live_dir, device="pi-a"))
        time.sleep(SEEN_S)  # more checks (and handshakes) of the same files: said once
        assert _live(server.address, channel_credentials(live_dir, device="pi-a"))
        assert caplog.text.count("cannot be used yet") == 1
