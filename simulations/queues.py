"""The two queues of the world, as functions over arrays: a FIFO server per key, and the cloud.

`fifo` serves each key's requests one at a time in order of readiness (a device's CPU, its
uplink or its cell's): start = max(ready, previous end). It runs vectorised over all keys at
once with the max-plus form of Lindley's recursion,

    end_i = S_i + max_{j <= i, same key} (ready_j - S_{j-1}),   S = cumulative service,

a segmented running maximum (numpy has none: each key's values are lifted above the previous
key's by a constant, so one `np.maximum.accumulate` never mixes keys; the lift is subtracted
again, which costs ~1e-7 s of float precision at 10,000 keys and 1,000 s).

`cloud_batches` is the shared endpoint: `replicas` servers, each running one batch at a time,
fed from one FIFO queue by a dynamic batcher like Triton's: a batch leaves when a replica is
free and either `max_batch` requests of the head's tail are queued, the head has waited
`max_queue_delay_ms`, or the next queued request needs another tail (a batch holds one tail
model; it never overtakes). A batch of n takes cloud_ms * (1 + batch_scaling * (n - 1)). It is
a loop over batches (a few microseconds each); the event engine (`events.py`) runs the same
batcher online and the tests check both agree.

Example:
    >>> start, end = fifo(np.array([0, 0, 1]), np.array([0.0, 0.5, 0.2]), np.array([1.0, 1.0, 1.0]))
    >>> start.tolist(), end.tolist()
    ([0.0, 1.0, 0.2], [1.0, 2.0, 1.2])
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

__all__ = ["Batches", "cloud_batches", "fifo", "fifo_busy"]


def fifo(key: np.ndarray, ready: np.ndarray, service: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of each request at a FIFO single server per `key`; times in one unit.

    Ties in `ready` within a key go in input order.
    """
    n = len(ready)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    if n == 1 or bool(np.all(ready[1:] >= ready[:-1])):
        order = np.argsort(key, kind="stable")     # already in order of readiness
    else:
        by_ready = np.argsort(ready, kind="stable")
        order = by_ready[np.argsort(key[by_ready], kind="stable")]
    k, a, s = key[order], ready[order], service[order]
    total = np.cumsum(s)
    before = total - s
    first = np.ones(n, dtype=bool)
    first[1:] = k[1:] != k[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, n))
    group = np.repeat(np.arange(len(starts)), sizes)
    base = np.repeat(before[starts], sizes)   # cumulative service before this key's first request
    v = a - (before - base)
    span = float(np.max(v) - np.min(v)) + 1.0
    lift = group * span
    running = np.maximum.accumulate(v + lift) - lift
    end_sorted = running + (total - base)
    start_sorted = np.maximum(end_sorted - s, a)
    end_sorted = start_sorted + s
    start = np.empty(n)
    end = np.empty(n)
    start[order] = start_sorted
    end[order] = end_sorted
    return start, end


