"""Per-tensor wire encodings carried as Open Inference Protocol tensor parameters.

A tensor on the wire keeps its logical OIP datatype and shape; the string parameter
`edgecut_codec` on the tensor says how its raw bytes were encoded (absent means raw), so a
stock OIP client that knows nothing of codecs still talks to an edgecut endpoint. The
endpoint lists the codecs it decodes in ServerMetadata.extensions (SERVER_EXTENSIONS); a
client sends a codec only to a server that announced it.

    raw           row-major little-endian bytes, as the protocol defines them
    zstd          those bytes as one zstd frame that declares its content size
    shuffle_zstd  the bytes grouped by position within the element (all first bytes, then all
                  second bytes ...), then zstd: exponents and high mantissa bytes of floats
                  compress far better side by side
    fp16          FP32 tensors only, sent as IEEE half floats; lossy, decode restores FP32
    int8          FP32 tensors only, as 8-bit integers with a scale and zero point per channel
                  (tensor parameters, edgecut.protocol.int8), then zstd; lossy, decode
                  restores FP32; chosen only within a plan's accuracy budget

    >>> enc = encode_tensor(np.zeros((2, 3), np.float32), "shuffle_zstd")
    >>> enc.datatype, enc.shape, enc.parameters
    ('FP32', (2, 3), {'edgecut_codec': 'shuffle_zstd'})
    >>> decode_tensor(enc.data, datatype=enc.datatype, shape=enc.shape,
    ...               parameters=enc.parameters, max_nbytes=1 << 20).shape
    (2, 3)

Decoding trusts nothing a peer sent: the declared size is checked against `max_nbytes` before
any allocation, and a zstd frame must declare a content size equal to the declared shape's,
so a decompression bomb is refused before it expands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import zstandard

from edgecut.errors import BadInputError, PayloadTooLargeError, ProtocolError

from . import int8 as _int8
from .grpc_service_pb2 import InferParameter
from .tensors import datatype_of, dtype_of, expected_nbytes

__all__ = [
    "CODECS",
    "CODEC_PARAMETER",
    "LOSSY_CODECS",
    "SERVER_EXTENSIONS",
    "EncodedTensor",
    "choose_codec",
    "decode_tensor",
    "encode_tensor",
    "parameter_value",
    "set_parameter",
]

CODECS: tuple[str, ...] = ("raw", "zstd", "shuffle_zstd", "fp16", "int8")
LOSSY_CODECS: tuple[str, ...] = ("fp16", "int8")
CODEC_PARAMETER = "edgecut_codec"
SERVER_EXTENSIONS: tuple[str, ...] = tuple(f"edgecut_codec_{c}" for c in CODECS if c != "raw")

ParameterValue = str | int | bool | float

# Below this size a tensor goes raw: a zstd frame header and a compressor context cost more
# than the few bytes compression could save, and the call's fixed ~0.5 ms dominates anyway.
_MIN_COMPRESS_NBYTES = 4096
# At or above this uplink bandwidth compressing loses (see choose_codec).
_RAW_ABOVE_MBPS = 500.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedTensor:
    """One tensor ready for the wire: its bytes and what goes into its InferInputTensor.

    `raw_nbytes` is the size of the decoded tensor, so `raw_nbytes / len(data)` is the
    compression ratio the metrics report.
    """

    data: bytes
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    raw_nbytes: int

    @property
    def codec(self) -> str:
        value = self.parameters.get(CODEC_PARAMETER, "raw")
        return value if isinstance(value, str) else "raw"


def encode_tensor(array: np.ndarray, codec: str = "raw", *, level: int = 1) -> EncodedTensor:
    """Encode `array` for the wire with `codec` (zstd `level` for the zstd codecs).

    >>> encode_tensor(np.arange(3, dtype=np.int32)).data
    b'\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x02\\x00\\x00\\x00'

    Any layout and byte order is accepted; the wire is always C order, little-endian.
    Raises BadInputError for an unknown codec, a dtype the protocol cannot carry, or fp16
    or int8 on anything but float32 (or float32 values beyond float16's +-65504, or NaN and
    inf for int8).
    """
    array = np.asarray(array)
    if codec not in CODECS:
        raise BadInputError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    datatype = datatype_of(array.dtype)
    wire_dtype = dtype_of(datatype)
    shape = tuple(int(d) for d in array.shape)
    raw_nbytes = array.size * wire_dtype.itemsize
    parameters: dict[str, ParameterValue] = {} if codec == "raw" else {CODEC_PARAMETER: codec}

    if codec == "fp16":
        if datatype != "FP32":
            raise BadInputError(
                f"codec 'fp16' only applies to FP32 tensors, got {datatype}; "
                f"use 'zstd' or 'shuffle_zstd' for other dtypes"
            )
        try:
            # errstate turns numpy's overflow warning into an error we can name.
            with np.errstate(over="raise"):
                half = array.astype("<f2", order="C")
        except FloatingPointError as exc:
            raise BadInputError(
                "codec 'fp16' cannot carry this tensor: it holds values beyond float16's "
                "range (+-65504), which would arrive as inf; use 'shuffle_zstd' instead"
            ) from exc
        return EncodedTensor(data=half.tobytes(), datatype=datatype, shape=shape,
                             parameters=parameters, raw_nbytes=raw_nbytes)

    if codec == "int8":
        if datatype != "FP32":
            raise BadInputError(
                f"codec 'int8' only applies to FP32 tensors, got {datatype}; "
                f"use 'zstd' or 'shuffle_zstd' for other dtypes"
            )
        values, int8_parameters = _int8.quantize(array)
        parameters.update(int8_parameters)
        return EncodedTensor(data=_compress(values.reshape(-1).view(np.uint8), level),
                             datatype=datatype, shape=shape, parameters=parameters,
                             raw_nbytes=raw_nbytes)

    if array.dtype != wire_dtype:
        # Big-endian (or native-but-differently-spelled) input: one converting copy.
        array = array.astype(wire_dtype, order="C")
    if codec == "raw":
        # tobytes copies exactly once, whatever the strides.
        return EncodedTensor(data=array.tobytes(), datatype=datatype, shape=shape,
                             parameters=parameters, raw_nbytes=raw_nbytes)

    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    if codec == "shuffle_zstd" and wire_dtype.itemsize > 1:
        flat = np.ascontiguousarray(flat.reshape(-1, wire_dtype.itemsize).T)
    return EncodedTensor(data=_compress(flat, level), datatype=datatype, shape=shape,
                         parameters=parameters, raw_nbytes=raw_nbytes)


def _compress(flat: np.ndarray, level: int) -> bytes:
    # The decoder refuses frames without a content size (bomb guard), so never rely on the
    # default; the 4-byte checksum (xxhash, far faster than zstd-1) turns a corrupted frame
    # into an error instead of a silently wrong tensor.
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                          write_checksum=True)
    return compressor.compress(memoryview(np.ascontiguousarray(flat)))


def decode_tensor(
    data: bytes | memoryview,
    *,
    datatype: str,
    shape: Sequence[int],
    parameters: Mapping[str, object],
    max_nbytes: int,
) -> np.ndarray:
    """Decode one tensor received from a peer into an array of `datatype` and `shape`.

    `parameters` is the tensor's parameter map, either plain values or InferParameter
    messages (a request's `parameters` field can be passed as is). Raw tensors come back as
    read-only views over `data`; the others as fresh arrays.

    Raises PayloadTooLargeError when the declared tensor exceeds `max_nbytes` (checked before
    anything is allocated) and ProtocolError for an unknown codec or datatype, a size that
    does not match the shape, or a corrupted zstd frame.
    """
    codec = _codec_of(parameters)
    dtype = dtype_of(datatype)
    dims = [int(d) for d in shape]
    nbytes = expected_nbytes(datatype, dims)
    if nbytes > max_nbytes:
        raise PayloadTooLargeError(
            f"tensor of shape {dims} {datatype} would decode to {nbytes} bytes, over the "
            f"limit of {max_nbytes} bytes; send a smaller tensor or raise the limit"
        )
    count = math.prod(dims)

    if codec == "raw":
        _check_size(len(data), nbytes, datatype, dims, "raw")
        array = np.frombuffer(data, dtype=dtype, count=count)
    elif codec == "fp16":
        if datatype != "FP32":
            raise ProtocolError(
                f"codec 'fp16' declared on a {datatype} tensor; it only applies to FP32"
            )
        _check_size(len(data), count * 2, datatype, dims, "fp16")
        array = np.frombuffer(data, dtype="<f2", count=count).astype(dtype)
    elif codec == "int8":
        if datatype != "FP32":
            raise ProtocolError(
                f"codec 'int8' declared on a {datatype} tensor; it only applies to FP32"
            )
        values = np.frombuffer(_decompress(data, count, datatype, dims), dtype=np.int8)
        int8_parameters = {key: parameter_value(v) if isinstance(v, InferParameter) else v
                           for key, v in parameters.items() if key in _int8.PARAMETERS}
        array = _int8.dequantize(values, int8_parameters, tuple(dims))
    else:
        plain = _decompress(data, nbytes, datatype, dims)
        flat = np.frombuffer(plain, dtype=np.uint8)
        if codec == "shuffle_zstd" and dtype.itemsize > 1:
            flat = np.ascontiguousarray(flat.reshape(dtype.itemsize, count).T)
        array = flat.view(dtype)
    if datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise ProtocolError(f"BOOL tensor of shape {dims} holds bytes other than 0 and 1")
    return array.reshape(dims)


def _codec_of(parameters: Mapping[str, object]) -> str:
    value = parameters.get(CODEC_PARAMETER)
    if value is None:
        return "raw"
    if isinstance(value, InferParameter):
        value = parameter_value(value)
    if not isinstance(value, str) or value not in CODECS:
        raise ProtocolError(
            f"unknown tensor codec {value!r} in parameter {CODEC_PARAMETER!r}; "
            f"expected one of {', '.join(CODECS)}"
        )
    return value


def _check_size(got: int, expected: int, datatype: str, dims: list[int], codec: str) -> None:
    if got != expected:
        raise ProtocolError(
            f"{codec} tensor of shape {dims} {datatype} should be {expected} bytes, got {got}"
        )


def _decompress(data: bytes | memoryview, nbytes: int, datatype: str, dims: list[int]) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise ProtocolError(
            f"corrupted zstd frame for tensor of shape {dims} {datatype}: {exc}"
        ) from exc
    if declared < 0:
        raise ProtocolError(
            f"zstd frame for tensor of shape {dims} {datatype} does not declare its content "
            f"size; expected a frame written with the content size ({nbytes} bytes)"
        )
    if declared != nbytes:
        raise ProtocolError(
            f"tensor size mismatch: zstd frame declares {declared} bytes but shape {dims} "
            f"{datatype} needs {nbytes} bytes"
        )
    try:
        # max_output_size bounds the allocation even if the header lies; extra data after
        # the frame is a protocol violation, not something to ignore silently.
        plain = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=nbytes, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise ProtocolError(
            f"corrupted zstd frame for tensor of shape {dims} {datatype}: {exc}"
        ) from exc
    _check_size(len(plain), nbytes, datatype, dims, "decompressed zstd")
    return plain


def parameter_value(p: InferParameter) -> ParameterValue:
    """The Python value held by an InferParameter's oneof.

    >>> parameter_value(InferParameter(string_param="zstd"))
    'zstd'

    Raises ProtocolError when no member of the oneof is set.
    """
    which = p.WhichOneof("parameter_choice")
    if which is None:
        raise ProtocolError("InferParameter has no value set; expected one of its oneof fields")
    value: ParameterValue = getattr(p, which)
    return value


def set_parameter(p: InferParameter, value: ParameterValue) -> None:
    """Store `value` in the InferParameter's oneof member that matches its Python type.

    >>> p = InferParameter(); set_parameter(p, 3); p.WhichOneof("parameter_choice")
    'int64_param'

    Integers beyond int64 (but within uint64) go to uint64_param.
    """
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, (int, np.integer)):
        v = int(value)
        if -(1 << 63) <= v < (1 << 63):
            p.int64_param = v
        elif 0 <= v < (1 << 64):
            p.uint64_param = v
        else:
            raise BadInputError(f"parameter value {v} does not fit in int64 or uint64")
    elif isinstance(value, str):
        p.string_param = value
    elif isinstance(value, (float, np.floating)):
        p.double_param = float(value)
    else:
        raise BadInputError(
            f"parameter value {value!r} of type {type(value).__name__} cannot be sent; "
            f"expected bool, int, str or float"
        )


def choose_codec(array: np.ndarray, *, uplink_mbps: float | None) -> str:
    """The default codec for `array` at the current uplink bandwidth (lossless only).

    >>> choose_codec(np.zeros((64, 64), np.float32), uplink_mbps=50.0)
    'shuffle_zstd'
    >>> choose_codec(np.zeros((64, 64), np.float32), uplink_mbps=None)
    'raw'

    Why these thresholds (DESIGN.md, The channel): zstd level 1 runs at ~700 MB/s and saves
    only 1.08-1.10x on fp32 activations, byte-shuffle first 1.2x, i.e. at best 1/6 of the
    bytes. Compressing pays when the time it takes (S / 700 MB/s) is less than the upload
    time it saves (S / 6 / B), i.e. below B ~ 117 MB/s ~ 930 Mbit/s; with decompression on
    the cloud and a margin for slower devices, raw at 500 Mbit/s and above. Integer and bool
    tensors (masks, ids, images) often compress far better and gain nothing from shuffling a
    one-byte element, so plain zstd. Unknown bandwidth means we cannot tell: raw, the
    encoding every peer understands. Lossy fp16 is never picked here: it needs the plan's
    accuracy budget.
    """
    array = np.asarray(array)
    if uplink_mbps is None or uplink_mbps >= _RAW_ABOVE_MBPS:
        return "raw"
    if array.nbytes < _MIN_COMPRESS_NBYTES:
        return "raw"
    if array.dtype.kind == "f":
        return "shuffle_zstd"
    return "zstd"
