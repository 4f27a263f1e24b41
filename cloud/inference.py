"""One ModelInfer call, from request message to response message, against a loaded model.

    request ──decode_inputs──▶ {name: array} ──run_model──▶ arrays ──encode_outputs──▶ response
                 ▲ requested_outputs (names, order, codec per output)

Every check a peer's message must pass happens here, before the model runs: input names
(unknown, missing, repeated), datatypes and shapes against the model's metadata, raw versus
typed contents, and each tensor's codec and size (edgecut.protocol.codecs). Problems with
names, dtypes and shapes are collected into one message; a broken payload stops at the first.

    >>> outcome = infer(request, repository.get("tiny_cnn", ""), max_decoded_bytes=1 << 30)  # doctest: +SKIP
    >>> outcome.response.raw_output_contents[0][:4]                                           # doctest: +SKIP

Outputs are always returned in `raw_output_contents`, one entry per output in the order of
`outputs`: the only form stock clients read (tritonclient ignores typed output contents).
A request may ask for a codec on its outputs with the string parameter `edgecut_codec`, on
the request (all outputs) or on one requested output (that output; it wins).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from edgecut.errors import BadInputError, PayloadTooLargeError, ProtocolError
from edgecut.protocol.codecs import (
    CODEC_PARAMETER,
    CODECS,
    decode_tensor,
    encode_tensor,
    parameter_value,
    set_parameter,
)
from edgecut.protocol.grpc_service_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)
from edgecut.protocol.rawfields import InferRequestView
from edgecut.protocol.tensors import dtype_of, expected_nbytes
from edgecut.protocol.timing import COMPUTE_MS_PARAMETER, QUEUE_MS_PARAMETER

from .loaded_model import LoadedModel, format_shape

__all__ = [
    "InferOutcome",
    "PreparedRequest",
    "RequestedOutput",
    "RunResult",
    "Runner",
    "asked_timeout_s",
    "complete",
    "decode_inputs",
    "encode_outputs",
    "infer",
    "prepare",
    "requested_outputs",
    "run_model",
    "set_timing",
]

# The typed field of InferTensorContents that carries each datatype. FP16 (and BF16) have
# none: the protocol only carries them raw.
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


_ORT_SOURCE_PATH = re.compile(r"\S*onnxruntime_src/\S*\s*")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestedOutput:
    name: str
    codec: str = "raw"


@dataclass(frozen=True, slots=True, kw_only=True)
class InferOutcome:
    """The response and what crossed the wire: `wire` counts tensor payload bytes as sent
    (after codecs, before gRPC's own compression), `raw` the decoded tensors' bytes."""

    response: ModelInferResponse = field(repr=False, compare=False)
    raw_bytes_in: int
    wire_bytes_in: int
    raw_bytes_out: int
    wire_bytes_out: int
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_rows: int = 1  # rows of the model run this request was part of


class RunResult(Protocol):
    """What a runner returns: the outputs in the order asked, and how they were computed
    (edgecut.cloud.scheduler.BatchResult is one)."""

    @property
    def outputs(self) -> Sequence[np.ndarray]: ...
    @property
    def queue_s(self) -> float: ...
    @property
    def compute_s(self) -> float: ...
    @property
    def batch_rows(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class _DirectRun:
    outputs: Sequence[np.ndarray]
    compute_s: float
    queue_s: float = 0.0
    batch_rows: int = 1


Runner = Callable[[dict[str, np.ndarray], list[str]], RunResult]
# The endpoint passes the view edgecut.protocol.rawfields makes of the received bytes; a parsed
# message reads the same.
InferRequest = ModelInferRequest | InferRequestView


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedRequest:
    """A request checked and decoded, ready to run: `inputs` go to the model, `names` are the
    outputs to compute, in response order."""

    request: InferRequest = field(repr=False, compare=False)
    outputs: tuple[RequestedOutput, ...]
    inputs: dict[str, np.ndarray] = field(repr=False, compare=False)
    raw_bytes_in: int
    wire_bytes_in: int

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.outputs]


def infer(request: InferRequest, model: LoadedModel, *, max_decoded_bytes: int,
          runner: Runner | None = None) -> InferOutcome:
    """Check, decode, run and encode one request against `model`.

    `max_decoded_bytes` bounds the decoded size of all of the request's inputs together
    (PayloadTooLargeError beyond it), whatever codec or shape they declare. `runner` runs the
    decoded inputs (the server passes its scheduler, which may batch them with other
    requests); by default the model's session runs them here, at once.
    """
    prepared = prepare(request, model, max_decoded_bytes=max_decoded_bytes)
    if runner is None:
        started = time.perf_counter()
        arrays = run_model(model, prepared.inputs, prepared.names)
        run: RunResult = _DirectRun(outputs=arrays, compute_s=time.perf_counter() - started)
    else:
        run = runner(prepared.inputs, prepared.names)
    return complete(prepared, model, run)


def prepare(request: InferRequest, model: LoadedModel, *,
            max_decoded_bytes: int) -> PreparedRequest:
    """infer's first half: the checks and the decoding, before the model runs."""
    outputs = requested_outputs(request, model)
    inputs, raw_in, wire_in = decode_inputs(request, model, max_decoded_bytes=max_decoded_bytes)
    return PreparedRequest(request=request, outputs=outputs, inputs=inputs, raw_bytes_in=raw_in,
                           wire_bytes_in=wire_in)


def complete(prepared: PreparedRequest, model: LoadedModel, run: RunResult) -> InferOutcome:
    """infer's second half: the response to `prepared` once `run` computed its outputs."""
    response, raw_out, wire_out = encode_outputs(prepared.request, model, prepared.outputs,
                                                 run.outputs)
    set_timing(response, queue_s=run.queue_s, compute_s=run.compute_s)
    return InferOutcome(response=response, raw_bytes_in=prepared.raw_bytes_in,
                        wire_bytes_in=prepared.wire_bytes_in, raw_bytes_out=raw_out,
                        wire_bytes_out=wire_out, queue_s=run.queue_s, compute_s=run.compute_s,
                        batch_rows=run.batch_rows)


def set_timing(response: ModelInferResponse, *, queue_s: float, compute_s: float) -> None:
    """Report on `response` how long its request queued and its batch ran
    (edgecut.protocol.timing; the infer lane writes the same in frontend.cc)."""
    response.parameters[QUEUE_MS_PARAMETER].double_param = queue_s * 1e3
    response.parameters[COMPUTE_MS_PARAMETER].double_param = compute_s * 1e3


def asked_timeout_s(request: InferRequest) -> float | None:
    """The queue timeout a request asks for in seconds (Triton's `timeout` parameter, in
    microseconds, as tritonclient's `infer(timeout=...)` sends it); None when it asks none.
    The model's policy decides whether it counts (SchedulingPolicy.queue_timeout_s)."""
    if "timeout" not in request.parameters:
        return None
    value = parameter_value(request.parameters["timeout"])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"parameter 'timeout' must be a whole number of microseconds "
                            f">= 0, got {value!r}")
    return value / 1e6 if value else None


