"""Request-id deduplication's hooks in InferenceServicer (edgecut.cloud.dedup holds the
requests in flight and the answers kept): a repeated ModelInfer waits for the first one's
answer, or gets it at once, on both transports.

A mixin, as lane_handlers is: a repeat's answer is counted and logged with the servicer's own
recorder, metrics and request log, and its error is the status the first call got.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future
from typing import Any

import grpc

from edgecut.errors import DeadlineExceededError
from edgecut.protocol.rawfields import InferRequestView

from .dedup import Claim, Flight, RequestKey, StoredAnswer, request_key
from .native_server import CallAborted, NativeContext
from .status import status_for


class DedupHandlers:
    """InferenceServicer's handling of repeated request ids (see the module docstring)."""

    # What InferenceServicer defines, declared here for readers and type checkers.
    _dedup: Any
    _recorder: Any
    _metrics: Any
    _request_log: Any
    infer_later: Any

    def _dedup_key(self, request: InferRequestView, device: str | None,
                   context: grpc.ServicerContext, message: bytes | memoryview
                   ) -> RequestKey | None:
        if not request.id:
            return None  # the common case (stock clients): nothing to look up
        if device is None:  # no certificate: the connection is the caller, where known
            peer = getattr(context, "peer", None)
            device = peer() if peer is not None else None
        return request_key(device, request.model_name, request.model_version, request.id,
                           message)

    def _await_first(self, key: RequestKey, context: grpc.ServicerContext
                     ) -> tuple[Flight | None, StoredAnswer | None]:
        """(the flight this call leads, None) or (None, the first call's answer), once the
        first call with `key` has one; DeadlineExceededError if this call's deadline comes
        first."""
        while True:
            claim = self._dedup.claim(key)
            if claim.flight is not None or claim.answer is not None:
                return claim.flight, claim.answer
            assert claim.waiting is not None
            while not claim.waiting.done():
                left = context.time_remaining()
                if (left is not None and left <= 0) or not context.is_active():
                    raise DeadlineExceededError(
                        f"the request with id {key[3]!r} sent before this one is still "
                        f"running; its answer did not come before this call's deadline")
                with contextlib.suppress(TimeoutError):
                    claim.waiting.result(timeout=min(left or 0.5, 0.5))
            answer = claim.waiting.result()
            if answer is not None:
                return None, answer
            # The first one failed in a way another attempt may not: this one runs (or
            # waits for whichever does now).

    def _answer_again_later(self, claim: Claim, data: bytes | memoryview,
                            context: NativeContext, **where: Any) -> None:
        """infer_later for a request whose first is answered or running: the first's answer
        now or once it has one, or this request run as new if the first's is not kept."""
        if claim.answer is not None:
            self._replay_later(claim.answer, context, **where)
            return
        assert claim.waiting is not None

        def first_done(waiting: Future[StoredAnswer | None]) -> None:
            answer = waiting.result()
            if answer is None:
                self.infer_later(data, context)
            else:
                self._replay_later(answer, context, **where)

        claim.waiting.add_done_callback(first_done)

    def _replay_later(self, answer: StoredAnswer, context: NativeContext, **where: Any
                      ) -> None:
        try:
            payload = self._replay(answer, context, **where)
        except CallAborted:
            context.finish(None)  # the context holds the status _replay gave it
            return
        context.finish(payload)

    def _replay(self, answer: StoredAnswer, context: grpc.ServicerContext, *,
                device: str | None, started: float, request_id: str) -> bytes:
        """Answer a call with another's `answer` (its response's bytes, or abort with its
        error), counted as an RPC and in edgecut_inference_deduplicated_total, not as a
        model's request: the model did not run for it."""
        code = "OK"
        if answer.error is not None:
            status, message = status_for(answer.error, rpc="ModelInfer")
            code = status.name
        self._recorder.record(rpc="ModelInfer", code=code, device=device)
        if self._metrics is not None:
            self._metrics.record_rpc(rpc="ModelInfer", code=code, device=device)
            self._metrics.record_deduplicated(model=answer.model, version=answer.version)
        self._request_log.log(model=answer.model, version=answer.version, device=device,
                              status=code, deduplicated=True,
                              request_ms=(time.perf_counter() - started) * 1e3, id=request_id)
        if answer.error is not None:
            context.abort(status, message)
            raise AssertionError("unreachable: grpc's context.abort raises")
        assert answer.response is not None
        return answer.response
