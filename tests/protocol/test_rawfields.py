"""Reading a ModelInfer message's tensors in place must give what protobuf's parser gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecut.errors import ProtocolError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.rawfields import (
    RAW_INPUT_FIELD,
    RAW_OUTPUT_FIELD,
    ZERO_COPY_MIN_BYTES,
    parse_infer_request,
    split_repeated_bytes,
)


def _request(raws: list[bytes], *, name: str = "m", params: dict[str, int] | None = None
             ) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, id="req-1", model_version="2")
    for i, raw in enumerate(raws):
        request.inputs.add(name=f"x{i}", datatype="UINT8", shape=[len(raw)])
    for key, value in (params or {}).items():
        request.parameters[key].int64_param = value
    request.outputs.add(name="y")
    request.raw_input_contents.extend(raws)
    return request


@settings(max_examples=200, deadline=None)
@given(raws=st.lists(st.binary(max_size=300), max_size=5),
       params=st.dictionaries(st.text(max_size=8), st.integers(-2**63, 2**63 - 1), max_size=3),
       name=st.text(max_size=20))
def test_split_equals_protobuf(raws: list[bytes], params: dict[str, int], name: str) -> None:
    request = _request(raws, name=name, params=params)
    rest, views = split_repeated_bytes(request.SerializeToString(), RAW_INPUT_FIELD)
    assert [bytes(v) for v in views] == raws
    parsed = pb.ModelInferRequest.FromString(rest)
    assert not parsed.raw_input_contents
    request.ClearField("raw_input_contents")
    assert parsed == request


def test_fields_in_any_order_and_unknown_fields_survive() -> None:
    # Raw entries first, then the header, then an unknown varint field 15 and a fixed32
    # field 16 (a two-byte tag), then one more raw entry.
    header = pb.ModelInferRequest(model_name="m").SerializeToString()
    data = (bytes([(7 << 3) | 2, 2]) + b"ab" + header + bytes([(15 << 3) | 0, 0x96, 0x01])
            + bytes([0x85, 0x01]) + b"\x01\x02\x03\x04" + bytes([(7 << 3) | 2, 1]) + b"c")
    rest, views = split_repeated_bytes(data, RAW_INPUT_FIELD)
    assert [bytes(v) for v in views] == [b"ab", b"c"]
    assert pb.ModelInferRequest.FromString(rest).model_name == "m"
    assert pb.ModelInferRequest.FromString(data).raw_input_contents == [b"ab", b"c"]


def test_views_share_the_received_bytes() -> None:
    data = _request([bytes(range(256)) * 100]).SerializeToString()
    _, (view,) = split_repeated_bytes(data, RAW_INPUT_FIELD)
    assert view.obj is data  # no copy was made


def test_response_outputs_split_too() -> None:
    response = pb.ModelInferResponse(model_name="m", raw_output_contents=[b"\x00" * 10, b"z"])
    rest, views = split_repeated_bytes(response.SerializeToString(), RAW_OUTPUT_FIELD)
    assert [bytes(v) for v in views] == [b"\x00" * 10, b"z"]
    assert pb.ModelInferResponse.FromString(rest).model_name == "m"


@pytest.mark.parametrize(("data", "problem"), [
    (bytes([(7 << 3) | 2, 10]) + b"abc", "declares 10 bytes but only 3 follow"),
    (bytes([(1 << 3) | 2, 0x80]), "cut off"),
    (bytes([(2 << 3) | 3]), "wire type 3"),
    (bytes([0x00, 0x01]), "field number 0"),
    (bytes([(5 << 3) | 1, 1, 2]), "cut off"),
    (bytes([(5 << 3) | 0]) + b"\xff" * 11, "too long"),
])
def test_malformed_messages_are_named(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match="malformed") as info:
        split_repeated_bytes(data, RAW_INPUT_FIELD)
    assert problem in str(info.value)


@pytest.mark.parametrize("size", [10, ZERO_COPY_MIN_BYTES + 1])
def test_parse_infer_request_reads_like_the_message(size: int) -> None:
    request = _request([b"\x07" * size, b"ok"], params={"n": 3})
    view = parse_infer_request(request.SerializeToString())
    assert [bytes(v) for v in view.raw_input_contents] == [b"\x07" * size, b"ok"]
    assert (view.model_name, view.model_version, view.id) == ("m", "2", "req-1")
    assert [t.name for t in view.inputs] == ["x0", "x1"]
    assert [t.name for t in view.outputs] == ["y"]
    assert view.parameters["n"].int64_param == 3


@pytest.mark.parametrize("data", [b"\xff" * 5, b"\x3a\xff\xff\xff\x0f" + b"x" * ZERO_COPY_MIN_BYTES])
def test_parse_infer_request_refuses_garbage(data: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"ModelInferRequest|malformed"):
        parse_infer_request(data)
