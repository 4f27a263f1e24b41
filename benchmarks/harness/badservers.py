"""Servers that misbehave on purpose, for the device's fault tests and benchmarks/faults.py.

    SilentServer()                      accepts TCP and never sends a byte (no TLS handshake)
    GarbageServer()                     accepts TCP and answers random bytes
    FakeEndpoint(tls_dir, "hang")       completes TLS and HTTP/2, answers health and metadata,
                                        and never answers a ModelInfer
    FakeEndpoint(tls_dir, KIND)         answers every ModelInfer with a malformed response
                                        (MALFORMED lists the kinds)
    CuttingProxy(target, cut_after=N)   forwards to a real endpoint and cuts each connection
                                        after N bytes from the server (mid-message): a reset,
                                        a close, or a stall (no more bytes, held open)

Each is a context manager listening on 127.0.0.1 (port 0: any free port, `.address` says
which); closing it closes every connection it holds. The fake endpoint speaks the same (mutual)
TLS as the real one (`edgecut.protocol.tls.server_credentials`), so the device's certificates
and checks are the real ones and only the answers are wrong.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import grpc

from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import CODEC_PARAMETER, SERVER_EXTENSIONS
from edgecut.protocol.tls import server_credentials

from .tcp import TcpServer

__all__ = ["CUT_ACTIONS", "MALFORMED", "CuttingProxy", "FakeEndpoint", "GarbageServer", "SilentServer"]

_SERVICE = "inference.GRPCInferenceService"

# What a malformed ModelInfer answer holds, by kind:
MALFORMED: dict[str, str] = {
    "unparseable": "bytes that are not a ModelInferResponse (protobuf wire type 7)",
    "truncated_tensor": "each output declared [1, 10] FP32 with 7 bytes of contents",
    "count_mismatch": "one output and two raw_output_contents",
    "missing_output": "an output of another name than the one asked for",
    "bad_zstd": "outputs marked edgecut_codec=zstd whose bytes are not a zstd frame",
    "wrong_shape": "the asked outputs, well formed, of shape [7, 3] FP32: not the model's shape",
}


class SilentServer(TcpServer):
    """Accepts and holds every connection, reading and discarding, never sending a byte."""

    def __enter__(self) -> SilentServer:
        super().__enter__()
        return self

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        while not self._stop.is_set():
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                continue


class GarbageServer(TcpServer):
    """Answers each connection with `nbytes` random bytes, then holds it (or closes it when
    `close_after`); the bytes are the same every run (`seed`)."""

    def __init__(self, port: int = 0, *, nbytes: int = 4096, close_after: bool = False,
                 seed: int = 0) -> None:
        super().__init__(("127.0.0.1", port))
        self.garbage = random.Random(seed).randbytes(nbytes)
        self.close_after = close_after

    def __enter__(self) -> GarbageServer:
        super().__enter__()
        return self

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with contextlib.suppress(TimeoutError):
            conn.recv(65536)  # the client speaks first (TLS ClientHello); answer after it
        conn.sendall(self.garbage)
        if self.close_after:
            conn.close()
            return
        while not self._stop.is_set():
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                continue


CUT_ACTIONS = ("reset", "close", "stall")


class CuttingProxy(TcpServer):
    """Forwards each connection to `target`; after `cut_after` bytes have come back from the
    server on one connection it sends those bytes and then, by `action`:

        "reset"   resets both sides (RST): the device sees the connection die at once
        "close"   closes both sides (FIN)
        "stall"   forwards nothing more either way and holds the connection open: the answer
                  stops mid-message and the device only has its deadline to go by

    `cut_after=None` forwards everything (for calibration: `bytes_down` is the total the
    clients received, `cuts` how many connections were cut). A sequence for `cut_after` is
    used in turn, one value per connection.
    """

    def __init__(self, target: str, *, cut_after: int | Sequence[int] | None,
                 action: str = "reset", port: int = 0) -> None:
        if action not in CUT_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(CUT_ACTIONS)}, got {action!r}")
        super().__init__(("127.0.0.1", port))
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        self.set_cut_after(cut_after)
        self.action = action
        self.bytes_down = 0
        self.cuts = 0

    def __enter__(self) -> CuttingProxy:
        super().__enter__()
        return self

    def set_cut_after(self, cut_after: int | Sequence[int] | None) -> None:
        """Connections opened from now on are cut so (existing ones keep their limit)."""
        self._limits = None if cut_after is None else (
            [cut_after] if isinstance(cut_after, int) else list(cut_after))

    def _handle(self, conn: socket.socket) -> None:
        with self._lock:
            index = self.connections - 1
            limit = None if self._limits is None else self._limits[index % len(self._limits)]
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        self._track(upstream)
        for s in (conn, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cut = threading.Event()

        def up() -> None:
            with contextlib.suppress(OSError):
                while (data := conn.recv(65536)) and not cut.is_set():
                    upstream.sendall(data)

        forward = threading.Thread(target=up, daemon=True)
        forward.start()
        sent = 0
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                # Counted before they are sent: a client that has its answer sees the count.
                if limit is not None and sent + len(data) >= limit:
                    with self._lock:
                        self.bytes_down += limit - sent
                        self.cuts += 1
                    cut.set()
                    conn.sendall(data[:limit - sent])
                    break
                with self._lock:
                    self.bytes_down += len(data)
                conn.sendall(data)
                sent += len(data)
        except OSError:
            pass
        if self.action == "stall" and cut.is_set():
            self._stop.wait()
        for s in (conn, upstream):
            if self.action == "reset":
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # close() alone would not end the connection while the other thread is blocked in
            # recv() on it (the kernel holds the socket until that call returns): shut the
            # reading side first, which wakes it; the close then resets or FINs at once.
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RD)
        forward.join(timeout=2)
        for s in (conn, upstream):
            with contextlib.suppress(OSError):
                s.close()


class FakeEndpoint:
    """A gRPC server over the fleet's (mutual) TLS that speaks the inference service's
    metadata RPCs truthfully and misbehaves on ModelInfer, by `kind`: "hang" (never answers;
    the call is held until the client gives up or the server closes) or one of MALFORMED.

    ServerLive, ServerReady and ModelReady answer true and ServerMetadata announces edgecut's
    codecs, so a device that probes before it sends finds a healthy-looking server.
    """

    def __init__(self, tls_dir: Path | None, kind: str, *, mutual: bool = True,
                 port: int = 0, workers: int = 64) -> None:
        if kind != "hang" and kind not in MALFORMED:
            raise ValueError(f"kind must be 'hang' or one of {', '.join(MALFORMED)}, got {kind!r}")
        self.kind = kind
        self.infer_calls = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=workers),
                                   maximum_concurrent_rpcs=None)
        handlers = {
            "ServerLive": _unary(lambda r, c: pb.ServerLiveResponse(live=True),
                                 pb.ServerLiveRequest),
            "ServerReady": _unary(lambda r, c: pb.ServerReadyResponse(ready=True),
                                  pb.ServerReadyRequest),
            "ModelReady": _unary(lambda r, c: pb.ModelReadyResponse(ready=True),
                                 pb.ModelReadyRequest),
            "ServerMetadata": _unary(
                lambda r, c: pb.ServerMetadataResponse(name="fake", version="0",
                                                       extensions=list(SERVER_EXTENSIONS)),
                pb.ServerMetadataRequest),
            # bytes in, bytes out: the malformed answers must not pass through protobuf
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self._infer),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        where = f"127.0.0.1:{port}"
        if tls_dir is None:
            self.port = self._server.add_insecure_port(where)
        else:
            self.port = self._server.add_secure_port(
                where, server_credentials(Path(tls_dir), mutual=mutual))
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeEndpoint:
        self._server.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._server.stop(grace=None).wait(timeout=5)

    def _infer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.infer_calls += 1
        if self.kind == "hang":
            while context.is_active() and not self._stop.wait(0.05):
                pass
            context.abort(grpc.StatusCode.UNAVAILABLE, "the fake endpoint closed")
        parsed = pb.ModelInferRequest.FromString(request)
        names = [o.name for o in parsed.outputs] or ["y"]
        return malformed_response(self.kind, parsed.model_name, names)


def malformed_response(kind: str, model: str, names: Sequence[str]) -> bytes:
    """The serialised ModelInfer answer of MALFORMED[kind] for outputs `names`."""
    if kind == "unparseable":
        return b"\x0f" * 64
    response = pb.ModelInferResponse(model_name=model, model_version="1", id="fake")
    good = bytes(40)  # [1, 10] FP32 zeros
    for name in names:
        if kind == "missing_output":
            name = name + "_other"
        shape = [7, 3] if kind == "wrong_shape" else [1, 10]
        tensor = response.outputs.add(name=name, datatype="FP32", shape=shape)
        if kind == "bad_zstd":
            tensor.parameters[CODEC_PARAMETER].string_param = "zstd"
            response.raw_output_contents.append(random.Random(1).randbytes(40))
        elif kind == "truncated_tensor":
            response.raw_output_contents.append(good[:7])
        elif kind == "wrong_shape":
            response.raw_output_contents.append(bytes(7 * 3 * 4))
        else:
            response.raw_output_contents.append(good)
    if kind == "count_mismatch":
        response.raw_output_contents.append(good)
    return response.SerializeToString()


def _unary(behaviour, request_type) -> grpc.RpcMethodHandler:  # type: ignore[no-untyped-def]
    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=request_type.FromString,
        response_serializer=lambda m: m.SerializeToString())
