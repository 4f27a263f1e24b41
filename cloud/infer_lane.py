"""ModelInfer calls that the native transport's infer lane hands over in groups (frontend.cc).

A group holds the plain calls (every tensor in raw_input_contents, no parameters) of one
model, version, peer and layout (input names, datatypes, shapes; outputs asked for) that
arrived together. The servicer's lane handlers (cloud/lane_handlers.py) check a layout once
per model version and read later calls of it straight into arrays. Each call is still its
own request in the model's queue, batched as any other (scheduler.submit_many), and the calls
one batch ran are answered together, through a LaneTicket, in one call into the transport.

This module holds what the handlers read: the group; `LaneRequest`, one of its calls as
inference.prepare reads a parsed request; the layouts a model version accepted; and the
ticket and slots the scheduler answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from edgecut.errors import ProtocolError
from edgecut.protocol.tensors import expected_nbytes

_NO_PARAMETERS: Mapping[str, Any] = MappingProxyType({})


class LaneCall(NamedTuple):
    """One call of a group: the frontend's id for it, the request's `id` field (as sent), the
    seconds its deadline left when it arrived (None: no deadline), its message (a read-only
    buffer) with the offset of each input's tensor in it, and the peer's address where the
    call has a request id (None otherwise). A tuple: made per call."""

    call_id: int
    request_id: bytes
    time_left_s: float | None
    message: Any
    offsets: tuple[int, ...]
    address: str | None = None


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: Mapping[str, Any] = field(default_factory=lambda: _NO_PARAMETERS)

    def HasField(self, name: str) -> bool:  # protobuf's name for it
        return False  # a lane tensor is in raw_input_contents, never in typed contents


@dataclass(frozen=True, slots=True)
class _Output:
    name: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: _NO_PARAMETERS)


@dataclass(frozen=True, slots=True)
class LaneRequest:
    """One call of a group, with the fields inference.prepare reads of a parsed request."""

    model_name: str
    model_version: str
    id: str
    inputs: tuple[_Input, ...]
    outputs: tuple[_Output, ...]
    raw_input_contents: tuple[memoryview, ...]
    parameters: Mapping[str, Any] = field(default_factory=lambda: _NO_PARAMETERS)


@dataclass(frozen=True, slots=True, kw_only=True)
class LaneOutcome:
    """What one answered lane call moved and waited for (InferOutcome, less the response,
    which frontend.cc writes)."""

    raw_bytes_in: int
    wire_bytes_in: int
    raw_bytes_out: int
    wire_bytes_out: int
    queue_s: float
    compute_s: float
    batch_rows: int


@dataclass(slots=True)
class LaneGroup:
    """Calls of one model, version, peer, input layout (names, datatypes, shapes) and
    outputs asked for, as frontend.cc passes them (see lane_groups there)."""

    model_name: str
    model_version: str
    peer: str | None
    input_names: tuple[str, ...]
    datatypes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    output_names: tuple[str, ...]
    calls: list[LaneCall]
    sizes: tuple[int, ...] = ()  # each input's bytes, the same in every call

    @classmethod
    def from_frontend(cls, entry: Sequence[Any]) -> LaneGroup:
        """The group in frontend.cc's tuple. ProtocolError when a name is not UTF-8, as
        protobuf's parser refuses such a string field."""
        name, version, peer, inputs, outputs, calls = entry
        try:
            group = cls(
                model_name=name.decode(), model_version=version.decode(), peer=peer,
                input_names=tuple(n.decode() for n, _, _ in inputs),
                datatypes=tuple(d.decode() for _, d, _ in inputs),
                shapes=tuple(shape for _, _, shape in inputs),
                output_names=tuple(o.decode() for o in outputs),
                calls=list(map(LaneCall._make, calls)),
            )
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"request is not a valid ModelInferRequest: a name is not "
                                f"UTF-8 ({exc.reason} at byte {exc.start})") from exc
        group.sizes = tuple(expected_nbytes(d, shape)
                            for d, shape in zip(group.datatypes, group.shapes, strict=True))
        return group

    @property
    def layout(self) -> tuple[Any, ...]:
        """What inference.prepare's checks of a plain call depend on, besides the model."""
        return (self.input_names, self.datatypes, self.shapes, self.output_names)

    @property
    def rows(self) -> int:
        """Each call's rows: its inputs' first dimension (frontend.cc checks they agree)."""
        return self.shapes[0][0]

    @property
    def call_bytes(self) -> int:
        """Each call's decoded (and received) input bytes."""
        return sum(self.sizes)

    def runs(self, models: Sequence[Any]) -> Iterator[tuple[Any, int, int]]:
        """(model, first, end) for each run of consecutive calls routed to the same model
        (`models[i]` serves call i; a canary can split a group)."""
        first = 0
        for i in range(1, len(models) + 1):
            if i == len(models) or models[i] is not models[first]:
                yield models[first], first, i
                first = i

    def request(self, index: int) -> LaneRequest:
        """Call `index` as a parsed request reads, its tensors as views of its message."""
        call = self.calls[index]
        message = memoryview(call.message)
        return LaneRequest(
            model_name=self.model_name, model_version=self.model_version,
            id=call.request_id.decode(errors="replace"),
            inputs=tuple(_Input(n, d, shape) for n, d, shape in
                         zip(self.input_names, self.datatypes, self.shapes, strict=True)),
            outputs=tuple(_Output(n) for n in self.output_names),
            raw_input_contents=tuple(message[offset:offset + size] for offset, size in
                                     zip(call.offsets, self.sizes, strict=True)),
        )

    def inputs_as(self, index: int, dtypes: Sequence[np.dtype]) -> dict[str, np.ndarray]:
        """Call `index`'s inputs, read in place as arrays of `dtypes` (those inference.prepare
        decoded a call of this layout to)."""
        call = self.calls[index]
        return {name: np.frombuffer(call.message, dtype=dtype, count=size // dtype.itemsize,
                                    offset=offset).reshape(shape)
                for name, dtype, shape, size, offset in
                zip(self.input_names, dtypes, self.shapes, self.sizes, call.offsets,
                    strict=True)}


