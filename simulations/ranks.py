"""The edgecut strategy without an event loop, where its decisions need no cloud feedback.

The edgecut policy reads two things: the device's own transfers (its bandwidth estimate) and
the cloud's queue reports. The first is local to each device, so the k-th request of every
device can be decided at once from the state the device's first k-1 requests left, as numpy
operations over all devices: a loop over ranks (the most requests any one device has), not
over requests. The second couples the devices through the cloud; it changes a decision only
when a report is over `max_cloud_queue_ms`. So `run_ranks` simulates the fleet as if no
report were, runs the cloud, and returns None when some request did queue longer than that
(or when devices share a cell's uplink, which couples them too): the caller then runs the
event engine, which is exact in every case. Where it returns an Outcome it is the event
engine's (the tests compare them), computed 10-50x faster.

Within a rank, a device's decision time is when its CPU takes the request up,
max(arrival, the previous head's end); before deciding, it records the samples of its earlier
messages that were sent by then (in order: its uplink is FIFO), then probes if it has had no
sample for `probe_interval_s`, exactly as `EdgecutPolicy` does event by event; the estimate
is the median of the last `window` samples no older than `max_sample_age_s` (a ring buffer
per device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgecut.partitioner.planner import RAW_ABOVE_MBPS
from edgecut.simulations.costs import CutTable
from edgecut.simulations.engine import Outcome, model_events
from edgecut.simulations.queues import cloud_batches
from edgecut.simulations.scenario import CloudSpec, EdgecutSettings
from edgecut.simulations.strategies import Services
from edgecut.simulations.workload import Workload

__all__ = ["run_ranks"]


def _group_arrays(tables: Sequence[CutTable], hysteresis: float) -> dict[str, np.ndarray]:
    width = max(t.size for t in tables)
    envs = max(len(t.envelope) for t in tables)
    out = {
        "w_lo": np.full((len(tables), width), np.inf), "w_hi": np.full((len(tables), width), -np.inf),
        "lows": np.full((len(tables), envs), np.inf), "env_cut": np.zeros((len(tables), envs),
                                                                          dtype=np.int64),
        "planned": np.array([t.uplink_mbps for t in tables]),
    }
    for g, t in enumerate(tables):
        for j, (k, lo, hi) in enumerate(t.envelope):
            out["w_lo"][g, k] = lo * (1 - hysteresis)
            out["w_hi"][g, k] = hi * (1 + hysteresis)
            out["lows"][g, j] = lo
            out["env_cut"][g, j] = k
    return out


def run_ranks(workload: Workload, tables: Sequence[CutTable], tail_ids: Sequence[np.ndarray],
              settings: EdgecutSettings, cloud: CloudSpec, *, has_cells: bool) -> Outcome | None:
    """The edgecut strategy's Outcome, or None where only the event engine is exact."""
    n = workload.size
    if has_cells or n == 0:
        return None
    order = np.lexsort((np.arange(n), workload.arrival_s, workload.device))
    dev = workload.device[order]
    counts = np.bincount(dev, minlength=workload.device_count)
    first = np.cumsum(counts) - counts
    ranked = np.argsort(-counts, kind="stable")
    ranked = ranked[counts[ranked] > 0]
    ranked_counts = counts[ranked]
    ranks = int(ranked_counts[0])
    if ranks * 40 > n:  # few devices with long queues: the loop over ranks would be the slower
        return None
    arr = workload.arrival_s[order]
    grp = workload.group[order]
    up = workload.uplink_mbps[order]
    spread = (np.ones(n) if workload.device_factor is None else workload.device_factor[order])
    busy = (np.ones(n) if workload.busy_slowdown is None else workload.busy_slowdown[order])
    charged = np.ones(n)  # the busy slowdown where a request waited for its device, else 1
    regime = (up >= RAW_ABOVE_MBPS).astype(np.int64)
    ga = _group_arrays(tables, settings.hysteresis)
    d_count = workload.device_count
    head_free = np.full(d_count, -np.inf)
    link_free = np.full(d_count, -np.inf)
    window = settings.window
    ring = np.full((d_count, window), np.nan)        # the last `window` samples, Mbit/s
    ring_t = np.full((d_count, window), -np.inf)     # and when each was taken
    ring_next = np.zeros(d_count, dtype=np.int64)
    current = np.full(d_count, -1, dtype=np.int64)
    sampled_at = np.full(d_count, -np.inf)
    applied = first.copy()
    cut = np.zeros(n, dtype=np.int64)
    hs, he = np.zeros(n), np.zeros(n)
    us, ue = np.full(n, math.nan), np.full(n, -np.inf)  # -inf: no message, nothing to sample
    sample = np.full(n, math.nan)
    min_bytes = settings.min_sample_bytes
    # Per-group cut tables, padded to one width, for fancy indexing by (group, cut).
    width = ga["w_lo"].shape[1]

    def pad(values: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(values), width))
        for g, v in enumerate(values):
            out[g, :len(v)] = v
        return out

    dev_ms = pad([t.device_ms for t in tables])
    enc = np.stack([pad([t.encode_ms[r] for t in tables]) for r in (0, 1)])
    wire_b = np.stack([pad([t.up_wire_bytes[r] for t in tables]) for r in (0, 1)])
    uses = pad([t.uses_cloud.astype(float) for t in tables]).astype(bool)
    cloud_ms = pad([t.cloud_ms for t in tables])
    down_b = pad([t.down_bytes.astype(float) for t in tables])
    decode_ms = pad([t.decode_ms for t in tables])
    rtt_g = np.array([t.rtt_ms for t in tables])
    ratio_g = np.array([t.downlink_per_uplink for t in tables])

    def latency(g: np.ndarray, k: np.ndarray, bw: np.ndarray) -> np.ndarray:
        """`CutTable.latency_ms(bw)[k]` per row, summed in the same order."""
        reg = (bw >= RAW_ABOVE_MBPS).astype(np.int64)
        used = uses[g, k]
        terms = (dev_ms[g, k], enc[reg, g, k],
                 np.where(used, wire_b[reg, g, k] * 8.0 / (bw * 1000.0), 0.0),
                 np.where(used, rtt_g[g], 0.0), cloud_ms[g, k],
                 np.where(used, down_b[g, k] * 8.0 / (bw * ratio_g[g] * 1000.0), 0.0),
                 decode_ms[g, k])
        total = 0
        for term in terms:
            total = total + term
        return total + np.where(used, 0.0, 0.0)

    def add_samples(d: np.ndarray, mask: np.ndarray, when: np.ndarray, mbps: np.ndarray) -> None:
        rows, slot = d[mask], ring_next[d[mask]]
        ring[rows, slot] = mbps[mask]
        ring_t[rows, slot] = when[mask]
        ring_next[rows] = (slot + 1) % window
        sampled_at[rows] = when[mask]

    for r in range(ranks):
        m = int(np.searchsorted(-ranked_counts, -r, side="left"))  # devices with > r requests
        d = ranked[:m]
        p = first[d] + r
        g = grp[p]
        t = np.maximum(arr[p], head_free[d])
        charged[p] = np.where(head_free[d] > arr[p], busy[p], 1.0)
        while True:  # the samples of earlier messages sent by t, oldest first
            idx = applied[d]
            can = (idx < p) & (ue[np.minimum(idx, n - 1)] <= t)
            if not can.any():
                break
            val = sample[np.minimum(idx, n - 1)]
            add_samples(d, can & ~np.isnan(val), ue[np.minimum(idx, n - 1)], val)
            applied[d] = idx + can
        probe = t - sampled_at[d] >= settings.probe_interval_s
        add_samples(d, probe, t, up[p])
        fresh = (t[:, None] - ring_t[d] <= settings.max_sample_age_s) & ~np.isnan(ring[d])
        has = fresh.any(axis=1)
        bw = ga["planned"][g].astype(float)
        if has.any():  # the median of each row's fresh samples, as statistics.median takes it
            values = np.sort(np.where(fresh[has], ring[d][has], np.inf), axis=1)
            c = fresh[has].sum(axis=1)
            rows = np.arange(len(c))
            bw[has] = (values[rows, (c - 1) // 2] + values[rows, c // 2]) / 2
        cur = current[d]
        safe = np.maximum(cur, 0)
        keep = (cur >= 0) & (ga["w_lo"][g, safe] <= bw) & (bw < ga["w_hi"][g, safe])
        j = np.sum(ga["lows"][g] <= bw[:, None], axis=1) - 1
        k = np.where(keep, cur, ga["env_cut"][g, np.maximum(j, 0)])
        moved = (cur >= 0) & (k != cur)
        if moved.any():  # a new cut only when predicted faster by more than the noise
            now_ms = latency(g[moved], cur[moved], bw[moved])
            then_ms = latency(g[moved], k[moved], bw[moved])
            worth = now_ms - then_ms > np.maximum(settings.min_gain_ms,
                                                  settings.min_gain_share * now_ms)
            k[np.flatnonzero(moved)[~worth]] = cur[moved][~worth]
        current[d] = k
        cut[p] = k
        reg = regime[p]
        hs[p] = t
        end = t + (dev_ms[g, k] + enc[reg, g, k]) * spread[p] * charged[p] / 1000.0
        he[p] = end
        head_free[d] = end
        cloud_used = uses[g, k]
        start = np.maximum(end, link_free[d])
        wire = wire_b[reg, g, k]
        finish = start + wire * 8.0 / (up[p] * 1000.0) / 1000.0
        us[p] = np.where(cloud_used, start, math.nan)
        ue[p] = np.where(cloud_used, finish, -np.inf)
        link_free[d] = np.where(cloud_used, finish, link_free[d])
        seconds = finish - end
        ok = cloud_used & (wire >= min_bytes) & (seconds > 0)
        sample[p] = np.where(ok, wire * 8.0 / 1e6 / np.where(seconds > 0, seconds, 1.0), math.nan)

    # Back to arrival order; services exactly as the event engine charges them.
    back = np.empty(n, dtype=np.int64)
    back[order] = np.arange(n)
    k = cut[back]
    group = workload.group
    reg = (workload.uplink_mbps >= RAW_ABOVE_MBPS).astype(np.int64)
    used = uses[group, k]
    wire = np.where(used, wire_b[reg, group, k], 0.0)
    downs = pad([t.down_bytes.astype(float) for t in tables])[group, k]
    decode = pad([t.decode_ms for t in tables])[group, k]
    tails = np.stack([np.pad(ti, (0, width - len(ti)), constant_values=-1) for ti in tail_ids])
    dev_f = np.ones(n) if workload.device_factor is None else workload.device_factor
    dev_f = dev_f * charged[back]
    cloud_f = np.ones(n) if workload.cloud_factor is None else workload.cloud_factor
    services = Services(
        cut=k, device_ms=(dev_ms[group, k] + enc[reg, group, k]) * dev_f,
        compute_ms=dev_ms[group, k] * dev_f,
        uplink_ms=np.where(used, wire * 8.0 / (workload.uplink_mbps * 1000.0), 0.0),
        cloud_ms=np.where(used, pad([t.cloud_ms for t in tables])[group, k] * cloud_f, 0.0),
        downlink_ms=np.where(used, downs * 8.0 / (workload.downlink_mbps * 1000.0), 0.0),
        decode_ms=decode, uses_cloud=used, tail=np.where(used, tails[group, k], -1),
        up_wire_bytes=wire, down_bytes=np.where(used, downs, 0.0))
    head_start, head_end = hs[back], he[back]
    up_start, up_end = us[back], np.where(used, ue[back], math.nan)
    rows = np.flatnonzero(used)
    half = workload.rtt_ms[rows] / 2000.0
    arrive = np.full(n, math.nan)
    arrive[rows] = up_end[rows] + half
    batches = cloud_batches(arrive[rows], services.tail[rows], services.cloud_ms[rows],
                            replicas=cloud.replicas, max_batch=cloud.max_batch_size,
                            max_queue_delay_ms=cloud.max_queue_delay_ms,
                            batch_scaling=cloud.batch_scaling)
    limit = settings.max_cloud_queue_ms
    if limit is not None and len(rows) and \
            float(np.max(batches.start_s - arrive[rows])) * 1000.0 > limit:
        return None  # some answer reported a long queue: decisions may differ; run events
    c_start = np.full(n, math.nan)
    c_end = np.full(n, math.nan)
    c_start[rows], c_end[rows] = batches.start_s, batches.end_s
    done = head_end + services.decode_ms / 1000.0
    done[rows] = batches.end_s + half + (services.downlink_ms[rows]
                                         + services.decode_ms[rows]) / 1000.0
    return Outcome(services=services, head_start_s=head_start, head_end_s=head_end,
                   up_start_s=up_start, up_end_s=up_end, cloud_arrival_s=arrive,
                   cloud_start_s=c_start, cloud_end_s=c_end, done_s=done, batches=batches,
                   events=model_events(n, len(rows), len(batches.batch_size)))
