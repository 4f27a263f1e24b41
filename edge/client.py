"""The device's client for the cloud endpoint: Open Inference Protocol over (mutual) TLS gRPC.

    >>> with CloudClient("cloud.example:8001", tls_dir=Path("tls")) as cloud:  # doctest: +SKIP
    ...     result = cloud.infer("chain_cnn.cut3", {"t1": t1}, codec="shuffle_zstd")
    >>> result.outputs["y"].shape, result.wire_bytes_up  # doctest: +SKIP
    ((1, 10), 3391)

Tensors ride in `raw_input_contents`, encoded with an edgecut codec (protocol/codecs.py) only
when the server announced it in its metadata extensions, so the client also works against a
stock Triton or KServe endpoint. gRPC errors are translated into edgecut's in `_call` and
nowhere else.

The request's bytes are built by edge/wire.py with one copy of each tensor (DESIGN.md, The
channel: count copies on the hot path), so ModelInfer is called with a pre-serialised message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from edgecut.errors import (
    BadInputError,
    CloudUnavailableError,
    DeadlineExceededError,
    EdgecutError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProtocolError,
    RemoteError,
    TLSConfigError,
)
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol import grpc_service_pb2_grpc as pb_grpc
from edgecut.protocol.codecs import (
    CODEC_PARAMETER,
    CODECS,
    SERVER_EXTENSIONS,
    decode_tensor,
    set_parameter,
)
from edgecut.protocol.timing import server_timing
from edgecut.protocol.tls import channel_credentials

from .channel import channel_options, target_for
from .wire import array_from_contents, encode_input, padded_message, request_with_raw_inputs

__all__ = ["ClientStatistics", "CloudClient", "InferResult", "MiB"]

MiB = 1 << 20
_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_LIVE_METHOD = "/inference.GRPCInferenceService/ServerLive"
_COMPRESSION = {None: grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip,
                "deflate": grpc.Compression.Deflate}


@dataclass(frozen=True, slots=True, kw_only=True)
class InferResult:
    """Outputs of one ModelInfer call, in the order asked for, and what moving them cost.

    `raw_*` bytes are the tensors' decoded sizes, `wire_*` what their encodings took;
    `rpc_ms` is the call itself (network both ways and the endpoint's queue and compute);
    `server_queue_ms` / `server_compute_ms` are what the endpoint reported of its part
    (protocol/timing.py), None from a server that reports nothing.
    """

    model: str
    outputs: dict[str, np.ndarray]
    codecs: dict[str, str]
    raw_bytes_up: int
    wire_bytes_up: int
    raw_bytes_down: int
    wire_bytes_down: int
    encode_ms: float
    rpc_ms: float
    decode_ms: float
    server_queue_ms: float | None = None
    server_compute_ms: float | None = None
    connected: bool = True  # False: the call had to connect first (TCP, TLS, HTTP/2)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStatistics:
    """A snapshot of a CloudClient's counters since it was created."""

    endpoint: str
    calls: int
    failures: int
    raw_bytes_up: int
    wire_bytes_up: int
    raw_bytes_down: int
    wire_bytes_down: int
    rpc_ms: float
    server_codecs: tuple[str, ...] | None


class CloudClient:
    """A gRPC channel to an inference endpoint, secure when `tls_dir` is given.

    `endpoint` is "host:port" or a list of them: replicas of one endpoint, balanced round
    robin by gRPC (edge/channel.py, with its retry, keepalive and reconnect settings).
    `device` names the certificate to present under mutual TLS (DIR/<device>.crt); without
    it the folder's only device certificate is used, if it holds exactly one. Creating a
    client connects nothing: the endpoint may be down until the first call.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        tls_dir: Path | None = None,
        device: str | None = None,
        timeout_s: float = 30.0,
        max_message_bytes: int = 256 * MiB,
        compression: str | None = None,
    ) -> None:
        problems = []
        endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint or ())
        if not endpoints or not all(isinstance(e, str) and e for e in endpoints):
            problems.append(f"endpoint must be 'host:port' or a list of them, got {endpoint!r}")
        if not timeout_s > 0:
            problems.append(f"timeout_s must be > 0, got {timeout_s}")
        if not max_message_bytes > 0:
            problems.append(f"max_message_bytes must be > 0, got {max_message_bytes}")
        if compression not in _COMPRESSION:
            problems.append(f"compression must be 'gzip', 'deflate' or None, got {compression!r}")
        if problems:
            raise BadInputError("CloudClient: " + "; ".join(problems))
        if device is not None and tls_dir is None:
            raise TLSConfigError(f"device certificate {device!r} named without tls_dir; give "
                                 f"the folder from `edgecut certs init` as tls_dir")
        self.endpoint = ",".join(endpoints)
        self.timeout_s = float(timeout_s)
        self.max_message_bytes = int(max_message_bytes)
        # A decoded output may be larger than its message (zstd, fp16), but not unboundedly:
        # this caps what a response can make the device allocate.
        self.max_tensor_bytes = 4 * self.max_message_bytes
        self._compression = _COMPRESSION[compression]
        target, authority = target_for(endpoints)
        options = channel_options(self.max_message_bytes,
                                  authority=authority if tls_dir is not None else None)
        if tls_dir is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = channel_credentials(Path(tls_dir), device=device)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer without a request serializer: it takes the bytes built in infer().
        self._infer = self._channel.unary_unary(
            _INFER_METHOD, request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString)
        # ServerLive with padding: an uplink probe whose bytes the server skips unread.
        self._live_padded = self._channel.unary_unary(
            _LIVE_METHOD, request_serializer=None,
            response_deserializer=pb.ServerLiveResponse.FromString)
        self._lock = threading.Lock()
        self._closed = False
        self._server_codecs: frozenset[str] | None = None
        self._calls = self._failures = 0
        self._bytes = [0, 0, 0, 0]  # raw up, wire up, raw down, wire down
        self._rpc_ms = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; calls after this raise EdgecutError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._channel.close()

    def connected(self) -> bool:
        """Whether the channel is connected now (a call need not set up TCP, TLS, HTTP/2).

        The device's link estimate must not count a call's connection set-up as transfer
        time. grpc's public `subscribe` runs a polling thread per channel that raises once the
        channel closes, so this asks the channel's state directly; where a grpc release does
        not have that, every call counts as connected, as before.
        """
        check = getattr(getattr(self._channel, "_channel", None), "check_connectivity_state",
                        None)
        if check is None or self._closed:
            return True
        try:
            return int(check(False)) == grpc.ChannelConnectivity.READY.value[0]
        except (ValueError, TypeError, AttributeError):
            return True

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def statistics(self) -> ClientStatistics:
        with self._lock:
            codecs = self._server_codecs
            return ClientStatistics(
                endpoint=self.endpoint, calls=self._calls, failures=self._failures,
                raw_bytes_up=self._bytes[0], wire_bytes_up=self._bytes[1],
                raw_bytes_down=self._bytes[2], wire_bytes_down=self._bytes[3],
                rpc_ms=self._rpc_ms,
                server_codecs=None if codecs is None else tuple(c for c in CODECS if c in codecs))

    # -- health and metadata --------------------------------------------------------------

    def server_live(self, *, timeout_s: float | None = None) -> bool:
        reply = self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout_s, "ServerLive")
        return bool(reply.live)

    def probe_uplink(self, padding_bytes: int, *, timeout_s: float | None = None) -> float:
        """Milliseconds of a ServerLive call carrying `padding_bytes` the server ignores.

        The padding is an unknown protobuf field, which every protobuf parser skips, so the
        probe costs the endpoint nothing but the read; with padding 0 it measures the round
        trip. Raises CloudUnavailableError / DeadlineExceededError like any call.
        """
        payload = padded_message(b"", max(0, int(padding_bytes)))
        start = time.perf_counter()
        self._call(self._live_padded, payload, timeout_s, "ServerLive (probe)")
        return (time.perf_counter() - start) * 1e3

    def server_ready(self, *, timeout_s: float | None = None) -> bool:
        reply = self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout_s,
                           "ServerReady")
        return bool(reply.ready)

    def server_metadata(self, *, timeout_s: float | None = None) -> pb.ServerMetadataResponse:
        return self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest(), timeout_s,
                          "ServerMetadata")

    def model_ready(self, name: str, version: str = "", *, timeout_s: float | None = None
                    ) -> bool:
        request = pb.ModelReadyRequest(name=name, version=version)
        reply = self._call(self._stub.ModelReady, request, timeout_s, f"ModelReady {name!r}")
        return bool(reply.ready)

    def server_codecs(self, *, timeout_s: float | None = None) -> frozenset[str]:
        """The codecs the endpoint decodes (always 'raw'), asked once and remembered."""
        if self._server_codecs is None:
            try:
                extensions = set(self.server_metadata(timeout_s=timeout_s).extensions)
            except RemoteError:
                # A server that cannot describe itself gets what every server understands.
                extensions = set()
            announced = {c for c in CODECS
                         if f"{CODEC_PARAMETER}_{c}" in extensions
                         and f"{CODEC_PARAMETER}_{c}" in SERVER_EXTENSIONS}
            with self._lock:
                self._server_codecs = frozenset({"raw"} | announced)
        return self._server_codecs

    # -- inference ------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        codec: str | Mapping[str, str] = "raw",
        response_codec: str | Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        model_version: str = "",
        parameters: Mapping[str, bool | int | float | str] | None = None,
        request_id: str = "",
    ) -> InferResult:
        """Run `model` on the endpoint; the outputs come back in the order of `outputs`
        (all the model's outputs, in the server's order, when None).

        `codec` is one codec for every input or one per input name (missing names go raw);
        a codec the server did not announce falls back to raw. `response_codec` asks the
        server to encode its outputs so: one codec for all, or one per name in `outputs`.
        `parameters` become the request's own (OIP request-level parameters). `request_id`
        is the OIP request id: an endpoint that already answered that id for this device
        answers again from its cache instead of computing twice (a retried request).
        """
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        start = time.perf_counter()
        wanted = _codecs_for("input", list(inputs), codec)
        if response_codec is None:
            down: dict[str, str] = {}
        elif isinstance(response_codec, str):
            down = {"": response_codec}  # "" stands for the request-level parameter
            _codecs_for("output", [""], response_codec)
        else:
            down = _codecs_for("output", list(outputs or ()), response_codec)
        if any(c != "raw" for c in (*wanted.values(), *down.values())):
            supported = self.server_codecs(timeout_s=timeout)
            wanted = {n: c if c in supported else "raw" for n, c in wanted.items()}
            down = {n: c for n, c in down.items() if c in supported and c != "raw"}

        encode_start = time.perf_counter()
        request = pb.ModelInferRequest(model_name=model, model_version=model_version,
                                       id=request_id)
        chunks: list[memoryview | bytes] = []
        raw_up = 0
        for name, array in inputs.items():
            data, datatype, shape, tensor_parameters, raw_nbytes = encode_input(array, wanted[name])
            tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
            for key, value in tensor_parameters.items():
                set_parameter(tensor.parameters[key], value)
            chunks.append(data)
            raw_up += raw_nbytes
        for name in outputs or ():
            requested = request.outputs.add(name=name)
            if name in down:
                set_parameter(requested.parameters[CODEC_PARAMETER], down[name])
        if "" in down:
            set_parameter(request.parameters[CODEC_PARAMETER], down[""])
        for key, value in (parameters or {}).items():
            set_parameter(request.parameters[key], value)
        payload = request_with_raw_inputs(request.SerializeToString(), chunks)
        wire_up = sum(len(c) for c in chunks)
        if len(payload) > self.max_message_bytes:
            raise PayloadTooLargeError(
                f"ModelInfer {model!r}: request of {len(payload)} bytes is over the "
                f"{self.max_message_bytes}-byte message limit; use a compressing codec, a "
                f"cut with smaller crossing tensors, or raise max_message_bytes")
        encode_ms = (time.perf_counter() - encode_start) * 1e3

        remaining = timeout - (time.perf_counter() - start)
        connected = self.connected()
        rpc_start = time.perf_counter()
        response = self._call(self._infer, payload, remaining, f"ModelInfer {model!r}",
                              asked_s=timeout)
        rpc_ms = (time.perf_counter() - rpc_start) * 1e3

        decode_start = time.perf_counter()
        decoded = self._decode(model, response, outputs)
        raw_down = sum(a.nbytes for a in decoded.values())
        wire_down = sum(len(c) for c in response.raw_output_contents)
        decode_ms = (time.perf_counter() - decode_start) * 1e3
        timing = server_timing(response)
        with self._lock:
            for i, n in enumerate((raw_up, wire_up, raw_down, wire_down)):
                self._bytes[i] += n
            self._rpc_ms += rpc_ms
        return InferResult(model=model, outputs=decoded, codecs=wanted, raw_bytes_up=raw_up,
                           wire_bytes_up=wire_up, raw_bytes_down=raw_down,
                           wire_bytes_down=wire_down, encode_ms=encode_ms, rpc_ms=rpc_ms,
                           decode_ms=decode_ms,
                           server_queue_ms=None if timing is None else timing.queue_ms,
                           server_compute_ms=None if timing is None else timing.compute_ms,
                           connected=connected)

    def _decode(self, model: str, response: pb.ModelInferResponse,
                outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        raw = response.raw_output_contents
        if raw and len(raw) != len(response.outputs):
            raise ProtocolError(f"ModelInfer {model!r}: the response has {len(response.outputs)} "
                                f"outputs but {len(raw)} raw_output_contents")
        decoded = {}
        for i, tensor in enumerate(response.outputs):
            if raw:
                decoded[tensor.name] = decode_tensor(
                    raw[i], datatype=tensor.datatype, shape=tensor.shape,
                    parameters=tensor.parameters, max_nbytes=self.max_tensor_bytes)
            else:
                decoded[tensor.name] = array_from_contents(tensor)
        if outputs is None:
            return decoded
        missing = [n for n in outputs if n not in decoded]
        if missing:
            raise ProtocolError(f"ModelInfer {model!r}: the endpoint did not return {missing} "
                                f"(it returned {list(decoded)})")
        return {n: decoded[n] for n in outputs}

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object,
              timeout_s: float | None, what: str, *, asked_s: float | None = None) -> Any:
        """The one place gRPC errors become edgecut errors. `asked_s`: the caller's whole
        timeout, which errors name, where `timeout_s` is what was left of it for the call."""
        if self._closed:
            raise EdgecutError(f"{what}: the client for {self.endpoint} is closed; "
                               f"create a new CloudClient")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if timeout <= 0:
            raise DeadlineExceededError(f"{what} on {self.endpoint}: no time left before the "
                                        f"deadline; give a longer timeout_s")
        with self._lock:
            self._calls += 1
        try:
            return method(request, timeout=timeout, compression=self._compression)
        except grpc.RpcError as exc:
            with self._lock:
                self._failures += 1
            raise _translate(exc, what, self.endpoint,
                             timeout if asked_s is None else asked_s) from exc


def _translate(exc: grpc.RpcError, what: str, endpoint: str, timeout_s: float) -> EdgecutError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    where = f"{what} on {endpoint}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return CloudUnavailableError(
            f"{where}: endpoint unavailable ({details}); check that it is running and "
            f"reachable, and that the TLS files match its certificates")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(f"{where}: no answer within {timeout_s:.3g} s ({details})")
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFoundError(f"{where}: {details}; deploy the model to the endpoint's "
                                  f"repository (`edgecut deploy`)")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(f"{where}: {details}; the endpoint's auth file must list "
                                     f"this device for the model")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        hint = _retry_after_ms(exc)
        if hint is not None:
            return OverloadedError(f"{where}: overloaded ({details}); retry after {hint} ms",
                                   retry_after_ms=hint)
    return RemoteError(f"{where}: {code.name}: {details}", code=code.name)


def _retry_after_ms(exc: grpc.RpcError) -> int | None:
    """The endpoint's `retry-after-ms` trailer on a refused call, if it sent one."""
    trailers = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    for key, value in trailers or ():
        if key == "retry-after-ms":
            try:
                return max(int(value), 0)
            except (TypeError, ValueError):
                return None
    return None


def _codecs_for(role: str, names: Sequence[str], codec: str | Mapping[str, str]
                ) -> dict[str, str]:
    """One codec per name; names without one go raw. BadInputError for unknown codecs."""
    if isinstance(codec, str):
        wanted = dict.fromkeys(names, codec)
    else:
        unknown = sorted(set(codec) - set(names))
        if unknown:
            raise BadInputError(f"codec given for {unknown}, which are not among the "
                                f"{role}s {list(names)}")
        wanted = {name: codec.get(name, "raw") for name in names}
    bad = sorted({c for c in wanted.values() if c not in CODECS})
    if bad:
        raise BadInputError(f"unknown {role} codec {bad}; expected one of {', '.join(CODECS)}")
    return wanted
