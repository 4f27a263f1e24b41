"""Open Inference Protocol datatypes and their numpy dtypes.

The protocol names a tensor's element type with a string (`"FP32"`); numpy with a dtype.
Every tensor that crosses the channel is row-major and little-endian with no padding
(grpc_service.proto, `raw_input_contents`), so every dtype here is pinned little-endian:
a big-endian array must be converted before it is sent, never reinterpreted.

    >>> dtype_of("FP32")
    dtype('float32')
    >>> datatype_of(np.dtype("int64"))
    'INT64'
    >>> expected_nbytes("FP16", (2, 3))
    12
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgecut.errors import BadInputError, ProtocolError

__all__ = [
    "MAX_TENSOR_NBYTES",
    "OIP_DATATYPES",
    "datatype_of",
    "dtype_of",
    "expected_nbytes",
]

OIP_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

# Datatypes the protocol defines that edgecut does not carry yet; named so a peer that sends
# one gets "not supported" rather than "unknown".
UNSUPPORTED_DATATYPES: dict[str, str] = {
    "BYTES": "variable-length BYTES tensors are not supported by edgecut yet",
    "BF16": "BF16 tensors are not supported by edgecut yet (numpy has no bfloat16)",
}

# No real tensor comes near this; it only guards the arithmetic against absurd shapes
# (a peer can declare any int64 dims) before anyone compares against a configured limit.
MAX_TENSOR_NBYTES = 1 << 62

_DATATYPE_BY_KIND: dict[tuple[str, int], str] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in OIP_DATATYPES.items()
}


def datatype_of(dtype: np.dtype | type) -> str:
    """The OIP datatype name of a numpy dtype, whatever its byte order.

    >>> datatype_of(np.dtype(">f4"))
    'FP32'

    Raises BadInputError for dtypes the protocol cannot carry (strings, objects, complex).
    """
    dt = np.dtype(dtype)
    name = _DATATYPE_BY_KIND.get((dt.kind, dt.itemsize))
    if name is None or dt.fields is not None or dt.subdtype is not None:
        raise BadInputError(
            f"numpy dtype {dt} cannot be sent over the Open Inference Protocol; expected one "
            f"of bool, uint8-64, int8-64, float16/32/64 (convert the array first)"
        )
    return name


def dtype_of(datatype: str) -> np.dtype:
    """The little-endian numpy dtype of an OIP datatype name.

    >>> dtype_of("UINT16")
    dtype('uint16')

    Raises ProtocolError for names edgecut does not know or does not support.
    """
    dtype = OIP_DATATYPES.get(datatype)
    if dtype is not None:
        return dtype
    if datatype in UNSUPPORTED_DATATYPES:
        raise ProtocolError(f"datatype {datatype!r}: {UNSUPPORTED_DATATYPES[datatype]}")
    raise ProtocolError(
        f"unknown tensor datatype {datatype!r}; expected one of {', '.join(OIP_DATATYPES)}"
    )


def expected_nbytes(datatype: str, shape: Sequence[int]) -> int:
    """The size in bytes of a dense tensor of this datatype and shape.

    >>> expected_nbytes("FP32", ())
    4
    >>> expected_nbytes("INT8", (0, 7))
    0

    Raises ProtocolError for unknown datatypes, negative (dynamic) dims, or a size so large
    that it cannot be a real tensor (it would overflow the 64-bit sizes numpy and gRPC use).
    """
    itemsize = dtype_of(datatype).itemsize
    dims = list(shape)
    bad = [d for d in dims if not isinstance(d, (int, np.integer)) or isinstance(d, bool)]
    if bad:
        raise ProtocolError(f"tensor shape {dims} has non-integer dims {bad}; expected ints")
    negative = [int(d) for d in dims if d < 0]
    if negative:
        raise ProtocolError(
            f"tensor shape {dims} has negative dims {negative}; a tensor on the wire must "
            f"have a concrete shape (-1 is only allowed in model metadata)"
        )
    count = math.prod(int(d) for d in dims)
    nbytes = count * itemsize
    if nbytes > MAX_TENSOR_NBYTES:
        raise ProtocolError(
            f"tensor shape {dims} of {datatype} would take {nbytes} bytes, over the "
            f"{MAX_TENSOR_NBYTES}-byte ceiling; expected a shape of a real tensor"
        )
    return nbytes
