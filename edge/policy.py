"""Where the next request runs: the adaptive mode's decision, as pure functions over values.

The plan's envelope says which cut is fastest at each uplink bandwidth; this module adds
what the device sees at run time, without re-planning:

1. Device pressure (memory, battery, CPU, a head that failed to allocate) sends requests
   whole to the cloud's full model ("offload").
2. Otherwise the envelope's cut for the live uplink estimate, with hysteresis: the current
   cut is kept until the estimate passes the edge of its range by `hysteresis` (relative),
   and until the new cut is predicted faster by more than `min_gain_ms` and
   `min_gain_share` of the current latency, so that a noisy link does not make the choice
   flap between neighbours whose costs hardly differ.
3. A cloud that reports queueing longer than `max_cloud_queue_ms` pushes work back to the
   device: the device-only choice is taken when it is predicted faster than the cut plus
   the queue (or at once, when the plan has no predictions to compare).

Whether the cloud can be reached at all is not decided here: the Predictor's circuit
breaker and fallback handle that per request.

    >>> plan_costs = {0: CutCosts(cut=0, mode="offload", fixed_ms=40.0, up_bytes=600_000,
    ...                           down_bytes=40),
    ...               9: CutCosts(cut=9, mode="local", fixed_ms=120.0, up_bytes=0, down_bytes=0)}
    >>> envelope = [(9, 0.0, 50.0), (0, 50.0, math.inf)]
    >>> decide(Inputs(uplink_mbps=200.0), Choice("local", None), envelope=envelope,
    ...        costs=plan_costs, thresholds=Thresholds()).choice
    Choice(mode='offload', cut=None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .plan import Plan

__all__ = ["Choice", "CutCosts", "Decision", "Inputs", "Thresholds", "decide",
           "downlink_ratio", "envelope_cut", "plan_costs"]

# An envelope range: (cut id, min_mbps, max_mbps), [min, max), max may be inf.
Range = tuple[int, float, float]


@dataclass(frozen=True, slots=True)
class Choice:
    """Where a request runs: "split" with a cut id, "offload" or "local" (the full model)."""

    mode: str
    cut: int | None

    def __str__(self) -> str:
        return f"split:{self.cut}" if self.mode == "split" else self.mode


@dataclass(frozen=True, slots=True, kw_only=True)
class CutCosts:
    """A cut's predicted latency, split into what does and does not depend on the link.

    `fixed_ms` holds device, codec and cloud compute time (NaN when the plan predicted
    nothing); the round trip and the transfer of `up_bytes` / `down_bytes` are added at the
    live estimates. `mode` is what running the cut
    means: "offload" for the cut with nothing on the device, "local" for the one with
    nothing in the cloud, "split" otherwise.
    """

    cut: int
    mode: str
    fixed_ms: float
    up_bytes: int
    down_bytes: int

    @property
    def choice(self) -> Choice:
        return Choice(self.mode, self.cut if self.mode == "split" else None)

    def latency_ms(self, *, uplink_mbps: float, downlink_ratio: float, rtt_ms: float,
                   queue_ms: float) -> float:
        """Predicted latency at these live figures (the local cut pays no link or queue)."""
        if self.mode == "local":
            return self.fixed_ms
        up_ms = self.up_bytes * 8 / (uplink_mbps * 1e3) if uplink_mbps > 0 else math.inf
        down_mbps = uplink_mbps * downlink_ratio
        down_ms = self.down_bytes * 8 / (down_mbps * 1e3) if down_mbps > 0 else math.inf
        return self.fixed_ms + rtt_ms + up_ms + down_ms + queue_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """The adaptive policy's settings (Config holds them; see its docstring)."""

    hysteresis: float = 0.25
    max_cloud_queue_ms: float | None = 50.0
    downlink_ratio: float = 1.0
    min_gain_ms: float = 1.0
    min_gain_share: float = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class Inputs:
    """What the device knows now; None where it has not measured it yet."""

    uplink_mbps: float | None = None
    rtt_ms: float | None = None
    cloud_queue_ms: float | None = None
    pressure: str | None = None  # why the device should not compute, e.g. "memory 80 MiB free"


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The choice for the next request, and why it differs from the last (None if not)."""

    choice: Choice
    reason: str | None


def envelope_cut(envelope: Sequence[Range], uplink_mbps: float, current: int | None,
                 hysteresis: float) -> int:
    """The envelope's cut at `uplink_mbps`, keeping `current` within its widened range.

    >>> ranges = [(9, 0.0, 10.0), (3, 10.0, 100.0), (0, 100.0, math.inf)]
    >>> envelope_cut(ranges, 11.0, 9, 0.25), envelope_cut(ranges, 13.0, 9, 0.25)
    (9, 3)
    >>> envelope_cut(ranges, 8.5, 3, 0.25), envelope_cut(ranges, 7.0, 3, 0.25)
    (3, 9)
    """
    if not envelope:
        raise ValueError("envelope_cut needs a non-empty envelope")
    if current is not None:
        spans = [(low, high) for cut, low, high in envelope if cut == current]
        if spans:
            low = min(s[0] for s in spans) * (1 - hysteresis)
            high = max(s[1] for s in spans) * (1 + hysteresis)
            if low <= uplink_mbps < high:
                return current
    for cut, low, high in envelope:
        if low <= uplink_mbps < high:
            return cut
    return envelope[-1][0]


def decide(inputs: Inputs, current: Choice, *, envelope: Sequence[Range],
           costs: Mapping[int, CutCosts], thresholds: Thresholds,
           initial: Choice | None = None) -> Decision:
    """The next request's choice; `current` is the last one, `initial` the choice before
    anything was measured (the plan's chosen cut)."""
    if inputs.pressure is not None:
        return _decision(Choice("offload", None), current, f"device pressure: {inputs.pressure}")
    planned = initial or current
    planned_reason = "plan's choice"
    if envelope and inputs.uplink_mbps is not None:
        current_cut = _cut_of(current, costs)
        cut = envelope_cut(envelope, inputs.uplink_mbps, current_cut, thresholds.hysteresis)
        if current_cut is not None and cut != current_cut and current_cut in costs and \
                not _worth_switching(costs[current_cut], costs[cut], inputs, thresholds):
            cut = current_cut
        planned = costs[cut].choice
        planned_reason = f"uplink {inputs.uplink_mbps:.3g} Mbit/s"
    queue = inputs.cloud_queue_ms
    limit = thresholds.max_cloud_queue_ms
    if planned.mode != "local" and limit is not None and queue is not None and queue > limit:
        local = next((c for c in costs.values() if c.mode == "local"), None)
        planned_costs = _costs_of(planned, costs)
        if (local is None or planned_costs is None or inputs.uplink_mbps is None
                or math.isnan(local.fixed_ms) or math.isnan(planned_costs.fixed_ms)):
            return _decision(Choice("local", None), current, f"cloud queue {queue:.0f} ms")
        split_ms = planned_costs.latency_ms(
            uplink_mbps=inputs.uplink_mbps, downlink_ratio=thresholds.downlink_ratio,
            rtt_ms=inputs.rtt_ms or 0.0, queue_ms=queue)
        if local.fixed_ms < split_ms:
            return _decision(Choice("local", None), current,
                             f"cloud queue {queue:.0f} ms: local {local.fixed_ms:.0f} ms "
                             f"against {split_ms:.0f} ms")
    return _decision(planned, current, planned_reason)


def _worth_switching(current: CutCosts, new: CutCosts, inputs: Inputs,
                     thresholds: Thresholds) -> bool:
    """Whether `new` is predicted faster than `current` by more than the noise.

    Near a breakpoint two cuts cost about the same, and where the crossing tensors are small
    the bandwidth estimate is a small difference of noisy times (call time less round trip):
    on a fast link it may read 300 Mbit/s one call and 700 the next. The bandwidth hysteresis
    alone does not stop that; a predicted gain of at least `min_gain_ms` and `min_gain_share`
    of the current latency does. Without predictions the envelope decides alone.
    """
    if math.isnan(current.fixed_ms) or math.isnan(new.fixed_ms) or inputs.uplink_mbps is None:
        return True
    figures = {"uplink_mbps": inputs.uplink_mbps, "downlink_ratio": thresholds.downlink_ratio,
               "rtt_ms": inputs.rtt_ms or 0.0, "queue_ms": 0.0}
    now_ms, then_ms = current.latency_ms(**figures), new.latency_ms(**figures)
    return now_ms - then_ms > max(thresholds.min_gain_ms, thresholds.min_gain_share * now_ms)


def _decision(choice: Choice, current: Choice, reason: str) -> Decision:
    return Decision(choice=choice, reason=None if choice == current else reason)


def _cut_of(choice: Choice, costs: Mapping[int, CutCosts]) -> int | None:
    if choice.mode == "split":
        return choice.cut
    return next((c.cut for c in costs.values() if c.mode == choice.mode), None)


def _costs_of(choice: Choice, costs: Mapping[int, CutCosts]) -> CutCosts | None:
    cut = _cut_of(choice, costs)
    return None if cut is None else costs.get(cut)


def plan_costs(plan: Plan) -> dict[int, CutCosts]:
    """Every cut's mode and its predicted costs (corrected where measured), for the policy."""
    costs = {}
    for cut in plan.cuts:
        mode = "offload" if cut.head is None else "local" if cut.tail is None else "split"
        predicted = dict(cut.predicted or {})
        figures = predicted.get("corrected") or predicted.get("model") or {}
        fixed = sum(float(figures.get(k, 0.0)) for k in
                    ("device_ms", "encode_ms", "cloud_ms", "decode_ms")) if figures else math.nan
        costs[cut.id] = CutCosts(cut=cut.id, mode=mode, fixed_ms=fixed,
                                 up_bytes=int(figures.get("up_bytes", cut.bytes)),
                                 down_bytes=int(figures.get("down_bytes", cut.down_bytes)))
    return costs


def downlink_ratio(plan: Plan) -> float:
    """Downlink over uplink bandwidth in the plan's network profile (1.0 when unknown)."""
    for cut in plan.cuts:
        figures = (cut.predicted or {}).get("model") or {}
        up_b, down_b = figures.get("up_bytes", 0), figures.get("down_bytes", 0)
        up_ms, down_ms = figures.get("uplink_ms", 0), figures.get("downlink_ms", 0)
        if up_b and down_b and up_ms and down_ms:
            return float((down_b / down_ms) / (up_b / up_ms))
    return 1.0
