"""The HTTP/REST bodies of the Open Inference Protocol, converted to and from the ModelInfer
messages the endpoint serves: a pure core, no sockets (the server is cloud/http_frontend.py).

An HTTP inference request is a JSON header, optionally followed by the tensors' bytes (Triton's
binary tensor extension; the `Inference-Header-Content-Length` header says where the JSON
ends). It becomes the ModelInferRequest that the gRPC handlers take (infer_request_view: as
the servicer reads one, the tensors' bytes left where they arrived; infer_request_message:
serialized), with every input in `raw_input_contents`, so both bindings run the same checks
and limits:

    >>> body = b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}]}'
    >>> message, choice = infer_request_message(body, None, model_name="m", model_version="")
    >>> request = pb.ModelInferRequest.FromString(message)
    >>> request.model_name, request.inputs[0].shape, request.raw_input_contents[0]
    ('m', [2], b'\\x01\\x00\\x00\\x00\\x02\\x00\\x00\\x00')

The response goes the other way (infer_response_body): outputs as JSON `data`, or as bytes
after the JSON where the request asked for `binary_data` (per output) or `binary_data_output`
(all outputs). Outputs that carry an edgecut codec, or have no JSON form, always go binary.

    >>> choice.binary_for("y")
    False

Everything a peer sent wrong is a ProtocolError (or BadInputError) naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from edgecut.errors import ProtocolError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import CODEC_PARAMETER, parameter_value, set_parameter
from edgecut.protocol.rawfields import (
    RAW_OUTPUT_FIELD,
    InferRequestView,
    request_with_raw_inputs,
    split_repeated_bytes,
)
from edgecut.protocol.tensors import dtype_of

__all__ = [
    "HEADER_LENGTH",
    "OutputChoice",
    "infer_request_message",
    "infer_request_view",
    "infer_response_body",
    "message_json",
    "parse_json_object",
    "repository_parameters",
    "request_bytes",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
# Parameters of the HTTP binding only: they say how tensors travel, not what the model does.
BINARY_DATA = "binary_data"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA_OUTPUT = "binary_data_output"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputChoice:
    """Which outputs the response carries as bytes after the JSON rather than as `data`."""

    default_binary: bool = False
    binary: Mapping[str, bool] = field(default_factory=dict)

    def binary_for(self, name: str) -> bool:
        return self.binary.get(name, self.default_binary)


def _loads(data: bytes) -> Any:
    """JSON through orjson (10x the standard library's speed on tensors of numbers); what
    orjson refuses but the standard library reads (NaN and Infinity literals) goes to the
    standard library, whose message a body that is no JSON gets."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def parse_json_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    """`data` as a JSON object; ProtocolError naming `what` when it is none."""
    try:
        value = _loads(bytes(data)) if len(data) else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def infer_request_message(body: bytes | memoryview, header_length: int | None, *,
                          model_name: str, model_version: str) -> tuple[bytes, OutputChoice]:
    """(a serialized ModelInferRequest, the outputs' binary choice) from an HTTP body: the
    bytes of infer_request_view's request."""
    request, choice = infer_request_view(body, header_length, model_name=model_name,
                                         model_version=model_version)
    return request_bytes(request), choice


def request_bytes(request: InferRequestView) -> bytes:
    """The serialized ModelInferRequest an InferRequestView stands for: the tensors are
    copied once, into the message, and read in place from it (rawfields)."""
    return request_with_raw_inputs(request.message.SerializeToString(),
                                   request.raw_input_contents)


def infer_request_view(body: bytes | memoryview, header_length: int | None, *,
                       model_name: str, model_version: str
                       ) -> tuple[InferRequestView, OutputChoice]:
    """(the ModelInferRequest as the servicer reads it, the outputs' binary choice) from an
    HTTP body; the tensors sent as bytes stay views over `body`.

    `header_length` is the Inference-Header-Content-Length header's value (None: the whole
    body is JSON). Inputs with `parameters.binary_data_size` take that many bytes, in input
    order, from what follows the JSON; the others give their values in `data` (a flat or
    nested list, row-major).
    """
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    elif not 0 <= header_length <= len(view):
        raise ProtocolError(f"{HEADER_LENGTH} is {header_length} but the body holds "
                            f"{len(view)} bytes; it must count the JSON header's bytes")
    header = parse_json_object(view[:header_length], "the inference request's JSON header")
    binary = view[header_length:]
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise ProtocolError(f"request 'id' must be a string, got {request_id!r}")
    request.id = request_id
    parameters = _object(header.get("parameters", {}), "request 'parameters'")
    default_binary = _flag(parameters.pop(BINARY_DATA_OUTPUT, False), BINARY_DATA_OUTPUT)
    _store_parameters(request.parameters, parameters, "request")
    contents: list[memoryview | bytes] = []
    offset = 0
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs 'inputs': a list of {name, shape, datatype, "
                            "data or parameters.binary_data_size}")
    for i, tensor in enumerate(inputs):
        data, offset = _input(request, tensor, i, binary, offset)
        contents.append(data)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes follow the JSON header that no "
                            f"input's binary_data_size accounts for; the sizes add up to "
                            f"{offset} of {len(binary)}")
    binary_outputs: dict[str, bool] = {}
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise ProtocolError(f"request 'outputs' must be a list, got {type(outputs).__name__}")
    for tensor in outputs:
        tensor = _object(tensor, "each of 'outputs'")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"each of 'outputs' needs a string 'name', got {name!r}")
        where = f"output {name!r}"
        output_parameters = _object(tensor.get("parameters", {}), f"{where} 'parameters'")
        if BINARY_DATA in output_parameters:
            binary_outputs[name] = _flag(output_parameters.pop(BINARY_DATA), BINARY_DATA)
        requested = request.outputs.add(name=name)
        _store_parameters(requested.parameters, output_parameters, where)
    return (InferRequestView(request, contents),
            OutputChoice(default_binary=default_binary, binary=binary_outputs))


