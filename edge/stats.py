"""Immutable snapshots of what a Predictor did: per run, since it was created, and each
switch of where its requests run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

__all__ = ["PredictorStatistics", "RunStatistics", "SwitchEvent"]

RUN_MODES = ("split", "offload", "local")


class SwitchEvent(NamedTuple):
    """The Predictor moved its requests: at `time` (time.time()), from one choice to another
    ("split:<cut>", "offload" or "local"), for `reason`."""

    time: float
    from_choice: str
    to_choice: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStatistics:
    """One `Predictor.run`: where it ran, where its time went and what crossed the network.

    `mode` is where the run actually ran: "split" (cut `cut`), "offload" or "local" (the
    full model; `cut` is None). `fallback` is None, or why the plan's choice was abandoned
    for this run (the cloud failed or was known down, or the head could not run).
    `rpc_ms` is the cloud call as the device sees it: uplink, the endpoint's queue and
    compute, downlink; `server_queue_ms` is the queueing the endpoint reported (None if it
    did not). `total_ms` also holds input checks and the merging of outputs, so it is a
    little more than the sum of the stages. `raw_*` bytes are tensor sizes, `wire_*` their
    encoded sizes; both are 0 when no cloud call answered.

    In cascade mode `answered_by` is "small" (the device's small model), "exit" (the early
    exit in the cut's head) or "big" (the plan's model, wherever it ran; None outside cascade
    mode), `small_ms` the small model's time,
    `confidence` its score (None when it did not run) and `escalation` why the request went
    to the big model (None when it did not).
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
    fallback: str | None = None
    request_id: str = ""
    server_queue_ms: float | None = None
    answered_by: str | None = None
    small_ms: float = 0.0
    confidence: float | None = None
    escalation: str | None = None

    def __post_init__(self) -> None:
        times = (self.head_ms, self.encode_ms, self.rpc_ms, self.decode_ms, self.total_ms)
        sizes = (self.raw_bytes_up, self.wire_bytes_up, self.raw_bytes_down,
                 self.wire_bytes_down, self.cloud_calls)
        if min(times) < 0 or min(sizes) < 0:
            raise ValueError(f"run statistics must be >= 0, got times {times} sizes {sizes}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictorStatistics:
    """Totals since the Predictor was created; `last` is the latest successful run.

    `mode` and `cut` are the configured ones; `choice` is where requests go now
    ("split:<cut>", "offload" or "local"), `runs_by_mode` where the successful runs ran,
    `fallbacks` how many of them abandoned the plan's choice, `switches` how many times the
    choice moved (Predictor.events() lists them), `failures` the runs that raised. `breaker`
    is the cloud circuit's state: "closed", "open" or "half_open". `answered_by` counts the
    cascade's answers by model ("small", "big").

    `uplink_mbps` / `downlink_mbps` / `rtt_ms` are the device's live link estimates (None
    before the first measurement), `cloud_queue_ms` the recent queueing the endpoint
    reported.
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
    downlink_mbps: float | None = None
    rtt_ms: float | None = None
    cloud_queue_ms: float | None = None
    runs_by_mode: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(RUN_MODES, 0)))
    fallbacks: int = 0
    switches: int = 0
    choice: str | None = None
    breaker: str = "closed"
    last: RunStatistics | None = None
    answered_by: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def add(self, run: RunStatistics) -> PredictorStatistics:
        """These totals with one more successful run."""
        by_mode = dict(self.runs_by_mode)
        by_mode[run.mode] = by_mode.get(run.mode, 0) + 1
        answers = dict(self.answered_by)
        if run.answered_by is not None:
            answers[run.answered_by] = answers.get(run.answered_by, 0) + 1
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
            uplink_mbps=self.uplink_mbps, downlink_mbps=self.downlink_mbps, rtt_ms=self.rtt_ms,
            cloud_queue_ms=self.cloud_queue_ms, runs_by_mode=MappingProxyType(by_mode),
            fallbacks=self.fallbacks + (run.fallback is not None), switches=self.switches,
            choice=self.choice, breaker=self.breaker, last=run,
            answered_by=MappingProxyType(answers))
