"""Dynamic batching: which queued requests run together, and how their tensors are joined.

    handler threads ──push──▶ BatchQueue ──take(now)──▶ [requests] ──concat_inputs──▶ one run
                                                                    ◀──split_outputs──

The core here is pure: no threads, sockets or clocks (time is passed in), so the rules can be
tested exactly; edgecut.cloud.scheduler wraps it in worker threads. The records a run leaves
(BatchResult per request, BatchObservation per run, SchedulerStatistics per queue) are here
too.

The rules follow Triton's dynamic batcher (docs/user_guide/batcher.md):

- Requests batch together only when the model declares a batch dimension (`max_batch_size`
  > 0 and dynamic batching on) and their inputs agree on every other dimension and dtype, and
  ask for the same outputs: their `batch_key`. Requests whose other dims differ are grouped
  separately; nothing is ever padded.
- A group is dispatched at once when it holds `max_batch_size` rows, or when a prefix of it
  (first come, first served) adds up to one of `preferred_batch_sizes` (the largest such);
  otherwise it waits until its oldest request has waited `max_queue_delay_us`, then goes with
  as many rows as fit. With no delay the largest batch available goes at once.
- Among ready groups the one with the oldest request goes first.

    >>> policy = SchedulingPolicy(max_batch_size=8, dynamic_batching=True,
    ...                           preferred_batch_sizes=(4,), max_queue_delay_us=1000)
    >>> queue = BatchQueue(policy, max_queue_size=16)
    >>> for i in range(5):
    ...     queue.push(Pending(key="k", rows=1, nbytes=4, enqueued_at=0.0, payload=i))
    True
    True
    True
    True
    True
    >>> [p.payload for p in queue.take(now=0.0)]       # a preferred size is available
    [0, 1, 2, 3]
    >>> queue.take(now=0.0) is None, queue.wake_at()   # one left: wait for the delay
    (True, 0.001)
    >>> [p.payload for p in queue.take(now=0.001)]
    [4]
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from edgecut.errors import UserInputError

__all__ = [
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_SIZE",
    "BatchObservation",
    "BatchQueue",
    "BatchResult",
    "Pending",
    "SchedulerStatistics",
    "SchedulingPolicy",
    "SchedulingSettings",
    "batch_key",
    "batchable_policy",
    "concat_inputs",
    "policy_from_settings",
    "split_outputs",
]

# A queue that a model's settings leave unbounded (Triton's max_queue_size 0) gets these: a
# request waiting here holds its decoded inputs, so the bound is also a memory bound.
DEFAULT_MAX_QUEUE_SIZE = 128
DEFAULT_MAX_QUEUE_BYTES = 1 << 30

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulingPolicy:
    """How one model's requests are queued, batched and run.

    `max_batch_size` > 0 says the model's first dimension is a batch dimension of at most
    that many rows (Triton's meaning); `dynamic_batching` lets requests from different callers
    share a run. `max_queue_size` 0 takes the server's default (never unbounded).
    `instance_count` runs execute at once for this model. `queue_timeout_us` > 0 fails a
    request still queued after that long (Triton's default_queue_policy with timeout_action
    REJECT); with `queue_timeout_override` a request may ask for less (its `timeout`).
    """

    max_batch_size: int = 0
    dynamic_batching: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    max_queue_size: int = 0
    instance_count: int = 1
    queue_timeout_us: int = 0
    queue_timeout_override: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch_size < 0:
            problems.append(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        bad = [s for s in self.preferred_batch_sizes if not 0 < s <= max(self.max_batch_size, 0)]
        if bad:
            problems.append(
                f"preferred_batch_sizes must lie in 1..max_batch_size ({self.max_batch_size}), "
                f"got {list(bad)}"
            )
        if self.max_queue_delay_us < 0:
            problems.append(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.max_queue_size < 0:
            problems.append(f"max_queue_size must be >= 0 (0: the server's default), "
                            f"got {self.max_queue_size}")
        if self.instance_count < 1:
            problems.append(f"instance_count must be >= 1, got {self.instance_count}")
        if self.queue_timeout_us < 0:
            problems.append(f"queue_timeout_us must be >= 0 (0: none), got {self.queue_timeout_us}")
        if problems:
            raise UserInputError("scheduling policy: " + "; ".join(problems))

    @property
    def batching(self) -> bool:
        """Whether requests may be joined into one run."""
        return self.dynamic_batching and self.max_batch_size > 0

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_us / 1e6

    def queue_timeout_s(self, asked_s: float | None = None) -> float | None:
        """How long a request may wait in the queue: the policy's timeout, or what the request
        asked for (`asked_s`, its `timeout` parameter) where the policy lets it ask for less.
        None: no bound."""
        bound = self.queue_timeout_us / 1e6 if self.queue_timeout_us else None
        if asked_s is not None and self.queue_timeout_override:
            bound = asked_s if bound is None else min(bound, asked_s)
        return bound


class SchedulingSettings(Protocol):
    """The part of a model's settings (config.pbtxt) that scheduling reads; see
    policy_from_settings for the attribute names and what a missing one means."""

    max_batch_size: int


def policy_from_settings(settings: Any) -> SchedulingPolicy:
    """A SchedulingPolicy from a model's settings (edgecut.cloud.model_config.ModelSettings).

    Reads `max_batch_size`, `dynamic_batching` (None when the config has no
    `dynamic_batching {}`; else an object with `preferred_batch_sizes`, `max_queue_delay_us`,
    `max_queue_size` and the queue timeout's `default_timeout_us`, `timeout_action` and
    `allow_timeout_override`, or Triton's spellings) and `instance_count`. Missing
    attributes take Triton's defaults, so None gives the default policy.

    >>> policy_from_settings(None)
    SchedulingPolicy(max_batch_size=0, dynamic_batching=False, preferred_batch_sizes=(), \
max_queue_delay_us=0, max_queue_size=0, instance_count=1, queue_timeout_us=0, \
queue_timeout_override=False)
    """
    if settings is None:
        return SchedulingPolicy()
    dynamic = getattr(settings, "dynamic_batching", None)
    count = getattr(settings, "instance_count", None)
    if count is None:
        groups = getattr(settings, "instance_group", None) or ()
        count = sum(int(getattr(g, "count", 1)) for g in groups) or 1
    preferred = _first(dynamic, "preferred_batch_sizes", "preferred_batch_size") or ()
    return SchedulingPolicy(
        max_batch_size=int(getattr(settings, "max_batch_size", 0) or 0),
        dynamic_batching=dynamic is not None and dynamic is not False,
        preferred_batch_sizes=tuple(int(s) for s in preferred),
        max_queue_delay_us=int(
            _first(dynamic, "max_queue_delay_us", "max_queue_delay_microseconds") or 0),
        max_queue_size=int(getattr(dynamic, "max_queue_size", 0) or 0),
        instance_count=int(count),
        # DELAY (requests past it go behind the others) is not served: no timeout then.
        queue_timeout_us=(int(getattr(dynamic, "default_timeout_us", 0) or 0)
                          if getattr(dynamic, "timeout_action", "reject") == "reject" else 0),
        queue_timeout_override=bool(getattr(dynamic, "allow_timeout_override", False)),
    )


class _InputSpec(Protocol):
    name: str
    shape: tuple[int, ...]  # -1: a symbolic dim


def batchable_policy(policy: SchedulingPolicy, inputs: Sequence[_InputSpec]
                     ) -> tuple[SchedulingPolicy, list[str]]:
    """`policy` with batching turned off when an input has no dynamic first dimension, and
    the names of those inputs.

    Joining requests along axis 0 is valid only if every input's first dimension is
    symbolic; a model exported with a fixed batch of 1 would reject the joined tensor.

    >>> from types import SimpleNamespace
    >>> spec = SimpleNamespace(name="x", shape=(1, 4))
    >>> policy, fixed = batchable_policy(SchedulingPolicy(max_batch_size=8, dynamic_batching=True),
    ...                                  [spec])
    >>> policy.batching, fixed
    (False, ['x'])
    """
    if not policy.batching:
        return policy, []
    fixed = [s.name for s in inputs if not s.shape or s.shape[0] != -1]
    return (replace(policy, dynamic_batching=False) if fixed else policy), fixed


def _first(value: Any, *names: str) -> Any:
    """The first of `names` that `value` has (edgecut's ModelSettings or Triton's spelling)."""
    for name in names:
        if hasattr(value, name):
            return getattr(value, name)
    return None


@dataclass(slots=True, kw_only=True, eq=False)
class Pending(Generic[_T]):
    """One queued request. `key` None: it runs alone (its inputs cannot be joined)."""

    key: Hashable | None
    rows: int
    nbytes: int
    enqueued_at: float
    payload: _T = field(repr=False)


class BatchQueue(Generic[_T]):
    """The requests waiting for one model, and the rule that picks the next batch.

    Not thread-safe: the scheduler holds a lock around it. Bounded by `max_queue_size`
    requests and `max_queue_bytes` decoded bytes; `push` answers False when either is full.
    """

    def __init__(self, policy: SchedulingPolicy, *, max_queue_size: int,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES) -> None:
        if max_queue_size < 1 or max_queue_bytes < 1:
            raise UserInputError(
                f"queue bounds must be >= 1, got max_queue_size={max_queue_size}, "
                f"max_queue_bytes={max_queue_bytes}"
            )
        self._policy = policy
        self._max_size = max_queue_size
        self._max_bytes = max_queue_bytes
        self._items: list[Pending[_T]] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def max_queue_size(self) -> int:
        return self._max_size

    def push(self, item: Pending[_T]) -> bool:
        """Queue `item`; False (and nothing queued) when the queue is full.

        A request larger than the byte bound on its own is still admitted into an empty queue:
        it passed the message limits, and refusing it forever would be no back-pressure.
        """
        if len(self._items) >= self._max_size or (
            self._items and self._bytes + item.nbytes > self._max_bytes
        ):
            return False
        self._items.append(item)
        self._bytes += item.nbytes
        return True

    def take(self, now: float, *, flush: bool = False) -> list[Pending[_T]] | None:
        """The next batch to run at time `now`, removed from the queue; None: nothing is due.

        `flush` dispatches without waiting for delays (draining before shutdown).
        """
        if not self._policy.batching:  # first come, first served, one at a time
            if not self._items:
                return None
            item = self._items.pop(0)
            self._bytes -= item.nbytes
            return [item]
        for key, group in self._groups():
            chosen = self._ready_prefix(key, group, now, flush=flush)
            if chosen is not None:
                return self._remove(chosen)
        return None

    def oldest(self) -> Pending[_T] | None:
        """The request that has waited longest (None: the queue is empty)."""
        return self._items[0] if self._items else None

    def wake_at(self) -> float | None:
        """When the earliest waiting group's delay runs out (None: the queue is empty)."""
        if not self._items:
            return None
        delay = self._policy.max_queue_delay_s
        return min(group[0].enqueued_at for _, group in self._groups()) + delay

    def earliest_deadline(self) -> float | None:
        """The earliest `deadline` of a queued item's payload (None: no item has one)."""
        deadlines = [d for p in self._items
                     if (d := getattr(p.payload, "deadline", None)) is not None]
        return min(deadlines, default=None)

    def next_batch_at(self, now: float) -> float | None:
        """When the next batch is due: `now` if one is ready at `now`, else when the earliest
        waiting group's delay runs out (None: the queue is empty)."""
        if not self._items:
            return None
        if not self._policy.batching or any(
                self._ready_prefix(key, group, now, flush=False) is not None
                for key, group in self._groups()):
            return now
        return self.wake_at()

    def remove(self, predicate: Any) -> list[Pending[_T]]:
        """Take out every item for which `predicate(item)` holds (cancelled requests)."""
        gone = [p for p in self._items if predicate(p)]
        return self._remove(gone) if gone else []

    def _groups(self) -> list[tuple[Hashable | None, list[Pending[_T]]]]:
        """Items grouped by key, groups ordered by their oldest item; keyless ones alone."""
        groups: dict[Hashable, list[Pending[_T]]] = {}
        ordered: list[tuple[Hashable | None, list[Pending[_T]]]] = []
        for item in self._items:
            if item.key is None or not self._policy.batching:
                ordered.append((None, [item]))
            elif item.key in groups:
                groups[item.key].append(item)
            else:
                groups[item.key] = [item]
                ordered.append((item.key, groups[item.key]))
        return ordered

    def _ready_prefix(self, key: Hashable | None, group: list[Pending[_T]], now: float, *,
                      flush: bool) -> list[Pending[_T]] | None:
        if key is None:
            return group[:1]
        limit = self._policy.max_batch_size
        prefix: list[Pending[_T]] = []
        sizes: list[int] = []
        total = 0
        for item in group:
            if total + item.rows > limit:
                break
            total += item.rows
            prefix.append(item)
            sizes.append(total)
        full = total == limit or len(prefix) < len(group)
        if full or flush or self._policy.max_queue_delay_us == 0:
            return prefix
        preferred = set(self._policy.preferred_batch_sizes)
        for count in range(len(sizes), 0, -1):
            if sizes[count - 1] in preferred:
                return prefix[:count]
        if now >= group[0].enqueued_at + self._policy.max_queue_delay_s:
            return prefix
        return None

    def _remove(self, chosen: list[Pending[_T]]) -> list[Pending[_T]]:
        ids = {id(p) for p in chosen}
        self._items = [p for p in self._items if id(p) not in ids]
        self._bytes -= sum(p.nbytes for p in chosen)
        return chosen


def batch_key(inputs: Mapping[str, np.ndarray], output_names: Sequence[str],
              policy: SchedulingPolicy) -> tuple[int, Hashable | None]:
    """(rows, key) of a request: `rows` it adds to a batch, `key` None if it must run alone.

    A request can join others when batching is on, every input has a first dimension of the
    same size, and that size fits `max_batch_size`. Its key holds each input's dtype and
    remaining dims, and the outputs asked for, so only requests that can be concatenated
    along axis 0 (and split back) share a key.

    >>> policy = SchedulingPolicy(max_batch_size=8, dynamic_batching=True)
    >>> batch_key({"x": np.zeros((2, 16), np.float32)}, ["y"], policy)
    (2, ((('x', '<f4', (16,)),), ('y',)))
    """
    firsts = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    if not policy.batching or len(firsts) != 1:
        return 1, None
    rows = firsts.pop()
    if not 0 < rows <= policy.max_batch_size:
        return 1, None
    shapes = tuple((name, a.dtype.str, tuple(a.shape[1:])) for name, a in sorted(inputs.items()))
    return rows, (shapes, tuple(output_names))


def concat_inputs(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The inputs of several requests joined along axis 0 (one request: no copy).

    >>> concat_inputs([{"x": np.ones((1, 2))}, {"x": np.zeros((2, 2))}])["x"].shape
    (3, 2)
    """
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}


def split_outputs(outputs: Sequence[np.ndarray], rows: Sequence[int]) -> list[list[np.ndarray]] | None:
    """Each request's share of a batched run's outputs, or None when they cannot be split.

    They cannot when an output's first dimension is not the batch's total rows (a model whose
    settings claim a batch dimension it does not have); the caller then runs requests alone.

    >>> [[o.tolist() for o in r] for r in split_outputs([np.arange(3)], [1, 2])]
    [[[0]], [[1, 2]]]
    """
    total = sum(rows)
    if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
        return None
    if len(rows) == 1:
        return [list(outputs)]
    bounds = itertools.pairwise(itertools.accumulate(rows, initial=0))
    return [[o[start:stop] for o in outputs] for start, stop in bounds]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchResult:
    """What one request gets back: its outputs, and how it was run."""

    outputs: list[np.ndarray] = field(repr=False)
    queue_s: float
    compute_s: float
    batch_rows: int  # rows of the run it was part of (its own included)
    batch_requests: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchObservation:
    """One execution of a model, for metrics: `rows` in `requests` requests."""

    model: str
    version: int
    rows: int
    requests: int
    compute_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerStatistics:
    model: str
    version: int
    policy: SchedulingPolicy
    pending: int
    max_queue_size: int
    queued_bytes: int
    batches: int
    rows: int
    rejected: int
