"""The infer lane's handlers: ModelInfer for the calls the native transport groups
(cloud/infer_lane.py), as part of InferenceServicer.

A mixin, so that the lane answers with the servicer's own admission (`_enter`, `_leave`),
authorisation (`_authorize`), accounting (`_observe`) and errors (`_abort_later`), and reads
its repository, scheduler and limits: whatever a call goes through, its answer, its error
and its place in the statistics are those of the per-call path (`infer_later`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecut.errors import CloudUnavailableError, ProtocolError
from edgecut.protocol.tensors import datatype_of, dtype_of

from .dedup import Flight, StoredAnswer, kept_error, request_key
from .infer_lane import (
    AcceptedLayout,
    LaneCall,
    LaneGroup,
    LaneOutcome,
    LaneSlot,
    LaneTicket,
    remember_layout,
)
from .inference import encode_outputs, prepare, set_timing
from .loaded_model import LoadedModel
from .scheduler import BatchResult

if TYPE_CHECKING:
    from .native_server import NativeServer


class InferLaneHandlers:
    """InferenceServicer's handlers of infer-lane calls (see the module docstring)."""

    # What InferenceServicer defines, declared here for readers and type checkers.
    _max_decoded_bytes: int
    _repository: Any
    _scheduler: Any
    _enter: Any
    _leave: Any
    _authorize: Any
    _observe: Any
    _observe_infer: Any
    _abort_later: Any
    _dedup: Any
    _answer_again_later: Any
    _lane_flights: dict[int, Flight]  # lane calls that lead their request id, by call id

    def infer_lane(self, entries: Sequence[Any], server: NativeServer) -> None:
        """ModelInfer for the plain calls the native transport groups (cloud/infer_lane.py):
        the checks, accounting and errors of infer_later, made once per group, and the
        answers written by the transport, once per run."""
        for entry in entries:
            started = time.perf_counter()
            try:
                group = LaneGroup.from_frontend(entry)
            except ProtocolError as exc:
                for call in entry[5]:
                    self._lane_fail(server, entry[2], LaneCall(*call), exc, started=started)
                continue
            try:
                self._infer_group(group, server, started)
            except BaseException:
                # A bug: NativeServer answers the calls; their repeats must not wait forever.
                for call in group.calls:
                    self._lane_settle(call, None)
                raise

    def _infer_group(self, group: LaneGroup, server: NativeServer, started: float) -> None:
        calls = group.calls
        try:
            self._enter(len(calls))
        except CloudUnavailableError as exc:
            for call in calls:
                self._lane_fail(server, group.peer, call, exc, started=started)
            return
        if any(call.request_id for call in calls):
            calls = group.calls = self._lane_claims(group, server, started)
            if not calls:
                return
        try:
            models = self._repository.route_many(group.model_name, group.model_version,
                                                 len(calls))
        except Exception as exc:
            for call in calls:
                self._lane_fail(server, group.peer, call, exc, started=started)
            self._leave(len(calls))
            return
        for model, first, end in group.runs(models):
            self._submit_lane(group, model, first, end, server, started)

    def _lane_claims(self, group: LaneGroup, server: NativeServer, started: float
                     ) -> list[LaneCall]:
        """The calls of `group` to run: each call with a request id whose first is running
        or answered already (edgecut.cloud.dedup) is left and answered with the first's
        answer, now or once it has one; a call that leads its id is marked (_lane_flights)."""
        try:
            self._authorize(group.peer, group.model_name)
        except Exception:
            return group.calls  # refused on the way, as any call
        run = []
        for call in group.calls:
            key = request_key(group.peer or call.address, group.model_name,
                              group.model_version, _text(call.request_id), call.message)
            if key is None:
                run.append(call)
                continue
            claim = self._dedup.claim(key)
            if claim.flight is not None:
                self._lane_flights[call.call_id] = claim.flight
                run.append(call)
                continue
            self._leave()
            context = server.lane_context(call.call_id, group.peer, call.time_left_s,
                                          call.address)
            self._answer_again_later(claim, memoryview(call.message), context,
                                     device=group.peer, started=started,
                                     request_id=_text(call.request_id))
        return run

    def _lane_settle(self, call: LaneCall, answer: StoredAnswer | None) -> None:
        """End the flight `call` leads, if it leads one, with `answer`."""
        if self._lane_flights:
            flight = self._lane_flights.pop(call.call_id, None)
            if flight is not None:
                self._dedup.settle(flight, answer)

    def _submit_lane(self, group: LaneGroup, model: LoadedModel, first: int, end: int,
                     server: NativeServer, started: float) -> None:
        """Check calls first..end-1 of `group` and queue each; every call is counted in
        (_enter) and left here on failure, or once answered (_lane_answer)."""
        try:
            self._authorize(group.peer, model.name)
            scheduler = self._scheduler.for_model(model)
        except Exception as exc:
            for call in group.calls[first:end]:
                self._lane_fail(server, group.peer, call, exc, model=model, started=started)
            self._leave(end - first)
            return
        ready, outputs = self._lane_prepare(group, model, first, end, server, started)
        if not ready:
            return
        ticket = LaneTicket(self._lane_answer, server, group, model, outputs, started)
        slots = [LaneSlot(ticket, i) for i, _ in ready]
        calls = group.calls
        try:
            queued, refused = scheduler.submit_many(
                [inputs for _, inputs in ready], [o.name for o in outputs], slots,
                timeouts_s=[calls[i].time_left_s for i, _ in ready],
                cancelled=[functools.partial(server.call_cancelled, calls[i].call_id)
                           for i, _ in ready],
                request_ids=[_text(calls[i].request_id) for i, _ in ready])
        except Exception as exc:
            queued, refused = 0, exc
        if refused is not None:
            for slot in slots[queued:]:
                self._lane_fail(server, group.peer, slot.call, refused, model=model,
                                started=started)
            self._leave(len(slots) - queued)

    def _lane_prepare(self, group: LaneGroup, model: LoadedModel, first: int, end: int,
                      server: NativeServer, started: float
                      ) -> tuple[list[tuple[int, dict[str, np.ndarray]]], tuple[Any, ...]]:
        """The inputs of each call of first..end-1 that passes prepare's checks, with the
        outputs they ask for; each call that fails is answered and left here.

        The checks depend on the model version and the calls' layout (names, datatypes,
        shapes, outputs), which the group's calls share: a layout the version accepted once
        (LoadedModel.accepted_layouts) is not checked again. Calls over the decoded-bytes
        limit, and BOOL tensors, whose values are checked too, go through prepare each time.
        """
        accepted = (model.accepted_layouts.get(group.layout)
                    if group.call_bytes <= self._max_decoded_bytes else None)
        ready: list[tuple[int, dict[str, np.ndarray]]] = []
        outputs: tuple[Any, ...] = accepted.outputs if accepted is not None else ()
        for i in range(first, end):
            if accepted is not None:
                ready.append((i, group.inputs_as(i, accepted.dtypes)))
                continue
            try:
                prepared = prepare(group.request(i), model,
                                   max_decoded_bytes=self._max_decoded_bytes)
            except Exception as exc:
                self._lane_fail(server, group.peer, group.calls[i], exc, model=model,
                                started=started)
                self._leave()
                continue
            ready.append((i, prepared.inputs))
            outputs = prepared.outputs
            accepted = AcceptedLayout(outputs=outputs,
                                      dtypes=tuple(a.dtype for a in prepared.inputs.values()))
            if not remember_layout(model.accepted_layouts, group, accepted):
                accepted = None  # values checked call by call
        return ready, outputs

    def _lane_answer(self, ticket: LaneTicket, slots: list[LaneSlot]) -> None:
        """Answer the calls of `slots` that one batch ran (GroupedReceiver.answer): those
        that ran together in one transport call, the others one by one."""
        group, model, server = ticket.lane_group, ticket.model, ticket.server
        try:
            ran = [s for s in slots if isinstance(s.outcome, BatchResult)]
            for slot in slots:
                if not isinstance(slot.outcome, BatchResult):
                    exc = slot.outcome
                    if isinstance(exc, CancelledError):
                        exc = CloudUnavailableError(
                            "the endpoint is shutting down; retry on another replica")
                    self._lane_fail(server, group.peer, slot.call, exc, model=model,
                                    started=ticket.started)
            if ran:
                self._lane_answer_ran(ticket, ran)
        finally:
            self._leave(len(slots))

    def _lane_answer_ran(self, ticket: LaneTicket, slots: list[LaneSlot]) -> None:
        group, model, server = ticket.lane_group, ticket.model, ticket.server
        calls = [slot.call for slot in slots]
        columns = []
        for j, output in enumerate(ticket.outputs):
            shares = [slot.outcome.outputs[j] for slot in slots]
            inner = shares[0].shape[1:] if shares[0].ndim else None
            if inner is None or any(share.shape != (group.rows, *inner) for share in shares):
                # Outputs that do not follow the batch dimension: each as it is.
                for slot in slots:
                    self._lane_encoded(ticket, slot, server)
                return
            datatype = datatype_of(shares[0].dtype)
            joined = shares[0] if len(shares) == 1 else np.concatenate(shares)
            columns.append((output.name, datatype, inner,
                            np.ascontiguousarray(joined, dtype=dtype_of(datatype))))
        # Counted before the answers go, as infer_later counts: a client that has its answer
        # finds its call in the statistics. The calls of a ticket were queued together, so
        # one batch gave them the same times.
        in_bytes = group.call_bytes
        out_bytes = sum(column[3].nbytes for column in columns) // len(calls)
        result = slots[0].outcome
        self._observe(model, LaneOutcome(
            raw_bytes_in=in_bytes, wire_bytes_in=in_bytes, raw_bytes_out=out_bytes,
            wire_bytes_out=out_bytes, queue_s=result.queue_s, compute_s=result.compute_s,
            batch_rows=result.batch_rows,
        ), device=group.peer, started=ticket.started,
            request_ids=[_text(c.request_id) for c in calls])
        flights = self._lane_flights
        keep = [c.call_id in flights for c in calls] if flights else []
        _, kept = server.finish_infers(
            [c.call_id for c in calls], [c.request_id for c in calls],
            [group.rows] * len(calls), model.name, str(model.version), columns,
            queue_ms=[result.queue_s * 1e3] * len(calls),
            compute_ms=[result.compute_s * 1e3] * len(calls),
            keep=keep if any(keep) else [])
        for call, payload in zip(calls, kept, strict=False):
            if payload is not None:
                self._lane_settle(call, StoredAnswer(response=payload, model=model.name,
                                                     version=str(model.version)))
            elif call.call_id in flights:
                self._lane_settle(call, None)

    def _lane_encoded(self, ticket: LaneTicket, slot: LaneSlot, server: NativeServer) -> None:
        """Answer one lane call from its outputs as they are, as infer_later would."""
        group, model, call, result = ticket.lane_group, ticket.model, slot.call, slot.outcome
        request = group.request(slot.index)
        try:
            response, raw_out, wire_out = encode_outputs(request, model, ticket.outputs,
                                                         result.outputs)
        except Exception as exc:
            self._lane_fail(server, group.peer, call, exc, model=model, started=ticket.started)
            return
        set_timing(response, queue_s=result.queue_s, compute_s=result.compute_s)
        in_bytes = group.call_bytes
        self._observe_infer(model, LaneOutcome(
            raw_bytes_in=in_bytes, wire_bytes_in=in_bytes, raw_bytes_out=raw_out,
            wire_bytes_out=wire_out, queue_s=result.queue_s, compute_s=result.compute_s,
            batch_rows=result.batch_rows,
        ), device=group.peer, started=ticket.started, request_id=_text(call.request_id))
        payload = response.SerializeToString()
        self._lane_settle(call, StoredAnswer(response=payload, model=model.name,
                                             version=str(model.version)))
        context = server.lane_context(call.call_id, group.peer, call.time_left_s, call.address)
        context.finish(payload)

    def _lane_fail(self, server: NativeServer, peer: str | None, call: LaneCall,
                   exc: Exception, *, started: float, model: LoadedModel | None = None) -> None:
        self._lane_settle(call, kept_error(exc, model))
        context = server.lane_context(call.call_id, peer, call.time_left_s, call.address)
        self._abort_later(context, exc, device=peer, model=model, started=started,
                          request_id=_text(call.request_id))


def _text(request_id: bytes) -> str:
    """A lane call's request id as protobuf would read it (lane ids arrive as bytes)."""
    return request_id.decode(errors="replace")
