"""The core transport's reader and writer of plain ModelInfer messages (cloud/plain_infer.py),
against protobuf's own parser and serializer. What a lane call gets end to end, over the core
transport against grpcio's per-call path, is test_infer_lane's."""

from __future__ import annotations

import numpy as np
import pytest

from edgecut.cloud.core_frontend import CoreFrontend
from edgecut.cloud.plain_infer import PlainReader, ResponseWriter, read_plain_infer
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.timing import server_timing


def _request(*, rows: int = 2, request_id: str = "r-1") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="cnn", model_version="3", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    request.inputs.add(name="k", datatype="INT64", shape=[rows, 2])
    request.outputs.add(name="y")
    request.raw_input_contents.append(np.arange(rows * 4, dtype=np.float32).tobytes())
    request.raw_input_contents.append(np.arange(rows * 2, dtype=np.int64).tobytes())
    return request


def test_a_plain_request_is_read_with_its_tensors_in_place() -> None:
    request = _request()
    message = request.SerializeToString()
    plain = read_plain_infer(message)
    assert plain is not None
    assert (plain.model_name, plain.model_version, plain.id) == (b"cnn", b"3", b"r-1")
    assert plain.inputs == ((b"x", b"FP32", (2, 4)), (b"k", b"INT64", (2, 2)))
    assert plain.outputs == (b"y",)
    for offset, raw in zip(plain.offsets, request.raw_input_contents, strict=True):
        assert message[offset:offset + len(raw)] == raw


def test_a_shape_written_unpacked_is_read_as_protobuf_reads_it() -> None:
    """proto3 parsers accept a repeated int64 written one element per field as well."""
    x = np.ones((1, 3), np.float32).tobytes()
    tensor = b"\x0a\x01x" + b"\x12\x04FP32" + b"\x18\x01" + b"\x18\x03"
    message = (b"\x0a\x01m" + b"\x2a" + bytes([len(tensor)]) + tensor
               + b"\x3a" + bytes([len(x)]) + x)
    parsed = pb.ModelInferRequest.FromString(message)
    assert list(parsed.inputs[0].shape) == [1, 3]
    plain = read_plain_infer(message)
    assert plain is not None and plain.inputs == ((b"x", b"FP32", (1, 3)),)


def _with_request_parameter(r: pb.ModelInferRequest) -> None:
    r.parameters["priority"].int64_param = 1


def _with_input_parameter(r: pb.ModelInferRequest) -> None:
    r.inputs[0].parameters["edgecut_codec"].string_param = "zstd"


def _with_output_parameter(r: pb.ModelInferRequest) -> None:
    r.outputs[0].parameters["classification"].int64_param = 3


def _with_typed_contents(r: pb.ModelInferRequest) -> None:
    r.inputs[1].contents.int64_contents.extend([1, 2])


