"""The "edgecut" strategy: the device runtime's adaptive policy as pure functions.

It mirrors `edgecut.edge.Config(mode="adaptive")` and the Predictor's defaults, without
importing them (the simulator must not depend on the runtime's internals; only the plan's
envelope is shared, `Plan.cut_for_bandwidth` there and `CutTable.envelope` here):

- The device keeps a smoothed estimate of its uplink from its own transfers: each message of
  at least `min_sample_bytes` (64 KiB; smaller ones say more about round trip than bandwidth)
  gives a sample, wire bits over the time from when the message was ready to send until it
  was sent, and the estimate moves `smoothing` (0.3) of the way to it (`update_estimate`).
  Before the first sample the device assumes the plan's bandwidth.
- The cut is the envelope's cut at the estimate, with hysteresis: the current cut is kept
  while the estimate stays within its bandwidth range widened by `hysteresis` (25 %) on each
  side, so that a noisy link does not make it flap (`choose_cut`).
- Each answer from the cloud reports how long the request queued there. While the last
  report is over `max_cloud_queue_ms` (50 ms) and younger than `probe_interval_s` (5 s), work
  comes back to the device: the whole model runs locally when that is predicted faster than
  the envelope cut plus the reported wait. After `probe_interval_s` without a fresh report
  the device tries the cloud again (the runtime probes an idle link at that interval).

Example:
    >>> update_estimate(None, 8.0, 0.3), update_estimate(10.0, 0.0, 0.5)
    (8.0, 5.0)
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from edgecut.simulations.costs import CutTable
from edgecut.simulations.scenario import EdgecutSettings

__all__ = ["choose_cut", "envelope_cut", "update_estimate"]


def update_estimate(old: float | None, sample_mbps: float, smoothing: float) -> float:
    """The uplink estimate after one sample: exponential smoothing, the first sample as is."""
    return sample_mbps if old is None else old + smoothing * (sample_mbps - old)


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
