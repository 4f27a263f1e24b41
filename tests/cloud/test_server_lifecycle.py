"""create_server's settings, start/stop/wait, and serve() stopping on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecut.cloud.repository import ModelRepository
from edgecut.cloud.server import create_server
from edgecut.errors import TLSConfigError, UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub


def test_bad_settings_are_reported_together(model_repo: Path) -> None:
    with pytest.raises(UserInputError) as info:
        create_server(model_repo, address="localhost", workers=0, mutual_tls=True)
    message = str(info.value)
    assert "workers must be >= 1, got 0" in message
    assert "mutual_tls needs tls_dir" in message
    assert "address must be HOST:PORT" in message


def test_port_in_use(model_repo: Path) -> None:
    repository = ModelRepository(model_repo)
    with create_server(repository) as first:
        address = f"127.0.0.1:{first.port}"
        with pytest.raises(UserInputError, match=f"cannot listen on {address}"):
            create_server(repository, address=address)


def test_missing_tls_files(model_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match=r"server\.crt not found"):
        create_server(model_repo, tls_dir=tmp_path)


def test_plaintext_server_start_stop_wait(model_repo: Path, call_timeout_s: float) -> None:
    server = create_server(model_repo, workers=2, intra_op_threads=1)
    assert not server.wait(0)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=call_timeout_s).ready
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=call_timeout_s)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "unknown model 'nope'" in info.value.details()
    finally:
        server.stop(grace_s=1.0)
    assert server.wait(timeout_s=1.0)
    stats = server.statistics()
    assert stats.requests == 2 and stats.failures == {"NOT_FOUND": 1}
    assert stats.repository is not None and stats.repository.ready_versions == 4


SERVE_SCRIPT = textwrap.dedent("""
    import gc
    import sys
    from pathlib import Path
    from edgecut.cloud.server import serve

    stats = serve(Path(sys.argv[1]), address="127.0.0.1:0", workers=2, grace_s=1.0,
                  on_started=lambda s: print(s.port, gc.get_freeze_count(), flush=True))
    print("requests", stats.requests, flush=True)
""")


def test_serve_stops_gracefully_on_sigterm(model_repo: Path, call_timeout_s: float) -> None:
    process = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(model_repo)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port, frozen = map(int, process.stdout.readline().split())
        # What was loaded before serving is out of the garbage collector's way (its full
        # collections walked it all, tens of ms without a request moving).
        assert frozen > 10_000
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=call_timeout_s).live
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert out.strip() == "requests 1"


def test_edgecut_serve_logs_and_stops_past_open_health_watches(model_repo: Path,
                                                                call_timeout_s: float) -> None:
    """`edgecut serve --log-requests --log-format json`: one JSON line per request and per
    operator-visible event (an unload, the drain) on stderr; health follows an unload at
    once; an open health Watch (clients keep one for as long as the server lets them) does
    not hold the stop for the whole grace period."""
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecut", "serve", "--repository", str(model_repo),
         "--address", "127.0.0.1:0", "--log-requests", "--log-format", "json",
         "--grace-secs", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        started = process.stdout.readline()
        address = started.split("listening on ", 1)[1].split(" ", 1)[0]
        with grpc.insecure_channel(address) as channel:
            stub: Any = GRPCInferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            x = np.zeros((1, 3, 32, 32), np.float32)
            for shape in ((1, 3, 32, 32), (1, 3, 16, 16)):
                request = pb.ModelInferRequest(model_name="tiny_cnn")
                request.inputs.add(name="x", datatype="FP32", shape=shape)
                request.raw_input_contents.append(x.tobytes()[:int(np.prod(shape)) * 4])
                with contextlib.suppress(grpc.RpcError):  # the second is refused: logged
                    stub.ModelInfer(request, timeout=call_timeout_s)
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="scale_by"),
                                       timeout=call_timeout_s)
            check = health.Check(health_pb2.HealthCheckRequest(service="inference.scale_by"),
                                 timeout=call_timeout_s)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=100)
            stop_s = time.monotonic() - stopping
            seen = []
            with contextlib.suppress(grpc.RpcError):  # the stream ends, cancelled, at the stop
                seen.extend(r.status for r in watch)
            assert seen and set(seen) == {health_pb2.HealthCheckResponse.NOT_SERVING}
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert stop_s < 60, "an open Watch held the stop for the grace period"
    assert out.strip().endswith("stopped after 2 inference requests (1 failed)")
    lines = [json.loads(line) for line in err.splitlines()]
    infers = [line for line in lines if line.get("event") == "infer"]
    assert [line["status"] for line in infers] == ["OK", "INVALID_ARGUMENT"]
    assert all(line["level"] in ("INFO", "WARNING") and line["ts"] for line in infers)
    messages = [line.get("message", "") for line in lines]
    assert any("unloaded model 'scale_by'" in m for m in messages), messages
    assert any("received SIGTERM; draining" in m for m in messages), messages


def test_a_second_signal_exits_at_once(ops_repo: Path, slow_iterations: Callable[[float], int],
                                       call_timeout_s: float) -> None:
    """SIGTERM drains (here for up to 120 s, behind a 60 s request); SIGTERM again means now:
    the process exits with 128 + SIGTERM and says so, without waiting for the request."""
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecut", "serve", "--repository", str(ops_repo),
         "--address", "127.0.0.1:0", "--grace-secs", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        address = process.stdout.readline().split("listening on ", 1)[1].split(" ", 1)[0]
        with grpc.insecure_channel(address) as channel:
            stub: Any = GRPCInferenceServiceStub(channel)
            slow = pb.ModelInferRequest(model_name="slow")
            slow.inputs.add(name="x", datatype="FP32", shape=[1, 64])
            slow.inputs.add(name="iterations", datatype="INT64", shape=[])
            slow.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
            slow.raw_input_contents.append(np.array(slow_iterations(60.0), np.int64).tobytes())
            call = stub.ModelInfer.future(slow, timeout=120)
            time.sleep(0.5)  # the request is running
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)  # well before the request's 60 s
            assert call.exception(timeout=call_timeout_s) is not None
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "received SIGTERM again; exiting now" in err
