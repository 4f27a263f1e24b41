"""Canary releases: a share of a model's traffic goes to a candidate version.

    >>> route = CanaryRoute(stable=1, candidate=2, percent=25)
    >>> [route.pick() for _ in range(8)]
    [1, 1, 2, 1, 1, 1, 2, 1]

The split is a smooth weighted round robin (nginx's): deterministic, exact over every window
of 100 / gcd(percent, 100) requests, and it interleaves the candidate's requests instead of
sending them in a burst. A route is immutable apart from its counter: changing the split,
promoting or rolling back replaces the whole route at once (edgecut.cloud.repository swaps it
under its lock), so a request is always routed by one complete table and never fails because
of a switch. Per-version traffic is kept by VersionTraffic, attached to each loaded version,
so the two sides of a canary can be compared: requests (answered, failed, their time) and
model runs (by batch size), counted apart as Triton's statistics extension counts them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edgecut.errors import UserInputError

__all__ = ["CanaryRoute", "CanaryStatus", "VersionStatistics", "VersionTraffic"]


class CanaryRoute:
    """`percent` % of unversioned requests to `candidate`, the rest to `stable`. Thread-safe."""

    __slots__ = ("_current", "_lock", "_weights", "candidate", "percent", "stable")

    def __init__(self, *, stable: int, candidate: int, percent: int) -> None:
        if stable == candidate:
            raise UserInputError(f"canary version {candidate} is already the stable version; "
                                 f"name another version")
        if not 0 <= percent <= 100:
            raise UserInputError(f"canary percent must be in 0..100, got {percent}")
        self.stable = stable
        self.candidate = candidate
        self.percent = percent
        divisor = math.gcd(percent, 100) or 100
        self._weights = ((stable, (100 - percent) // divisor), (candidate, percent // divisor))
        self._current = [0, 0]
        self._lock = threading.Lock()

    @property
    def versions(self) -> tuple[int, int]:
        return (self.stable, self.candidate)

    def pick(self) -> int:
        """The version for the next request (smooth weighted round robin)."""
        total = self._weights[0][1] + self._weights[1][1]
        with self._lock:
            for i, (_, weight) in enumerate(self._weights):
                self._current[i] += weight
            best = 0 if self._current[0] >= self._current[1] else 1
            self._current[best] -= total
        return self._weights[best][0]

    def __repr__(self) -> str:
        return f"CanaryRoute(stable={self.stable}, candidate={self.candidate}, percent={self.percent})"


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionStatistics:
    """What one model version did since it was loaded (an immutable snapshot).

    Requests and model runs are counted apart, as Triton's statistics extension counts them:
    four requests of 2 rows each, batched into one run, are 4 `successes`, 1 execution and 8
    `inferences`. Request counts and times come from whoever answers the request (the
    endpoint's servicer, through LoadedModel.request_succeeded / request_failed); run counts
    from the version's TrackedSession.
    """

    name: str
    version: int
    successes: int = 0  # requests answered
    failures: int = 0  # requests routed to this version that failed
    success_ns: int = 0  # answered requests' time in the endpoint, summed
    failure_ns: int = 0  # failed requests' time in the endpoint, summed
    queue_ns: int = 0  # answered requests' wait for their run, summed
    compute_ns: int = 0  # answered requests' run time, summed (a run of n requests counts n times)
    executions: int = 0  # successful session runs, however many requests each carried
    inferences: int = 0  # rows of those runs (1 per run for unbatched models)
    in_flight: int = 0  # session runs going on now
    last_inference_ms: int = 0  # since the epoch; 0: never
    batches: Mapping[int, tuple[int, int]] = field(
        default_factory=lambda: MappingProxyType({}))  # batch size -> (successful runs, ns)

    @property
    def mean_latency_ms(self) -> float:
        """Answered requests' mean time in the endpoint (Triton's success.ns / success.count)."""
        return self.success_ns / self.successes / 1e6 if self.successes else 0.0

    @property
    def error_rate(self) -> float:
        """Failed requests' share of all requests that reached this version."""
        requests = self.successes + self.failures
        return self.failures / requests if requests else 0.0


class VersionTraffic:
    """Thread-safe counters of one loaded version; `snapshot()` copies them.

    Two kinds of event feed it: a session run (`run_started` / `run_finished`, from
    TrackedSession) and a request's end (`request_succeeded` / `request_failed`, once per
    request, from the code that answers it).

        >>> traffic = VersionTraffic("m", 1)
        >>> traffic.run_finished(traffic.run_started(), ok=True, batch_size=4)
        >>> for _ in range(2):
        ...     traffic.request_succeeded(request_s=0.002, queue_s=0.001, compute_s=0.001)
        >>> stats = traffic.snapshot()
        >>> (stats.successes, stats.executions, stats.inferences, sorted(stats.batches))
        (2, 1, 4, [4])
    """

    def __init__(self, name: str, version: int) -> None:
        self._name = name
        self._version = version
        self._lock = threading.Lock()
        self._successes = self._failures = 0
        self._success_ns = self._failure_ns = self._queue_ns = self._compute_ns = 0
        self._executions = self._inferences = 0
        self._in_flight = 0
        self._last_ms = 0
        self._batches: dict[int, list[int]] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def run_started(self) -> int:
        """Count a session run in; returns its start, for run_finished."""
        with self._lock:
            self._in_flight += 1
        return time.perf_counter_ns()

    def run_finished(self, started_ns: int, *, ok: bool, batch_size: int) -> None:
        """A session run of `batch_size` rows ended; only successful runs are executions."""
        elapsed = time.perf_counter_ns() - started_ns
        with self._lock:
            self._in_flight -= 1
            self._last_ms = max(self._last_ms, time.time_ns() // 1_000_000)
            if ok:
                self._executions += 1
                self._inferences += batch_size
                entry = self._batches.setdefault(batch_size, [0, 0])
                entry[0] += 1
                entry[1] += elapsed

    def request_succeeded(self, *, request_s: float, queue_s: float = 0.0,
                          compute_s: float = 0.0, count: int = 1) -> None:
        """`count` requests answered, each `request_s` in the endpoint, of which `queue_s`
        waiting for its run and `compute_s` in it (the whole run's time, even when shared)."""
        with self._lock:
            self._successes += count
            self._success_ns += _ns(request_s) * count
            self._queue_ns += _ns(queue_s) * count
            self._compute_ns += _ns(compute_s) * count
            self._last_ms = max(self._last_ms, time.time_ns() // 1_000_000)

    def request_failed(self, *, request_s: float) -> None:
        """One request failed after it was routed to this version, `request_s` in the endpoint."""
        with self._lock:
            self._failures += 1
            self._failure_ns += _ns(request_s)
            self._last_ms = max(self._last_ms, time.time_ns() // 1_000_000)

    def snapshot(self) -> VersionStatistics:
        with self._lock:
            return VersionStatistics(
                name=self._name, version=self._version, successes=self._successes,
                failures=self._failures, success_ns=self._success_ns,
                failure_ns=self._failure_ns, queue_ns=self._queue_ns,
                compute_ns=self._compute_ns, executions=self._executions,
                inferences=self._inferences, in_flight=self._in_flight,
                last_inference_ms=self._last_ms,
                batches=MappingProxyType({k: (v[0], v[1]) for k, v in self._batches.items()}),
            )


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryStatus:
    """A model's canary: the split and each side's traffic since it was loaded."""

    name: str
    stable: int
    candidate: int
    percent: int
    stable_traffic: VersionStatistics
    candidate_traffic: VersionStatistics