def _with_a_short_tensor(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[0] = r.raw_input_contents[0][:-4]


def _with_rows_that_disagree(r: pb.ModelInferRequest) -> None:
    r.inputs[1].shape[:] = [1, 4]


def _with_no_tensor_bytes(r: pb.ModelInferRequest) -> None:
    del r.raw_input_contents[1]


def _with_a_string_tensor(r: pb.ModelInferRequest) -> None:
    r.inputs[1].datatype = "BYTES"


def _with_an_unnamed_input(r: pb.ModelInferRequest) -> None:
    r.inputs[0].name = ""


def _with_a_scalar(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[:] = []
    r.raw_input_contents[0] = bytes(4)


@pytest.mark.parametrize("change", [
    _with_request_parameter, _with_input_parameter, _with_output_parameter,
    _with_typed_contents, _with_a_short_tensor, _with_rows_that_disagree,
    _with_no_tensor_bytes, _with_a_string_tensor, _with_an_unnamed_input, _with_a_scalar,
], ids=lambda f: f.__name__[len("_with_"):])
def test_what_is_not_plain_is_left_to_the_per_call_path(change) -> None:  # type: ignore[no-untyped-def]
    request = _request()
    change(request)
    assert read_plain_infer(request.SerializeToString()) is None


def test_cut_off_unknown_and_junk_messages_are_not_plain() -> None:
    message = _request().SerializeToString()
    for cut in (1, 3, 10, len(message) - 1):
        assert read_plain_infer(message[:cut]) is None
    assert read_plain_infer(message + b"\x48\x01") is None  # field 9, a varint: unknown
    assert read_plain_infer(b"") is None
    assert read_plain_infer(b"\xff" * 12) is None


def test_a_remembered_layout_still_gets_each_calls_checks() -> None:
    """A reader remembers what a layout's bytes say; each call's own tensors, id and names
    are still read and checked, and a layout once refused is refused again."""
    reader = PlainReader()
    first = _request(request_id="a")
    assert reader.read(first.SerializeToString()) is not None
    again = _request(request_id="b")
    again.raw_input_contents[1] = np.arange(4, dtype=np.int64).tobytes()[::-1]
    plain = reader.read(again.SerializeToString())
    assert plain is not None and plain.id == b"b"
    message = again.SerializeToString()
    assert message[plain.offsets[1]:plain.offsets[1] + 32] == again.raw_input_contents[1]
    short = _request(request_id="c")
    _with_a_short_tensor(short)
    assert reader.read(short.SerializeToString()) is None
    refused = _request()
    _with_input_parameter(refused)
    assert reader.read(refused.SerializeToString()) is None
    assert reader.read(refused.SerializeToString()) is None


def test_a_reader_full_of_layouts_still_reads_right() -> None:
    reader = PlainReader()
    for rows in range(1, PlainReader.MAX_LAYOUTS + 10):
        plain = reader.read(_request(rows=rows).SerializeToString())
        assert plain is not None and plain.inputs[0][2] == (rows, 4)


def test_responses_parse_as_protobuf_writes_them_each_with_its_rows() -> None:
    """Three calls of 1, 2 and 1 rows answered from one run's outputs."""
    y = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    k = np.arange(4, dtype=np.int64)
    writer = ResponseWriter("cnn", "3", [("y", "FP32", (3,), y), ("k", "INT64", (), k)])
    assert writer.rows_held() == 4
    first = 0
    for request_id, rows in ((b"a", 1), (b"", 2), (b"c", 1)):
        answer = pb.ModelInferResponse.FromString(
            writer.response(request_id, rows, queue_ms=1.5, compute_ms=0.25))
        want = pb.ModelInferResponse(model_name="cnn", model_version="3",
                                     id=request_id.decode())
        want.outputs.add(name="y", datatype="FP32", shape=[rows, 3])
        want.outputs.add(name="k", datatype="INT64", shape=[rows])
        want.raw_output_contents.append(y[first:first + rows].tobytes())
        want.raw_output_contents.append(k[first:first + rows].tobytes())
        timing = server_timing(answer)
        assert timing is not None and (timing.queue_ms, timing.compute_ms) == (1.5, 0.25)
        answer.ClearField("parameters")
        assert answer == want
        first += rows


def test_outputs_that_hold_different_rows_are_refused() -> None:
    y = np.zeros((4, 3), np.float32)
    writer = ResponseWriter("m", "1", [("y", "FP32", (3,), y), ("z", "FP32", (), y[:2, 0].copy())])
    assert writer.rows_held() is None
    frontend = CoreFrontend("127.0.0.1:0", None, max_message_bytes=1 << 20, max_open_calls=8)
    with pytest.raises(ValueError, match="do not hold 4 rows"):
        frontend.finish_infers([1, 2], [b"", b""], [2, 2], "m", "1",
                               [("y", "FP32", (3,), y), ("z", "FP32", (), y[:2, 0].copy())],
                               [], [], [])
    with pytest.raises(ValueError, match="differ in length"):
        frontend.finish_infers([1], [b"", b""], [2, 2], "m", "1", [], [], [], [])
