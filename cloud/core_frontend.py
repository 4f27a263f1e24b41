"""The endpoint's transport over grpcio's own core (grpc._cython.cygrpc), for installations
without gRPC's C++ library: what `pip install` gives where the native transport is not built.

grpcio's grpc.server passes every call through its thread pool, and the pool thread then
waits twice: for the request message, and (a batched model) for its batch. CoreFrontend
drives gRPC's completion queue itself from one thread, as frontend.cc does in C++, and hands
each call to NativeServer as it arrives with its whole request, with no thread waiting per
call. The other methods run on the executor as over the native transport.

ModelInfer takes the infer lane as over the native transport (cloud/infer_lane.py): a plain
call (cloud/plain_infer.py) is read here, and the plain calls that arrived together (all
that the completion queue held when it was next empty) go to the servicer in groups, whose
answers one run gave are written and sent in one call (finish_infers). Python's per-call
work (parsing into protobuf, a Future, a response message, the accounting) is then done once
per group or run, not once per call. Calls that are not plain go to the deferred handler
(infer_later), answered by the model worker that ran their batch.

It has the interface of edgecut.cloud._frontend.Frontend that NativeServer uses (start,
stop, finish, finish_infers, write, cancelled, watch_done, port, lane_calls, refused_calls).
cygrpc is grpcio's internal API, the one its own servers are written on; grpcio is pinned in
pyproject.toml and tests/cloud run every transport test over this one too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc._cython import cygrpc

from .plain_infer import PlainReader, ResponseWriter
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
_OK = grpc.StatusCode.OK.value[0]
# A call refused at the open-call limit gets this retry hint, as over the native transport.
RETRY_AFTER_MS_AT_LIMIT = "50"
# Calls asked for ahead of their arrival (frontend.cc's accept_depth).
ACCEPT_DEPTH = 64
# No deadline: gRPC reports one this far away or more.
_NO_DEADLINE_S = 1e8
_POLL_S = 0.2
# Plain calls passed on in one group at most: a burst larger than this is passed in parts,
# so the first calls of it are not held back by the reading of the last.
LANE_GROUP_MAX = 64
_NEW, _READ, _CLOSED, _SENT, _SHUTDOWN = range(5)
# gRPC's own I/O threads (its EventEngine's pool, which reads, decrypts and parses what
# arrives), by their kernel name, and how often the completion-queue thread looks for new ones.
GRPC_IO_THREAD = "event_engine"
_IO_THREADS_CHECK_S = 1.0


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
                 channel_args: Sequence[tuple[str, int | str]] = (),
                 client_certificates: bool = True) -> None:
        # client_certificates: whether clients present certificates (mutual TLS); without,
        # no call has a peer name to read from its auth context.
        self._client_certificates = client_certificates
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
        self._infer_method = ""  # "": no infer lane
        self._infer_excluded: frozenset[bytes] = frozenset()
        self._plain = PlainReader()  # read on the completion-queue thread only
        # Plain calls read since the last group went, by what lets calls share a group.
        self._lane: dict[tuple, list[tuple]] = {}
        self._lane_waiting = 0
        self.lane_calls = 0

    @property
    def refused_calls(self) -> int:
        return self._refused

    def enable_infer_lane(self, method: str, excluded: Sequence[str]) -> None:
        """Take the plain calls of `method` through the infer lane (module docstring), except
        those to `excluded` models. Before start()."""
        if self._thread is not None:
            raise RuntimeError("enable_infer_lane comes before start()")
        self._infer_method = method
        self._infer_excluded = frozenset(name.encode() for name in excluded)

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

    def finish_infers(self, call_ids: Sequence[int], request_ids: Sequence[bytes],
                      rows: Sequence[int], model_name: str, model_version: str,
                      outputs: list[tuple[str, str, tuple[int, ...], Any]],
                      queue_ms: Sequence[float], compute_ms: Sequence[float],
                      keep: Sequence[bool]) -> int | tuple[int, list[bytes | None]]:
        """Answer infer-lane calls from one run, as frontend.cc's finish_infers: `outputs`
        holds (name, datatype, inner shape, buffer) per output, each buffer C-contiguous
        with the rows of every call in turn; call i gets the next rows[i] of them, and its
        `queue_ms` and `compute_ms` where given. Returns how many calls were still open;
        with `keep`, also the answers' bytes of the calls it marks (None for the others)."""
        count = len(call_ids)
        if len(request_ids) != count or len(rows) != count:
            raise ValueError("finish_infers: call_ids, request_ids and rows differ in length")
        timed = bool(queue_ms) or bool(compute_ms)
        if timed and (len(queue_ms) != count or len(compute_ms) != count):
            raise ValueError("finish_infers: queue_ms and compute_ms need one entry per call")
        if keep and len(keep) != count:
            raise ValueError("finish_infers: keep needs one entry per call")
        if any(n < 0 for n in rows):
            raise ValueError("finish_infers: negative rows")
        writer = ResponseWriter(model_name, model_version, outputs)
        if writer.rows_held() != sum(rows):
            raise ValueError(f"finish_infers: the outputs do not hold {sum(rows)} rows each")
        answered = 0
        kept: list[bytes | None] = []
        for i, call_id in enumerate(call_ids):
            payload = writer.response(request_ids[i], rows[i],
                                      queue_ms=queue_ms[i] if timed else None,
                                      compute_ms=compute_ms[i] if timed else None)
            if keep:
                kept.append(payload if keep[i] else None)
            call = self._calls.get(call_id)
            if call is None:
                continue
            with call.lock:
                if call.final is not None or call.closed:
                    continue
                call.final = (cygrpc.SendStatusFromServerOperation((), _OK, b"", _FLAGS),
                              cygrpc.SendMessageOperation(payload, _FLAGS))
                if not call.sending:
                    call.final_started = True
                    self._send(call, list(call.final))
            answered += 1
        return (answered, kept) if keep else answered

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
        io_threads: set[int] = set()
        check_io_threads_at = 0.0
        while True:
            # gRPC's I/O threads yield to model runs too: each arriving packet wakes one, and
            # under the default policy that wake-up preempts a run (the native transport's
            # threads yield for the same reason). Its pool may start threads at any time.
            if time.monotonic() >= check_io_threads_at:
                yield_grpc_io_threads(io_threads)
                check_io_threads_at = time.monotonic() + _IO_THREADS_CHECK_S
            # With plain calls waiting, only a look: once nothing more has arrived, they go.
            event = self._cq.poll(0.0 if self._lane_waiting else time.time() + _POLL_S)
            if event.completion_type == queue_timeout:
                if self._lane_waiting:
                    self._pass_lane()
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
            if self._lane_waiting >= LANE_GROUP_MAX:
                self._pass_lane()

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
        peer = _peer_name(call.call) if self._client_certificates else None
        if call.method == self._infer_method:
            plain = self._plain.read(payload)
            if plain is not None and plain.model_name not in self._infer_excluded:
                self._take_lane_call(call, plain, payload, peer, time_left_s)
                return
        address = _peer_address(call.call)
        metadata = [tuple(m) for m in call.metadata]
        assert self._dispatch is not None
        self._dispatch([(call.id, call.method, payload, metadata, peer, time_left_s, address)],
                       ())

    def _take_lane_call(self, call: _Call, plain: Any, payload: bytes, peer: str | None,
                        time_left_s: float | None) -> None:
        """Keep a plain call for the next group (frontend.cc's lane_key says which share)."""
        # Only a call with a request id needs its address (deduplication).
        address = _peer_address(call.call) if plain.id else None
        key = (plain.model_name, plain.model_version, peer, plain.inputs, plain.outputs)
        entry = (call.id, plain.id, time_left_s, payload, plain.offsets, address)
        self._lane.setdefault(key, []).append(entry)
        self._lane_waiting += 1
        self.lane_calls += 1

    def _pass_lane(self) -> None:
        """Pass the plain calls read since the last group on, one group per key, in the
        tuples frontend.cc's lane_groups makes."""
        groups = [(name, version, peer, list(inputs), list(outputs), calls)
                  for (name, version, peer, inputs, outputs), calls in self._lane.items()]
        self._lane = {}
        self._lane_waiting = 0
        assert self._dispatch is not None
        try:
            self._dispatch((), (), groups)
        except Exception:  # NativeServer answers the calls of a failed group; this thread stays
            logger.exception("passing %d infer-lane groups failed", len(groups))

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


def _peer_address(call: Any) -> str:
    """The client's address as gRPC gives it (e.g. "ipv4:127.0.0.1:51234")."""
    address = call.peer()
    return address.decode("utf-8", "replace") if isinstance(address, bytes) else address


def _peer_name(call: Any) -> str | None:
    """The client certificate's common name under mutual TLS, else None."""
    auth = cygrpc.auth_context(call)
    names = auth.get(b"x509_common_name") or auth.get("x509_common_name") if auth else None
    if not names:
        return None
    name = names[0]
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def yield_grpc_io_threads(done: set[int]) -> int:
    """Put this process's gRPC I/O threads (GRPC_IO_THREAD) not in `done` under SCHED_BATCH,
    adding them to `done`; returns how many were new. Best effort: a thread may end meanwhile,
    and where the kernel refuses, they keep their policy."""
    new = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for task in tasks:
        tid = int(task)
        if tid in done:
            continue
        done.add(tid)
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as comm:
            if comm.read().strip() == GRPC_IO_THREAD:
                new += yield_to_models(tid)
    return new