def _input(request: pb.ModelInferRequest, tensor: Any, index: int, binary: memoryview,
           offset: int) -> tuple[memoryview | bytes, int]:
    tensor = _object(tensor, f"input {index}")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"input {index} needs a string 'name', got {name!r}")
    where = f"input {name!r}"
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise ProtocolError(f"{where} needs a string 'datatype' (FP32, INT64, ...), got "
                            f"{datatype!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolError(f"{where} needs 'shape': a list of whole numbers >= 0, got {shape!r}")
    parameters = _object(tensor.get("parameters", {}), f"{where} 'parameters'")
    size = parameters.pop(BINARY_DATA_SIZE, None)
    added = request.inputs.add(name=name, datatype=datatype, shape=shape)
    _store_parameters(added.parameters, parameters, where)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"{where}: {BINARY_DATA_SIZE} must be a whole number >= 0, "
                                f"got {size!r}")
        if "data" in tensor:
            raise ProtocolError(f"{where} has both 'data' and {BINARY_DATA_SIZE}; send its "
                                f"values one way")
        if offset + size > len(binary):
            raise ProtocolError(f"{where}: {BINARY_DATA_SIZE} {size} runs past the end of the "
                                f"body ({len(binary) - offset} bytes left after the inputs "
                                f"before it)")
        return binary[offset:offset + size], offset + size
    if "data" not in tensor:
        raise ProtocolError(f"{where} has no values: give 'data' (a list) or "
                            f"parameters.{BINARY_DATA_SIZE} with the bytes after the JSON")
    return _json_values(tensor["data"], datatype, tuple(shape), where), offset


def _json_values(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> bytes:
    """The little-endian bytes of a tensor given as JSON numbers (or booleans)."""
    try:
        dtype = dtype_of(datatype)
    except ProtocolError as exc:
        raise ProtocolError(f"{where}: {exc}") from exc
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: 'data' must be a list of values, got "
                            f"{type(data).__name__}")
    try:
        values = np.array(data)
    except ValueError as exc:  # ragged nesting
        raise ProtocolError(f"{where}: 'data' is not a regular nested list ({exc})") from exc
    count = math.prod(shape)
    if values.size != count:
        raise ProtocolError(f"{where}: 'data' holds {values.size} values but shape "
                            f"{list(shape)} needs {count}")
    if values.size:
        allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dtype.kind]
        if values.dtype.kind not in allowed:
            kinds = {"b": "true/false", "i": "whole numbers", "u": "whole numbers",
                     "f": "numbers"}
            raise ProtocolError(f"{where}: {datatype} 'data' must hold {kinds[dtype.kind]}, "
                                f"got {values.dtype.kind!r} values such as {values.flat[0]!r}")
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if int(values.min()) < info.min or int(values.max()) > info.max:
                raise ProtocolError(f"{where}: 'data' holds values outside {datatype}'s range "
                                    f"[{info.min}, {info.max}]")
    return values.astype(dtype).tobytes()


