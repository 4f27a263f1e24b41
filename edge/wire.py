"""The bytes of a ModelInfer request, built with one copy of each tensor.

A raw tensor is not turned into bytes, copied again into a protobuf message and once more
when that message is serialised (DESIGN.md, The channel: count copies on the hot path). The
request is serialised without its tensor bytes, and each tensor is appended as one more
length-delimited field 7 (`raw_input_contents`) straight from the array's memory: protobuf
parsers accept the fields of a message in any order and concatenate repeated ones. The join
that builds the message is the one copy; gRPC sends the result as is.

    >>> header = pb.ModelInferRequest(model_name="m").SerializeToString()
    >>> payload = request_with_raw_inputs(header, [b"abcd"])
    >>> pb.ModelInferRequest.FromString(payload).raw_input_contents[0]
    b'abcd'
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgecut.errors import ProtocolError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.codecs import encode_tensor
from edgecut.protocol.rawfields import request_with_raw_inputs, varint_bytes
from edgecut.protocol.tensors import datatype_of, dtype_of

__all__ = ["array_from_contents", "encode_input", "padded_message", "request_with_raw_inputs"]

# A field number no message of the protocol uses, length-delimited: parsers skip it.
_PADDING_TAG = bytes([0xFA, 0x3F])  # field 1023, wire type 2, as a varint
# Where a stock server puts a tensor it did not send in raw_output_contents.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def encode_input(array: np.ndarray, codec: str
                 ) -> tuple[memoryview | bytes, str, tuple[int, ...], Mapping[str, object], int]:
    """(wire bytes, datatype, shape, tensor parameters, raw size) of one input tensor.

    A raw tensor that is already C-ordered little-endian comes back as a view over its
    memory, with no copy; the codecs produce new bytes.
    """
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if codec != "raw":
        enc = encode_tensor(array, codec)
        return enc.data, enc.datatype, enc.shape, enc.parameters, enc.raw_nbytes
    datatype = datatype_of(array.dtype)
    flat = np.ascontiguousarray(array, dtype=dtype_of(datatype)).reshape(-1).view(np.uint8)
    return memoryview(flat), datatype, tuple(int(d) for d in array.shape), {}, flat.nbytes


def padded_message(message: bytes, padding_bytes: int) -> bytes:
    """`message` (serialised) with `padding_bytes` of zeros in an unknown field.

    >>> request = pb.ServerLiveRequest.FromString(padded_message(b"", 1000))
    >>> request.DiscardUnknownFields(); request == pb.ServerLiveRequest()
    True
    """
    if padding_bytes <= 0:
        return message
    return b"".join((message, _PADDING_TAG, varint_bytes(padding_bytes), bytes(padding_bytes)))


def array_from_contents(tensor: pb.ModelInferResponse.InferOutputTensor) -> np.ndarray:
    """An output a stock server sent in typed `contents` instead of raw bytes."""
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise ProtocolError(f"output {tensor.name!r} of datatype {tensor.datatype} came without "
                            f"raw_output_contents; expected raw bytes for that datatype")
    values = getattr(tensor.contents, field)
    array = np.asarray(values, dtype=dtype_of(tensor.datatype))
    dims = [int(d) for d in tensor.shape]
    if array.size != int(np.prod(dims)):
        raise ProtocolError(f"output {tensor.name!r}: {array.size} values do not fill shape "
                            f"{dims}")
    return array.reshape(dims)
