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
from dataclasses import dataclass

import numpy as np

__all__ = ["Batches", "cloud_batches", "fifo"]


def fifo(key: np.ndarray, ready: np.ndarray, service: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of each request at a FIFO single server per `key`; times in one unit.

    Ties in `ready` within a key go in input order.
    """
    n = len(ready)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((np.arange(n), ready, key))
    k, a, s = key[order], ready[order], service[order]
    total = np.cumsum(s)
    before = total - s
    first = np.ones(n, dtype=bool)
    first[1:] = k[1:] != k[:-1]
    group = np.cumsum(first) - 1
    base = before[first][group]           # cumulative service before this key's first request
    local_before = before - base
    v = a - local_before
    span = float(np.max(v) - np.min(v)) + 1.0
    lifted = v + group * span
    running = np.maximum.accumulate(lifted) - group * span
    end_sorted = running + (total - base)
    start_sorted = np.maximum(end_sorted - s, a)
    end_sorted = start_sorted + s
    start = np.empty(n)
    end = np.empty(n)
    start[order] = start_sorted
    end[order] = end_sorted
    return start, end


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
    """Run the cloud's batcher over requests arriving at `arrival_s` (see the module doc)."""
    n = len(arrival_s)
    order = np.argsort(arrival_s, kind="stable")
    a = arrival_s[order].tolist()
    tails = tail[order].tolist()
    work = cloud_ms[order].tolist()
    delay = max_queue_delay_ms / 1000.0
    start = [0.0] * n
    end = [0.0] * n
    b_rep: list[int] = []
    b_start: list[float] = []
    b_end: list[float] = []
    b_size: list[int] = []
    free = [(0.0, r) for r in range(replicas)]
    heapq.heapify(free)
    inf = float("inf")
    i = 0
    while i < n:
        f, r = heapq.heappop(free)
        head_tail = tails[i]
        j = i + 1
        while j < n and j - i < max_batch and tails[j] == head_tail:
            j += 1
        full = a[j - 1] if j - i == max_batch else inf
        blocked = a[j] if j < n and j - i < max_batch else inf
        ready = min(a[i] + delay, full, blocked)
        s = f if f > ready else ready
        m = i + 1
        while m < j and a[m] <= s:
            m += 1
        size = m - i
        e = s + work[i] * (1.0 + batch_scaling * (size - 1)) / 1000.0
        for x in range(i, m):
            start[x] = s
            end[x] = e
        b_rep.append(r)
        b_start.append(s)
        b_end.append(e)
        b_size.append(size)
        heapq.heappush(free, (e, r))
        i = m
    out_start = np.empty(n)
    out_end = np.empty(n)
    out_start[order] = start
    out_end[order] = end
    return Batches(start_s=out_start, end_s=out_end, batch_replica=np.array(b_rep, dtype=np.int64),
                   batch_start_s=np.array(b_start), batch_end_s=np.array(b_end),
                   batch_size=np.array(b_size, dtype=np.int64))