def fifo_busy(key: np.ndarray, ready: np.ndarray, idle_service: np.ndarray,
              busy_service: np.ndarray, *, tolerance: float = 1e-6
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fifo` where a request that has to wait is served in `busy_service`, one that finds
    its server idle in `idle_service` (>= for every request); (start, end, waited).
    A request waited if it started more than `tolerance` after it was ready (`fifo`'s
    float error is ~1e-7 of the time span; a microsecond in seconds is far above it).

    Back-to-back runs on a CPU-limited device are slower than runs after a pause (the
    quota is spent, the caches are cold for the next input): on the validation testbed's
    cgroups the second of two runs after a pause took 1.2-1.5x the first. Whether a request
    waits depends on the service times before it, so this is a fixed point: serve the ones
    known to wait at the busy time, recompute, until the set stops growing. Longer services
    only delay later starts, so the set grows monotonically and the loop ends (in a few
    rounds: each adds the requests that the busy times just pushed behind their
    predecessors).
    """
    waited = np.zeros(len(ready), dtype=bool)
    while True:
        start, end = fifo(key, ready, np.where(waited, busy_service, idle_service))
        now_waiting = waited | (start > ready + tolerance)
        if np.array_equal(now_waiting, waited):
            return start, end, waited
        waited = now_waiting


@dataclass(frozen=True, slots=True, kw_only=True)
class Batches:
    """What the cloud did: per request its batch's start and end; per batch its replica,
    start, end and size (in order of start)."""

    start_s: np.ndarray
    end_s: np.ndarray
    batch_replica: np.ndarray
    batch_start_s: np.ndarray
    batch_end_s: np.ndarray
    batch_size: np.ndarray


def cloud_batches(arrival_s: np.ndarray, tail: np.ndarray, cloud_ms: np.ndarray, *,
                  replicas: int, max_batch: int, max_queue_delay_ms: float,
                  batch_scaling: float) -> Batches:
    """Run the cloud's batcher over requests arriving at `arrival_s` (see the module doc).

    What a batch headed by request i may hold and when it is ready depend on i alone (the
    queue behind it: its tail's run, `max_batch`, the delay), so both are computed for every
    request at once; the loop over batches is then a heap pop, a bisection and a push.
    """
    n = len(arrival_s)
    order = np.argsort(arrival_s, kind="stable")
    a_np = arrival_s[order]
    t_np = tail[order]
    delay = max_queue_delay_ms / 1000.0
    if n == 0:
        empty = np.zeros(0)
        return Batches(start_s=empty, end_s=empty, batch_replica=np.zeros(0, dtype=np.int64),
                       batch_start_s=empty, batch_end_s=empty,
                       batch_size=np.zeros(0, dtype=np.int64))
    idx = np.arange(n)
    change = np.flatnonzero(t_np[1:] != t_np[:-1]) + 1       # first index of each later run
    run_end = np.append(change, n)[np.searchsorted(change, idx, side="right")]
    cap = np.minimum(idx + max_batch, run_end)                 # a batch headed by i ends by cap
    inf = np.inf
    padded = np.append(a_np, inf)
    full = np.where(cap - idx == max_batch, a_np[cap - 1], inf)
    blocked = np.where((cap < n) & (cap - idx < max_batch), padded[np.minimum(cap, n)], inf)
    ready_np = np.minimum(np.minimum(a_np + delay, full), blocked)
    # Where the batch's replica is free by `ready`, it holds the requests arrived by then:
    nxt = np.clip(np.searchsorted(a_np, ready_np, side="right"), idx + 1, cap)
    # memoryviews, not lists: indexing gives Python floats and ints without converting every
    # request up front (only the batches' heads are read).
    a = memoryview(np.ascontiguousarray(a_np))
    ready = memoryview(np.ascontiguousarray(ready_np))
    caps = memoryview(np.ascontiguousarray(cap, dtype=np.int64))
    nexts = memoryview(np.ascontiguousarray(nxt, dtype=np.int64))
    work = memoryview(np.ascontiguousarray(cloud_ms[order], dtype=float))
    heads: list[int] = []
    b_rep: list[int] = []
    b_start: list[float] = []
    b_end: list[float] = []
    free = [(0.0, r) for r in range(replicas)]
    heapq.heapify(free)
    pop, push = heapq.heappop, heapq.heappush
    i = 0
    while i < n:
        f, r = pop(free)
        s = ready[i]
        if f > s:  # the replica is late: the batch takes in what arrived by then
            s = f
            m = bisect_right(a, s, i + 1, caps[i])
        else:
            m = nexts[i]
        e = s + work[i] * (1.0 + batch_scaling * (m - i - 1)) / 1000.0
        heads.append(i)
        b_rep.append(r)
        b_start.append(s)
        b_end.append(e)
        push(free, (e, r))
        i = m
    size = np.diff(np.append(np.array(heads, dtype=np.int64), n))
    bs = np.array(b_start)
    be = np.array(b_end)
    out_start = np.empty(n)
    out_end = np.empty(n)
    out_start[order] = np.repeat(bs, size)
    out_end[order] = np.repeat(be, size)
    return Batches(start_s=out_start, end_s=out_end, batch_replica=np.array(b_rep, dtype=np.int64),
                   batch_start_s=bs, batch_end_s=be, batch_size=size)
