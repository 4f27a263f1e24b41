"""`edgecut profile network` against a real endpoint: the link probe, up and down."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from edgecut import zoo
from edgecut.cli import main
from edgecut.cloud.server import create_server
from edgecut.edge.client import CloudClient
from edgecut.errors import RemoteError
from edgecut.netprobe import probe_network
from edgecut.profiles import load_network
from edgecut.protocol.pki import init_ca, issue_device_certificate
from edgecut.protocol.probe import PROBE_DOWNLOAD_PARAMETER, PROBE_EXTENSION, PROBE_MODEL


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("probe")
    (root / "repo" / "chain_cnn" / "1").mkdir(parents=True)
    onnx.save(zoo.ZOO["chain_cnn"](), root / "repo" / "chain_cnn" / "1" / "model.onnx")
    init_ca(root / "tls")
    issue_device_certificate(root / "tls", "probe-device")
    with create_server(root / "repo", tls_dir=root / "tls", mutual_tls=True) as server:
        yield f"127.0.0.1:{server.port}", root / "tls"


def test_the_probe_answers_the_bytes_asked(endpoint: tuple[str, Path]) -> None:
    address, tls = endpoint
    with CloudClient(address, tls_dir=tls, timeout_s=10) as client:
        assert PROBE_EXTENSION in client.server_metadata().extensions
        result = client.infer(PROBE_MODEL, {"probe": np.zeros(3, np.uint8)},
                              parameters={PROBE_DOWNLOAD_PARAMETER: 100_000})
        (download,) = result.outputs.values()
        assert download.dtype == np.uint8 and download.shape == (100_000,)
        with pytest.raises(RemoteError) as bad:
            client.infer(PROBE_MODEL, {"probe": np.zeros(3, np.uint8)},
                         parameters={PROBE_DOWNLOAD_PARAMETER: -1})
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT.name
        assert PROBE_DOWNLOAD_PARAMETER in str(bad.value)
        assert client.model_ready("chain_cnn")  # still serving


def test_probe_network_measures_both_directions(endpoint: tuple[str, Path]) -> None:
    address, tls = endpoint
    net = probe_network(address, tls_dir=tls, upload_bytes=1 << 20, download_bytes=1 << 20,
                        probes=3)
    assert net.uplink_mbps > 0 and net.downlink_mbps > 0 and net.rtt_ms > 0
    assert "downloads of" in net.source


def test_cli_writes_a_profile_plan_accepts(endpoint: tuple[str, Path], tmp_path: Path) -> None:
    address, tls = endpoint
    out = tmp_path / "link.toml"
    assert main(["profile", "network", "--endpoint", address, "--tls", str(tls),
                 "--out", str(out)]) == 0
    assert load_network(str(out)).downlink_mbps > 0


def test_the_round_trip_is_a_small_model_infer(endpoint: tuple[str, Path]) -> None:
    """The rtt is timed on ModelInfer calls (what a real call pays); ServerLive's median and
    the per-call difference go into the source; every step is reported to the progress."""
    address, tls = endpoint
    steps: list[tuple[str, int, int]] = []
    net = probe_network(address, tls_dir=tls, upload_bytes=1 << 16, download_bytes=1 << 16,
                        probes=2, progress=lambda text, done, total: steps.append(
                            (text, done, total)))
    assert "one-byte ModelInfer calls" in net.source and "ServerLive:" in net.source
    assert "ms per call" in net.source
    assert [s[0] for s in steps].count("round trip") == 2
    assert [s[0] for s in steps].count("ServerLive") == 2
    assert len(steps) == steps[0][2] and [s[1] for s in steps] == list(range(len(steps)))
