"""The int8 codec: per-channel round trips within half a step, and one test per way a peer can
send its parameters wrong."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from edgecut.errors import BadInputError, ProtocolError
from edgecut.protocol.codecs import CODEC_PARAMETER, LOSSY_CODECS, decode_tensor, encode_tensor, set_parameter
from edgecut.protocol.grpc_service_pb2 import ModelInferRequest
from edgecut.protocol.int8 import (
    AXIS_PARAMETER,
    SCALES_PARAMETER,
    ZERO_POINTS_PARAMETER,
    channel_axis,
)

LIMIT = 1 << 24


def _round_trip(array: np.ndarray, parameters: dict | None = None) -> np.ndarray:
    enc = encode_tensor(array, "int8")
    return decode_tensor(enc.data, datatype=enc.datatype, shape=enc.shape,
                         parameters=parameters if parameters is not None else enc.parameters,
                         max_nbytes=LIMIT)


def _activations(seed: int = 0) -> np.ndarray:
    """ReLU activations whose channels span very different ranges, as an FPN's do."""
    rng = np.random.default_rng(seed)
    spread = np.geomspace(0.01, 1700.0, 16, dtype=np.float32).reshape(1, 16, 1, 1)
    return np.maximum(rng.standard_normal((2, 16, 8, 8)).astype(np.float32) * spread, 0)


def test_per_channel_error_is_within_half_a_step_of_each_channel() -> None:
    x = _activations()
    out = _round_trip(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    step = x.max(axis=(0, 2, 3)) / 255  # each channel's range (0 included) over 255 steps
    error = np.abs(out - x).max(axis=(0, 2, 3))
    assert (error <= step / 2 * 1.001 + 1e-12).all()
    # One scale for the tensor would have flattened the small channels to nothing.
    assert np.abs(out - x)[:, 0].max() < 1e-4


def test_zeros_stay_exact_and_bytes_shrink_more_than_4x() -> None:
    x = _activations()
    enc = encode_tensor(x, "int8")
    out = _round_trip(x)
    assert (out[x == 0] == 0).all()
    assert enc.raw_nbytes / len(enc.data) > 4.0  # int8, then zstd over the zero runs
    assert enc.parameters[CODEC_PARAMETER] == "int8" and enc.parameters[AXIS_PARAMETER] == 1
    assert "int8" in LOSSY_CODECS


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (1, 0, 4), (2, 3, 4, 5)], ids=str)
def test_any_shape_round_trips(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = _round_trip(x)
    assert out.shape == shape
    if x.size:
        assert np.abs(out - x).max() <= (max(x.max(), 0) - min(x.min(), 0)) / 255 / 2 + 1e-6


def test_channel_axis_rule() -> None:
    assert channel_axis((1, 16, 8, 8)) == 1 and channel_axis((4, 3, 2)) == 1
    assert channel_axis((1, 128)) == -1 and channel_axis(()) == -1 and channel_axis((1, 0, 3)) == -1


def test_non_contiguous_and_big_endian_input() -> None:
    x = np.linspace(-3, 3, 240, dtype=">f4").reshape(12, 20)[::2, ::-3].T
    np.testing.assert_allclose(_round_trip(x), x, atol=6 / 255 / 2 + 1e-6)


def test_decode_from_a_real_request() -> None:
    x = _activations(2)
    enc = encode_tensor(x, "int8")
    request = ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=enc.datatype, shape=enc.shape)
    for key, value in enc.parameters.items():
        set_parameter(tensor.parameters[key], value)
    request.raw_input_contents.append(enc.data)
    wire = ModelInferRequest.FromString(request.SerializeToString())
    out = decode_tensor(wire.raw_input_contents[0], datatype="FP32", shape=wire.inputs[0].shape,
                        parameters=wire.inputs[0].parameters, max_nbytes=LIMIT)
    np.testing.assert_array_equal(out, _round_trip(x))


def test_encode_refuses_what_int8_cannot_carry() -> None:
    with pytest.raises(BadInputError, match="only applies to FP32 tensors, got FP64"):
        encode_tensor(np.zeros(3), "int8")
    with pytest.raises(BadInputError, match="NaN or inf"):
        encode_tensor(np.array([1.0, np.nan], np.float32), "int8")


def _parameters(**changes: object) -> tuple[bytes, dict]:
    enc = encode_tensor(_activations(), "int8")
    parameters = {**enc.parameters, **changes}
    return enc.data, {k: v for k, v in parameters.items() if v is not None}


@pytest.mark.parametrize(("changes", "message"), [
    ({AXIS_PARAMETER: None}, "must be -1 or an axis"),
    ({AXIS_PARAMETER: 4}, "must be -1 or an axis in \\[0, 4\\), got 4"),
    ({AXIS_PARAMETER: True}, "must be -1 or an axis"),
    ({SCALES_PARAMETER: None}, "'edgecut_int8_scales' must be a base64 string"),
    ({SCALES_PARAMETER: "not base64!"}, "not valid base64"),
    ({SCALES_PARAMETER: base64.b64encode(bytes(12)).decode()}, "expected one value per channel"),
    ({ZERO_POINTS_PARAMETER: base64.b64encode(bytes(3)).decode()}, "expected one value per"),
    ({SCALES_PARAMETER: base64.b64encode(np.full(16, -1, "<f4").tobytes()).decode()},
     "finite and > 0"),
    ({SCALES_PARAMETER: base64.b64encode(np.full(16, np.inf, "<f4").tobytes()).decode()},
     "finite and > 0"),
])
def test_bad_parameters_are_protocol_errors(changes: dict, message: str) -> None:
    data, parameters = _parameters(**changes)
    with pytest.raises(ProtocolError, match=message):
        decode_tensor(data, datatype="FP32", shape=(2, 16, 8, 8), parameters=parameters,
                      max_nbytes=LIMIT)


def test_int8_declared_on_another_datatype_or_short_data() -> None:
    data, parameters = _parameters()
    with pytest.raises(ProtocolError, match="'int8' declared on a INT16"):
        decode_tensor(data, datatype="INT16", shape=(2, 16, 8, 8), parameters=parameters,
                      max_nbytes=LIMIT)
    with pytest.raises(ProtocolError, match="zstd frame declares 2048 bytes"):
        decode_tensor(data, datatype="FP32", shape=(1, 16, 8, 8), parameters=parameters,
                      max_nbytes=LIMIT)