def requested_outputs(request: InferRequest, model: LoadedModel
                      ) -> tuple[RequestedOutput, ...]:
    """The outputs to compute, in response order, each with its codec.

    Requested outputs in request order, or every model output when none is requested.
    Raises BadInputError for unknown or repeated names and for fp16 on a non-FP32 output,
    ProtocolError for an unknown codec name.
    """
    default = _codec_parameter(request.parameters, "request") or "raw"
    if not request.outputs:
        pairs = [(spec.name, default) for spec in model.outputs]
    else:
        pairs = []
        for tensor in request.outputs:
            _refuse_triton_only(tensor.parameters, f"output {tensor.name!r}", model)
            codec = _codec_parameter(tensor.parameters, f"output {tensor.name!r}")
            pairs.append((tensor.name, codec or default))
    problems: list[str] = []
    seen: set[str] = set()
    for name, codec in pairs:
        spec = model.output(name)
        if spec is None:
            problems.append(
                f"unknown output {name!r}; the model has outputs "
                f"{', '.join(repr(s.name) for s in model.outputs)}"
            )
        elif name in seen:
            problems.append(f"output {name!r} is requested twice")
        elif codec == "fp16" and spec.datatype != "FP32":
            problems.append(
                f"output {name!r}: codec 'fp16' only applies to FP32 outputs, this one is "
                f"{spec.datatype}; use 'zstd' or 'shuffle_zstd'"
            )
        seen.add(name)
    if problems:
        raise BadInputError(_where(model) + "; ".join(problems))
    return tuple(RequestedOutput(name=n, codec=c) for n, c in pairs)


