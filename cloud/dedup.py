"""Request-id deduplication: a ModelInfer sent again is answered again, not computed again.

A device retries a call when an attempt's deadline ran out, the connection dropped or its
gRPC retry policy says so; the retry carries the same message with the same `id`. The first
call may still be running, or have been answered a moment ago to a client that never got
the answer. Either way the retry gets the first call's answer (or its error) and the model
does not run twice.

    first call     claim(key) -> lead        ... runs ...  settle(flight, answer)
    again, while   claim(key) -> waiting     a Future: the answer, or None (run it yourself)
      it runs
    again, within  claim(key) -> answer      at once
      ttl_s after

A key is (caller, model name, model version as asked, request id, the message's size and
CRC-32): the caller is the device's certificate name under mutual TLS, else the peer address
(one connection); the checksum keeps a client that reuses one id for other requests from
getting another request's answer (it costs 0.45 ms per MiB of message, paid only by requests
with an id). Requests with an empty id are never deduplicated (tritonclient sends "").

What is kept, `ttl_s` long and within `max_entries` and `max_bytes` (the oldest go first):
answers, and errors that are the request's own fault (they would come out the same again).
A failure that another attempt may not meet (a full queue, a deadline, a cancelled caller, a
draining server) ends the flight unkept: the calls that waited for it run themselves.

    >>> dedup = RequestDeduplicator(ttl_s=60.0)
    >>> key = request_key("pi4", "m", "", "req-1", b"message")
    >>> first = dedup.claim(key); first.flight is not None
    True
    >>> again = dedup.claim(key); again.waiting is not None and not again.waiting.done()
    True
    >>> dedup.settle(first.flight, StoredAnswer(response=b"answer", model="m", version="1"))
    >>> again.waiting.result().response, dedup.claim(key).answer.response
    (b'answer', b'answer')
    >>> request_key("pi4", "m", "", "", b"message") is None  # no id: never deduplicated
    True
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from edgecut.errors import ProtocolError, UserInputError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL_S",
    "Claim",
    "DedupStatistics",
    "Flight",
    "RequestDeduplicator",
    "StoredAnswer",
    "kept_error",
    "request_key",
]

DEFAULT_TTL_S = 60.0
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 << 20

RequestKey = tuple[str, str, str, str, int, int]


def request_key(caller: str | None, model: str, version: str, request_id: str,
                message: bytes | memoryview | Any) -> RequestKey | None:
    """The key of a request whose serialized ModelInferRequest is `message` (any buffer);
    None when it is never deduplicated (no id, or no caller)."""
    if not request_id or caller is None:
        return None
    view = memoryview(message)
    return (caller, model, version, request_id, view.nbytes, zlib.crc32(view))


def kept_error(exc: BaseException, model: Any | None) -> StoredAnswer | None:
    """The error a first request failed with, to give again to its repeats: only the
    request's own fault (UserInputError, ProtocolError: it would fail the same again); None
    for the rest (a full queue, a deadline, a cancelled caller, a draining server), which
    another attempt may not meet. `model`: the LoadedModel it was routed to, if any."""
    if not isinstance(exc, (UserInputError, ProtocolError)):
        return None
    return StoredAnswer(error=exc, model=model.name if model is not None else "",
                        version=str(model.version) if model is not None else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredAnswer:
    """A request's answer as the transport sends it (the response's bytes), or its error;
    the model version that computed it, for the metrics."""

    response: bytes | None = field(default=None, repr=False)
    error: Exception | None = None
    model: str
    version: str

    @property
    def nbytes(self) -> int:
        return len(self.response) if self.response is not None else 256

    def __post_init__(self) -> None:
        if (self.response is None) == (self.error is None):
            raise ValueError("a stored answer holds a response or an error, exactly one")


class Flight:
    """A request being computed: the token its leader settles, and who waits for it."""

    __slots__ = ("key", "waiters")

    def __init__(self, key: RequestKey):
        self.key = key
        self.waiters: list[Future[StoredAnswer | None]] = []


class Claim(NamedTuple):
    """claim()'s verdict: exactly one member is set. `flight`: this request leads (run it,
    then settle the flight); `waiting`: the first is running (its Future gives the answer,
    or None: run this one); `answer`: the first was answered already."""

    flight: Flight | None = None
    waiting: Future[StoredAnswer | None] | None = None
    answer: StoredAnswer | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DedupStatistics:
    in_flight: int
    kept: int
    kept_bytes: int
    answered_again: int  # requests answered from another's computation


class RequestDeduplicator:
    """The requests in flight and the answers kept (see the module docstring); thread-safe."""

    def __init__(self, *, ttl_s: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s < 0 or max_entries < 0 or max_bytes < 0:
            raise ValueError(f"ttl_s, max_entries and max_bytes must be >= 0 (0: keep no "
                             f"answers, share only those in flight), got {ttl_s}, "
                             f"{max_entries}, {max_bytes}")
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._flights: dict[RequestKey, Flight] = {}
        # Answered in order, so expiring and evicting both take from the front.
        self._kept: OrderedDict[RequestKey, tuple[StoredAnswer, float]] = OrderedDict()
        self._kept_bytes = 0
        self._answered_again = 0

    def claim(self, key: RequestKey) -> Claim:
        with self._lock:
            self._expire(self._clock())
            kept = self._kept.get(key)
            if kept is not None:
                self._answered_again += 1
                return Claim(answer=kept[0])
            flight = self._flights.get(key)
            if flight is not None:
                waiting: Future[StoredAnswer | None] = Future()
                flight.waiters.append(waiting)
                return Claim(waiting=waiting)
            flight = self._flights[key] = Flight(key)
            return Claim(flight=flight)

    def settle(self, flight: Flight, answer: StoredAnswer | None) -> None:
        """End `flight` with `answer` (kept for the TTL), or with None: not kept, and its
        waiters run their own requests. A flight settles once; later calls do nothing."""
        with self._lock:
            if self._flights.get(flight.key) is not flight:
                return
            del self._flights[flight.key]
            if answer is not None:
                self._answered_again += len(flight.waiters)
                if self._ttl_s > 0 and answer.nbytes <= self._max_bytes:
                    self._keep(flight.key, answer)
            waiters, flight.waiters = flight.waiters, []
        for waiting in waiters:  # outside the lock: a waiter may claim again at once
            waiting.set_result(answer)

    def statistics(self) -> DedupStatistics:
        with self._lock:
            return DedupStatistics(in_flight=len(self._flights), kept=len(self._kept),
                                   kept_bytes=self._kept_bytes,
                                   answered_again=self._answered_again)

    def _keep(self, key: RequestKey, answer: StoredAnswer) -> None:
        replaced = self._kept.pop(key, None)
        if replaced is not None:
            self._kept_bytes -= replaced[0].nbytes
        self._kept[key] = (answer, self._clock() + self._ttl_s)
        self._kept_bytes += answer.nbytes
        while self._kept and (len(self._kept) > self._max_entries
                              or self._kept_bytes > self._max_bytes):
            _, (evicted, _) = self._kept.popitem(last=False)
            self._kept_bytes -= evicted.nbytes

    def _expire(self, now: float) -> None:
        kept = self._kept
        while kept:
            key, (answer, expires) = next(iter(kept.items()))
            if expires > now:
                return
            del kept[key]
            self._kept_bytes -= answer.nbytes
