"""The gRPC shell: Open Inference Protocol handlers over a ModelRepository, TLS, lifecycle.

    >>> server = create_server(Path("models"), tls_dir=Path("tls"), mutual_tls=True)  # doctest: +SKIP
    >>> server.start(); server.port                                                   # doctest: +SKIP
    40123
    >>> server.stop(grace_s=5.0)                                                      # doctest: +SKIP

Stock clients (tritonclient.grpc, KServe's) work unchanged: the handlers implement the six
RPCs the protocol requires, answer with raw outputs, accept gzip/deflate-compressed requests
(gRPC core decompresses them before a handler runs) and messages up to `max_message_bytes`.
The work of a call is in edgecut.cloud.inference; the status codes in edgecut.cloud.status.
Under mutual TLS each call is attributed to the device named by its certificate.
"""

from __future__ import annotations

import importlib.metadata
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import NoReturn, TypeVar

import grpc

from edgecut.errors import UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import SERVER_EXTENSIONS
from edgecut.protocol.grpc_service_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)
from edgecut.protocol.tls import peer_identity, server_credentials

from .inference import infer
from .repository import ModelRepository, TensorSpec
from .statistics import EndpointStatistics, StatisticsRecorder, Traffic
from .status import status_for

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PLATFORM",
    "EndpointServer",
    "InferenceServicer",
    "create_server",
    "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Decoded inputs of one request together: a codec can shrink a tensor well below its size
# (zstd on sparse activations), so this is separate from the message limit.
DEFAULT_MAX_DECODED_BYTES = 1024 * 1024 * 1024
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "edgecut"

_Response = TypeVar("_Response")