@dataclass(frozen=True, slots=True)
class AcceptedLayout:
    """What inference.prepare made of a call of one layout: the outputs it computes, and the
    dtypes its inputs were read as. Every call of that layout gets the same."""

    outputs: tuple[Any, ...]  # inference.RequestedOutput
    dtypes: tuple[np.dtype, ...]


# Layouts kept per model version: enough for every client's shapes, bounded against one that
# sends a new shape each call.
MAX_ACCEPTED_LAYOUTS = 64


def remember_layout(layouts: dict[Any, AcceptedLayout], group: LaneGroup,
                    accepted: AcceptedLayout) -> bool:
    """Keep `accepted` for `group`'s layout in a version's memo (LoadedModel.accepted_layouts),
    unless its values are checked too (BOOL: only 0 and 1), which no layout vouches for;
    False then."""
    if "BOOL" in group.datatypes:
        return False
    if len(layouts) >= MAX_ACCEPTED_LAYOUTS:
        layouts.clear()
    layouts[group.layout] = accepted
    return True


class LaneTicket:
    """The calls of one group routed to one model version, as the scheduler answers them:
    `answer(slots)` is called once per batch with those of its calls that the batch held
    (GroupedReceiver's group)."""

    __slots__ = ("_answer", "lane_group", "model", "outputs", "server", "started")

    def __init__(self, answer: Callable[[LaneTicket, list[LaneSlot]], None], server: Any,
                 lane_group: LaneGroup, model: Any, outputs: Sequence[Any], started: float):
        self._answer = answer
        self.server = server  # the NativeServer whose calls these are
        self.lane_group = lane_group
        self.model = model  # the LoadedModel they run on
        self.outputs = tuple(outputs)  # inference.RequestedOutput, the same for every call
        self.started = started  # when the group reached Python

    def answer(self, slots: list[LaneSlot]) -> None:
        self._answer(self, slots)


class LaneSlot:
    """One lane call in the model's queue (a scheduler.GroupedReceiver): it holds the call's
    result or error until its ticket answers it."""

    __slots__ = ("_state", "group", "index", "outcome")

    _QUEUED, _RUNNING, _DONE, _CANCELLED = range(4)

    def __init__(self, ticket: LaneTicket, index: int):
        self.group = ticket
        self.index = index  # of its call in ticket.group.calls
        self.outcome: Any = None  # a BatchResult or an exception
        self._state = self._QUEUED

    @property
    def call(self) -> LaneCall:
        return self.group.lane_group.calls[self.index]

    def set_running_or_notify_cancel(self) -> bool:
        if self._state == self._CANCELLED:
            return False
        self._state = self._RUNNING
        return True

    def set_result(self, result: Any) -> None:
        self.outcome, self._state = result, self._DONE

    def set_exception(self, exception: BaseException) -> None:
        self.outcome, self._state = exception, self._DONE

    def done(self) -> bool:
        return self._state in (self._DONE, self._CANCELLED)

    def cancel(self) -> bool:
        """Taken out of the queue unrun (the scheduler is closing): answered at once."""
        if self._state != self._QUEUED:
            return False
        self.outcome, self._state = CancelledError(), self._CANCELLED
        self.group.answer([self])
        return True
