"""The infer lane for HTTP/REST: plain binary-tensor requests go to the model's queue in
groups, as the gRPC transports' plain calls do (cloud/infer_lane.py), and their answers are
written from the run's outputs, with no ModelInferRequest or ModelInferResponse in between.

A plain HTTP request is what `tritonclient.http` sends with binary tensors: every input's
bytes after the JSON header (`parameters.binary_data_size`, nothing else), every output asked
for as bytes (`binary_data`, or `binary_data_output` for all), no request id and no other
parameters. `read_plain_http` says whether a request is one; anything else takes the per-call
path (InferenceServicer.infer_later), which gives every other request its answer or its error,
so this module never has to say what is wrong:

    >>> header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
    ...                       "parameters": {"binary_data_size": 8}}],
    ...           "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    >>> plain = read_plain_http(header, header_bytes=40, body_bytes=48)
    >>> plain.inputs, plain.outputs, plain.offsets
    (((b'x', b'FP32', (1, 2)),), (b'y',), (40,))

HttpLane is, for the servicer's lane handlers (cloud/lane_handlers.py), what NativeServer is
for the gRPC transports: it hands them the groups and answers their calls (finish_infers, or
a call's context for an error). It runs its groups on the HTTP event loop, one group per
model and layout of the requests that arrived in one pass of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grpc
import orjson

from edgecut.protocol.timing import COMPUTE_MS_PARAMETER, QUEUE_MS_PARAMETER

from .core_frontend import LANE_GROUP_MAX
from .native_server import CallAborted
from .plain_infer import ELEMENT_BYTES, MAX_DIM

__all__ = ["HttpLane", "LaneAnswer", "PlainHttp", "read_plain_http"]

logger = logging.getLogger("edgecut.cloud.server")

# The datatypes a plain gRPC call may carry, by the name JSON gives them.
_ELEMENT_BYTES = {name.decode(): size for name, size in ELEMENT_BYTES.items()}
_REQUEST_KEYS = frozenset(("inputs", "outputs", "parameters", "id"))
_INPUT_KEYS = frozenset(("name", "datatype", "shape", "parameters"))
_OUTPUT_KEYS = frozenset(("name", "parameters"))


class PlainHttp(NamedTuple):
    """A plain HTTP request as a lane call's fields: each input as (name, datatype, shape),
    the outputs asked for by name (none: all), and where each input's bytes start in the
    body. Names are bytes, as the gRPC transports pass them."""

    inputs: tuple[tuple[bytes, bytes, tuple[int, ...]], ...]
    outputs: tuple[bytes, ...]
    offsets: tuple[int, ...]


def read_plain_http(header: Any, *, header_bytes: int, body_bytes: int) -> PlainHttp | None:
    """The parsed JSON `header` of a request whose body holds `body_bytes` bytes, the first
    `header_bytes` of them JSON, read as a plain request (module docstring); None when it is
    not one. Plain also means consistent: each input's bytes are what its shape and datatype
    make, together exactly what follows the JSON, and every input has the same first
    dimension."""
    if not isinstance(header, dict) or not _REQUEST_KEYS.issuperset(header):
        return None
    if header.get("id", ""):
        return None  # deduplication keys on the request: the per-call path
    parameters = header.get("parameters", {})
    if not isinstance(parameters, dict) or any(k != "binary_data_output" for k in parameters):
        return None
    all_binary = parameters.get("binary_data_output", False) is True
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return None
    described = []
    offsets = []
    offset = header_bytes
    rows = None
    for tensor in inputs:
        if not isinstance(tensor, dict) or not _INPUT_KEYS.issuperset(tensor):
            return None
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        sizes = tensor.get("parameters")
        if (not isinstance(name, str) or not name or not isinstance(sizes, dict)
                or len(sizes) != 1 or not isinstance(shape, list) or not shape):
            return None
        element = _ELEMENT_BYTES.get(datatype) if isinstance(datatype, str) else None
        size = sizes.get("binary_data_size")
        if (element is None or type(size) is not int
                or not all(type(d) is int and 0 <= d < MAX_DIM for d in shape)):
            return None
        if size != element * math.prod(shape) or (rows is not None and shape[0] != rows):
            return None
        rows = shape[0]
        described.append((name.encode(), datatype.encode(), tuple(shape)))
        offsets.append(offset)
        offset += size
    if offset != body_bytes:
        return None
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list) or (not outputs and not all_binary):
        return None
    names = []
    for tensor in outputs:
        if not isinstance(tensor, dict) or not _OUTPUT_KEYS.issuperset(tensor):
            return None
        name, asked = tensor.get("name"), tensor.get("parameters", {})
        if not isinstance(name, str) or not name or not isinstance(asked, dict):
            return None
        if any(k != "binary_data" for k in asked):
            return None
        if asked.get("binary_data", all_binary) is not True:
            return None  # values in the JSON: the per-call path writes those
        names.append(name.encode())
    return PlainHttp(tuple(described), tuple(names), tuple(offsets))


class LaneAnswer(NamedTuple):
    """A lane call's HTTP answer: the body, and the length of the JSON header that starts it."""

    body: bytes
    header_bytes: int


