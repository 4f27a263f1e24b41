"""The Open Inference Protocol over HTTP/REST (KServe v2, with Triton's extensions), served
beside gRPC by the same handlers (cloud/servicer.py) on aiohttp.

    GET  /v2/health/live | /v2/health/ready                       200, or 503 not ready
    GET  /v2                                                      server metadata
    GET  /v2/models/{m}[/versions/{v}]                            model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready                      200, 404 unknown, 503 not ready
    GET  /v2/models/{m}[/versions/{v}]/config                     Triton's model configuration
    GET  /v2/models[/{m}[/versions/{v}]]/stats                    Triton's statistics
    POST /v2/models/{m}[/versions/{v}]/infer                      JSON, or Triton's binary tensors
    POST /v2/repository/index                                     Triton's repository index
    POST /v2/repository/models/{m}/load | /unload                 load, canary, promote, unload

Each request is answered by the servicer's handler for the same RPC, through a context that
reads like gRPC's (auth_context, abort, trailing metadata): readiness, authorisation,
scheduling and batching, the drain at stop, statistics, metrics and the request log are the
gRPC endpoint's, not a copy of them. Inference goes through `infer_later`, as the native gRPC
transport's does: the event loop hands the decoded request to the model's scheduler and awaits
its answer, so no thread waits for a batch. Plain binary-tensor requests (what
tritonclient.http sends) take the infer lane instead, as plain gRPC calls do
(cloud/http_lane.py): no protobuf messages, checks made once per layout, the requests that
arrived together queued in one group and answered from the run's outputs. The bodies are
converted in cloud/http_json.py; the socket and TLS under it are cloud/http_listener.py.

Errors are a JSON body {"error": "..."} with the status that says whose problem it is
(_HTTP_STATUS): 400 a bad request, 404 no such model, 413 over a size limit, 403 a device the
auth file does not allow, 401 no client certificate under mutual TLS, 503 overloaded or
draining (with Retry-After), 504 a queue timeout, 500 a server fault.

With `tls_dir` it is HTTPS only, with server.crt and server.key, re-read when they change. With
`mutual`, a client certificate signed by ca.crt names the device as over gRPC; a client
without one still completes the handshake but gets only the health endpoints, which a load
balancer's probe calls without a certificate: everything else is 401 (a certificate from
another CA fails the handshake, as over gRPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc
import orjson
from aiohttp import web

from edgecut.errors import ProtocolError, UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.probe import PROBE_MODEL

from .http_json import (
    HEADER_LENGTH,
    OutputChoice,
    infer_request_view,
    infer_response_body,
    message_json,
    parse_json_object,
    repository_parameters,
    request_bytes,
)
from .http_lane import HttpLane, LaneAnswer, PlainHttp, read_plain_http
from .http_listener import common_name, listen, server_ssl_context
from .native_server import CallAborted
from .repository import ModelRepository
from .servicer import RETRY_AFTER_KEY, InferenceServicer
from .status import status_for
from .threads import name_this_thread

__all__ = ["HTTPFrontend", "http_status"]

logger = logging.getLogger("edgecut.cloud.server")

# gRPC status -> HTTP status. RESOURCE_EXHAUSTED is 503 when it comes with a retry hint (a
# full queue) and 413 without (a size limit), see http_status.
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.CANCELLED: 499,
}
# Bodies up to this size are converted on the event loop; bigger ones on a thread, so a
# large JSON tensor does not hold up every other connection while it is parsed.
_INLINE_BODY_BYTES = 256 * 1024
_HTTP_THREADS = 4
# An unanswered call seen at stop() is cut off after this long (calls in flight were already
# drained by EndpointServer.stop before the HTTP listener closes).
_SHUTDOWN_S = 1.0
# How a lane call answered on its own (ModelInferResponse bytes) is written: all outputs as
# bytes, as a plain request asks.
_ALL_BINARY = OutputChoice(default_binary=True)


def http_status(code: grpc.StatusCode, retry_after_ms: int | None = None) -> int:
    """The HTTP status of a gRPC status code the handlers ended a call with.

    >>> http_status(grpc.StatusCode.NOT_FOUND), http_status(grpc.StatusCode.RESOURCE_EXHAUSTED, 20)
    (404, 503)
    """
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after_ms is not None:
        return 503
    return _HTTP_STATUS.get(code, 500)


class _Call:
    """One HTTP request as the servicer's handlers see a gRPC call: who calls, whether they
    are still there, and how the call ended (abort, trailing metadata, finish)."""

    def __init__(self, device: str | None, transport: asyncio.BaseTransport | None) -> None:
        self._device = device
        self._transport = transport
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.retry_after_ms: int | None = None
        self.finished: Callable[[bytes | None], None] = lambda data: None

    # What the handlers read (grpc.ServicerContext's names).
    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self._device.encode()]} if self._device is not None else {}

    def peer_name(self) -> str | None:
        return self._device

    def peer(self) -> str:
        """The connection, as gRPC names it ("ipv4:HOST:PORT"): who the caller is without a
        certificate (request-id deduplication keys on it)."""
        where = self._transport.get_extra_info("peername") if self._transport else None
        if not where:
            return "http:unknown"
        host, port = where[0], where[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float | None:
        return None  # HTTP has no deadline; Triton's `timeout` parameter bounds the queue

    def is_active(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    # What the handlers set.
    def set_trailing_metadata(self, metadata: Any) -> None:
        for key, value in metadata:
            if key == RETRY_AFTER_KEY:
                self.retry_after_ms = int(value)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise CallAborted(details)

    def finish(self, data: bytes | None) -> None:
        """infer_later's answer: the response's bytes, or None once abort() said why."""
        self.finished(data)

    def error(self) -> web.Response:
        return _error(http_status(self.code, self.retry_after_ms), self.details,
                      retry_after_ms=self.retry_after_ms)


def _error(status: int, message: str, *, retry_after_ms: int | None = None) -> web.Response:
    headers = {}
    if retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_ms / 1000)))
    elif status == 503:
        headers["Retry-After"] = "1"
    return web.json_response({"error": message}, status=status, headers=headers)


class HTTPFrontend:
    """The HTTP/REST listener: bound at construction (port 0: any free port), serving from
    start() until stop(), on an event loop thread of its own."""

    def __init__(self, servicer: InferenceServicer, repository: ModelRepository, *,
                 address: tuple[str, int], tls_dir: Path | None = None, mutual: bool = False,
                 max_body_bytes: int, max_open_calls: int,
                 reload_certificates: bool = True) -> None:
        self._servicer = servicer
        self._repository = repository
        self._mutual = mutual
        self._ssl = server_ssl_context(Path(tls_dir), mutual=mutual, reload=reload_certificates) \
            if tls_dir is not None else None
        self._socket = listen(*address)
        self._host = address[0]
        self._port = int(self._socket.getsockname()[1])
        self._max_body_bytes = max_body_bytes
        # Inference calls between their headers and their answer (on the loop thread only):
        # bounded as gRPC's open calls are, so waiting bodies cannot fill the memory.
        self._max_open_calls = max_open_calls
        self._open_calls = 0
        self._executor = ThreadPoolExecutor(max_workers=_HTTP_THREADS,
                                            thread_name_prefix="edgecut-http")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._lane: HttpLane | None = None  # made on the loop, in _start

    @property
    def lane_calls(self) -> int:
        """How many requests the infer lane has taken."""
        return self._lane.lane_calls if self._lane is not None else 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """`http(s)://host:port`, with the real port when port 0 was asked for."""
        return f"{'https' if self._ssl is not None else 'http'}://{self._host}:{self._port}"

    def start(self) -> None:
        started = threading.Event()
        failure: list[BaseException] = []
        loop = self._loop = asyncio.new_event_loop()

        def run() -> None:
            # Named in the kernel too, so that a profile (top -H, /proc/PID/task/*/comm)
            # tells this thread from the interpreter's others.
            name_this_thread("edgecut-http-loop")
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="edgecut-http-loop", daemon=True)
        self._thread.start()
        started.wait(30.0)
        if failure:
            raise failure[0]

    def stop(self, timeout_s: float | None = None) -> None:
        """Close the listener and its connections (calls still open get cut off)."""
        loop = self._loop
        if self._thread is None or loop is None:
            self._socket.close()
            self._executor.shutdown(wait=False)
            return
        if self._runner is not None:
            cleanup = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            try:
                cleanup.result(timeout=_SHUTDOWN_S + 5.0 if timeout_s is None else
                               max(timeout_s, 0.0) + _SHUTDOWN_S + 1.0)
            except Exception:
                logger.warning("the HTTP listener did not close cleanly", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            loop.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._thread = None

    async def _start(self) -> None:
        self._lane = HttpLane(self._servicer.infer_lane, asyncio.get_running_loop())
        app = web.Application(client_max_size=self._max_body_bytes,
                              middlewares=[self._errors])
        self._routes(app.router)
        # No access log: each inference call gets the request log's JSON line already.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=_SHUTDOWN_S)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._socket, ssl_context=self._ssl)
        await site.start()

    def _routes(self, router: web.UrlDispatcher) -> None:
        get, post = router.add_get, router.add_post
        # Inference first: aiohttp tries the routes under one prefix in the order they were
        # added, one regular expression each, and nearly every request is an inference.
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            post(base + "/infer", self._infer)
        get("/v2/health/live", self._live)
        get("/v2/health/ready", self._ready)
        get("/v2", self._server_metadata)
        get("/v2/models/stats", self._statistics)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            get(base, self._model_metadata)
            get(base + "/ready", self._model_ready)
            get(base + "/config", self._model_config)
            get(base + "/stats", self._statistics)
        post("/v2/repository/index", self._repository_index)
        post("/v2/repository/models/{model}/load", self._load)
        post("/v2/repository/models/{model}/unload", self._unload)

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refused as refused:
            return refused.response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404:
                message = (f"no such endpoint: {request.method} {request.path}; the Open "
                           f"Inference Protocol's paths start with /v2 (see `edgecut serve "
                           f"--help`)")
            elif exc.status == 405:
                message = f"{request.method} is not allowed on {request.path}"
            elif exc.status == 413:
                message = (f"request body over the limit of {self._max_body_bytes} bytes "
                           f"(serve --max-message-mb); send a smaller request")
            else:
                message = exc.text or exc.reason
            return _error(exc.status, message)
        except (ProtocolError, UserInputError) as exc:  # the HTTP body, before any handler
            return _error(http_status(status_for(exc)[0]), str(exc))

    # The handlers: each builds the RPC's request, calls the servicer's handler for it, and
    # writes its answer as the HTTP binding does.

    def _caller(self, request: web.Request, *, health: bool = False) -> _Call:
        device = None
        transport = request.transport
        if self._ssl is not None and transport is not None:
            device = common_name(transport.get_extra_info("peercert"))
            if self._mutual and device is None and not health:
                raise _Refused(_error(401, "this endpoint needs a client certificate signed by "
                                           "the fleet's CA (mutual TLS); present one, e.g. "
                                           "curl --cacert ca.crt --cert NAME.crt --key NAME.key"))
        return _Call(device, transport)

    async def _grpc(self, request: web.Request, rpc: Callable[[Any, Any], Any],
                    message: Any, *, inline: bool = False) -> Any:
        """(the handler's response, None) or raise _Refused with its error response."""
        call = self._caller(request)

        def run() -> Any:
            try:
                return rpc(message, cast(grpc.ServicerContext, call))
            except CallAborted:
                raise _Refused(call.error()) from None

        if inline:
            return run()
        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def _live(self, request: web.Request) -> web.StreamResponse:
        self._caller(request, health=True)
        return web.Response(status=200)

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        call = self._caller(request, health=True)
        response = self._servicer.ServerReady(pb.ServerReadyRequest(),
                                              cast(grpc.ServicerContext, call))
        if response.ready:
            return web.Response(status=200)
        return _error(503, "the endpoint is not ready: starting, or shutting down")

    async def _server_metadata(self, request: web.Request) -> web.StreamResponse:
        response = await self._grpc(request, self._servicer.ServerMetadata,
                                    pb.ServerMetadataRequest(), inline=True)
        return web.json_response(message_json(response))

    async def _model_metadata(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        response = await self._grpc(request, self._servicer.ModelMetadata,
                                    pb.ModelMetadataRequest(name=name, version=version),
                                    inline=True)
        return web.json_response(message_json(response))

    async def _model_ready(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        response = await self._grpc(request, self._servicer.ModelReady,
                                    pb.ModelReadyRequest(name=name, version=version),
                                    inline=True)
        if response.ready:
            return web.Response(status=200)
        try:
            self._repository.get(name, version)
        except Exception as exc:  # why it is not ready: unknown (404), or failed to load
            code, message = status_for(exc, rpc="ModelReady")
            return _error(404 if code is grpc.StatusCode.NOT_FOUND else 503, message)
        return _error(503, f"model {name!r} is loaded but the endpoint is not ready: "
                           f"starting, or shutting down")

    async def _model_config(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        response = await self._grpc(request, self._servicer.ModelConfig,
                                    pb.ModelConfigRequest(name=name, version=version))
        return web.json_response(message_json(response.config))

    async def _statistics(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        response = await self._grpc(request, self._servicer.ModelStatistics,
                                    pb.ModelStatisticsRequest(name=name, version=version))
        return web.json_response(message_json(response))

    async def _repository_index(self, request: web.Request) -> web.StreamResponse:
        body = parse_json_object(await request.read(), "the repository index request")
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise ProtocolError(f"'ready' must be true or false, got {ready!r}")
        response = await self._grpc(request, self._servicer.RepositoryIndex,
                                    pb.RepositoryIndexRequest(ready=ready))
        return web.json_response([message_json(m) for m in response.models])

    async def _load(self, request: web.Request) -> web.StreamResponse:
        message = pb.RepositoryModelLoadRequest(model_name=request.match_info["model"])
        await self._control(request, message, self._servicer.RepositoryModelLoad, "load")
        return web.Response(status=200)

    async def _unload(self, request: web.Request) -> web.StreamResponse:
        message = pb.RepositoryModelUnloadRequest(model_name=request.match_info["model"])
        await self._control(request, message, self._servicer.RepositoryModelUnload, "unload")
        return web.Response(status=200)

    async def _control(self, request: web.Request, message: Any,
                       rpc: Callable[[Any, Any], Any], what: str) -> None:
        body = parse_json_object(await request.read(), f"the {what} request")
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise ProtocolError(f"the {what} request's 'parameters' must be a JSON object, got "
                                f"{parameters!r}")
        repository_parameters(message.parameters, parameters, f"the {what} request's")
        await self._grpc(request, rpc, message)

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        call = self._caller(request)
        if self._open_calls >= self._max_open_calls:
            # A short back-off, as gRPC's transports give: the limit frees as calls answer.
            return _error(503, f"the endpoint has {self._max_open_calls} calls open already "
                               f"(its limit); retry later", retry_after_ms=50)
        self._open_calls += 1
        try:
            return await self._run_infer(request, call)
        finally:
            self._open_calls -= 1

    async def _run_infer(self, request: web.Request, call: _Call) -> web.StreamResponse:
        name, version = _model(request)
        body = await request.read()
        header_text = request.headers.get(HEADER_LENGTH)
        header_length = None
        if header_text is not None:
            if not header_text.strip().isdigit():
                raise ProtocolError(f"{HEADER_LENGTH} must be a whole number of bytes, got "
                                    f"{header_text!r}")
            header_length = int(header_text)
        plain = self._plain(name, body, header_length)
        if plain is not None:
            assert self._lane is not None
            answer = await self._lane.take(call, plain, body, model_name=name,
                                           model_version=version)
            if answer is None:
                return call.error()
            if isinstance(answer, LaneAnswer):
                return _infer_response(request, [answer.body], answer.header_bytes)
            return _infer_response(request, *infer_response_body(answer, _ALL_BINARY))
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bytes | None] = loop.create_future()

        def finished(data: bytes | None) -> None:
            # RuntimeError: the listener closed first (a stop past its grace); nobody waits.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, answered, data)

        call.finished = finished
        inline = len(body) <= _INLINE_BODY_BYTES

        def submit() -> Any:
            request, choice = infer_request_view(body, header_length, model_name=name,
                                                 model_version=version)
            # Read as it is, not serialized and parsed again; a request id's deduplication
            # keys on the request's bytes, so those are made for the calls that have one.
            self._servicer.infer_later(request_bytes(request) if request.id else b"",
                                       cast(Any, call), parsed=request)
            return choice

        choice = submit() if inline else await loop.run_in_executor(self._executor, submit)
        data = await answered
        if data is None:
            return call.error()
        if inline and len(data) <= _INLINE_BODY_BYTES:
            parts, header_size = infer_response_body(data, choice)
        else:
            parts, header_size = await loop.run_in_executor(
                self._executor, infer_response_body, data, choice)
        return _infer_response(request, parts, header_size)

    def _plain(self, name: str, body: bytes, header_length: int | None) -> PlainHttp | None:
        """The request read as a plain one for the infer lane (cloud/http_lane.py), or None:
        it takes the per-call path, which says what is wrong with it if anything is."""
        if (self._lane is None or header_length is None or name == PROBE_MODEL
                or len(body) > _INLINE_BODY_BYTES or not 0 < header_length <= len(body)):
            return None
        try:
            header = orjson.loads(memoryview(body)[:header_length])
        except orjson.JSONDecodeError:
            return None
        return read_plain_http(header, header_bytes=header_length, body_bytes=len(body))


def _infer_response(request: web.Request, parts: list[bytes | memoryview],
                    header_size: int | None) -> web.Response:
    """An inference answer: JSON alone, or (`header_size` given) JSON and then bytes."""
    if header_size is None:
        response = web.Response(body=parts[0], content_type="application/json")
    else:
        response = web.Response(body=b"".join(parts) if len(parts) > 1 else parts[0],
                                content_type="application/octet-stream",
                                headers={HEADER_LENGTH: str(header_size)})
    accepted = request.headers.get("Accept-Encoding", "")
    if "gzip" in accepted or "deflate" in accepted:
        response.enable_compression()
    return response


class _Refused(Exception):
    """Carries an error response out of a handler (to the _errors middleware)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _settle(future: asyncio.Future[bytes | None], data: bytes | None) -> None:
    if not future.done():
        future.set_result(data)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info.get("model", ""), request.match_info.get("version", "")
