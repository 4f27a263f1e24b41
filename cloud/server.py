"""The gRPC shell: the endpoint's server, TLS and lifecycle around the handlers of servicer.py.

    >>> server = create_server(Path("models"), tls_dir=Path("tls"), mutual_tls=True)  # doctest: +SKIP
    >>> server.start(); server.port                                                   # doctest: +SKIP
    40123
    >>> server.stop(grace_s=5.0)                                                      # doctest: +SKIP

Stock clients (tritonclient.grpc, KServe's) work unchanged: the handlers implement the six
RPCs the protocol requires, answer with raw outputs, accept gzip/deflate-compressed requests
(gRPC core decompresses them before a handler runs) and messages up to `max_message_bytes`.
The work of a call is in edgecut.cloud.inference; the status codes in edgecut.cloud.status.
Under mutual TLS each call is attributed to the device named by its certificate.

Around the handlers (each piece in its own module):

    scheduler.py   a bounded queue and N instances per model; dynamic batching
    health.py      grpc.health.v1 on the same port: "" and "inference.<model>"
    metrics.py     Prometheus /metrics on `metrics_port`, one registry per server
    logs.py        one JSON line per inference call on `edgecut.cloud.requests`
    auth.py        which models each device may use, and which identities (operators) may
                   load, unload and canary them (`auth_file`), re-read on change
    http_frontend  the same protocol over HTTP/REST on `http_address` (KServe v2 + Triton's
                   extensions), served by the same handlers
    protocol/tls   certificates re-read on change (ReloadingServerCertificates)

`stop()` drains: ServerReady and health go false, new inference calls get UNAVAILABLE, queued
batches run at once, and the server stops when the calls in flight are answered (or `grace_s`
runs out).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import grpc

from edgecut.errors import (
    UserInputError,
)
from edgecut.protocol.probe import PROBE_MODEL
from edgecut.protocol.tls import ReloadingServerCertificates, server_credentials

from .allocator import release_free_memory
from .auth import AuthorizationFile
from .batching import DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_SIZE, SchedulingPolicy
from .dedup import DEFAULT_MAX_BYTES as DEFAULT_DEDUP_MAX_BYTES
from .dedup import DEFAULT_TTL_S as DEFAULT_DEDUP_TTL_S
from .dedup import RequestDeduplicator
from .health import EndpointHealth
from .logs import RequestLog
from .metrics import EndpointMetrics, MetricsHTTPServer
from .native_server import NativeServer
from .native_server import available as native_available
from .native_server import unavailable_reason as native_unavailable_reason
from .repository import ModelRepository
from .scheduler import BatchObservation, Scheduler
from .servicer import (
    DEFAULT_MAX_DECODED_BYTES,
    MODEL_INFER_METHOD,
    PLATFORM,
    InferenceServicer,
    add_to_server,
)
from .statistics import EndpointStatistics, StatisticsRecorder

if TYPE_CHECKING:  # imported where used: aiohttp loads only for an endpoint that serves HTTP
    from .http_frontend import HTTPFrontend

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PLATFORM",
    "EndpointServer",
    "InferenceServicer",
    "create_server",
    "serve",
    "split_address",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_WORKERS = 16
DEFAULT_POLL_INTERVAL_S = 2.0
TRIM_INTERVAL_S = 30.0
# How long open streams (health Watch) may stay once every inference call is answered.
_STREAMS_GRACE_S = 0.5
# How many bytes of a request a client may send before the server grants more (HTTP/2 flow
# control), with gRPC's bandwidth-delay probing off. With the probing on, tritonclient's
# 4 MiB ModelInfer stalled on the server's window: over TLS on loopback, the C++ transport
# took it at 230-360 MB/s with probing and 430-500 MB/s without (7 of 8 runs), grpcio at
# 225-264 against 255-300. 8 MiB in flight still fills a 100 ms round trip at 670 Mbit/s,
# and costs no memory a unary call would not hold anyway: its whole request is read first.
RECEIVE_WINDOW_BYTES = 8 << 20
# Client keepalive pings the server accepts, on both transports. gRPC's server defaults
# answer a client that pings more often than every 5 minutes (2 hours without calls open)
# with GOAWAY "too_many_pings" after two such pings, and a device channel that keeps its
# link warm with keepalive_time_ms=20000 would be cut off and reconnect over and over. Every
# 10 s is allowed here, with or without calls in flight; gRPC's two strikes still stop a
# client that pings faster.
MIN_CLIENT_PING_INTERVAL_MS = 10_000
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
)


class EndpointServer:
    """A bound, not yet started endpoint (see create_server). Usable as a context manager."""

    def __init__(self, *, server: grpc.Server | NativeServer, executor: ThreadPoolExecutor,
                 servicer: InferenceServicer, repository: ModelRepository,
                 recorder: StatisticsRecorder, host: str, port: int, tls: bool,
                 scheduler: Scheduler | None = None, health: EndpointHealth | None = None,
                 metrics: EndpointMetrics | None = None, metrics_port: int | None = None,
                 metrics_host: str | None = None,
                 authorization: AuthorizationFile | None = None,
                 certificates: ReloadingServerCertificates | None = None,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                 http: HTTPFrontend | None = None) -> None:
        self._server = server
        self._http = http
        self._executor = executor
        self._servicer = servicer
        self._repository = repository
        self._recorder = recorder
        self._host = host
        self._port = port
        self._tls = tls
        self._scheduler = scheduler
        self._health = health
        self._metrics = metrics
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host or host
        self._metrics_http: MetricsHTTPServer | None = None
        self._authorization = authorization
        self._certificates = certificates
        self._poll_interval_s = poll_interval_s
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        # Health follows a load or unload at once, not at the next poll.
        servicer.repository_changed = self._refresh_health

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

    @property
    def metrics(self) -> EndpointMetrics | None:
        return self._metrics

    @property
    def frontend(self) -> str:
        """The gRPC transport serving: "native" (C++), "core" (grpcio's core driven by the
        endpoint) or "grpcio" (grpcio's grpc.server), see create_server."""
        if isinstance(self._server, NativeServer):
            return "core" if self._server.core else "native"
        return "grpcio"

    @property
    def lane_calls(self) -> int:
        """ModelInfer calls the native transport's infer lane has served (its plain calls,
        see cloud/infer_lane.py); 0 over grpcio."""
        return self._server.lane_calls if isinstance(self._server, NativeServer) else 0

    @property
    def http_lane_calls(self) -> int:
        """HTTP/REST inference requests the HTTP infer lane has served (the plain binary-tensor
        ones, see cloud/http_lane.py); 0 without HTTP."""
        return 0 if self._http is None else self._http.lane_calls

    @property
    def http_port(self) -> int | None:
        """The HTTP/REST listener's port (create_server's `http_address`), else None."""
        return None if self._http is None else self._http.port

    @property
    def http_url(self) -> str | None:
        """`http(s)://host:port` of the HTTP/REST listener, else None."""
        return None if self._http is None else self._http.url

    @property
    def metrics_url(self) -> str | None:
        """`http://host:port/metrics` once started with a metrics_port, else None."""
        return None if self._metrics_http is None else self._metrics_http.url

    def start(self) -> None:
        if self._metrics is not None and self._metrics_port is not None:
            self._metrics_http = MetricsHTTPServer(self._metrics.registry,
                                                   host=self._metrics_host,
                                                   port=self._metrics_port)
        self._server.start()
        if self._http is not None:
            self._http.start()
        self._servicer.set_ready(True)
        if self._health is not None:
            self._health.set_serving(True)
        self.refresh()
        self._poller = threading.Thread(target=self._poll, name="edgecut-poll", daemon=True)
        self._poller.start()
        logger.info("edgecut endpoint listening on %s (%s)%s%s", self.address,
                    "TLS" if self._tls else "plaintext",
                    f", HTTP/REST at {self.http_url}" if self.http_url else "",
                    f", metrics at {self.metrics_url}" if self.metrics_url else "")

    def refresh(self) -> None:
        """Re-read what may change while serving: model readiness (health) and the auth file.

        Runs every `poll_interval_s`; call it after loading or unloading a model to update
        health at once. Certificates are checked at each new TLS handshake instead.
        """
        self._refresh_health()
        if self._authorization is not None:
            self._authorization.reload_if_changed()

    def _refresh_health(self) -> None:
        if self._health is not None:
            ready: dict[str, bool] = {}
            for row in self._repository.models():
                ready[row.name] = ready.get(row.name, False) or row.ready
            self._health.update_models(ready.items())

    def stop(self, grace_s: float | None = 5.0) -> None:
        """Drain, then stop: refuse new inference calls (UNAVAILABLE), run what is queued at
        once, wait up to `grace_s` for calls in flight, then cancel what is left."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            deadline = None if grace_s is None else time.monotonic() + grace_s

            def left() -> float | None:
                return None if deadline is None else max(0.0, deadline - time.monotonic())

            self._servicer.begin_drain()
            if self._health is not None:
                self._health.set_serving(False)
            if self._scheduler is not None:
                self._scheduler.drain(left())
            idle = self._servicer.wait_idle(left())
            if not idle:
                logger.warning("grace period over with inference calls still running; "
                               "cancelling them")
            if self._health is not None:
                self._health.shutdown()  # Watch streams get NOT_SERVING, then end below
            # Once no inference call is left, what stays open is streams (health Watch, which
            # a client keeps for as long as the server lets it): they get a moment, not the
            # whole grace period.
            grace = left()
            if idle:
                grace = _STREAMS_GRACE_S if grace is None else min(grace, _STREAMS_GRACE_S)
            done = self._server.stop(grace)
            # grpc sets `done` once every call is finished or cancelled; bound the wait anyway.
            remaining = left()
            done.wait(None if remaining is None else remaining + 5.0)
            if self._http is not None:
                self._http.stop(left())
            self._stop_polling.set()
            if self._scheduler is not None:
                self._scheduler.close(timeout_s=1.0)
            if self._metrics_http is not None:
                self._metrics_http.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._repository.close()  # stops its poller thread, if it runs one
            self._stopped.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops or `timeout_s` passes; True if it stopped."""
        return self._stopped.wait(timeout_s)

    def statistics(self) -> EndpointStatistics:
        queues = self._scheduler.statistics() if self._scheduler is not None else ()
        return self._recorder.snapshot(repository=self._repository.statistics(), queues=queues)

    def _poll(self) -> None:
        trimmed_at = time.monotonic()
        while not self._stop_polling.wait(self._poll_interval_s):
            try:
                self.refresh()
            except Exception:
                logger.exception("periodic refresh failed; trying again in %.1f s",
                                 self._poll_interval_s)
            if time.monotonic() - trimmed_at >= TRIM_INTERVAL_S:
                # Request buffers freed by every worker thread stay in glibc's arenas (the
                # raised trim threshold keeps them on purpose, for reuse); what no request
                # has reused for a while goes back to the system, so RSS follows the load.
                release_free_memory()
                trimmed_at = time.monotonic()

    def __enter__(self) -> EndpointServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(grace_s=1.0)


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT to listen on; UserInputError when it is none.

    >>> split_address("0.0.0.0:8001"), split_address("[::1]:0")
    (('0.0.0.0', 8001), ('[::1]', 0))
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UserInputError(f"address must be HOST:PORT with a port in 0..65535 (0: any free "
                             f"port), got {address!r}")
    return host, int(port_text)


def create_server(
    repository: Path | ModelRepository,
    *,
    address: str = "127.0.0.1:0",
    tls_dir: Path | None = None,
    mutual_tls: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    workers: int = DEFAULT_WORKERS,
    intra_op_threads: int = 0,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    scheduling: Mapping[str, SchedulingPolicy] | None = None,
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    separate_sessions: bool = False,
    max_concurrent_rpcs: int | None = None,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
    auth_file: Path | None = None,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    reload_certificates: bool = True,
    request_log_level: int | str | None = logging.DEBUG,
    frontend: str = "auto",
    http_address: str | None = None,
    dedup_ttl_s: float = DEFAULT_DEDUP_TTL_S,
    dedup_max_bytes: int = DEFAULT_DEDUP_MAX_BYTES,
) -> EndpointServer:
    """Load `repository` and bind an endpoint on `address` (port 0: any free port).

    With `tls_dir` (written by `edgecut certs`) the endpoint speaks TLS only; with
    `mutual_tls` too, it admits only clients whose certificate the fleet's CA signed. With
    `reload_certificates` the files are re-read when they change, without a restart.
    `max_message_bytes` bounds each request and response (gRPC answers RESOURCE_EXHAUSTED
    beyond it); `max_decoded_bytes` bounds a request's inputs once decoded. `workers` calls
    are handled at once (a call waiting for its batch holds one); `max_concurrent_rpcs`
    bounds calls accepted, running or waiting for a worker (default 4 x workers; gRPC answers
    RESOURCE_EXHAUSTED beyond it). `intra_op_threads` is onnxruntime's per-session thread
    count (0: the CPUs this process may use, by affinity and cgroup quota, shared by a
    model's instances: edgecut.cpu_budget; config.pbtxt's intra_op_thread_count wins).

    Scheduling follows each model's settings (config.pbtxt: max_batch_size, dynamic_batching,
    instance_group); `scheduling` overrides them per model name. A queue the settings leave
    unbounded holds at most `max_queue_size` requests and `max_queue_bytes` decoded bytes;
    past that a call gets RESOURCE_EXHAUSTED with a `retry-after-ms` trailer.
    `separate_sessions` gives each instance its own onnxruntime session (see
    edgecut.cloud.providers for when that pays).

    `metrics_port` serves Prometheus metrics (0: any free port, None: off) on `metrics_host`
    (default: the gRPC address's host; the metrics are not behind TLS, so an endpoint
    listening on every address may keep them on 127.0.0.1). `auth_file` (TOML, see
    edgecut.cloud.auth; needs `mutual_tls`) says which models each device may use and which
    identities may control the repository (operators). Model health and the auth file are
    re-read every `poll_interval_s`; freed memory is given back to the system every
    TRIM_INTERVAL_S. `request_log_level` is the level of the per-call JSON log lines (None:
    none).

    A ModelInfer with a non-empty `id` sent again by the same caller (its certificate's
    device name under mutual TLS, else its connection) for the same model and version, while
    the first runs or within `dedup_ttl_s` after it was answered, gets the first one's answer
    or error without running the model again (edgecut.cloud.dedup); answers kept for that
    take at most `dedup_max_bytes` (and DEFAULT_MAX_ENTRIES entries). `dedup_ttl_s` 0 shares
    only answers of requests still running. Clients may send keepalive pings as often as
    every MIN_CLIENT_PING_INTERVAL_MS, also without calls in flight.

    `frontend` is the gRPC transport: "native" runs it in C++ (edgecut.cloud.native_server;
    built at install where gRPC's C++ library is found); "core" drives grpcio's own core from
    one thread, every ModelInfer answered by the worker that ran its batch, no thread waiting
    per call, plain calls through the infer lane as over the native one
    (edgecut.cloud.core_frontend); "grpcio" is grpcio's grpc.server; "auto" (the default)
    the native one where built, "core" elsewhere. All serve the same handlers.
    The native one serves small requests 15-46 % faster; a 4 MiB upload costs it 0.6-0.8 ms
    more CPU than grpcio (the system's gRPC 1.51 and OpenSSL against grpcio's own gRPC and
    BoringSSL), see README.md.

    Raises UserInputError for bad settings or an address it cannot listen on, TLSConfigError
    for missing or mismatched certificate files, BadModelError if `repository` is no folder,
    BadProfileError for a malformed auth file.

    `http_address` (HOST:PORT, port 0: any free port; None: off) also serves the protocol's
    HTTP/REST binding there, with the same TLS, handlers and limits (cloud/http_frontend.py).
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
    if max_queue_size < 1:
        problems.append(f"max_queue_size must be >= 1, got {max_queue_size}")
    if max_queue_bytes < 1:
        problems.append(f"max_queue_bytes must be >= 1, got {max_queue_bytes}")
    if max_concurrent_rpcs is not None and max_concurrent_rpcs < 1:
        problems.append(f"max_concurrent_rpcs must be >= 1, got {max_concurrent_rpcs}")
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        problems.append(f"metrics_port must be in 0..65535 (0: any free port), got {metrics_port}")
    if auth_file is not None and not mutual_tls:
        problems.append("auth_file needs mutual_tls: devices are known by their certificates")
    if dedup_ttl_s < 0 or dedup_max_bytes < 0:
        problems.append(f"dedup_ttl_s and dedup_max_bytes must be >= 0 (0 keeps no answers "
                        f"once sent), got {dedup_ttl_s} and {dedup_max_bytes}")
    if not poll_interval_s > 0:
        problems.append(f"poll_interval_s must be > 0, got {poll_interval_s}")
    host = ""
    try:
        host, _ = split_address(address)
    except UserInputError as exc:
        problems.append(str(exc))
    if http_address is not None:
        try:
            split_address(http_address)
        except UserInputError as exc:
            problems.append(f"http_address: {exc}")
    if problems:
        raise UserInputError("; ".join(problems))

    transport = _transport(frontend)
    native = transport != "grpcio"  # the C++ transport or grpcio's core: NativeServer
    certificates: ReloadingServerCertificates | None = None
    credentials: grpc.ServerCredentials | None = None
    if tls_dir is not None and native:
        # Checked here as for grpcio; the C++ transport reads (and re-reads) the files itself.
        credentials = server_credentials(Path(tls_dir), mutual=mutual_tls)
    elif tls_dir is not None and reload_certificates:
        certificates = ReloadingServerCertificates(Path(tls_dir), mutual=mutual_tls)
        credentials = certificates.credentials()
    elif tls_dir is not None:
        credentials = server_credentials(Path(tls_dir), mutual=mutual_tls)
    authorization = AuthorizationFile(Path(auth_file)) if auth_file is not None else None
    if not isinstance(repository, ModelRepository):
        repository = ModelRepository(Path(repository), intra_op_threads=intra_op_threads)
    recorder = StatisticsRecorder()
    metrics: EndpointMetrics | None = None
    scheduler_box: list[Scheduler] = []
    if metrics_port is not None:
        models: ModelRepository = repository  # narrowed here, for the closure
        metrics = EndpointMetrics(
            pending_source=lambda: (
                (q.model, q.version, q.pending) for q in scheduler_box[0].statistics()),
            state_source=lambda: ((m.name, m.version, m.state) for m in models.models()))
    scheduler = Scheduler(
        overrides=scheduling, max_queue_size=max_queue_size, max_queue_bytes=max_queue_bytes,
        separate_sessions=separate_sessions, intra_op_threads=intra_op_threads,
        on_batch=_batch_observer(metrics),
    )
    scheduler_box.append(scheduler)
    servicer = InferenceServicer(repository, recorder=recorder,
                                 max_decoded_bytes=max_decoded_bytes, scheduler=scheduler,
                                 metrics=metrics, authorization=authorization,
                                 request_log=RequestLog(request_log_level),
                                 dedup=RequestDeduplicator(ttl_s=dedup_ttl_s,
                                                           max_bytes=dedup_max_bytes))
    http: HTTPFrontend | None = None
    if http_address is not None:
        from .http_frontend import HTTPFrontend

        try:
            http = HTTPFrontend(servicer, repository, address=split_address(http_address),
                                tls_dir=tls_dir, mutual=mutual_tls,
                                max_body_bytes=max_message_bytes,
                                max_open_calls=max_concurrent_rpcs or 4 * workers,
                                reload_certificates=reload_certificates)
        except BaseException:
            scheduler.close(timeout_s=0)
            raise
    health = EndpointHealth()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecut-rpc")
    _start_every_worker(executor, workers)
    server: grpc.Server | NativeServer
    if native:
        native_server = NativeServer(executor, max_message_bytes=max_message_bytes,
                                     max_open_calls=max_concurrent_rpcs or 4 * workers,
                                     receive_window_bytes=RECEIVE_WINDOW_BYTES,
                                     channel_args=KEEPALIVE_OPTIONS,
                                     core=transport == "core")
        native_server.add_deferred_handler(MODEL_INFER_METHOD, servicer.infer_later)
        native_server.add_infer_lane(MODEL_INFER_METHOD, servicer.infer_lane,
                                     excluded_models=[PROBE_MODEL])
        if metrics is not None:
            metrics.count_refusals(lambda: native_server.refused_calls)
        server = native_server
    else:
        server = grpc.server(
            executor,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Without this a second server on the same port would bind silently and share it.
                ("grpc.so_reuseport", 0),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW_BYTES),
                *KEEPALIVE_OPTIONS,
            ],
            # Calls waiting for a worker hold their request message: bound them too.
            maximum_concurrent_rpcs=max_concurrent_rpcs or 4 * workers,
        )
    add_to_server(servicer, server)
    health.register(server)
    cause: Exception | None = None
    if isinstance(server, NativeServer):
        port = server.add_port(address, tls_dir=tls_dir, mutual=mutual_tls,
                               reload=reload_certificates)
    else:
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            port = 0
            cause = exc
    if port == 0:
        if http is not None:
            http.stop()
        executor.shutdown(wait=False)
        scheduler.close(timeout_s=0)
        raise UserInputError(
            f"cannot listen on {address}: the port is in use or the host is not an address "
            f"of this machine; choose another address"
        ) from cause
    return EndpointServer(server=server, executor=executor, servicer=servicer,
                          repository=repository, recorder=recorder, host=host, port=port,
                          tls=credentials is not None, scheduler=scheduler, health=health,
                          metrics=metrics, metrics_port=metrics_port,
                          metrics_host=metrics_host,
                          authorization=authorization, certificates=certificates,
                          poll_interval_s=poll_interval_s, http=http)


FRONTENDS = ("auto", "native", "core", "grpcio")


def _transport(frontend: str) -> str:
    """The transport `frontend` ("auto", "native", "core" or "grpcio") means here."""
    if frontend not in FRONTENDS:
        raise UserInputError(f"frontend must be one of {', '.join(FRONTENDS)}, got {frontend!r}")
    if frontend == "native" and not native_available():
        raise UserInputError(f"frontend 'native' is not built in this installation "
                             f"({native_unavailable_reason()}); use 'core', 'grpcio' or 'auto'")
    if frontend == "auto":
        if native_available():
            return "native"
        from .core_frontend import core_available

        return "core" if core_available() else "grpcio"
    return frontend


def _start_every_worker(executor: ThreadPoolExecutor, workers: int) -> None:
    """Start all of the executor's threads now, not one by one as load first needs them: an
    endpoint whose thread count (stacks, malloc arenas) creeps up under load for minutes
    shows a memory graph that cannot be told from a leak."""
    started = threading.Barrier(workers + 1)
    for _ in range(workers):
        executor.submit(started.wait, 10.0)
    try:
        started.wait(10.0)
    except threading.BrokenBarrierError:
        logger.warning("not all %d worker threads started within 10 s", workers)


def _batch_observer(metrics: EndpointMetrics | None
                    ) -> Callable[[BatchObservation], None] | None:
    if metrics is None:
        return None

    def observe(batch: BatchObservation) -> None:
        metrics.record_batch(model=batch.model, version=batch.version, rows=batch.rows,
                             requests=batch.requests)

    return observe


def _freeze_loaded_objects() -> None:
    """Keep what is loaded by now (modules, models, their sessions: what lives as long as the
    process) out of the cyclic garbage collector's way from now on.

    A full collection walked all of it: 18-30 ms with the serving benchmark's repository,
    during which no request moved, so the one that came during a measured window set the
    p99 of every call in flight. Frozen, a full collection takes microseconds; what requests
    allocate is collected as before.
    """
    gc.collect()
    gc.freeze()


def serve(
    repository: Path | ModelRepository,
    *,
    address: str = "127.0.0.1:8001",
    grace_s: float = 5.0,
    on_started: Callable[[EndpointServer], None] | None = None,
    **options: Any,
) -> EndpointStatistics:
    """Run an endpoint until SIGINT or SIGTERM, then drain and stop; return its statistics.

    `options` are create_server's keywords. Signal handlers are installed only when called from
    the main thread (Python's rule) and restored on return. `on_started` is called with the
    running server (e.g. to print the port when `address` ends in :0). `grace_s` bounds the drain;
    a second signal during it ends the process at once (exit status 128 + the signal), as an
    operator pressing Ctrl-C twice means.
    """
    server = create_server(repository, address=address, **options)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set():
            logger.warning("received %s again; exiting now, without waiting for the requests "
                           "in flight", name)
            logging.shutdown()  # flush the log handlers: os._exit skips them
            os._exit(128 + signum)
        logger.info("received %s; draining (grace %.1f s; send it again to exit at once)",
                    name, grace_s)
        stop_requested.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    try:
        server.start()
        _freeze_loaded_objects()
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
