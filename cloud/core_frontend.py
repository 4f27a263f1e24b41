"""The endpoint's transport over grpcio's own core (grpc._cython.cygrpc), for installations
without gRPC's C++ library: what `pip install` gives where the native transport is not built.

grpcio's grpc.server passes every call through its thread pool, and the pool thread then
waits twice: for the request message, and (a batched model) for its batch. CoreFrontend
drives gRPC's completion queue itself from one thread, as frontend.cc does in C++, and hands
each call to NativeServer as it arrives with its whole request: ModelInfer goes to the
servicer's deferred handler (infer_later) and is answered by the model worker that ran its
batch, with no thread waiting per call. The other methods run on the executor as over the
native transport.

It has the interface of edgecut.cloud._frontend.Frontend that NativeServer uses (start,
stop, finish, write, cancelled, watch_done, port, lane_calls, refused_calls), without the
infer lane (that reads requests in C++). cygrpc is grpcio's internal API, the one its own
servers are written on; grpcio is pinned in pyproject.toml and tests/cloud run every
transport test over this one too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc._cython import cygrpc

from .threads import name_this_thread, yield_to_models

# What this transport takes from grpcio's internal Cython layer. It is not grpcio's public
# API: a release that renames any of it makes `auto` serve over grpc.server instead.
_CYGRPC_NAMES = ("Call", "CompletionQueue", "CompletionType", "ReceiveCloseOnServerOperation",
                 "ReceiveMessageOperation", "SendInitialMetadataOperation",
                 "SendMessageOperation", "SendStatusFromServerOperation", "Server",
                 "auth_context")


def core_available() -> bool:
    """Whether this grpcio has the internals the core transport drives."""
    return all(hasattr(cygrpc, name) for name in _CYGRPC_NAMES)

logger = logging.getLogger(__name__)

_FLAGS = 0
# A call refused at the open-call limit gets this retry hint, as over the native transport.
RETRY_AFTER_MS_AT_LIMIT = "50"
# Calls asked for ahead of their arrival (frontend.cc's accept_depth).
ACCEPT_DEPTH = 64
# No deadline: gRPC reports one this far away or more.
_NO_DEADLINE_S = 1e8
_POLL_S = 0.2
_NEW, _READ, _CLOSED, _SENT, _SHUTDOWN = range(5)


class _Call:
    """One open call: its cygrpc.Call, what has been sent, what waits to be sent."""

    __slots__ = (
        "call",
        "cancelled",
        "closed",
        "deadline",
        "final",
        "final_started",
        "id",
        "lock",
        "metadata",
        "metadata_sent",
        "method",
        "outbox",
        "sending",
        "watched",
    )

    def __init__(self, call: Any, call_id: int, method: str) -> None:
        self.call = call
        self.id = call_id
        self.method = method
        self.lock = threading.Lock()
        self.sending = False  # a batch with a message in it is in flight
        self.outbox: deque[bytes] = deque()
        self.final: tuple | None = None  # the status batch, once finish() was called
        self.final_started = False
        self.metadata_sent = False
        self.closed = False
        self.cancelled = False
        self.watched = False
        self.deadline = 0.0
        self.metadata: Any = ()


class CoreFrontend:
    """gRPC's completion queue driven from one Python thread (see the module docstring)."""

    def __init__(self, address: str, credentials: grpc.ServerCredentials | None, *,
                 max_message_bytes: int, max_open_calls: int,
                 channel_args: Sequence[tuple[str, int | str]] = ()) -> None:
        self._cq = cygrpc.CompletionQueue()
        options = (("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0), *channel_args)
        self._server = cygrpc.Server(tuple(options), False)
        self._server.register_completion_queue(self._cq)
        target = address.encode()
        if credentials is None:
            self.port = int(self._server.add_http2_port(target))
        else:
            self.port = int(self._server.add_http2_port(target, credentials._credentials))
        self._max_open_calls = max_open_calls
        self._calls: dict[int, _Call] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._refused = 0
        self._thread: threading.Thread | None = None
        self._dispatch: Callable[..., None] | None = None
        self._shutdown = threading.Event()
        self._stopping = False

    lane_calls = 0  # no infer lane here

    @property
    def refused_calls(self) -> int:
        return self._refused

    def enable_infer_lane(self, method: str, excluded: Sequence[str]) -> None:
        pass  # every ModelInfer goes to the deferred handler

    def start(self, dispatch: Callable[..., None]) -> None:
        self._dispatch = dispatch
        self._server.start()
        for _ in range(ACCEPT_DEPTH):
            self._server.request_call(self._cq, self._cq, (_NEW, None))
        self._thread = threading.Thread(target=self._poll, name="edgecut-grpc-cq",
                                        daemon=True)
        self._thread.start()

    def stop(self, grace_s: float) -> None:
        """Stop taking calls; give the open ones `grace_s`, then cancel them."""
        if self._thread is None or self._stopping:
            return
        self._stopping = True
        self._server.shutdown(self._cq, (_SHUTDOWN, None))
        if not self._shutdown.wait(max(0.0, grace_s)):
            self._server.cancel_all_calls()
            self._shutdown.wait(5.0)
        self._thread.join(timeout=5.0)

    # What NativeServer and NativeContext call, from any thread.
    def cancelled(self, call_id: int) -> bool:
        call = self._calls.get(call_id)
        return call is None or call.cancelled

    def watch_done(self, call_id: int) -> bool:
        call = self._calls.get(call_id)
        if call is None:
            return False
        with call.lock:
            if call.closed:
                return False
            call.watched = True
            return True

    def write(self, call_id: int, payload: bytes) -> bool:
        call = self._calls.get(call_id)
        if call is None:
            return False
        with call.lock:
            if call.closed or call.final is not None:
                return False
            if call.sending:
                call.outbox.append(bytes(payload))
            else:
                self._send(call, [cygrpc.SendMessageOperation(bytes(payload), _FLAGS)])
        return True

    def finish(self, call_id: int, code: int, details: str, payload: bytes | None,
               trailing: Sequence[tuple[str, str | bytes]]) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        ops = [cygrpc.SendStatusFromServerOperation(tuple(trailing), code,
                                                    details.encode("utf-8", "replace"),
                                                    _FLAGS)]
        if payload is not None:
            ops.append(cygrpc.SendMessageOperation(bytes(payload), _FLAGS))
        with call.lock:
            if call.final is not None or call.closed:
                return
            call.final = tuple(ops)
            if not call.sending:  # else it goes once the messages before it are sent
                call.final_started = True
                self._send(call, list(ops))

    def _send(self, call: _Call, ops: list) -> None:
        """Start one batch of sends (under call.lock); its completion sends what waits."""
        if not call.metadata_sent:
            ops.append(cygrpc.SendInitialMetadataOperation((), _FLAGS))
            call.metadata_sent = True
        call.sending = True
        call.call.start_server_batch(ops, (_SENT, call))

    # The completion-queue thread.
    def _poll(self) -> None:
        # Named and yielding as the native transport's threads: arriving calls do not
        # preempt a model run (the model workers it starts take the default policy back).
        name_this_thread("edgecut-grpc-cq")
        yield_to_models()
        queue_timeout = cygrpc.CompletionType.queue_timeout
        while True:
            event = self._cq.poll(time.time() + _POLL_S)
            if event.completion_type == queue_timeout:
                continue
            kind, call = event.tag
            try:
                if kind == _NEW:
                    self._arrived(event)
                elif kind == _READ:
                    self._read(call, event)
                elif kind == _SENT:
                    self._sent(call)
                elif kind == _CLOSED:
                    self._closed(call, event)
                else:  # _SHUTDOWN: every call is over
                    self._shutdown.set()
                    return
            except Exception:
                logger.exception("gRPC event %s failed", kind)
            event = None  # before the next poll: it may hold the last reference to a call

    def _arrived(self, event: Any) -> None:
        if not event.success:  # the server is shutting down
            return
        if not self._stopping:
            self._server.request_call(self._cq, self._cq, (_NEW, None))
        details = event.call_details
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        with self._lock:
            self._next_id += 1
            call = _Call(event.call, self._next_id, method)
            self._calls[call.id] = call
            over = len(self._calls) > self._max_open_calls
        call.deadline = details.deadline
        call.call.start_server_batch((cygrpc.ReceiveCloseOnServerOperation(_FLAGS),),
                                     (_CLOSED, call))
        if over:
            self._refused += 1
            self.finish(call.id, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                        f"the endpoint has {self._max_open_calls} calls open already "
                        f"(its limit); retry later",
                        None, (("retry-after-ms", RETRY_AFTER_MS_AT_LIMIT),))
            return
        call.metadata = event.invocation_metadata
        call.call.start_server_batch((cygrpc.ReceiveMessageOperation(_FLAGS),), (_READ, call))

    def _read(self, call: _Call, event: Any) -> None:
        payload = event.batch_operations[0].message() if event.success else None
        if payload is None:  # no message: the client went away, or sent none
            self.finish(call.id, grpc.StatusCode.INTERNAL.value[0],
                        "no request message was received", None, ())
            return
        left = call.deadline - time.time()
        time_left_s = None if left > _NO_DEADLINE_S else max(0.0, left)
        metadata = [tuple(m) for m in call.metadata]
        auth = cygrpc.auth_context(call.call)
        names = auth.get(b"x509_common_name") or auth.get("x509_common_name") if auth else None
        peer = None
        if names:
            name = names[0]
            peer = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        address = call.call.peer()
        if isinstance(address, bytes):
            address = address.decode("utf-8", "replace")
        assert self._dispatch is not None
        self._dispatch([(call.id, call.method, payload, metadata, peer, time_left_s, address)],
                       ())

    def _sent(self, call: _Call) -> None:
        with call.lock:
            call.sending = False
            if call.outbox:
                self._send(call, [cygrpc.SendMessageOperation(call.outbox.popleft(), _FLAGS)])
            elif call.final is not None and not call.final_started:
                call.final_started = True
                self._send(call, list(call.final))

    def _closed(self, call: _Call, event: Any) -> None:
        cancelled = bool(event.batch_operations[0].cancelled()) if event.success else True
        with call.lock:
            call.closed = True
            call.cancelled = cancelled and call.final is None
            watched = call.watched
        with self._lock:
            self._calls.pop(call.id, None)
        if watched and self._dispatch is not None:
            self._dispatch((), [call.id])