def decode_inputs(request: InferRequest, model: LoadedModel, *,
                  max_decoded_bytes: int) -> tuple[dict[str, np.ndarray], int, int]:
    """The request's inputs as arrays, checked against the model's metadata.

    Returns (arrays by name, decoded bytes, payload bytes as received). Inputs come either
    all in `raw_input_contents` (one entry per input, in order; codecs apply) or all in
    typed `contents`; mixing the two is a ProtocolError.
    """
    _check_names_and_types(request, model)
    for tensor in request.inputs:
        _refuse_triton_only(tensor.parameters, f"input {tensor.name!r}", model)
    raw = request.raw_input_contents
    typed = [t.name for t in request.inputs if t.HasField("contents")]
    if raw and typed:
        raise ProtocolError(
            f"{_where(model)}request mixes raw_input_contents with typed contents (on input "
            f"{typed[0]!r}); send every input one way or the other"
        )
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"{_where(model)}request has {len(request.inputs)} inputs but {len(raw)} "
            f"raw_input_contents entries; expected one entry per input, in the same order"
        )
    arrays: dict[str, np.ndarray] = {}
    raw_bytes = wire_bytes = 0
    for i, tensor in enumerate(request.inputs):
        budget = max_decoded_bytes - raw_bytes
        try:
            if raw:
                data = raw[i]
                wire_bytes += len(data)
                array = decode_tensor(data, datatype=tensor.datatype, shape=tuple(tensor.shape),
                                      parameters=tensor.parameters, max_nbytes=budget)
            else:
                wire_bytes += tensor.contents.ByteSize()
                array = _decode_contents(tensor.datatype, tuple(tensor.shape), tensor.contents,
                                         tensor.parameters, budget)
        except ProtocolError as exc:
            # Same class (PayloadTooLargeError stays one), now naming the input.
            raise type(exc)(f"{_where(model)}input {tensor.name!r}: {exc}") from exc
        raw_bytes += array.nbytes
        arrays[tensor.name] = array
    return arrays, raw_bytes, wire_bytes


def run_model(model: LoadedModel, inputs: Mapping[str, np.ndarray],
              output_names: Sequence[str], *,
              session: ort.InferenceSession | None = None) -> list[np.ndarray]:
    """Run `session` (default: the model's); errors the graph raises on these inputs become
    BadInputError.

    The inputs already match the model's declared dtypes and shapes, so what onnxruntime
    still rejects depends on their values or on how dynamic dims combine (two batch sizes
    that do not broadcast, a reshape that does not divide): the caller's to fix.

    An input read in place from a request sits wherever the request's bytes put it, often at
    an address that is no multiple of its item size. onnxruntime converts such an array
    through a slow path: with a 128 KiB fp32 input, a run took 24 us against 8 us aligned
    (33 against 19 inside the endpoint); numpy copies it to an aligned array in 3.5 us, so
    that is done here.
    """
    feed = {name: array if array.flags.aligned else array.copy()
            for name, array in inputs.items()}
    try:
        return list((session or model.session).run(list(output_names), feed))
    except (InvalidArgument, Fail, RuntimeException) as exc:
        # onnxruntime's message names the node and the problem; drop its source paths.
        lines = _ORT_SOURCE_PATH.sub("", str(exc)).strip().splitlines()
        detail = lines[0][:500] if lines else "no detail given"
        raise BadInputError(f"{_where(model)}the model rejected the inputs: {detail}") from exc


def encode_outputs(request: InferRequest, model: LoadedModel,
                   outputs: Sequence[RequestedOutput], arrays: Sequence[np.ndarray]
                   ) -> tuple[ModelInferResponse, int, int]:
    """The response message: raw_output_contents in the order of `outputs`.

    Returns (response, decoded bytes, payload bytes).
    """
    response = ModelInferResponse(model_name=model.name, model_version=str(model.version),
                                  id=request.id)
    raw_bytes = wire_bytes = 0
    for requested, array in zip(outputs, arrays, strict=True):
        encoded = encode_tensor(array, requested.codec)
        tensor = response.outputs.add(name=requested.name, datatype=encoded.datatype,
                                      shape=encoded.shape)
        for key, value in encoded.parameters.items():
            set_parameter(tensor.parameters[key], value)
        response.raw_output_contents.append(encoded.data)
        raw_bytes += encoded.raw_nbytes
        wire_bytes += len(encoded.data)
    return response, raw_bytes, wire_bytes


def _check_names_and_types(request: InferRequest, model: LoadedModel) -> None:
    problems: list[str] = []
    seen: set[str] = set()
    for tensor in request.inputs:
        spec = model.input(tensor.name)
        if (spec is not None and tensor.name not in seen and tensor.datatype == spec.datatype
                and spec.accepts_shape(tensor.shape)):
            seen.add(tensor.name)
            continue  # the common case, checked first: no message to build
        if spec is None:
            problems.append(
                f"unknown input {tensor.name!r}; the model's inputs are "
                f"{', '.join(f'{s.name!r} {s.describe()}' for s in model.inputs)}"
            )
        elif tensor.name in seen:
            problems.append(f"input {tensor.name!r} is given twice")
        else:
            got = f"{tensor.datatype or '(no datatype)'} {format_shape(tensor.shape)}"
            problems.append(
                f"input {tensor.name!r}: expected {spec.describe()} (-1 = any), got {got}"
            )
        seen.add(tensor.name)
    missing = [s for s in model.inputs if s.name not in seen]
    problems += [f"missing input {s.name!r} {s.describe()}" for s in missing]
    if not problems and model.settings.max_batch_size > 0:
        problems += _batch_size_problems(request, model.settings.max_batch_size)
    if problems:
        raise BadInputError(_where(model) + "; ".join(problems))


