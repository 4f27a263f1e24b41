"""The Open Inference Protocol handlers: the six required RPCs, Triton's management RPCs, and
the admission, authorisation and accounting around each call (the gRPC server is in server.py).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any, NoReturn, TypeVar

import grpc

from edgecut.errors import (
    BadInputError,
    CloudUnavailableError,
    OverloadedError,
)
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import SERVER_EXTENSIONS, parameter_value
from edgecut.protocol.grpc_service_pb2_grpc import (
    GRPCInferenceServiceServicer,
)
from edgecut.protocol.probe import (
    PROBE_DOWNLOAD_PARAMETER,
    PROBE_EXTENSION,
    PROBE_MODEL,
    PROBE_OUTPUT,
)
from edgecut.protocol.rawfields import InferRequestView, parse_infer_request
from edgecut.protocol.timing import TIMING_EXTENSION
from edgecut.protocol.tls import peer_identity

from . import management
from .auth import AuthorizationFile
from .dedup import Flight, RequestDeduplicator, StoredAnswer, kept_error
from .dedup_handlers import DedupHandlers
from .infer_lane import LaneOutcome
from .inference import InferOutcome, asked_timeout_s, complete, prepare
from .lane_handlers import InferLaneHandlers
from .loaded_model import LoadedModel, TensorSpec
from .logs import RequestLog
from .metrics import EndpointMetrics
from .native_server import CallAborted, NativeContext
from .repository import ModelRepository
from .scheduler import BatchResult, Scheduler
from .statistics import StatisticsRecorder, Traffic
from .status import status_for

logger = logging.getLogger("edgecut.cloud.server")

PLATFORM = "onnxruntime_onnx"
SERVICE = "GRPCInferenceService"
MODEL_INFER_METHOD = f"/{pb.DESCRIPTOR.package}.{SERVICE}/ModelInfer"
SERVER_NAME = "edgecut"
# The Triton extensions served here, by the names Triton's own ServerMetadata gives them.
TRITON_EXTENSIONS = ("model_repository", "model_repository(unload_dependents)",
                     "model_configuration", "statistics")
RETRY_AFTER_KEY = "retry-after-ms"
# Decoded inputs of one request together: a codec can shrink a tensor well below its size
# (zstd on sparse activations), so this is separate from the message limit.
DEFAULT_MAX_DECODED_BYTES = 1024 * 1024 * 1024

_Response = TypeVar("_Response")


def _server_version() -> str:
    try:
        return importlib.metadata.version("edgecut")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class InferenceServicer(InferLaneHandlers, DedupHandlers, GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService` over a ModelRepository."""

    def __init__(self, repository: ModelRepository, *, recorder: StatisticsRecorder,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                 scheduler: Scheduler | None = None, metrics: EndpointMetrics | None = None,
                 authorization: AuthorizationFile | None = None,
                 request_log: RequestLog | None = None,
                 dedup: RequestDeduplicator | None = None) -> None:
        self._repository = repository
        # Requests sent again with the same id (edgecut.cloud.dedup).
        self._dedup = dedup or RequestDeduplicator()
        self._lane_flights: dict[int, Flight] = {}
        self._recorder = recorder
        self._max_decoded_bytes = max_decoded_bytes
        self._probe_bytes = b""
        self._scheduler = scheduler or Scheduler()
        self._metrics = metrics
        self._authorization = authorization
        self._request_log = request_log or RequestLog()
        self._ready = threading.Event()
        self._version = _server_version()
        # Inference calls in flight, and whether new ones are refused (draining).
        self._flight = threading.Condition()
        self._inflight = 0
        self._draining = False
        # Called after a load or unload changed what is served (EndpointServer: health).
        self.repository_changed: Callable[[], None] = lambda: None

    def set_ready(self, ready: bool) -> None:
        """ServerReady's answer: true while serving, false before start and while draining."""
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    def begin_drain(self) -> None:
        """Answer new inference calls UNAVAILABLE from now on; running ones go on."""
        self.set_ready(False)
        with self._flight:
            self._draining = True

    def wait_idle(self, timeout_s: float | None) -> bool:
        """Block until no inference call is in flight; False if `timeout_s` ran out first."""
        with self._flight:
            return self._flight.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    def _enter(self, calls: int = 1) -> None:
        """Count inference calls in, or refuse them while draining."""
        with self._flight:
            if self._draining:
                raise CloudUnavailableError(
                    "the endpoint is shutting down; retry on another replica"
                )
            self._inflight += calls

    def _leave(self, calls: int = 1) -> None:
        with self._flight:
            self._inflight -= calls
            if not self._inflight:
                self._flight.notify_all()

    def _authorize(self, device: str | None, model: str) -> None:
        """PermissionDeniedError unless the auth file lets `device` use `model` (the hook
        every model-scoped RPC calls once the model name is resolved)."""
        if self._authorization is not None:
            self._authorization.check(device, model)

    def _authorize_read(self, device: str | None, model: str) -> None:
        """As _authorize, and operators may too: readiness, metadata, config and statistics
        of the models they control (a rollout script loads, then asks if it is ready)."""
        if self._authorization is not None:
            self._authorization.check_read(device, model)

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
                   ) -> pb.ServerLiveResponse:
        return self._answer("ServerLive", context, pb.ServerLiveResponse(live=True))

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
                    ) -> pb.ServerReadyResponse:
        ready = self._ready.is_set()
        return self._answer("ServerReady", context, pb.ServerReadyResponse(ready=ready))

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
                   ) -> pb.ModelReadyResponse:
        device = peer_identity(context)
        try:
            self._authorize_read(device, request.name)
        except Exception as exc:
            self._abort("ModelReady", context, exc, device=device)
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
            name=SERVER_NAME, version=self._version,
            extensions=[*TRITON_EXTENSIONS, *SERVER_EXTENSIONS, PROBE_EXTENSION,
                        TIMING_EXTENSION],
        )
        return self._answer("ServerMetadata", context, response)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
                      ) -> pb.ModelMetadataResponse:
        device = peer_identity(context)
        try:
            self._authorize_read(device, request.name)
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
        if self._metrics is not None:
            self._metrics.record_rpc(rpc="ModelMetadata", code="OK", device=device)
        return response

    def ModelInfer(self, data: bytes | memoryview, context: grpc.ServicerContext
                   ) -> pb.ModelInferResponse | bytes:
        # gRPC hands over the request's bytes (see add_to_server): the tensors are read as
        # views over them instead of being copied twice by protobuf's parser.
        started = time.perf_counter()
        device = peer_identity(context)
        model: LoadedModel | None = None
        request_id = ""
        flight: Flight | None = None
        again: StoredAnswer | None = None
        try:
            request = parse_infer_request(data)
            request_id = request.id
            if request.model_name == PROBE_MODEL:
                return self._answer("ModelInfer", context, self._probe(request))
            self._enter()
            try:
                key = self._dedup_key(request, device, context, data)
                if key is not None:
                    self._authorize(device, request.model_name)
                    flight, again = self._await_first(key, context)
                if again is None:
                    model = self._routed(request, device)
                    prepared = prepare(request, model,
                                       max_decoded_bytes=self._max_decoded_bytes)
                    # This thread waits for its request's batch, and runs it when its turn
                    # comes.
                    result = self._scheduler.for_model(model).run(
                        prepared.inputs, prepared.names, timeout_s=context.time_remaining(),
                        cancelled=lambda: not context.is_active(),
                        asked_timeout_s=asked_timeout_s(request), request_id=request_id)
                    outcome = complete(prepared, model, result)
            finally:
                self._leave()
        except BaseException as exc:
            if flight is not None:
                self._dedup.settle(flight, kept_error(exc, model))
            if not isinstance(exc, Exception):
                raise
            self._abort("ModelInfer", context, exc, device=device, model=model,
                        started=started, request_id=request_id)
        if again is not None:
            return self._replay(again, context, device=device, started=started,
                                request_id=request_id)
        self._observe_infer(model, outcome, device=device, started=started,
                            request_id=request_id)
        if flight is None:
            return outcome.response
        answer = outcome.response.SerializeToString()
        self._dedup.settle(flight, StoredAnswer(response=answer, model=model.name,
                                                version=str(model.version)))
        return answer  # add_to_server's serializer passes bytes on as they are

    def infer_later(self, data: bytes | memoryview, context: NativeContext, *,
                    parsed: InferRequestView | None = None) -> None:
        """ModelInfer for the native frontend: answers through `context.finish`, once the
        request's batch has run, instead of holding a thread while it waits.

        The same checks, accounting and errors as ModelInfer; the run itself goes to the
        model's scheduler (submit), whose worker finishes the call. `parsed` is the request
        already read (the HTTP binding builds it from JSON) and `data` is then not parsed: it
        must be the request's bytes when it has an id (deduplication keys on them), and may
        be empty otherwise.
        """
        started = time.perf_counter()
        device = context.peer_name()
        model: LoadedModel | None = None
        request_id = ""
        flight: Flight | None = None
        try:
            request = parsed if parsed is not None else parse_infer_request(data)
            request_id = request.id
            if request.model_name == PROBE_MODEL:
                response = self._answer("ModelInfer", context, self._probe(request))
                context.finish(response.SerializeToString())
                return
            self._enter()
            try:
                key = self._dedup_key(request, device, context, data)
                if key is not None:
                    self._authorize(device, request.model_name)
                    claim = self._dedup.claim(key)
                    if claim.flight is None:
                        self._leave()
                        self._answer_again_later(claim, data, context, device=device,
                                                 started=started, request_id=request_id)
                        return
                    flight = claim.flight
                model = self._routed(request, device)
                prepared = prepare(request, model, max_decoded_bytes=self._max_decoded_bytes)
                scheduler = self._scheduler.for_model(model)
                future = scheduler.submit(prepared.inputs, prepared.names,
                                          timeout_s=context.time_remaining(),
                                          cancelled=lambda: not context.is_active(),
                                          asked_timeout_s=asked_timeout_s(request),
                                          request_id=request_id)
            except BaseException:
                self._leave()
                raise
        except BaseException as exc:
            if flight is not None:
                self._dedup.settle(flight, kept_error(exc, model))
            if not isinstance(exc, Exception):
                raise
            self._abort_later(context, exc, device=device, model=model, started=started,
                              request_id=request_id)
            return

        def ran(future: Future[BatchResult]) -> None:
            assert model is not None
            try:
                try:
                    outcome = complete(prepared, model, future.result())
                except CancelledError as exc:
                    raise CloudUnavailableError(
                        "the endpoint is shutting down; retry on another replica") from exc
                self._observe_infer(model, outcome, device=device, started=started,
                                    request_id=request_id)
                answer = outcome.response.SerializeToString()
                if flight is not None:
                    self._dedup.settle(flight, StoredAnswer(response=answer, model=model.name,
                                                            version=str(model.version)))
                context.finish(answer)
            except Exception as exc:
                if flight is not None:  # nothing once settled above
                    self._dedup.settle(flight, kept_error(exc, model))
                self._abort_later(context, exc, device=device, model=model, started=started,
                                  request_id=request_id)
            finally:
                self._leave()

        future.add_done_callback(ran)

    def _routed(self, request: InferRequestView, device: str | None) -> LoadedModel:
        """The model version that serves `request`, once `device` may use the model."""
        model = self._repository.route(request.model_name, request.model_version)
        self._authorize(device, model.name)
        return model

    def _abort_later(self, context: NativeContext, exc: Exception, **where: Any) -> None:
        """_abort for a call that is answered later: its status goes out with finish()."""
        with contextlib.suppress(CallAborted):  # the context keeps the status _abort gave it
            self._abort("ModelInfer", context, exc, **where)
        context.finish(None)

    def _probe(self, request: InferRequestView) -> pb.ModelInferResponse:
        """The link probe (edgecut.protocol.probe): `n` bytes down, whatever came up."""
        asked = request.parameters.get(PROBE_DOWNLOAD_PARAMETER)
        n = int(parameter_value(asked)) if asked is not None else 0
        if not 0 <= n <= self._max_decoded_bytes:
            raise BadInputError(f"{PROBE_DOWNLOAD_PARAMETER} must be 0..{self._max_decoded_bytes}, "
                                f"got {n}")
        if len(self._probe_bytes) < n:
            # Random, so no compression on the way shortens the transfer; made once.
            self._probe_bytes = os.urandom(n)
        response = pb.ModelInferResponse(model_name=PROBE_MODEL, id=request.id)
        response.outputs.add(name=PROBE_OUTPUT, datatype="UINT8", shape=[n])
        response.raw_output_contents.append(self._probe_bytes[:n])
        return response

    def _observe_infer(self, model: LoadedModel, outcome: InferOutcome | LaneOutcome, *,
                       device: str | None, started: float, request_id: str) -> None:
        self._observe(model, outcome, device=device, started=started, request_ids=(request_id,))

    def _observe(self, model: LoadedModel, outcome: InferOutcome | LaneOutcome, *,
                 device: str | None, started: float, request_ids: Sequence[str]) -> None:
        """Count answered calls, one per id in `request_ids`, alike: the same `outcome` and
        the same time since `started` (lane calls one run answered are counted at once)."""
        request_s, count = time.perf_counter() - started, len(request_ids)
        model.request_succeeded(request_s=request_s, queue_s=outcome.queue_s,
                                compute_s=outcome.compute_s, count=count)
        traffic = Traffic(
            raw_bytes_in=outcome.raw_bytes_in, wire_bytes_in=outcome.wire_bytes_in,
            raw_bytes_out=outcome.raw_bytes_out, wire_bytes_out=outcome.wire_bytes_out,
            compute_s=outcome.compute_s,
        )
        self._recorder.record(rpc="ModelInfer", code="OK", device=device, model=model.name,
                              traffic=traffic, count=count)
        if self._metrics is not None:
            self._metrics.record_rpc(rpc="ModelInfer", code="OK", device=device, count=count)
            self._metrics.record_infer(
                model=model.name, version=model.version, code="OK", request_s=request_s,
                queue_s=outcome.queue_s, compute_s=outcome.compute_s,
                raw_bytes_in=outcome.raw_bytes_in, wire_bytes_in=outcome.wire_bytes_in,
                raw_bytes_out=outcome.raw_bytes_out, wire_bytes_out=outcome.wire_bytes_out,
                count=count,
            )
        if self._request_log.enabled:
            for request_id in request_ids:
                self._request_log.log(
                    model=model.name, version=model.version, device=device, status="OK",
                    queue_ms=outcome.queue_s * 1e3, compute_ms=outcome.compute_s * 1e3,
                    request_ms=request_s * 1e3, batch_rows=outcome.batch_rows,
                    wire_bytes_in=outcome.wire_bytes_in, wire_bytes_out=outcome.wire_bytes_out,
                    id=request_id or None,
                )

    def _answer(self, rpc: str, context: grpc.ServicerContext,
                response: _Response) -> _Response:
        device = peer_identity(context)
        self._recorder.record(rpc=rpc, code="OK", device=device)
        if self._metrics is not None:
            self._metrics.record_rpc(rpc=rpc, code="OK", device=device)
        return response

    def _abort(self, rpc: str, context: grpc.ServicerContext, exc: Exception, *,
               device: str | None, model: LoadedModel | None = None,
               started: float | None = None, request_id: str = "") -> NoReturn:
        code, message = status_for(exc, rpc=rpc)
        name = model.name if model is not None else None
        self._recorder.record(rpc=rpc, code=code.name, device=device, model=name)
        if self._metrics is not None:
            self._metrics.record_rpc(rpc=rpc, code=code.name, device=device)
            if model is not None and rpc == "ModelInfer":
                self._metrics.record_infer(model=model.name, version=model.version,
                                           code=code.name)
        # A refused device never reached the model: its call is no request of the model's.
        if (rpc == "ModelInfer" and model is not None and started is not None
                and code != grpc.StatusCode.PERMISSION_DENIED):
            model.request_failed(request_s=time.perf_counter() - started)
        if rpc == "ModelInfer":
            self._request_log.log(
                model=name, version=model.version if model else None,
                device=device, status=code.name,
                request_ms=None if started is None else (time.perf_counter() - started) * 1e3,
                id=request_id or None, message=message,
            )
        if isinstance(exc, OverloadedError):
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(exc.retry_after_ms)),))
        context.abort(code, message)
        raise AssertionError("unreachable: grpc's context.abort raises")  # for type checkers


    # Triton's extensions: model configuration, statistics, repository (edgecut.cloud.management).

    def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.ServicerContext
                    ) -> pb.ModelConfigResponse:
        device = peer_identity(context)
        try:
            self._authorize_read(device, request.name)
            response = management.model_config(self._repository, request.name, request.version)
        except Exception as exc:
            self._abort("ModelConfig", context, exc, device=device)
        return self._answer("ModelConfig", context, response)

    def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.ServicerContext
                        ) -> pb.ModelStatisticsResponse:
        device = peer_identity(context)
        try:
            if request.name:
                # A device that may use it, or an operator weighing a canary; all models'
                # statistics (no name) stay open, as the repository index does.
                self._authorize_read(device, request.name)
            response = management.model_statistics(self._repository, request.name,
                                                   request.version)
        except Exception as exc:
            self._abort("ModelStatistics", context, exc, device=device)
        return self._answer("ModelStatistics", context, response)

    def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.ServicerContext
                        ) -> pb.RepositoryIndexResponse:
        # Open to every admitted caller, as in Triton: names and states, no control.
        response = management.repository_index(self._repository, ready_only=request.ready)
        return self._answer("RepositoryIndex", context, response)

    def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                            context: grpc.ServicerContext) -> pb.RepositoryModelLoadResponse:
        device = peer_identity(context)
        try:
            if self._authorization is not None:  # load, canary, promote, rollback: operators
                self._authorization.check_control(device, request.model_name,
                                                  management.control_action(request.parameters))
            management.apply_load(self._repository, request.model_name, request.parameters)
        except Exception as exc:
            self._abort("RepositoryModelLoad", context, exc, device=device)
        finally:  # a failed reload may have changed what is served too
            self.repository_changed()
        return self._answer("RepositoryModelLoad", context, pb.RepositoryModelLoadResponse())

    def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                              context: grpc.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        device = peer_identity(context)
        try:
            if self._authorization is not None:
                self._authorization.check_control(device, request.model_name, "unload")
            management.apply_unload(self._repository, request.model_name, request.parameters)
        except Exception as exc:
            self._abort("RepositoryModelUnload", context, exc, device=device)
        finally:
            self.repository_changed()
        return self._answer("RepositoryModelUnload", context, pb.RepositoryModelUnloadResponse())

def add_to_server(servicer: InferenceServicer, server: grpc.Server) -> None:
    """Register `servicer` for every RPC of inference.GRPCInferenceService on `server`.

    As the generated add_GRPCInferenceServiceServicer_to_server, except that ModelInfer gets
    the request's bytes unparsed (edgecut.protocol.rawfields reads its tensors in place).
    """
    service = pb.DESCRIPTOR.services_by_name[SERVICE]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        infer = method.name == "ModelInfer"
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=None if infer else request_type.FromString,
            # ModelInfer may answer with bytes already serialized (deduplication keeps them).
            response_serializer=_serialize_infer if infer else response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name,
                                                                          handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _serialize_infer(response: pb.ModelInferResponse | bytes) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )
