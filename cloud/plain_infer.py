"""Plain ModelInfer requests read, and their answers written, in Python: what
cloud/native/infer_wire.h does in C++, for the infer lane of the core transport
(cloud/core_frontend.py), which has no C++ of its own.

A plain request has every tensor in raw_input_contents and no parameters anywhere (what
tritonclient and most clients send); `read_plain_infer` returns None for anything else, and
for every message infer_wire.h would not call plain, so that such a call takes the per-call
path and gets its answer or its error there. This module never has to say what is wrong.

    >>> from edgecut.protocol import grpc_service_pb2 as pb
    >>> request = pb.ModelInferRequest(model_name="m", id="7", raw_input_contents=[bytes(8)])
    >>> _ = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    >>> plain = read_plain_infer(request.SerializeToString())
    >>> plain.model_name, plain.inputs, plain.outputs
    (b'm', ((b'x', b'FP32', (1, 2)),), ())

Field numbers are those of protocol/proto/grpc_service.proto.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from edgecut.errors import ProtocolError
from edgecut.protocol.rawfields import read_varint, varint_bytes
from edgecut.protocol.timing import COMPUTE_MS_PARAMETER, QUEUE_MS_PARAMETER

__all__ = ["ELEMENT_BYTES", "MAX_DIM", "PlainInfer", "PlainReader", "ResponseWriter", "read_plain_infer"]

# Bytes per element of the datatypes a plain request may carry (infer_wire::element_size),
# and the largest dimension one may have.
ELEMENT_BYTES = {b"FP32": 4, b"INT32": 4, b"UINT32": 4, b"FP16": 2, b"BF16": 2, b"INT16": 2,
                  b"UINT16": 2, b"FP64": 8, b"INT64": 8, b"UINT64": 8, b"UINT8": 1, b"INT8": 1,
                  b"BOOL": 1}
MAX_DIM = 1 << 40
_DELIMITED, _VARINT, _FIXED64 = 2, 0, 1


class PlainInfer(NamedTuple):
    """A plain request as frontend.cc passes a lane call's fields: names and id as bytes,
    each input as (name, datatype, shape), the outputs asked for by name, and where each
    input's tensor starts in the message."""

    model_name: bytes
    model_version: bytes
    id: bytes
    inputs: tuple[tuple[bytes, bytes, tuple[int, ...]], ...]
    outputs: tuple[bytes, ...]
    offsets: tuple[int, ...]


class _NotPlain(Exception):
    pass


def _delimited(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(start, end) of the delimited value at `pos`."""
    size, pos = read_varint(data, pos, end)
    if size > end - pos:
        raise _NotPlain
    return pos, pos + size


def _input(data: bytes, pos: int, end: int) -> tuple[bytes, bytes, tuple[int, ...]]:
    """InferInputTensor with name, datatype and shape only (packed or not)."""
    name = datatype = b""
    shape: list[int] = []
    while pos < end:
        key, pos = read_varint(data, pos, end)
        field, kind = key >> 3, key & 7
        if field in (1, 2) and kind == _DELIMITED:
            start, pos = _delimited(data, pos, end)
            if field == 1:
                name = data[start:pos]
            else:
                datatype = data[start:pos]
        elif field == 3 and kind == _DELIMITED:
            at, pos = _delimited(data, pos, end)
            while at < pos:
                dim, at = read_varint(data, at, pos)
                shape.append(dim)
        elif field == 3 and kind == _VARINT:
            dim, pos = read_varint(data, pos, end)
            shape.append(dim)
        else:
            raise _NotPlain  # parameters, typed contents or a field the lane does not know
    return name, datatype, tuple(shape)


def _output(data: bytes, pos: int, end: int) -> bytes:
    """InferRequestedOutputTensor: a name and nothing else (or nothing at all)."""
    if pos == end:
        return b""
    key, pos = read_varint(data, pos, end)
    if key != (1 << 3 | _DELIMITED):
        raise _NotPlain
    start, pos = _delimited(data, pos, end)
    if pos != end:
        raise _NotPlain
    return data[start:pos]


def read_plain_infer(message: bytes) -> PlainInfer | None:
    """`message` read as a plain ModelInferRequest (module docstring); None when it is not
    one. Plain also means consistent, as in infer_wire.h: one raw entry per input, of exactly
    the bytes its shape and datatype make, every input with the same first dimension."""
    return _DEFAULT_READER.read(message)


class PlainReader:
    """read_plain_infer with a memory of the tensor layouts it has read.

    The calls of one client mostly repeat their inputs' and outputs' descriptions byte for
    byte (names, datatypes, shapes): those are read once, and later calls only walk the
    message's top level (its few fields) and check their tensors' sizes. Not thread-safe:
    one per thread that reads (the core transport's completion-queue thread).
    """

    # Layouts kept: enough for every client's shapes, bounded against one that sends a new
    # shape each call.
    MAX_LAYOUTS = 256

    def __init__(self) -> None:
        # The bytes of a call's input (5) and output (6) fields, as sent -> what they say:
        # (inputs, outputs, each input's tensor bytes), or None when they are not plain.
        self._layouts: dict[bytes, _Layout | None] = {}

    def read(self, message: bytes) -> PlainInfer | None:
        """As read_plain_infer."""
        try:
            return self._read(message)
        except (_NotPlain, ProtocolError):  # ProtocolError: a varint cut off or too long
            return None

    def _read(self, data: bytes) -> PlainInfer | None:
        end = len(data)
        pos = 0
        name = version = request_id = b""
        described: list[bytes] = []  # the input and output fields, whole
        raw: list[int] = []  # where each raw entry starts, and its bytes, in turn
        while pos < end:
            at = pos
            key, pos = read_varint(data, pos, end)
            if key & 7 != _DELIMITED:
                return None
            start, pos = _delimited(data, pos, end)
            field = key >> 3
            if field == 7:
                raw += (start, pos - start)
            elif field == 5 or field == 6:
                described.append(data[at:pos])
            elif field == 1:
                name = data[start:pos]
            elif field == 2:
                version = data[start:pos]
            elif field == 3:
                request_id = data[start:pos]
            else:
                return None  # parameters (4) or an unknown field
        key = b"".join(described)
        layout = self._layouts.get(key, _UNREAD)
        if layout is _UNREAD:
            layout = _layout(described)
            if len(self._layouts) >= self.MAX_LAYOUTS:
                self._layouts.clear()
            self._layouts[key] = layout
        if layout is None:
            return None
        inputs, outputs, sizes = layout
        if raw[1::2] != sizes:
            return None
        return PlainInfer(name, version, request_id, inputs, outputs, tuple(raw[0::2]))


_Layout = tuple[tuple[tuple[bytes, bytes, tuple[int, ...]], ...], tuple[bytes, ...], list[int]]
_UNREAD: Any = object()


def _layout(described: Sequence[bytes]) -> _Layout | None:
    """What a call's input and output fields (each whole, key and length included) say, or
    None when they are not those of a plain call."""
    inputs = []
    outputs = []
    for entry in described:
        key, pos = read_varint(entry, 0, len(entry))
        start, stop = _delimited(entry, pos, len(entry))
        if key >> 3 == 5:
            inputs.append(_input(entry, start, stop))
        else:
            outputs.append(_output(entry, start, stop))
    if not inputs:
        return None
    rows = inputs[0][2][0] if inputs[0][2] else None
    sizes = []
    for input_name, datatype, shape in inputs:
        size = ELEMENT_BYTES.get(datatype, 0)
        if not size or not shape or not input_name or shape[0] != rows:
            return None
        if any(d >= MAX_DIM for d in shape):
            return None
        sizes.append(size * math.prod(shape))
    return tuple(inputs), tuple(outputs), sizes


_DEFAULT_READER = PlainReader()


def _key(field: int, kind: int) -> bytes:
    return varint_bytes(field << 3 | kind)


def _field(field: int, value: bytes) -> bytes:
    return _key(field, _DELIMITED) + varint_bytes(len(value)) + value


def _double_parameter_head(name: str) -> bytes:
    """One entry of ModelInferResponse.parameters, `name` -> InferParameter.double_param,
    less the double's 8 bytes, which end it."""
    value_head = _key(2, _DELIMITED) + varint_bytes(9) + _key(4, _FIXED64)
    entry = _field(1, name.encode()) + value_head
    return _key(4, _DELIMITED) + varint_bytes(len(entry) + 8) + entry


_QUEUE_MS_HEAD = _double_parameter_head(QUEUE_MS_PARAMETER)
_COMPUTE_MS_HEAD = _double_parameter_head(COMPUTE_MS_PARAMETER)
_DOUBLE = struct.Struct("<d").pack
_ID_KEY = _key(3, _DELIMITED)
_RAW_KEY = _key(6, _DELIMITED)


class ResponseWriter:
    """The ModelInferResponses of the calls one run answered, as infer_wire::Response writes
    them: `outputs` holds (name, datatype, inner shape, buffer) per output, each buffer
    C-contiguous with the rows of every call in turn, and each `response` takes the next
    `rows` of them. The tensors' bytes are copied once, into the response.

        >>> import numpy as np
        >>> from edgecut.protocol import grpc_service_pb2 as pb
        >>> writer = ResponseWriter("m", "1", [("y", "FP32", (2,), np.ones((3, 2), "f4"))])
        >>> first, second = writer.response(b"a", 1), writer.response(b"b", 2)
        >>> pb.ModelInferResponse.FromString(second).outputs[0].shape
        [2, 2]
    """

    def __init__(self, model_name: str, model_version: str,
                 outputs: Sequence[tuple[str, str, Sequence[int], Any]]) -> None:
        self._head = ((_field(1, model_name.encode()) if model_name else b"")
                      + (_field(2, model_version.encode()) if model_version else b""))
        self._columns = []
        for name, datatype, inner, buffer in outputs:
            view = memoryview(buffer)
            row_bytes = view.itemsize * math.prod(inner)
            view = view.cast("B")  # C-contiguous: its rows in turn, as bytes
            self._columns.append((_field(1, name.encode()) + _field(2, datatype.encode()),
                                  tuple(int(d) for d in inner), view, row_bytes))
        self._offset = 0
        # rows -> what responses of that many rows share (_layout)
        self._layouts: dict[int, tuple[bytes, tuple[bytes, ...]]] = {}

    def rows_held(self) -> int | None:
        """How many rows every buffer holds (None when they disagree or cannot be rows)."""
        held = {len(view) // row_bytes if row_bytes and len(view) % row_bytes == 0 else -1
                for _, _, view, row_bytes in self._columns}
        return held.pop() if len(held) == 1 and -1 not in held else None

    def response(self, request_id: bytes, rows: int, *, queue_ms: float | None = None,
                 compute_ms: float | None = None) -> bytes:
        """The next call's response: `rows` rows of every output, with its timing where
        given (edgecut.protocol.timing)."""
        layout = self._layouts.get(rows)
        if layout is None:
            layout = self._layouts[rows] = self._layout(rows)
        tensors, raw_heads = layout
        parts: list[Any] = [self._head]
        if request_id:
            parts += (_ID_KEY, varint_bytes(len(request_id)), request_id)
        if queue_ms is not None and compute_ms is not None:
            parts += (_QUEUE_MS_HEAD, _DOUBLE(queue_ms), _COMPUTE_MS_HEAD, _DOUBLE(compute_ms))
        parts.append(tensors)
        first = self._offset
        for (_, _, view, row_bytes), raw_head in zip(self._columns, raw_heads, strict=True):
            at = first * row_bytes
            parts += (raw_head, view[at:at + rows * row_bytes])
        self._offset = first + rows
        return b"".join(parts)

    def _layout(self, rows: int) -> tuple[bytes, tuple[bytes, ...]]:
        """What the responses of `rows` rows share: the outputs' metadata (field 5), and the
        head of each output's raw entry (field 6)."""
        tensors = b"".join(
            _field(5, head + _field(3, b"".join(varint_bytes(d) for d in (rows, *inner))))
            for head, inner, _, _ in self._columns)
        raw_heads = tuple(_RAW_KEY + varint_bytes(rows * row_bytes)
                          for _, _, _, row_bytes in self._columns)
        return tensors, raw_heads
