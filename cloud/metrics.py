"""Prometheus metrics of one endpoint, in its own registry, served over HTTP.

Names follow Triton's (`nv_inference_*`, docs/user_guide/metrics.md) under an `edgecut_`
prefix; per-model series carry `{model, version}`:

    edgecut_inference_request_success_total       requests answered OK
    edgecut_inference_request_failure_total       requests that failed, by gRPC `code`
    edgecut_inference_count_total                 rows inferred (a batch of n counts n)
    edgecut_inference_exec_count_total            model executions (batches)
    edgecut_inference_pending_requests            requests waiting in the model's queue
    edgecut_inference_queue_duration_seconds      histogram: time waiting for a batch
    edgecut_inference_compute_duration_seconds    histogram: time in the model run
    edgecut_inference_request_duration_seconds    histogram: handler time, decode to encode
    edgecut_inference_batch_size                  histogram: rows per execution
    edgecut_inference_{raw,wire}_bytes_{in,out}_total   tensor payload bytes, decoded / sent
    edgecut_inference_compression_ratio           raw / wire so far, by `direction`
    edgecut_inference_deduplicated_total          requests answered with the answer (or
                                                  error) of an earlier one with the same
                                                  request id, without a model run
                                                  (edgecut.cloud.dedup)
    edgecut_rpc_total                             every RPC by `rpc` and `code`
    edgecut_device_requests_total                 RPCs by `device` (mutual TLS only)
    edgecut_rpc_refused_total                     calls refused at the open-call limit, before
                                                  any handler (native transport)
    edgecut_model_state                           1 for each model version's `state` (READY,
                                                  UNAVAILABLE: failed to load, UNLOADING...)
    process_*, python_info                        the server process: resident memory, CPU
                                                  seconds, open files (prometheus_client's)

Only names that resolved to a loaded model become label values, so a caller inventing model
names cannot grow the series; device names come from certificates the fleet's CA signed.
Each endpoint has its own CollectorRegistry, so several servers in one process never clash.

    >>> metrics = EndpointMetrics()
    >>> metrics.record_rpc(rpc="ServerLive", code="OK", device=None)
    >>> b"edgecut_rpc_total" in metrics.exposition()
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgecut.errors import UserInputError

__all__ = ["EndpointMetrics", "MetricsHTTPServer"]

_MODEL = ("model", "version")
# 100 µs .. ~100 s: a tail on a fast CPU takes well under a millisecond, a queue can take long.
_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

PendingSource = Callable[[], Iterable[tuple[str, int, int]]]
# (model, version or None, state) of every model version the repository knows.
StateSource = Callable[[], Iterable[tuple[str, int | None, str]]]


class _ScrapedGauge(Collector):
    """A gauge family read at scrape time: `rows()` gives (label values, value) pairs."""

    def __init__(self, name: str, documentation: str, labels: list[str],
                 rows: Callable[[], Iterable[tuple[list[str], float]]]) -> None:
        self._name, self._documentation, self._labels = name, documentation, labels
        self._rows = rows

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self._family()
        for values, value in self._rows():
            family.add_metric(values, value)
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._documentation, labels=self._labels)


def _pending_gauge(source: PendingSource) -> _ScrapedGauge:
    """Queue lengths, from the scheduler."""
    return _ScrapedGauge(
        "edgecut_inference_pending_requests", "Requests waiting in the model's queue",
        list(_MODEL), lambda: (([m, str(v)], n) for m, v, n in source()))


def _state_gauge(source: StateSource) -> _ScrapedGauge:
    """Each model version's state, from the repository: a model that failed to load shows as
    UNAVAILABLE, which no request counter would show."""
    return _ScrapedGauge(
        "edgecut_model_state", "1 for each model version's state", [*_MODEL, "state"],
        lambda: (([m, "" if v is None else str(v), state], 1) for m, v, state in source()))


class _RefusedCollector(Collector):
    """Reads the transport's count of calls refused at its open-call limit."""

    def __init__(self, source: Callable[[], int]) -> None:
        self._source = source

    def describe(self) -> Iterable[CounterMetricFamily]:
        yield self._family(None)

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield self._family(self._source())

    @staticmethod
    def _family(value: int | None) -> CounterMetricFamily:
        return CounterMetricFamily(
            "edgecut_rpc_refused", "Calls refused (RESOURCE_EXHAUSTED) at the transport's "
            "open-call limit, before any handler", value=value)