def infer_response_body(message: bytes | memoryview, choice: OutputChoice
                        ) -> tuple[list[bytes | memoryview], int | None]:
    """The HTTP body of a serialized ModelInferResponse: (its parts, the JSON header's length
    when bytes follow it, else None)."""
    rest, raw = split_repeated_bytes(message, RAW_OUTPUT_FIELD)
    response = pb.ModelInferResponse.FromString(rest)
    if len(raw) != len(response.outputs):
        raise ProtocolError(f"the response has {len(response.outputs)} outputs but {len(raw)} "
                            f"raw_output_contents; expected one each")
    outputs: list[dict[str, Any]] = []
    tail: list[bytes | memoryview] = []
    numbers = False  # whether any output's values go in the JSON
    for tensor, data in zip(response.outputs, raw, strict=True):
        parameters = _parameters_json(tensor.parameters)
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                               "shape": list(tensor.shape)}
        if choice.binary_for(tensor.name) or not _has_json_form(tensor):
            parameters[BINARY_DATA_SIZE] = len(data)
            tail.append(data)
        else:
            out["data"] = np.frombuffer(data, dtype_of(tensor.datatype)).tolist()
            numbers = True
        if parameters:
            out["parameters"] = parameters
        outputs.append(out)
    header: dict[str, Any] = {"model_name": response.model_name,
                              "model_version": response.model_version}
    if response.id:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = _parameters_json(response.parameters)
    header["outputs"] = outputs
    # orjson writes NaN and Infinity as null: values go through the standard library, which
    # writes the literals that the parsers of the protocol's clients read back.
    head = (json.dumps(header, separators=(",", ":")).encode() if numbers
            else orjson.dumps(header))
    return [head, *tail], (len(head) if tail else None)


def _has_json_form(tensor: pb.ModelInferResponse.InferOutputTensor) -> bool:
    """Plain numbers only: encoded (edgecut codec) and unknown types travel as bytes."""
    if CODEC_PARAMETER in tensor.parameters:
        return False
    try:
        dtype_of(tensor.datatype)
    except ProtocolError:
        return False
    return True


def repository_parameters(target: Any, parameters: Mapping[str, Any], where: str) -> None:
    """Fill a map<string, ModelRepositoryParameter> from JSON (load and unload requests):
    booleans, whole numbers and strings; `file:` contents come base64-encoded, as Triton's
    HTTP load takes them."""
    import base64
    import binascii

    for key, value in parameters.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, str) and key.startswith("file:"):
            try:
                param.bytes_param = base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise ProtocolError(f"{where} parameter {key!r} must be base64, as Triton's "
                                    f"load takes files ({exc})") from exc
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise ProtocolError(f"{where} parameter {key!r} must be a boolean, whole number or "
                                f"string, got {value!r}")


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's HTTP endpoint writes it: field names as in the .proto,
    every scalar and list present (zeros too), 64-bit integers as numbers (protobuf's own
    JSON mapping makes them strings), enums by name, unset sub-messages left out."""
    out: dict[str, Any] = {}
    for descriptor in message.DESCRIPTOR.fields:
        value = getattr(message, descriptor.name)
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            value_field = descriptor.message_type.fields_by_name["value"]
            out[descriptor.name] = {key: _field_json(value_field, item)
                                    for key, item in value.items()}
        elif _is_repeated(descriptor):
            out[descriptor.name] = [_field_json(descriptor, item) for item in value]
        elif descriptor.containing_oneof is not None or (
                descriptor.type == FieldDescriptor.TYPE_MESSAGE):
            if message.HasField(descriptor.name):
                out[descriptor.name] = _field_json(descriptor, value)
        else:
            out[descriptor.name] = _field_json(descriptor, value)
    return out


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    # protobuf 6 has is_repeated; older ones only the label.
    repeated = getattr(descriptor, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(descriptor.label == FieldDescriptor.LABEL_REPEATED)


def _field_json(descriptor: FieldDescriptor, value: Any) -> Any:
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value)
    if descriptor.type == FieldDescriptor.TYPE_ENUM:
        enum = descriptor.enum_type.values_by_number.get(value)
        return enum.name if enum is not None else value
    if descriptor.type == FieldDescriptor.TYPE_BYTES:
        import base64

        return base64.b64encode(value).decode()
    return value


def _parameters_json(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def _store_parameters(target: Any, parameters: Mapping[str, Any], where: str) -> None:
    for key, value in parameters.items():
        if not isinstance(value, (bool, int, float, str)):
            raise ProtocolError(f"{where} parameter {key!r} must be a boolean, number or "
                                f"string, got {value!r}")
        set_parameter(target[key], value)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {value!r}")
    return dict(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {name!r} must be true or false, got {value!r}")
    return value


def sequence_json(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """message_json of each (the repository index is a JSON list)."""
    return [message_json(m) for m in messages]
