"""The two engines over one model of the world; both return an `Outcome`.

The world (docs/simulation.md): a request arrives at its device and waits for the device's CPU
(one inference at a time, FIFO), which runs the head and encodes the crossing tensors; the
message then waits for the device's uplink (or its cell's: one message at a time, FIFO) and is
sent; half the round trip later it joins the cloud's queue, is batched onto a free replica
(`queues.cloud_batches`), and the answer takes the other half of the round trip, the downlink
transfer and the decoding to come back. An edge-only request is done when its head is.

- `run_static`: when every decision is known before the run (all strategies but edgecut),
  the stages form a feed-forward tandem, and each stage is computed for all requests at
  once: the device and link FIFOs vectorised (`queues.fifo`), the cloud in one loop over
  batches. Exact, and fast: no per-request Python.
- `run_events`: a discrete-event loop (a heapq of timed events, no wall clock) for
  policies that decide from what the device has seen so far (edgecut's live bandwidth
  estimate and the cloud's queue reports). The same batcher runs online. The tests check
  that both engines give the same times for static strategies. (`ranks.py` runs edgecut
  without events where the cloud's reports cannot change a decision.)
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecut.simulations.adaptive import choose_cut, recent_median, worth_switching
from edgecut.simulations.costs import CutTable
from edgecut.simulations.queues import Batches, cloud_batches, fifo, fifo_busy
from edgecut.simulations.scenario import CloudSpec, EdgecutSettings
from edgecut.simulations.strategies import Services
from edgecut.simulations.workload import Workload

__all__ = ["EdgecutPolicy", "Outcome", "model_events", "run_events", "run_static"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """Times in seconds of every request's stages (nan where it has no such stage), the
    services it was charged, and the cloud's batches; `events` counts the model's events
    (`model_events`: the same whichever engine ran, a measure of work, not of time)."""

    services: Services
    head_start_s: np.ndarray
    head_end_s: np.ndarray
    up_start_s: np.ndarray
    up_end_s: np.ndarray
    cloud_arrival_s: np.ndarray
    cloud_start_s: np.ndarray
    cloud_end_s: np.ndarray
    done_s: np.ndarray
    batches: Batches
    events: int


def run_static(workload: Workload, services: Services, cloud: CloudSpec,
               progress: Progress | None = None) -> Outcome:
    """Every stage for all requests at once (decisions fixed in `services`)."""
    n = workload.size
    say = progress or (lambda _s, _d, _t: None)
    say("device", 0, 4)
    if workload.busy_slowdown is None:
        head_start, head_end = fifo(workload.device, workload.arrival_s,
                                    services.device_ms / 1000.0)
    else:
        idle_s = services.device_ms / 1000.0
        head_start, head_end, waited = fifo_busy(workload.device, workload.arrival_s, idle_s,
                                                 idle_s * workload.busy_slowdown)
        slow = np.where(waited, workload.busy_slowdown, 1.0)
        services = dataclasses.replace(services, device_ms=services.device_ms * slow,
                                       compute_ms=services.compute_ms * slow)
    nan = np.full(n, math.nan)
    up_start, up_end, arrive, c_start, c_end = (nan.copy() for _ in range(5))
    rows = np.flatnonzero(services.uses_cloud)
    say("uplink", 1, 4)
    s, e = fifo(workload.link[rows], head_end[rows], services.uplink_ms[rows] / 1000.0)
    up_start[rows], up_end[rows] = s, e
    half = workload.rtt_ms[rows] / 2000.0
    arrive[rows] = e + half
    say("cloud", 2, 4)
    batches = cloud_batches(arrive[rows], services.tail[rows], services.cloud_ms[rows],
                            replicas=cloud.replicas, max_batch=cloud.max_batch_size,
                            max_queue_delay_ms=cloud.max_queue_delay_ms,
                            batch_scaling=cloud.batch_scaling)
    c_start[rows], c_end[rows] = batches.start_s, batches.end_s
    done = head_end + services.decode_ms / 1000.0
    done[rows] = (batches.end_s + half
                  + (services.downlink_ms[rows] + services.decode_ms[rows]) / 1000.0)
    say("done", 4, 4)
    return Outcome(services=services, head_start_s=head_start, head_end_s=head_end,
                   up_start_s=up_start, up_end_s=up_end, cloud_arrival_s=arrive,
                   cloud_start_s=c_start, cloud_end_s=c_end, done_s=done, batches=batches,
                   events=model_events(n, len(rows), len(batches.batch_size)))


def model_events(requests: int, offloaded: int, batches: int) -> int:
    """Events of the world's model, whichever engine ran it: each request's arrival and head
    done, an offloaded one's message sent, cloud arrival and answer, and each batch done."""
    return 2 * requests + 3 * offloaded + batches