def _server_version() -> str:
    try:
        return importlib.metadata.version("edgecut")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class InferenceServicer(GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService` over a ModelRepository."""

    def __init__(self, repository: ModelRepository, *, recorder: StatisticsRecorder,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> None:
        self._repository = repository
        self._recorder = recorder
        self._max_decoded_bytes = max_decoded_bytes
        self._ready = threading.Event()
        self._version = _server_version()

    def set_ready(self, ready: bool) -> None:
        """ServerReady's answer: true while serving, false before start and while draining."""
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
                   ) -> pb.ServerLiveResponse:
        return self._answer("ServerLive", context, pb.ServerLiveResponse(live=True))

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
                    ) -> pb.ServerReadyResponse:
        ready = self._ready.is_set()
        return self._answer("ServerReady", context, pb.ServerReadyResponse(ready=ready))

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
                   ) -> pb.ModelReadyResponse:
        try:
            self._repository.get(request.name, request.version)
            ready = self._ready.is_set()
        except Exception:
            # Unknown or failed models are simply not ready; ModelMetadata says why.
            ready = False
        return self._answer("ModelReady", context, pb.ModelReadyResponse(ready=ready))

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
                       ) -> pb.ServerMetadataResponse:
        response = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=list(SERVER_EXTENSIONS)
        )
        return self._answer("ServerMetadata", context, response)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
                      ) -> pb.ModelMetadataResponse:
        device = peer_identity(context)
        try:
            model = self._repository.get(request.name, request.version)
        except Exception as exc:
            self._abort("ModelMetadata", context, exc, device=device)
        response = pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self._repository.ready_versions(model.name)],
            platform=PLATFORM,
            inputs=[_tensor_metadata(s) for s in model.inputs],
            outputs=[_tensor_metadata(s) for s in model.outputs],
        )
        self._recorder.record(rpc="ModelMetadata", code="OK", device=device)
        return response

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext
                   ) -> pb.ModelInferResponse:
        device = peer_identity(context)
        model_name: str | None = None
        try:
            model = self._repository.get(request.model_name, request.model_version)
            model_name = model.name
            started = time.perf_counter()
            outcome = infer(request, model, max_decoded_bytes=self._max_decoded_bytes)
            elapsed_s = time.perf_counter() - started
        except Exception as exc:
            self._abort("ModelInfer", context, exc, device=device, model=model_name)
        traffic = Traffic(
            raw_bytes_in=outcome.raw_bytes_in, wire_bytes_in=outcome.wire_bytes_in,
            raw_bytes_out=outcome.raw_bytes_out, wire_bytes_out=outcome.wire_bytes_out,
            compute_s=elapsed_s,
        )
        self._recorder.record(rpc="ModelInfer", code="OK", device=device, model=model_name,
                              traffic=traffic)
        return outcome.response

    def _answer(self, rpc: str, context: grpc.ServicerContext,
                response: _Response) -> _Response:
        self._recorder.record(rpc=rpc, code="OK", device=peer_identity(context))
        return response

    def _abort(self, rpc: str, context: grpc.ServicerContext, exc: Exception, *,
               device: str | None, model: str | None = None) -> NoReturn:
        code, message = status_for(exc, rpc=rpc)
        self._recorder.record(rpc=rpc, code=code.name, device=device, model=model)
        context.abort(code, message)
        raise AssertionError("unreachable: grpc's context.abort raises")  # for type checkers


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )


class EndpointServer:
    """A bound, not yet started endpoint (see create_server). Usable as a context manager."""

    def __init__(self, *, server: grpc.Server, executor: ThreadPoolExecutor,
                 servicer: InferenceServicer, repository: ModelRepository,
                 recorder: StatisticsRecorder, host: str, port: int, tls: bool) -> None:
        self._server = server
        self._executor = executor
        self._servicer = servicer
        self._repository = repository
        self._recorder = recorder
        self._host = host
        self._port = port
        self._tls = tls
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """`host:port` as bound, with the real port when port 0 was asked for."""
        return f"{self._host}:{self._port}"

    @property
    def repository(self) -> ModelRepository:
        return self._repository

    def start(self) -> None:
        self._server.start()
        self._servicer.set_ready(True)
        logger.info("edgecut endpoint listening on %s (%s)", self.address,
                    "TLS" if self._tls else "plaintext")

    def stop(self, grace_s: float | None = 5.0) -> None:
        """Refuse new calls, let running ones finish for up to `grace_s`, then cancel them."""
        self._servicer.set_ready(False)
        done = self._server.stop(grace_s)
        # grpc sets `done` once every call is finished or cancelled; bound the wait anyway.
        done.wait(None if grace_s is None else grace_s + 5.0)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops or `timeout_s` passes; True if it stopped."""
        return self._stopped.wait(timeout_s)

    def statistics(self) -> EndpointStatistics:
        return self._recorder.snapshot(repository=self._repository.statistics())

    def __enter__(self) -> EndpointServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(grace_s=1.0)


def create_server(
    repository: Path | ModelRepository,
    *,
    address: str = "127.0.0.1:0",
    tls_dir: Path | None = None,
    mutual_tls: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    workers: int = 8,
    intra_op_threads: int = 0,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> EndpointServer:
    """Load `repository` and bind an endpoint on `address` (port 0: any free port).

    With `tls_dir` (written by `edgecut certs`) the endpoint speaks TLS only; with
    `mutual_tls` too, it admits only clients whose certificate the fleet's CA signed.
    `max_message_bytes` bounds each request and response (gRPC answers RESOURCE_EXHAUSTED
    beyond it); `max_decoded_bytes` bounds a request's inputs once decoded. `workers` calls
    run at once; `intra_op_threads` is onnxruntime's per-session thread count (0: its default).

    Raises UserInputError for bad settings or an address it cannot listen on, TLSConfigError
    for missing or mismatched certificate files, BadModelError if `repository` is no folder.
    """
    problems = []
    if workers < 1:
        problems.append(f"workers must be >= 1, got {workers}")
    if not 0 < max_message_bytes <= 2**31 - 1:
        problems.append(f"max_message_bytes must be in 1..{2**31 - 1}, got {max_message_bytes}")
    if max_decoded_bytes < 1:
        problems.append(f"max_decoded_bytes must be >= 1, got {max_decoded_bytes}")
    if mutual_tls and tls_dir is None:
        problems.append("mutual_tls needs tls_dir (the folder written by `edgecut certs init`)")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        problems.append(f"address must be HOST:PORT (port 0 = any free port), got {address!r}")
    if problems:
        raise UserInputError("; ".join(problems))

    credentials = server_credentials(Path(tls_dir), mutual=mutual_tls) if tls_dir else None
    if not isinstance(repository, ModelRepository):
        repository = ModelRepository(Path(repository), intra_op_threads=intra_op_threads)
    recorder = StatisticsRecorder()
    servicer = InferenceServicer(repository, recorder=recorder,
                                 max_decoded_bytes=max_decoded_bytes)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecut-rpc")
    server = grpc.server(
        executor,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Without this a second server on the same port would bind silently and share it.
            ("grpc.so_reuseport", 0),
        ],
    )
    add_GRPCInferenceServiceServicer_to_server(servicer, server)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        port = 0
        cause: Exception | None = exc
    else:
        cause = None
    if port == 0:
        executor.shutdown(wait=False)
        raise UserInputError(
            f"cannot listen on {address}: the port is in use or the host is not an address "
            f"of this machine; choose another address"
        ) from cause
    return EndpointServer(server=server, executor=executor, servicer=servicer,
                          repository=repository, recorder=recorder, host=host, port=port,
                          tls=credentials is not None)


def serve(
    repository: Path | ModelRepository,
    *,
    address: str = "127.0.0.1:8001",
    tls_dir: Path | None = None,
    mutual_tls: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    workers: int = 8,
    intra_op_threads: int = 0,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    grace_s: float = 5.0,
    on_started: Callable[[EndpointServer], None] | None = None,
) -> EndpointStatistics:
    """Run an endpoint until SIGINT or SIGTERM, then stop gracefully; return its statistics.

    Signal handlers are installed only when called from the main thread (Python's rule) and
    restored on return. `on_started` is called with the running server (e.g. to print the
    port when `address` ends in :0).
    """
    server = create_server(
        repository, address=address, tls_dir=tls_dir, mutual_tls=mutual_tls,
        max_message_bytes=max_message_bytes, workers=workers,
        intra_op_threads=intra_op_threads, max_decoded_bytes=max_decoded_bytes,
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s; stopping (grace %.1f s)", signal.Signals(signum).name, grace_s)
        stop_requested.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    try:
        server.start()
        if on_started is not None:
            on_started(server)
        # Short waits: the main thread must get back to the interpreter to run the handler.
        # A server stopped by other code (serve() run off the main thread) also ends it.
        while not stop_requested.is_set() and not server.wait(0.5):
            pass
    finally:
        server.stop(grace_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.statistics()
