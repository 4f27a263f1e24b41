"""Per-tensor codecs: round trips, and one test per way a peer can send something wrong."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from edgecut.errors import BadInputError, PayloadTooLargeError, ProtocolError
from edgecut.protocol.codecs import (
    CODEC_PARAMETER,
    CODECS,
    SERVER_EXTENSIONS,
    EncodedTensor,
    choose_codec,
    decode_tensor,
    encode_tensor,
    parameter_value,
    set_parameter,
)
from edgecut.protocol.grpc_service_pb2 import InferParameter, ModelInferRequest

LIMIT = 1 << 24
LOSSLESS = ("raw", "zstd", "shuffle_zstd")
# int8's round trips, within its own tolerance, are in test_int8_codec.py.
NOT_INT8 = tuple(c for c in CODECS if c != "int8")


def decode(enc: EncodedTensor, *, max_nbytes: int = LIMIT) -> np.ndarray:
    return decode_tensor(enc.data, datatype=enc.datatype, shape=enc.shape,
                         parameters=enc.parameters, max_nbytes=max_nbytes)


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return rng.standard_normal(size=shape).astype(dt)


DTYPES = ["bool", "uint8", "int16", "uint32", "int64", "uint64", "float16", "float32",
          "float64"]
SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3, 5)]


@pytest.mark.parametrize("codec", LOSSLESS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lossless_round_trip(codec: str, dtype: str, shape: tuple[int, ...]) -> None:
    array = sample(dtype, shape)
    enc = encode_tensor(array, codec)
    assert enc.shape == shape
    assert enc.raw_nbytes == array.nbytes
    assert enc.codec == codec
    assert (CODEC_PARAMETER in enc.parameters) == (codec != "raw")
    out = decode(enc)
    assert out.dtype == array.dtype
    assert out.shape == shape
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("codec", NOT_INT8)
def test_non_contiguous_input(codec: str) -> None:
    array = np.arange(240, dtype=np.float32).reshape(12, 20)[::2, ::-3].T
    assert not array.flags.c_contiguous
    out = decode(encode_tensor(array, codec))
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("codec", NOT_INT8)
def test_big_endian_input_is_sent_little_endian(codec: str) -> None:
    array = np.linspace(-3, 3, 24, dtype=">f4").reshape(4, 6)
    enc = encode_tensor(array, codec)
    assert enc.datatype == "FP32"
    out = decode(enc)
    assert out.dtype == np.dtype("<f4")
    np.testing.assert_allclose(out, array, rtol=1e-3 if codec == "fp16" else 0)
    if codec == "raw":
        assert enc.data == array.astype("<f4").tobytes()


def test_raw_is_the_protocol_layout() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    enc = encode_tensor(array)
    assert enc.data == array.tobytes() and enc.parameters == {}
    out = decode(enc)
    assert not out.flags.writeable  # a view over the received bytes, not a copy


def test_fp16_stays_fp32_and_within_tolerance() -> None:
    array = sample("float32", (4, 64)) * 100
    enc = encode_tensor(array, "fp16")
    assert enc.datatype == "FP32" and enc.raw_nbytes == array.nbytes
    assert len(enc.data) == array.size * 2
    out = decode(enc)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, array, rtol=1e-3, atol=1e-3)


def test_fp16_on_non_fp32_is_bad_input() -> None:
    with pytest.raises(BadInputError, match="only applies to FP32 tensors, got FP64"):
        encode_tensor(np.zeros(3), "fp16")


def test_fp16_refuses_values_out_of_range() -> None:
    with pytest.raises(BadInputError, match="65504"):
        encode_tensor(np.array([1e6], np.float32), "fp16")


def test_fp16_declared_on_non_fp32_is_protocol_error() -> None:
    data = np.zeros(3, np.float16).tobytes()
    with pytest.raises(ProtocolError, match="'fp16' declared on a INT16"):
        decode_tensor(data, datatype="INT16", shape=(3,),
                      parameters={CODEC_PARAMETER: "fp16"}, max_nbytes=LIMIT)


def test_fp16_size_mismatch() -> None:
    with pytest.raises(ProtocolError, match="should be 6 bytes, got 12"):
        decode_tensor(bytes(12), datatype="FP32", shape=(3,),
                      parameters={CODEC_PARAMETER: "fp16"}, max_nbytes=LIMIT)


def test_shuffle_beats_plain_zstd_on_smooth_fp32() -> None:
    array = np.sin(np.linspace(0, 20, 1 << 16, dtype=np.float32)).reshape(64, 1024)
    plain = encode_tensor(array, "zstd")
    shuffled = encode_tensor(array, "shuffle_zstd")
    assert len(shuffled.data) < len(plain.data) < array.nbytes


def test_encode_unknown_codec_is_bad_input() -> None:
    with pytest.raises(BadInputError, match="unknown codec 'lz4'"):
        encode_tensor(np.zeros(2), "lz4")


def test_encode_unsupported_dtype_is_bad_input() -> None:
    with pytest.raises(BadInputError, match="complex"):
        encode_tensor(np.zeros(2, np.complex64))


# -- decoding what a peer sent: every error its own test ------------------------------------


def zstd_tensor(nelem: int = 1000) -> EncodedTensor:
    return encode_tensor(sample("float32", (nelem,)), "zstd")


def test_truncated_frame() -> None:
    enc = zstd_tensor()
    with pytest.raises(ProtocolError, match="corrupted zstd frame"):
        decode_tensor(enc.data[:-9], datatype="FP32", shape=enc.shape,
                      parameters=enc.parameters, max_nbytes=LIMIT)


def test_frame_cut_inside_its_header() -> None:
    enc = zstd_tensor()
    with pytest.raises(ProtocolError, match="corrupted zstd frame"):
        decode_tensor(enc.data[:3], datatype="FP32", shape=enc.shape,
                      parameters=enc.parameters, max_nbytes=LIMIT)


def test_corrupted_frame() -> None:
    enc = zstd_tensor()
    data = bytearray(enc.data)
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0x5A for b in data[middle:middle + 8])
    with pytest.raises(ProtocolError, match="corrupted zstd frame"):
        decode_tensor(bytes(data), datatype="FP32", shape=enc.shape,
                      parameters=enc.parameters, max_nbytes=LIMIT)


def test_not_a_zstd_frame() -> None:
    with pytest.raises(ProtocolError, match="corrupted zstd frame"):
        decode_tensor(b"certainly not zstd", datatype="FP32", shape=(4,),
                      parameters={CODEC_PARAMETER: "zstd"}, max_nbytes=LIMIT)


def test_frame_declaring_more_than_the_shape() -> None:
    enc = zstd_tensor(1000)
    with pytest.raises(ProtocolError, match="tensor size mismatch: zstd frame declares 4000"):
        decode_tensor(enc.data, datatype="FP32", shape=(10,),
                      parameters=enc.parameters, max_nbytes=LIMIT)


def test_frame_declaring_less_than_the_shape() -> None:
    enc = zstd_tensor(10)
    with pytest.raises(ProtocolError, match="tensor size mismatch"):
        decode_tensor(enc.data, datatype="FP32", shape=(1000,),
                      parameters=enc.parameters, max_nbytes=LIMIT)


def test_frame_without_content_size() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(400))
    with pytest.raises(ProtocolError, match="does not declare its content size"):
        decode_tensor(frame, datatype="FP32", shape=(100,),
                      parameters={CODEC_PARAMETER: "zstd"}, max_nbytes=LIMIT)


def test_frame_with_trailing_data() -> None:
    enc = zstd_tensor()
    with pytest.raises(ProtocolError, match="corrupted zstd frame"):
        decode_tensor(enc.data + b"extra", datatype="FP32", shape=enc.shape,
                      parameters=enc.parameters, max_nbytes=LIMIT)


def test_frame_without_checksum_from_another_encoder_is_accepted() -> None:
    array = np.arange(100, dtype=np.int64)
    frame = zstandard.ZstdCompressor(level=3).compress(array.tobytes())
    out = decode_tensor(memoryview(frame), datatype="INT64", shape=(100,),
                        parameters={CODEC_PARAMETER: "zstd"}, max_nbytes=LIMIT)
    np.testing.assert_array_equal(out, array)


def test_raw_size_mismatch() -> None:
    with pytest.raises(ProtocolError, match="should be 24 bytes, got 20"):
        decode_tensor(bytes(20), datatype="FP32", shape=(2, 3), parameters={},
                      max_nbytes=LIMIT)


@pytest.mark.parametrize("codec", CODECS)
def test_over_max_nbytes_before_allocation(codec: str) -> None:
    # 4 TiB declared: were anything allocated first, this would die of MemoryError instead.
    with pytest.raises(PayloadTooLargeError, match="over the limit of 1048576 bytes"):
        decode_tensor(b"", datatype="FP32", shape=(1 << 40,),
                      parameters={CODEC_PARAMETER: codec}, max_nbytes=1 << 20)


def test_at_max_nbytes_is_accepted() -> None:
    enc = encode_tensor(np.zeros(256, np.float32), "zstd")
    assert decode(enc, max_nbytes=1024).shape == (256,)


def test_unknown_codec_lists_known_ones() -> None:
    with pytest.raises(ProtocolError, match=r"unknown tensor codec 'lz4'.*raw, zstd"):
        decode_tensor(bytes(4), datatype="FP32", shape=(1,),
                      parameters={CODEC_PARAMETER: "lz4"}, max_nbytes=LIMIT)


def test_non_string_codec_parameter() -> None:
    with pytest.raises(ProtocolError, match="unknown tensor codec 3"):
        decode_tensor(bytes(4), datatype="FP32", shape=(1,),
                      parameters={CODEC_PARAMETER: 3}, max_nbytes=LIMIT)


def test_unknown_datatype() -> None:
    with pytest.raises(ProtocolError, match="unknown tensor datatype 'FP8'"):
        decode_tensor(bytes(4), datatype="FP8", shape=(4,), parameters={}, max_nbytes=LIMIT)


def test_bytes_datatype_not_supported() -> None:
    with pytest.raises(ProtocolError, match="BYTES"):
        decode_tensor(bytes(4), datatype="BYTES", shape=(1,), parameters={},
                      max_nbytes=LIMIT)


def test_negative_dims() -> None:
    with pytest.raises(ProtocolError, match="negative dims"):
        decode_tensor(bytes(4), datatype="FP32", shape=(-1,), parameters={},
                      max_nbytes=LIMIT)


def test_bool_bytes_other_than_zero_and_one() -> None:
    with pytest.raises(ProtocolError, match="BOOL tensor"):
        decode_tensor(b"\x00\x01\x02", datatype="BOOL", shape=(3,), parameters={},
                      max_nbytes=LIMIT)


# -- InferParameter helpers and the proto's own parameter maps ------------------------------


@pytest.mark.parametrize(
    ("value", "field"),
    [(True, "bool_param"), (False, "bool_param"), (-5, "int64_param"),
     ((1 << 63) - 1, "int64_param"), (1 << 63, "uint64_param"), ("zstd", "string_param"),
     (0.25, "double_param"), (np.int32(7), "int64_param"), (np.float32(0.5), "double_param")],
)
def test_parameter_round_trip(value: object, field: str) -> None:
    p = InferParameter()
    set_parameter(p, value)  # type: ignore[arg-type]
    assert p.WhichOneof("parameter_choice") == field
    got = parameter_value(p)
    assert got == value and type(got) is type(value if not hasattr(value, "item")
                                             else value.item())  # type: ignore[union-attr]


def test_unset_parameter_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no value set"):
        parameter_value(InferParameter())


@pytest.mark.parametrize("value", [1 << 64, -(1 << 63) - 1, b"bytes", None, [1]])
def test_set_parameter_refuses_what_it_cannot_carry(value: object) -> None:
    with pytest.raises(BadInputError):
        set_parameter(InferParameter(), value)  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", NOT_INT8)
def test_decode_from_a_real_request(codec: str) -> None:
    array = sample("float32", (3, 4))
    enc = encode_tensor(array, codec)
    request = ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=enc.datatype, shape=enc.shape)
    for key, value in enc.parameters.items():
        set_parameter(tensor.parameters[key], value)
    request.raw_input_contents.append(enc.data)
    wire = ModelInferRequest.FromString(request.SerializeToString())
    received = wire.inputs[0]
    out = decode_tensor(wire.raw_input_contents[0], datatype=received.datatype,
                        shape=received.shape, parameters=received.parameters,
                        max_nbytes=LIMIT)
    np.testing.assert_allclose(out, array, rtol=1e-3 if codec == "fp16" else 0)


def test_server_extensions_name_every_non_raw_codec() -> None:
    assert SERVER_EXTENSIONS == ("edgecut_codec_zstd", "edgecut_codec_shuffle_zstd",
                                 "edgecut_codec_fp16", "edgecut_codec_int8")


# -- the default policy ----------------------------------------------------------------------


def test_choose_codec_policy() -> None:
    floats = np.zeros((64, 64), np.float32)
    ints = np.zeros((64, 64), np.int64)
    assert choose_codec(floats, uplink_mbps=None) == "raw"
    assert choose_codec(floats, uplink_mbps=10_000) == "raw"
    assert choose_codec(floats, uplink_mbps=20) == "shuffle_zstd"
    assert choose_codec(ints, uplink_mbps=20) == "zstd"
    assert choose_codec(np.zeros(8, np.float32), uplink_mbps=20) == "raw"
    for codec in {choose_codec(a, uplink_mbps=20) for a in (floats, ints)}:
        assert codec in CODECS
