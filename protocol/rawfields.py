"""Read the tensor bytes of a ModelInfer message without copying them.

protobuf's Python parser (upb) copies every `bytes` field twice: once into its arena while
parsing, and once more into a new Python object each time the field is read. For tensors that
is two copies of every input per request (DESIGN.md, The channel: count copies on the hot
path). Here the message is split at its top level instead: the repeated tensor field
(`raw_input_contents`, field 7, of a request; `raw_output_contents`, field 6, of a response)
comes back as memoryviews over the bytes gRPC delivered, and the rest of the message, a few
hundred bytes of names, shapes and parameters, is parsed by protobuf as usual. The views keep
the received bytes alive; arrays made from them are read-only.

    >>> request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"abcd", b"ef"])
    >>> rest, views = split_repeated_bytes(request.SerializeToString(), RAW_INPUT_FIELD)
    >>> pb.ModelInferRequest.FromString(rest).model_name, [bytes(v) for v in views]
    ('m', [b'abcd', b'ef'])

Only the top level is walked (a handful of fields); nested messages are copied whole into the
rest, as protobuf would read them. Malformed input raises ProtocolError saying where it broke.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edgecut.errors import ProtocolError
from edgecut.protocol import grpc_service_pb2 as pb

__all__ = [
    "RAW_INPUT_FIELD",
    "RAW_OUTPUT_FIELD",
    "InferRequestView",
    "parse_infer_request",
    "read_varint",
    "request_with_raw_inputs",
    "split_repeated_bytes",
    "varint_bytes",
]

RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_FIELD = 6  # ModelInferResponse.raw_output_contents

# Below this many bytes the walk costs more than the copies it saves: protobuf parses it all.
ZERO_COPY_MIN_BYTES = 16 * 1024

_VARINT, _FIXED64, _DELIMITED, _FIXED32 = 0, 1, 2, 5


def split_repeated_bytes(data: bytes | memoryview, field_number: int
                         ) -> tuple[bytes, list[memoryview]]:
    """(the message without `field_number`, that field's entries as views over `data`).

    `field_number` must be a repeated length-delimited field of the message's top level.
    """
    view = memoryview(data)
    size = len(view)
    views: list[memoryview] = []
    kept: list[memoryview] = []
    kept_from = 0  # start of the run of other fields not yet kept
    pos = 0
    while pos < size:
        start = pos
        key, pos = read_varint(view, pos, size)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtocolError(f"message is malformed: field number 0 at byte {start}")
        if wire_type == _VARINT:
            _, pos = read_varint(view, pos, size)
        elif wire_type == _DELIMITED:
            length, pos = read_varint(view, pos, size)
            if length > size - pos:
                raise ProtocolError(
                    f"message is malformed: field {number} at byte {start} declares {length} "
                    f"bytes but only {size - pos} follow"
                )
            if number == field_number:
                if kept_from < start:
                    kept.append(view[kept_from:start])
                views.append(view[pos:pos + length])
                kept_from = pos + length
            pos += length
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            raise ProtocolError(
                f"message is malformed: field {number} at byte {start} has wire type "
                f"{wire_type}, which proto3 messages do not use"
            )
        if pos > size:
            raise ProtocolError(f"message is malformed: field {number} at byte {start} is cut off")
    kept.append(view[kept_from:size])
    return b"".join(kept), views


def read_varint(view: memoryview | bytes, pos: int, size: int) -> tuple[int, int]:
    """(the varint at `pos`, the position after it), reading no further than `size`."""
    result = shift = 0
    while pos < size:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise ProtocolError(f"message is malformed: a varint at byte {pos} is cut off or too long")


def varint_bytes(value: int) -> bytes:
    """`value` (>= 0) as a protobuf varint."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]
_RAW_INPUT_TAG = bytes([(RAW_INPUT_FIELD << 3) | _DELIMITED])


def request_with_raw_inputs(header: bytes, chunks: Sequence[memoryview | bytes]) -> bytes:
    """`header` (a serialised ModelInferRequest) with `chunks` as its raw_input_contents,
    each appended as one more field 7 (parsers take a message's fields in any order): the
    join is the one copy of each tensor.

    >>> header = pb.ModelInferRequest(model_name="m").SerializeToString()
    >>> pb.ModelInferRequest.FromString(request_with_raw_inputs(header, [b"ab"])).raw_input_contents
    [b'ab']
    """
    parts: list[memoryview | bytes] = [header]
    for chunk in chunks:
        parts += (_RAW_INPUT_TAG, varint_bytes(len(chunk)), chunk)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class InferRequestView:
    """A ModelInferRequest whose `raw_input_contents` are views over the received bytes.

    It reads like the message for what a handler uses (the fields below); `message` is the
    rest of the request, parsed by protobuf.
    """

    message: pb.ModelInferRequest
    raw_input_contents: Sequence[memoryview | bytes] = field(default=())

    @property
    def model_name(self) -> str:
        return self.message.model_name

    @property
    def model_version(self) -> str:
        return self.message.model_version

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def parameters(self):  # type: ignore[no-untyped-def]  # protobuf's map type
        return self.message.parameters

    @property
    def inputs(self):  # type: ignore[no-untyped-def]
        return self.message.inputs

    @property
    def outputs(self):  # type: ignore[no-untyped-def]
        return self.message.outputs


def parse_infer_request(data: bytes | memoryview) -> InferRequestView:
    """The server's deserializer for ModelInfer: tensors as views, the rest parsed.

    Raises ProtocolError (the caller answers INVALID_ARGUMENT) for bytes that are no
    ModelInferRequest.
    """
    try:
        if len(data) < ZERO_COPY_MIN_BYTES:
            message = pb.ModelInferRequest.FromString(data)
            return InferRequestView(message, message.raw_input_contents)
        rest, views = split_repeated_bytes(data, RAW_INPUT_FIELD)
        return InferRequestView(pb.ModelInferRequest.FromString(rest), views)
    except ProtocolError:
        raise
    except Exception as exc:  # protobuf's DecodeError
        raise ProtocolError(f"the request is no ModelInferRequest: {exc}") from exc