class StaticPolicy:
    """Decisions known up front (to run static strategies through the event engine)."""

    def __init__(self, cut: np.ndarray) -> None:
        self.cut = cut.tolist()

    def decide(self, i: int, now: float) -> int:
        return self.cut[i]

    def on_uplink(self, i: int, now: float, wire_bytes: float, seconds: float) -> None:
        pass

    def on_response(self, i: int, now: float, queue_ms: float) -> None:
        pass


class EdgecutPolicy:
    """Per-device state of the edgecut strategy around the pure `adaptive` functions.

    `decide` takes a fast path while no queue report is over the limit: the envelope lookup
    of `adaptive.envelope_cut`, with the widened ranges computed once per class.
    """

    def __init__(self, tables: Sequence[CutTable], workload: Workload,
                 settings: EdgecutSettings) -> None:
        self.tables = tables
        self.settings = settings
        self.group = workload.group.tolist()
        self.device = workload.device.tolist()
        d = workload.device_count
        self.samples: dict[int, deque[tuple[float, float]]] = {}
        self.current: list[int | None] = [None] * d
        self.report: list[float | None] = [None] * d
        self.report_at = [-math.inf] * d
        self.sampled_at = [-math.inf] * d
        self.link_mbps = workload.uplink_mbps.tolist()
        h = settings.hysteresis
        self._widened = [{k: (lo * (1 - h), hi * (1 + h)) for k, lo, hi in t.envelope}
                         for t in tables]
        self._lows = [[lo for _, lo, _ in t.envelope] for t in tables]
        self._cuts = [[k for k, _, _ in t.envelope] for t in tables]
        self._planned = [t.uplink_mbps for t in tables]
        self._limit = math.inf if settings.max_cloud_queue_ms is None else settings.max_cloud_queue_ms

    def _add(self, d: int, now: float, mbps: float) -> None:
        window = self.samples.get(d)
        if window is None:
            window = self.samples[d] = deque(maxlen=self.settings.window)
        window.append((now, mbps))
        self.sampled_at[d] = now

    def estimate(self, d: int, now: float) -> float | None:
        window = self.samples.get(d)
        if not window:
            return None
        return recent_median(window, now=now, max_age_s=self.settings.max_sample_age_s)

    def decide(self, i: int, now: float) -> int:
        d = self.device[i]
        if now - self.sampled_at[d] >= self.settings.probe_interval_s:
            # The runtime probes a link it has not measured for probe_interval_s; the probe is
            # small (probe_max_share of the link) and is not charged here.
            self._add(d, now, self.link_mbps[i])
        estimate = self.estimate(d, now)
        g = self.group[i]
        report = self.report[d]
        if report is not None and report > self._limit:
            env, run = choose_cut(self.tables[g], self.settings, estimate_mbps=estimate,
                                  current=self.current[d], queue_report_ms=report,
                                  report_age_s=now - self.report_at[d])
            self.current[d] = env
            return run
        bandwidth = self._planned[g] if estimate is None else estimate
        current = self.current[d]
        if current is not None:
            low, high = self._widened[g][current]
            if low <= bandwidth < high:
                return current
        j = bisect_right(self._lows[g], bandwidth) - 1
        k = self._cuts[g][j if j > 0 else 0]
        if current is not None and k != current and not worth_switching(
                self.tables[g], current, k, bandwidth, self.settings):
            return current
        self.current[d] = k
        return k

    def on_uplink(self, i: int, now: float, wire_bytes: float, seconds: float) -> None:
        if wire_bytes >= self.settings.min_sample_bytes and seconds > 0:
            self._add(self.device[i], now, wire_bytes * 8.0 / 1e6 / seconds)

    def on_response(self, i: int, now: float, queue_ms: float) -> None:
        d = self.device[i]
        self.report[d] = queue_ms
        self.report_at[d] = now


