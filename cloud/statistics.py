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
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from .repository import RepositoryStatistics

if TYPE_CHECKING:
    from .scheduler import SchedulerStatistics

__all__ = ["EndpointStatistics", "ModelTrafficStatistics", "StatisticsRecorder", "Traffic"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Traffic:
    """Bytes moved and compute time spent by one call (or summed over many)."""

    raw_bytes_in: int = 0
    wire_bytes_in: int = 0
    raw_bytes_out: int = 0
    wire_bytes_out: int = 0
    compute_s: float = 0.0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            raw_bytes_in=self.raw_bytes_in + other.raw_bytes_in,
            wire_bytes_in=self.wire_bytes_in + other.wire_bytes_in,
            raw_bytes_out=self.raw_bytes_out + other.raw_bytes_out,
            wire_bytes_out=self.wire_bytes_out + other.wire_bytes_out,
            compute_s=self.compute_s + other.compute_s,
        )


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
        self._failures: dict[str, int] = {}
        self._by_device: dict[str, int] = {}
        self._traffic = Traffic()
        self._models: dict[str, ModelTrafficStatistics] = {}

    def record(self, *, rpc: str, code: str, device: str | None = None,
               model: str | None = None, traffic: Traffic | None = None) -> None:
        """Count one call. `model` is given only once the name resolved to a loaded model,
        so that a caller inventing names cannot grow the table."""
        traffic = traffic or Traffic()
        failed = code != "OK"
        with self._lock:
            self._requests += 1
            if rpc == "ModelInfer":
                self._infer_requests += 1
            if failed:
                self._failures[code] = self._failures.get(code, 0) + 1
            if device is not None:
                self._by_device[device] = self._by_device.get(device, 0) + 1
            self._traffic = self._traffic + traffic
            if model is not None and rpc == "ModelInfer":
                old = self._models.get(model, ModelTrafficStatistics())
                self._models[model] = replace(
                    old,
                    requests=old.requests + 1,
                    failures=old.failures + failed,
                    raw_bytes_in=old.raw_bytes_in + traffic.raw_bytes_in,
                    wire_bytes_in=old.wire_bytes_in + traffic.wire_bytes_in,
                    raw_bytes_out=old.raw_bytes_out + traffic.raw_bytes_out,
                    wire_bytes_out=old.wire_bytes_out + traffic.wire_bytes_out,
                    compute_s=old.compute_s + traffic.compute_s,
                )

    def snapshot(self, repository: RepositoryStatistics | None = None,
                 queues: tuple[SchedulerStatistics, ...] = ()) -> EndpointStatistics:
        with self._lock:
            t = self._traffic
            return EndpointStatistics(
                uptime_s=time.monotonic() - self._started,
                requests=self._requests,
                infer_requests=self._infer_requests,
                failures=MappingProxyType(dict(self._failures)),
                raw_bytes_in=t.raw_bytes_in,
                wire_bytes_in=t.wire_bytes_in,
                raw_bytes_out=t.raw_bytes_out,
                wire_bytes_out=t.wire_bytes_out,
                requests_by_device=MappingProxyType(dict(self._by_device)),
                models=MappingProxyType(dict(self._models)),
                repository=repository,
                queues=queues,
            )