@dataclass(frozen=True, slots=True, kw_only=True)
class _ModelSeries:
    """One model version's labelled series, and its byte totals for the compression ratio
    (raw in, wire in, raw out, wire out; guarded by EndpointMetrics._lock)."""

    success: Any
    queue: Any
    compute: Any
    request: Any
    raw_in: Any
    wire_in: Any
    raw_out: Any
    wire_out: Any
    ratio_in: Any
    ratio_out: Any
    count: Any
    executions: Any
    batch: Any
    totals: list[int] = field(default_factory=lambda: [0, 0, 0, 0])


class EndpointMetrics:
    """The endpoint's counters and histograms; thread-safe (prometheus_client locks)."""

    def __init__(self, *, pending_source: PendingSource | None = None,
                 state_source: StateSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # what an operator alerts on: memory, CPU, files
        PlatformCollector(registry=r)
        self._success = Counter("edgecut_inference_request_success", "Successful requests",
                                _MODEL, registry=r)
        self._failure = Counter("edgecut_inference_request_failure", "Failed requests",
                                (*_MODEL, "code"), registry=r)
        self._count = Counter("edgecut_inference_count",
                              "Rows inferred (a batch of n counts n)", _MODEL, registry=r)
        self._exec = Counter("edgecut_inference_exec_count", "Model executions (batches)",
                             _MODEL, registry=r)
        self._queue = Histogram("edgecut_inference_queue_duration_seconds",
                                "Time a request waited for its batch", _MODEL,
                                buckets=_SECONDS, registry=r)
        self._compute = Histogram("edgecut_inference_compute_duration_seconds",
                                  "Time in the model run a request was part of", _MODEL,
                                  buckets=_SECONDS, registry=r)
        self._request = Histogram("edgecut_inference_request_duration_seconds",
                                  "Handler time from decoding to encoding", _MODEL,
                                  buckets=_SECONDS, registry=r)
        self._batch = Histogram("edgecut_inference_batch_size", "Rows per model execution",
                                _MODEL, buckets=_BATCH, registry=r)
        self._bytes = {
            (form, direction): Counter(
                f"edgecut_inference_{form}_bytes_{direction}",
                f"Tensor payload bytes {direction}, "
                + ("decoded" if form == "raw" else "as sent after codecs"),
                _MODEL, registry=r)
            for form in ("raw", "wire") for direction in ("in", "out")
        }
        self._ratio = Gauge("edgecut_inference_compression_ratio",
                            "Raw bytes / wire bytes so far (codec gain)",
                            (*_MODEL, "direction"), registry=r)
        self._deduplicated = Counter(
            "edgecut_inference_deduplicated",
            "Requests answered with an earlier request's answer (same caller and request id), "
            "without running the model", _MODEL, registry=r)
        self._rpc = Counter("edgecut_rpc", "RPCs by method and status code", ("rpc", "code"),
                            registry=r)
        self._device = Counter("edgecut_device_requests", "RPCs by calling device (mTLS)",
                               ("device",), registry=r)
        self._lock = threading.Lock()
        self._by_model: dict[tuple[str, int], _ModelSeries] = {}
        self._rpc_children: dict[tuple[str, str], Any] = {}
        if pending_source is not None:
            r.register(_pending_gauge(pending_source))
        if state_source is not None:
            r.register(_state_gauge(state_source))

    def count_refusals(self, source: Callable[[], int]) -> None:
        """Report `source()`, the transport's refusals at its open-call limit, on each scrape
        (edgecut_rpc_refused_total; no handler sees those calls)."""
        self.registry.register(_RefusedCollector(source))

    def record_rpc(self, *, rpc: str, code: str, device: str | None, count: int = 1) -> None:
        child = self._rpc_children.get((rpc, code))
        if child is None:  # rpc and code come from a fixed set: the dict stays small
            child = self._rpc_children.setdefault((rpc, code), self._rpc.labels(rpc, code))
        child.inc(count)
        if device is not None:
            self._device.labels(device).inc(count)

    def record_infer(self, *, model: str, version: int, code: str, request_s: float = 0.0,
                     queue_s: float = 0.0, compute_s: float = 0.0, raw_bytes_in: int = 0,
                     wire_bytes_in: int = 0, raw_bytes_out: int = 0,
                     wire_bytes_out: int = 0, count: int = 1) -> None:
        """One ModelInfer call that reached `model` (OK or not), or `count` alike."""
        if code != "OK":
            self._failure.labels(model, str(version), code).inc(count)
            return
        series = self._series(model, version)
        series.success.inc(count)
        for _ in range(count):  # a histogram takes its values one by one
            series.queue.observe(queue_s)
            series.compute.observe(compute_s)
            series.request.observe(request_s)
        series.raw_in.inc(raw_bytes_in * count)
        series.wire_in.inc(wire_bytes_in * count)
        series.raw_out.inc(raw_bytes_out * count)
        series.wire_out.inc(wire_bytes_out * count)
        with self._lock:
            totals = series.totals
            totals[0] += raw_bytes_in * count
            totals[1] += wire_bytes_in * count
            totals[2] += raw_bytes_out * count
            totals[3] += wire_bytes_out * count
            if totals[1]:
                series.ratio_in.set(totals[0] / totals[1])
            if totals[3]:
                series.ratio_out.set(totals[2] / totals[3])

    def record_deduplicated(self, *, model: str, version: str) -> None:
        """One request answered from an earlier one with its id (edgecut.cloud.dedup)."""
        self._deduplicated.labels(model, version).inc()

    def record_batch(self, *, model: str, version: int, rows: int, requests: int) -> None:
        """One model execution of `rows` rows (joined from `requests` requests)."""
        series = self._series(model, version)
        series.count.inc(rows)
        series.executions.inc()
        series.batch.observe(rows)

    def _series(self, model: str, version: int) -> _ModelSeries:
        """The labelled children of one model version, made once: prometheus_client's
        `labels()` takes a lock and builds a key on every call, and a request used to make
        nine such calls (23 us of its time; about 8 us with the children kept)."""
        key = (model, version)
        series = self._by_model.get(key)
        if series is None:
            labels = (model, str(version))
            series = _ModelSeries(
                success=self._success.labels(*labels),
                queue=self._queue.labels(*labels),
                compute=self._compute.labels(*labels),
                request=self._request.labels(*labels),
                raw_in=self._bytes["raw", "in"].labels(*labels),
                wire_in=self._bytes["wire", "in"].labels(*labels),
                raw_out=self._bytes["raw", "out"].labels(*labels),
                wire_out=self._bytes["wire", "out"].labels(*labels),
                ratio_in=self._ratio.labels(*labels, "in"),
                ratio_out=self._ratio.labels(*labels, "out"),
                count=self._count.labels(*labels),
                executions=self._exec.labels(*labels),
                batch=self._batch.labels(*labels),
            )
            # Two threads may both build one; either is the same children.
            series = self._by_model.setdefault(key, series)
        return series

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (what /metrics serves)."""
        return generate_latest(self.registry)


class MetricsHTTPServer:
    """`/metrics` of one registry on `host:port` (0: any free port), in a daemon thread."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise UserInputError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror}); choose another "
                f"metrics port or address"
            ) from exc
        self._host = host

    @property
    def port(self) -> int:
        server: WSGIServer = self._httpd
        return int(server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)
