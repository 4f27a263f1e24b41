"""Canary releases: a share of a model's traffic goes to a candidate version.

    >>> route = CanaryRoute(stable=1, candidate=2, percent=25)
    >>> [route.pick() for _ in range(8)]
    [1, 1, 2, 1, 1, 1, 2, 1]

The split is a smooth weighted round robin (nginx's): deterministic, exact over every window
of 100 / gcd(percent, 100) requests, and it interleaves the candidate's requests instead of
sending them in a burst. A route is immutable apart from its counter: changing the split,
promoting or rolling back replaces the whole route at once (edgecut.cloud.repository swaps it
under its lock), so a request is always routed by one complete table and never fails because
of a switch. Per-version traffic (runs, failures, time) is kept by VersionTraffic, attached
to each loaded version, so the two sides of a canary can be compared.
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
    """What one model version did since it was loaded (an immutable snapshot)."""

    name: str
    version: int
    executions: int = 0  # session runs
    inferences: int = 0  # requests' batch sizes summed (1 per run for unbatched models)
    failures: int = 0
    success_ns: int = 0
    failure_ns: int = 0
    in_flight: int = 0
    last_inference_ms: int = 0  # since the epoch; 0: never
    batches: Mapping[int, tuple[int, int]] = field(
        default_factory=lambda: MappingProxyType({}))  # batch size -> (runs, ns)

    @property
    def mean_latency_ms(self) -> float:
        ok = self.executions - self.failures
        return self.success_ns / ok / 1e6 if ok else 0.0

    @property
    def error_rate(self) -> float:
        return self.failures / self.executions if self.executions else 0.0


class VersionTraffic:
    """Thread-safe counters of one loaded version; `snapshot()` copies them."""

    def __init__(self, name: str, version: int) -> None:
        self._name = name
        self._version = version
        self._lock = threading.Lock()
        self._executions = self._inferences = self._failures = 0
        self._success_ns = self._failure_ns = 0
        self._in_flight = 0
        self._last_ms = 0
        self._batches: dict[int, list[int]] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def started(self) -> int:
        with self._lock:
            self._in_flight += 1
        return time.perf_counter_ns()

    def finished(self, started_ns: int, *, ok: bool, batch_size: int) -> None:
        elapsed = time.perf_counter_ns() - started_ns
        with self._lock:
            self._in_flight -= 1
            self._executions += 1
            self._last_ms = time.time_ns() // 1_000_000
            if ok:
                self._inferences += batch_size
                self._success_ns += elapsed
                entry = self._batches.setdefault(batch_size, [0, 0])
                entry[0] += 1
                entry[1] += elapsed
            else:
                self._failures += 1
                self._failure_ns += elapsed

    def snapshot(self) -> VersionStatistics:
        with self._lock:
            return VersionStatistics(
                name=self._name, version=self._version, executions=self._executions,
                inferences=self._inferences, failures=self._failures,
                success_ns=self._success_ns, failure_ns=self._failure_ns,
                in_flight=self._in_flight, last_inference_ms=self._last_ms,
                batches=MappingProxyType({k: (v[0], v[1]) for k, v in self._batches.items()}),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryStatus:
    """A model's canary: the split and each side's traffic since it was loaded."""

    name: str
    stable: int
    candidate: int
    percent: int
    stable_traffic: VersionStatistics
    candidate_traffic: VersionStatistics