def _batch_size_problems(request: InferRequest, max_batch_size: int) -> list[str]:
    """As Triton checks a batched model's request: every input starts with the same batch
    dimension, of at most the config's max_batch_size rows."""
    rows = {tensor.name: tensor.shape[0] for tensor in request.inputs if tensor.shape}
    sizes = set(rows.values())
    if len(sizes) > 1:
        listed = ", ".join(f"{name!r} {n}" for name, n in rows.items())
        return [f"the inputs' batch sizes differ ({listed}); every input of a batched model "
                f"starts with the same batch dimension"]
    size = max(sizes, default=0)
    if size > max_batch_size:
        return [f"batch size {size} is more than the model's max_batch_size {max_batch_size} "
                f"(config.pbtxt); send at most {max_batch_size} rows per request"]
    return []


def _decode_contents(datatype: str, shape: tuple[int, ...], contents: InferTensorContents,
                     parameters: Mapping[str, InferParameter], max_nbytes: int) -> np.ndarray:
    """A tensor sent in typed `contents` (stock clients may use them for small inputs)."""
    codec = _codec_parameter(parameters, "tensor")
    if codec not in (None, "raw"):
        raise ProtocolError(
            f"codec {codec!r} applies to raw_input_contents only; typed contents are plain"
        )
    dtype = dtype_of(datatype)
    field_name = _CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise ProtocolError(
            f"{datatype} has no typed contents field in the protocol; send it in "
            f"raw_input_contents"
        )
    nbytes = expected_nbytes(datatype, shape)
    if nbytes > max_nbytes:
        raise PayloadTooLargeError(
            f"tensor of shape {format_shape(shape)} {datatype} takes {nbytes} bytes, over the "
            f"limit of {max_nbytes} bytes"
        )
    others = [f.name for f, _ in contents.ListFields() if f.name != field_name]
    if others:
        raise ProtocolError(
            f"{datatype} tensor carries values in {', '.join(others)}; expected {field_name}"
        )
    values = getattr(contents, field_name)
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(
            f"contents.{field_name} holds {len(values)} values but shape "
            f"{format_shape(shape)} needs {count}"
        )
    wide = np.asarray(values, dtype=_WIDE[dtype.kind])
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise ProtocolError(
                f"contents.{field_name} holds values outside {datatype}'s range "
                f"[{info.min}, {info.max}]"
            )
    return wide.astype(dtype).reshape(shape)


_WIDE: dict[str, np.dtype] = {
    "b": np.dtype(bool),
    "i": np.dtype(np.int64),
    "u": np.dtype(np.uint64),
    "f": np.dtype(np.float64),
}


def _refuse_triton_only(parameters: Mapping[str, InferParameter], where: str,
                        model: LoadedModel) -> None:
    """Triton's tensor parameters that change where a tensor is or what comes back: served
    without them, the answer would be wrong, so they are refused."""
    classes = parameter_value(parameters["classification"]) if "classification" in parameters else 0
    if classes:
        raise BadInputError(f"{_where(model)}{where}: Triton's classification extension "
                            f"(class_count) is not supported; ask for the tensor itself and "
                            f"take its top classes on the client")
    if "shared_memory_region" in parameters:
        raise BadInputError(f"{_where(model)}{where}: shared memory regions are not supported; "
                            f"send the tensor in the request (raw_input_contents) and read "
                            f"outputs from the response")


def _codec_parameter(parameters: Mapping[str, InferParameter], where: str) -> str | None:
    """The codec named by `edgecut_codec` in a parameter map, None when absent."""
    if CODEC_PARAMETER not in parameters:
        return None
    value = parameter_value(parameters[CODEC_PARAMETER])
    if not isinstance(value, str) or value not in CODECS:
        raise ProtocolError(
            f"{where}: parameter {CODEC_PARAMETER!r} must be one of {', '.join(CODECS)}, "
            f"got {value!r}"
        )
    return value


def _where(model: LoadedModel) -> str:
    return f"model {model.name!r} version {model.version}: "
