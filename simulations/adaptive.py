"""The "edgecut" strategy: the device runtime's adaptive policy as pure functions.

It mirrors `edgecut.edge.Config(mode="adaptive")` (`edge/policy.py`'s `decide` and
`edge/monitors.py`'s `LinkEstimator`) with their defaults, without importing them (the
simulator must not depend on the runtime's internals; only the plan's envelope is shared,
`Plan.cut_for_bandwidth` there and `CutTable.envelope` here):

- The device estimates its uplink from its own transfers: each message of at least
  `min_sample_bytes` (16 KiB; smaller ones say more about the round trip than bandwidth)
  gives a sample, wire bits over the time from when the message was ready to send until it
  was sent; the estimate is the median of the last `window` (7) samples no older than
  `max_sample_age_s` (30 s), so one slow transfer moves nothing (`recent_median`). Before
  the first sample the device assumes the plan's bandwidth.
- The cut is the envelope's cut at the estimate, with hysteresis: the current cut is kept
  while the estimate stays within its bandwidth range widened by `hysteresis` (25 %) on each
  side, and a new cut is taken only when predicted faster by more than `min_gain_ms` (1 ms)
  and `min_gain_share` (5 %) of the current cut's latency (`choose_cut`).
- Each answer from the cloud reports how long the request queued there. While the last
  report is over `max_cloud_queue_ms` (50 ms) and younger than `probe_interval_s` (5 s), work
  comes back to the device: the whole model runs locally when that is predicted faster than
  the envelope cut plus the reported wait. After `probe_interval_s` without a fresh report
  the device tries the cloud again (the runtime probes an idle link at that interval).

Example:
    >>> recent_median([(0.0, 5.0), (1.0, 300.0), (2.0, 7.0)], now=2.0, max_age_s=30.0)
    7.0
    >>> recent_median([(0.0, 5.0)], now=31.0, max_age_s=30.0) is None
    True
"""

from __future__ import annotations

import statistics
from bisect import bisect_right
from collections.abc import Iterable

import numpy as np

from edgecut.simulations.costs import CutTable
from edgecut.simulations.scenario import EdgecutSettings

__all__ = ["choose_cut", "envelope_cut", "recent_median", "worth_switching"]


def recent_median(samples: Iterable[tuple[float, float]], *, now: float,
                  max_age_s: float) -> float | None:
    """The median of the (time, Mbit/s) samples no older than `max_age_s`; None if none."""
    fresh = [v for t, v in samples if now - t <= max_age_s]
    return statistics.median(fresh) if fresh else None


def worth_switching(table: CutTable, current: int, new: int, uplink_mbps: float,
                    settings: EdgecutSettings) -> bool:
    """Whether cut `new` is predicted faster than `current` by more than the noise."""
    latency = table.latency_ms(uplink_mbps)
    now_ms, then_ms = float(latency[current]), float(latency[new])
    return now_ms - then_ms > max(settings.min_gain_ms, settings.min_gain_share * now_ms)


def envelope_cut(table: CutTable, uplink_mbps: float, current: int | None,
                 hysteresis: float) -> int:
    """The envelope's cut position at `uplink_mbps`, keeping `current` within its widened range.

    Ranges are [min_mbps, max_mbps); at a breakpoint the faster-link cut answers, as
    `Plan.cut_for_bandwidth` does.
    """
    env = table.envelope
    if current is not None:
        for k, low, high in env:
            if k == current and low * (1 - hysteresis) <= uplink_mbps < high * (1 + hysteresis):
                return current
    i = bisect_right([low for _, low, _ in env], uplink_mbps) - 1
    return env[max(i, 0)][0]


def choose_cut(table: CutTable, settings: EdgecutSettings, *, estimate_mbps: float | None,
               current: int | None, queue_report_ms: float | None, report_age_s: float
               ) -> tuple[int, int]:
    """(envelope cut, cut to run): the second is edge-only when the cloud pushes work back."""
    bandwidth = table.uplink_mbps if estimate_mbps is None else estimate_mbps
    k = envelope_cut(table, bandwidth, current, settings.hysteresis)
    if current is not None and k != current and not worth_switching(table, current, k,
                                                                    bandwidth, settings):
        k = current
    limit = settings.max_cloud_queue_ms
    if (limit is not None and queue_report_ms is not None and queue_report_ms > limit
            and report_age_s < settings.probe_interval_s and bool(table.uses_cloud[k])):
        latency = table.latency_ms(bandwidth)
        local = table.edge_only
        if latency[local] < latency[k] + queue_report_ms:
            return k, local
    return k, k


def predicted_latency_ms(table: CutTable, k: int, uplink_mbps: float) -> float:
    """The cost model's latency of cut position k at a bandwidth (for reports)."""
    return float(np.asarray(table.latency_ms(uplink_mbps))[k])