_HEAD, _UPLINK, _CLOUD, _BATCH, _TIMEOUT, _RESPONSE = range(6)


def run_events(workload: Workload, tables: Sequence[CutTable], tail_ids: Sequence[np.ndarray],
               policy: StaticPolicy | EdgecutPolicy, cloud: CloudSpec,
               progress: Progress | None = None) -> Outcome:
    """The discrete-event loop (see the module docstring); decisions from `policy`."""
    n = workload.size
    arrival = workload.arrival_s.tolist()
    device = workload.device.tolist()
    group = workload.group.tolist()
    link = workload.link.tolist()
    up_mbps = workload.uplink_mbps.tolist()
    down_mbps = workload.downlink_mbps.tolist()
    half_rtt = (workload.rtt_ms / 2000.0).tolist()
    dev_f = [1.0] * n if workload.device_factor is None else workload.device_factor.tolist()
    cloud_f = [1.0] * n if workload.cloud_factor is None else workload.cloud_factor.tolist()
    busy_f = [1.0] * n if workload.busy_slowdown is None else workload.busy_slowdown.tolist()
    per_group = [(t.device_ms.tolist(), t.encode_ms.tolist(), t.up_wire_bytes.tolist(),
                  t.down_bytes.tolist(), t.cloud_ms.tolist(), t.decode_ms.tolist(),
                  t.uses_cloud.tolist(), tail_ids[g].tolist()) for g, t in enumerate(tables)]
    from edgecut.partitioner.planner import RAW_ABOVE_MBPS

    nan = math.nan
    cut = [0] * n
    dev_ms, comp_ms, link_ms, cl_ms, dl_ms, dec_ms, wire, down_b = ([0.0] * n for _ in range(8))
    uses = [False] * n
    tails = [-1] * n
    hs, he, us, ue, ca, cs, ce, done = ([nan] * n for _ in range(8))
    dev_busy = [False] * workload.device_count
    dev_queue: dict[int, deque[int]] = {}
    link_busy: dict[int, bool] = {}
    link_queue: dict[int, deque[int]] = {}
    heap: list[tuple[float, int, int, Any]] = []
    seq = 0
    push = heapq.heappush
    pop = heapq.heappop
    delay = cloud.max_queue_delay_ms / 1000.0
    max_batch = cloud.max_batch_size
    scaling = cloud.batch_scaling
    idle = [(0.0, r) for r in range(cloud.replicas)]
    cloud_queue: deque[int] = deque()
    timeout_for = -1
    b_rep: list[int] = []
    b_start: list[float] = []
    b_end: list[float] = []
    b_size: list[int] = []
    say = progress or (lambda _s, _d, _t: None)
    report_every = max(n // 50, 1)

    decide = policy.decide
    on_uplink = policy.on_uplink
    on_response = policy.on_response

    def start_head(i: int, now: float, waited: bool) -> None:
        nonlocal seq
        k = decide(i, now)
        d_ms, enc, upw, downs, clms, decs, usec, tl = per_group[group[i]]
        regime = 1 if up_mbps[i] >= RAW_ABOVE_MBPS else 0
        cut[i] = k
        used = usec[k]
        uses[i] = used
        f = dev_f[i] * busy_f[i] if waited else dev_f[i]
        comp_ms[i] = d_ms[k] * f
        dev_ms[i] = (d_ms[k] + enc[regime][k]) * f
        dec_ms[i] = decs[k]
        if used:
            w = upw[regime][k]
            wire[i] = w
            down_b[i] = downs[k]
            link_ms[i] = w * 8.0 / (up_mbps[i] * 1000.0)
            dl_ms[i] = downs[k] * 8.0 / (down_mbps[i] * 1000.0)
            cl_ms[i] = clms[k] * cloud_f[i]
            tails[i] = tl[k]
        hs[i] = now
        end = now + dev_ms[i] / 1000.0
        he[i] = end
        seq += 1
        push(heap, (end, seq, _HEAD, i))

    def start_uplink(i: int, now: float) -> None:
        nonlocal seq
        us[i] = now
        end = now + link_ms[i] / 1000.0
        ue[i] = end
        seq += 1
        push(heap, (end, seq, _UPLINK, i))

    def dispatch(now: float) -> None:
        nonlocal seq, timeout_for
        while cloud_queue and idle:
            h = cloud_queue[0]
            tail = tails[h]
            run = 1
            size = len(cloud_queue)
            while run < size and run < max_batch and tails[cloud_queue[run]] == tail:
                run += 1
            if run == max_batch or run < size or now >= ca[h] + delay:
                _, r = pop(idle)
                members = [cloud_queue.popleft() for _ in range(run)]
                end = now + cl_ms[h] * (1.0 + scaling * (run - 1)) / 1000.0
                for m in members:
                    cs[m] = now
                    ce[m] = end
                b_rep.append(r)
                b_start.append(now)
                b_end.append(end)
                b_size.append(run)
                seq += 1
                push(heap, (end, seq, _BATCH, (r, members)))
            else:
                if timeout_for != h:
                    timeout_for = h
                    seq += 1
                    push(heap, (ca[h] + delay, seq, _TIMEOUT, h))
                break

    nxt = 0
    inf = math.inf
    while nxt < n or heap:
        t_arrival = arrival[nxt] if nxt < n else inf
        if heap and heap[0][0] <= t_arrival:
            now, _, kind, item = pop(heap)
        else:
            now, kind, item = t_arrival, -1, nxt
            nxt += 1
        if kind == -1:
            i = item
            d = device[i]
            if dev_busy[d]:
                dev_queue.setdefault(d, deque()).append(i)
            else:
                dev_busy[d] = True
                start_head(i, now, False)
            if nxt % report_every == 0:
                say("requests arrived", nxt, n)
        elif kind == _HEAD:
            i = item
            if uses[i]:
                lk = link[i]
                if link_busy.get(lk):
                    link_queue.setdefault(lk, deque()).append(i)
                else:
                    link_busy[lk] = True
                    start_uplink(i, now)
            else:
                done[i] = now + dec_ms[i] / 1000.0
            d = device[i]
            q = dev_queue.get(d)
            if q:
                start_head(q.popleft(), now, True)
            else:
                dev_busy[d] = False
        elif kind == _UPLINK:
            i = item
            on_uplink(i, now, wire[i], now - he[i])
            seq += 1
            arrive_at = now + half_rtt[i]
            ca[i] = arrive_at
            push(heap, (arrive_at, seq, _CLOUD, i))
            lk = link[i]
            q = link_queue.get(lk)
            if q:
                start_uplink(q.popleft(), now)
            else:
                link_busy[lk] = False
        elif kind == _CLOUD:
            cloud_queue.append(item)
            dispatch(now)
        elif kind == _BATCH:
            r, members = item
            for m in members:
                back = now + half_rtt[m] + (dl_ms[m] + dec_ms[m]) / 1000.0
                seq += 1
                push(heap, (back, seq, _RESPONSE, m))
            push(idle, (now, r))
            dispatch(now)
        elif kind == _TIMEOUT:
            dispatch(now)
        else:
            i = item
            done[i] = now
            on_response(i, now, (cs[i] - ca[i]) * 1000.0)
    say("done", n, n)
    services = Services(
        cut=np.array(cut, dtype=np.int64), device_ms=np.array(dev_ms), compute_ms=np.array(comp_ms),
        uplink_ms=np.array(link_ms), cloud_ms=np.array(cl_ms), downlink_ms=np.array(dl_ms),
        decode_ms=np.array(dec_ms), uses_cloud=np.array(uses, dtype=bool),
        tail=np.array(tails, dtype=np.int64), up_wire_bytes=np.array(wire),
        down_bytes=np.array(down_b))
    rows = np.flatnonzero(services.uses_cloud)
    batches = Batches(start_s=np.array(cs)[rows], end_s=np.array(ce)[rows],
                      batch_replica=np.array(b_rep, dtype=np.int64), batch_start_s=np.array(b_start),
                      batch_end_s=np.array(b_end), batch_size=np.array(b_size, dtype=np.int64))
    return Outcome(services=services, head_start_s=np.array(hs), head_end_s=np.array(he),
                   up_start_s=np.array(us), up_end_s=np.array(ue), cloud_arrival_s=np.array(ca),
                   cloud_start_s=np.array(cs), cloud_end_s=np.array(ce), done_s=np.array(done),
                   batches=batches, events=model_events(n, len(rows), len(b_size)))