class HttpLane:
    """Plain HTTP requests to the servicer's lane handlers, and their answers back (module
    docstring). `take` and the group passing run on the event loop `loop`; finish_infers and
    the contexts' finish on whichever thread answers (a model worker)."""

    def __init__(self, handler: Callable[[Sequence[Any], Any], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._handler = handler  # InferenceServicer.infer_lane
        self._loop = loop
        self._next_id = 0
        # Open calls by id: the caller's context (cloud/http_frontend.py's _Call) and the
        # future its request awaits. Written on the loop; read from any thread.
        self._calls: dict[int, tuple[Any, asyncio.Future[Any]]] = {}
        self._waiting: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        self._waiting_calls = 0
        self.lane_calls = 0

    def take(self, context: Any, plain: PlainHttp, body: bytes, *, model_name: str,
             model_version: str) -> asyncio.Future[Any]:
        """Queue one plain request for the next group; its future gets a LaneAnswer, or the
        ModelInferResponse bytes of a call answered on its own, or None once the context
        holds the error."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._next_id += 1
        call_id = self._next_id
        self._calls[call_id] = (context, future)
        context.finished = self._finisher(call_id)
        key = (model_name.encode(), model_version.encode(), context.peer_name(),
               plain.inputs, plain.outputs)
        entry = (call_id, b"", None, body, plain.offsets, None)
        self._waiting.setdefault(key, []).append(entry)
        self._waiting_calls += 1
        self.lane_calls += 1
        if self._waiting_calls == 1:
            # Once the loop has read what else arrived with it: those go in the same group.
            self._loop.call_soon(self._pass)
        elif self._waiting_calls >= LANE_GROUP_MAX:
            self._pass()
        return future

    def _pass(self) -> None:
        if not self._waiting_calls:
            return
        groups = [(name, version, peer, list(inputs), list(outputs), calls)
                  for (name, version, peer, inputs, outputs), calls in self._waiting.items()]
        self._waiting = {}
        self._waiting_calls = 0
        try:
            self._handler(groups, self)
        except Exception as exc:  # the handler answers its own errors; this is a bug
            logger.exception("the HTTP infer lane's handler failed")
            for group in groups:
                for call_id, *_ in group[5]:
                    entry = self._calls.get(call_id)
                    if entry is not None:
                        entry[0].set_code(grpc.StatusCode.UNKNOWN)
                        entry[0].set_details(f"Exception calling application: {exc}")
                        entry[0].finish(None)

    def _finisher(self, call_id: int) -> Callable[[bytes | None], None]:
        def finished(data: bytes | None) -> None:
            self._settle_soon([(call_id, data)])
        return finished

    def _settle_soon(self, answers: list[tuple[int, Any]]) -> None:
        # RuntimeError: the loop closed first (a stop past its grace); nobody waits.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle, answers)

    def _settle(self, answers: list[tuple[int, Any]]) -> None:
        for call_id, answer in answers:
            entry = self._calls.pop(call_id, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(answer)

    # What the lane handlers call, as they call NativeServer's.
    def lane_context(self, call_id: int, peer: str | None, time_left_s: float | None,
                     address: str | None = None) -> Any:
        """The context of one call, to answer it alone (an error, mostly)."""
        entry = self._calls.get(call_id)
        return entry[0] if entry is not None else _Closed()

    def call_cancelled(self, call_id: int) -> bool:
        entry = self._calls.get(call_id)
        return entry is None or not entry[0].is_active()

    def finish_infers(self, call_ids: Sequence[int], request_ids: Sequence[bytes],
                      rows: Sequence[int], model_name: str, model_version: str,
                      outputs: list[tuple[str, str, tuple[int, ...], Any]], *,
                      queue_ms: Sequence[float] = (), compute_ms: Sequence[float] = (),
                      keep: Sequence[bool] = ()) -> tuple[int, list[bytes | None]]:
        """Answer calls from one run as NativeServer.finish_infers does: `outputs` holds
        (name, datatype, inner shape, buffer) per output, the rows of every call in turn;
        call i gets the next rows[i]. Lane calls have no request id, so nothing is kept."""
        columns = []
        for name, datatype, inner, buffer in outputs:
            view = memoryview(buffer)
            row_bytes = view.itemsize * math.prod(inner)
            # C-contiguous: its rows in turn, as bytes
            columns.append((name, datatype, tuple(int(d) for d in inner), view.cast("B"),
                            row_bytes))
        timed = bool(queue_ms) and bool(compute_ms)
        answers = []
        first = 0
        for i, call_id in enumerate(call_ids):
            n = rows[i]
            described = []
            tensors = []
            for name, datatype, inner, view, row_bytes in columns:
                data = view[first * row_bytes:(first + n) * row_bytes]
                described.append({"name": name, "datatype": datatype, "shape": [n, *inner],
                                  "parameters": {"binary_data_size": len(data)}})
                tensors.append(data)
            first += n
            header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
            if timed:
                header["parameters"] = {QUEUE_MS_PARAMETER: queue_ms[i],
                                        COMPUTE_MS_PARAMETER: compute_ms[i]}
            header["outputs"] = described
            head = orjson.dumps(header)
            answers.append((call_id, LaneAnswer(b"".join((head, *tensors)), len(head))))
        self._settle_soon(answers)
        return len(answers), []


class _Closed:
    """The context of a call already answered: what is said to it goes nowhere."""

    def peer_name(self) -> None:
        return None

    def is_active(self) -> bool:
        return False

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise CallAborted(details)

    def finish(self, data: bytes | None) -> None:
        pass
