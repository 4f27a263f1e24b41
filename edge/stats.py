"""Immutable snapshots of what a Predictor did: per run and since it was created."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["PredictorStatistics", "RunStatistics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStatistics:
    """One `Predictor.run`: where its time went and what crossed the network.

    `rpc_ms` is the cloud call as the device sees it: uplink, the endpoint's queue and
    compute, downlink. `total_ms` also holds input checks and the merging of outputs, so it
    is a little more than the sum of the stages. `raw_*` bytes are tensor sizes, `wire_*`
    their encoded sizes; both are 0 when no cloud call was made.
    """

    mode: str
    cut: int | None
    head_ms: float = 0.0
    encode_ms: float = 0.0
    rpc_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    raw_bytes_up: int = 0
    wire_bytes_up: int = 0
    raw_bytes_down: int = 0
    wire_bytes_down: int = 0
    cloud_calls: int = 0
    codecs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        times = (self.head_ms, self.encode_ms, self.rpc_ms, self.decode_ms, self.total_ms)
        sizes = (self.raw_bytes_up, self.wire_bytes_up, self.raw_bytes_down,
                 self.wire_bytes_down, self.cloud_calls)
        if min(times) < 0 or min(sizes) < 0:
            raise ValueError(f"run statistics must be >= 0, got times {times} sizes {sizes}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictorStatistics:
    """Totals since the Predictor was created; `last` is the latest successful run.

    `uplink_mbps` is the device's running estimate of its uplink (None before the first large
    transfer); it is a lower bound, since a call's time includes the cloud's compute.
    """

    mode: str
    cut: int | None
    runs: int = 0
    failures: int = 0
    cloud_calls: int = 0
    head_ms: float = 0.0
    encode_ms: float = 0.0
    rpc_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    raw_bytes_up: int = 0
    wire_bytes_up: int = 0
    raw_bytes_down: int = 0
    wire_bytes_down: int = 0
    uplink_mbps: float | None = None
    last: RunStatistics | None = None

    def add(self, run: RunStatistics) -> PredictorStatistics:
        """These totals with one more successful run."""
        return PredictorStatistics(
            mode=self.mode, cut=self.cut, runs=self.runs + 1, failures=self.failures,
            cloud_calls=self.cloud_calls + run.cloud_calls,
            head_ms=self.head_ms + run.head_ms, encode_ms=self.encode_ms + run.encode_ms,
            rpc_ms=self.rpc_ms + run.rpc_ms, decode_ms=self.decode_ms + run.decode_ms,
            total_ms=self.total_ms + run.total_ms,
            raw_bytes_up=self.raw_bytes_up + run.raw_bytes_up,
            wire_bytes_up=self.wire_bytes_up + run.wire_bytes_up,
            raw_bytes_down=self.raw_bytes_down + run.raw_bytes_down,
            wire_bytes_down=self.wire_bytes_down + run.wire_bytes_down,
            uplink_mbps=self.uplink_mbps, last=run)
