"""Counters the endpoint keeps about its calls, and the immutable snapshots it hands out.

    >>> recorder = StatisticsRecorder()
    >>> recorder.record(rpc="ModelInfer", code="OK", device="pi4", model="m",
    ...                 traffic=Traffic(raw_bytes_in=400, wire_bytes_in=120))
    >>> snap = recorder.snapshot()
    >>> snap.requests, snap.requests_by_device["pi4"], snap.models["m"].wire_bytes_in
    (1, 1, 120)

Bytes are counted per tensor payload: `raw` is the decoded tensors' size, `wire` what the
tensors took in the message after edgecut's codecs (and before gRPC's own gzip/deflate, which
happens below the handler and is invisible to it), so raw / wire is the codec's ratio.
Messages refused by gRPC itself (over the size limit, failed TLS handshakes) never reach a
handler and are not counted here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from .repository import RepositoryStatistics

if TYPE_CHECKING:
    from .scheduler import SchedulerStatistics

__all__ = ["EndpointStatistics", "ModelTrafficStatistics", "StatisticsRecorder", "Traffic"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Traffic:
    """Bytes moved and compute time spent by one call."""

    raw_bytes_in: int = 0
    wire_bytes_in: int = 0
    raw_bytes_out: int = 0
    wire_bytes_out: int = 0
    compute_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelTrafficStatistics:
    """Inference calls that reached a model (all its versions together)."""

    requests: int = 0
    failures: int = 0
    raw_bytes_in: int = 0
    wire_bytes_in: int = 0
    raw_bytes_out: int = 0
    wire_bytes_out: int = 0
    compute_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointStatistics:
    """A snapshot of the endpoint's counters; later calls do not change it."""

    uptime_s: float
    requests: int  # every RPC the handlers saw
    infer_requests: int
    failures: Mapping[str, int]  # gRPC status code name -> count
    raw_bytes_in: int
    wire_bytes_in: int
    raw_bytes_out: int
    wire_bytes_out: int
    requests_by_device: Mapping[str, int]  # device name -> RPCs; mutual TLS only
    models: Mapping[str, ModelTrafficStatistics] = field(default_factory=dict)
    repository: RepositoryStatistics | None = None
    queues: tuple[SchedulerStatistics, ...] = ()  # per model version that has served
    infer_failures: int = 0  # the ModelInfer calls among `failures`

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())


class StatisticsRecorder:
    """Thread-safe counters; `snapshot()` copies them into an EndpointStatistics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._requests = 0
        self._infer_requests = 0
        self._infer_failures = 0
        self._failures: dict[str, int] = {}
        self._by_device: dict[str, int] = {}
        # Plain lists, summed in place on every call (the hot path); frozen on snapshot.
        self._traffic = [0, 0, 0, 0, 0.0]  # as Traffic's fields
        self._models: dict[str, list[float]] = {}  # as ModelTrafficStatistics' fields

    def record(self, *, rpc: str, code: str, device: str | None = None,
               model: str | None = None, traffic: Traffic | None = None,
               count: int = 1) -> None:
        """Count one call, or `count` alike (each with `traffic`). `model` is given only once
        the name resolved to a loaded model, so that a caller inventing names cannot grow
        the table."""
        failed = code != "OK"
        with self._lock:
            self._requests += count
            if rpc == "ModelInfer":
                self._infer_requests += count
                self._infer_failures += count if failed else 0
            if failed:
                self._failures[code] = self._failures.get(code, 0) + count
            if device is not None:
                self._by_device[device] = self._by_device.get(device, 0) + count
            if traffic is not None:
                sums = self._traffic
                sums[0] += traffic.raw_bytes_in * count
                sums[1] += traffic.wire_bytes_in * count
                sums[2] += traffic.raw_bytes_out * count
                sums[3] += traffic.wire_bytes_out * count
                sums[4] += traffic.compute_s * count
            if model is not None and rpc == "ModelInfer":
                counts = self._models.get(model)
                if counts is None:
                    counts = self._models[model] = [0, 0, 0, 0, 0, 0, 0.0]
                counts[0] += count
                counts[1] += failed * count
                if traffic is not None:
                    counts[2] += traffic.raw_bytes_in * count
                    counts[3] += traffic.wire_bytes_in * count
                    counts[4] += traffic.raw_bytes_out * count
                    counts[5] += traffic.wire_bytes_out * count
                    counts[6] += traffic.compute_s * count

    def snapshot(self, repository: RepositoryStatistics | None = None,
                 queues: tuple[SchedulerStatistics, ...] = ()) -> EndpointStatistics:
        with self._lock:
            raw_in, wire_in, raw_out, wire_out, _ = self._traffic
            models = {
                name: ModelTrafficStatistics(
                    requests=int(c[0]), failures=int(c[1]), raw_bytes_in=int(c[2]),
                    wire_bytes_in=int(c[3]), raw_bytes_out=int(c[4]), wire_bytes_out=int(c[5]),
                    compute_s=float(c[6]))
                for name, c in self._models.items()
            }
            return EndpointStatistics(
                uptime_s=time.monotonic() - self._started,
                requests=self._requests,
                infer_requests=self._infer_requests,
                infer_failures=self._infer_failures,
                failures=MappingProxyType(dict(self._failures)),
                raw_bytes_in=int(raw_in),
                wire_bytes_in=int(wire_in),
                raw_bytes_out=int(raw_out),
                wire_bytes_out=int(wire_out),
                requests_by_device=MappingProxyType(dict(self._by_device)),
                models=MappingProxyType(models),
                repository=repository,
                queues=queues,
            )
